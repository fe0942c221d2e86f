# SPDX-License-Identifier: ISC
"""Look a client up in a network/host list cdb built by qtools-mkcdb -n.

Keys:
    b"192.0.2.0/24", b"2001:db8::/32"  a network, canonical, bits given
    b"=mx.example.com"                  exactly that host name
    b"=.example.com"                    every name ending in .example.com
    b"\\0bits4", b"\\0bits6"             the prefix lengths present, longest
                                        first, comma separated (b"32,24")
The most specific network wins, then the exact host, then the longest
suffix; the value is the line's text (may be empty).
"""

from qtools.core import network_of


def _bits(reader, family_key, width):
    stored = reader.get(family_key)
    if stored is None:
        return range(width, -1, -1)
    return [int(b) for b in bytes(stored).split(b",") if b]


def network_key(packed, bits):
    """Return the cdb key of the network of bits containing packed."""
    return network_of(packed, bits).encode("ascii")


def host_keys(host):
    """Yield the keys a host name matches, most specific first."""
    host = host.lower().rstrip(".")
    yield b"=" + host.encode("ascii", "replace")
    at = host.find(".")
    while at >= 0:
        yield b"=" + host[at:].encode("ascii", "replace")
        at = host.find(".", at + 1)


def lookup(reader, packed=None, host=None, within=None):
    """Return (key, value) of the best entry for the address or host, or None.

    within: packed is a network of that many bits, and only an entry it
    falls under as a whole (as wide or wider) is its answer.
    """
    if packed is not None:
        width = len(packed) * 8
        family_key = b"\0bits4" if width == 32 else b"\0bits6"
        for bits in _bits(reader, family_key, width):
            if within is not None and bits > within:
                continue
            key = network_key(packed, bits)
            value = reader.get(key)
            if value is not None:
                return key, bytes(value)
    if host:
        for key in host_keys(host):
            value = reader.get(key)
            if value is not None:
                return key, bytes(value)
    return None


def listed(reader, client):
    """Return the text of the entry that lists a core.Client (address or name), or None."""
    found = lookup(reader, client.packed, client.host)
    return None if found is None else found[0].decode()
