# SPDX-License-Identifier: ISC
"""Turn the text formats of qtools-mkcdb into cdb records.

Each parser takes an iterable of lines (bytes, without the LF) and a
report(number, problem, fatal) callback, and yields (key, value) records in
the order they go into the cdb.  A bad line is reported with fatal=True and
skipped; the callback may raise to stop at the first one.
"""

import string

_DIGITS = b"0123456789"
_HOST = (string.ascii_lowercase + string.digits + "-_.").encode()
_VISIBLE = bytes(range(33, 127))
_NOT_AT_OR_LF = bytes(b for b in range(256) if b not in b"@\n")


def tcprules(lines, report):
    """Yield tcprules records, exactly as ucspi-tcp 0.88's tcprules writes them."""
    for number, line in enumerate(lines, 1):
        if not line or line[0] == 35:  # "#": only in the first column
            continue
        line = line.rstrip(b" \t\n")  # only these, only at the end: CR stays
        colon = line.find(b":")
        if colon < 0:
            continue  # tcprules skips a line without a colon
        address, rest = line[:colon], line[colon + 1 :]
        if rest.startswith(b"deny"):
            data, rest = [b"D\0"], rest[4:]
        elif rest.startswith(b"allow"):
            data, rest = [], rest[5:]
        else:
            report(number, "expected allow or deny right after the colon", True)
            continue
        problem = None
        while rest and problem is None:
            equals = rest.find(b"=")
            if rest[:1] != b",":
                problem = "expected a comma before each variable"
            elif equals < 0:
                problem = "expected = after the variable name"
            elif equals + 1 == len(rest):
                problem = "expected a quoted value after ="
            else:
                quote = rest[equals + 1 : equals + 2]
                end = rest.find(quote, equals + 2)
                if end < 0:
                    problem = "no closing %s after the value" % quote.decode("latin-1")
                else:
                    data.append(b"+" + rest[1 : equals + 1] + rest[equals + 2 : end] + b"\0")
                    rest = rest[end + 1 :]
        if problem is not None:
            report(number, problem, True)
            continue
        try:
            keys = _expand(address)
        except ValueError as error:
            report(number, str(error), True)
            continue
        value = b"".join(data)
        for key in keys:
            yield key, value


def _expand(address):
    """Return the keys of an address: a range like 1.2.3.4-7 gives four."""
    dash = address.find(b"-")
    if dash < 0 or b"=" in address or b"@" in address:
        return [address]
    left = address.rfind(b".", 0, dash) + 1
    right = address.find(b".", dash + 1)
    if right < 0:
        right = len(address)
    low, high = address[left:dash], address[dash + 1 : right]
    if low.strip(_DIGITS) or high.strip(_DIGITS):
        raise ValueError("a range must be two numbers: %s" % _text(low + b"-" + high))
    # djb's scan_ulong: an empty number is 0, overflow wraps
    low, high = int(low or 0) % 2**64, min(int(high or 0) % 2**64, 255)
    head, tail = address[:left], address[right:]
    return [head + b"%d" % n + tail for n in range(low, high + 1)]


def plain_addresses(data):
    """Return the validrcptto records of a list of bare, distinct addresses, or None.

    data is the whole text.  The common big list is checked and split by a
    few passes over the text at C speed instead of a Python step per line;
    a line the per-line parse (addresses) might read differently -- blank,
    comment, -address, text after it, a bad domain, a repeat -- returns
    None and the list takes that path.
    """
    import re
    from itertools import chain, repeat

    text = data.lower()
    if text[-1:] != b"\n":
        text += b"\n"
    if b"\r" in text:  # a list written on Windows: the per-line parse strips the CR too
        text = text.replace(b"\r\n", b"\n")
    if text.translate(None, _VISIBLE + b"\n") or text[:1] in b"#-":
        return None
    if re.search(rb"\n[#-]", text):  # a comment or a -address
        return None
    keys = text.split(b"\n")
    keys.pop()
    # one @ in each line, so none is blank: the text without its other
    # bytes is "@\n" repeated
    if text.translate(None, _NOT_AT_OR_LF) != b"@\n" * len(keys):
        return None
    domains = dict.fromkeys(re.findall(rb"@([^\n]*)\n", text))
    if len(set(keys)) != len(keys) or not all(map(_hostname, domains)):
        return None
    return zip(chain(keys, domains, [_marker()]), repeat(b""))


def addresses(lines, report):
    """Yield validrcptto records: address or @domain, value "" or "-text", then domain markers."""
    import re

    # the usual line, a bare address, costs one C-level match: big lists
    # (a million addresses) are this program's hot path
    plain = re.compile(rb"(?![-#])[!-?A-~]*@[a-z0-9_-]+(?:\.[a-z0-9_-]+)*").fullmatch
    seen = {}
    refused = {}
    for number, line in enumerate(lines, 1):
        key = line.lower()
        if plain(key) and key not in seen:
            seen[key] = number
            yield key, b""
            continue
        line = line.strip()
        if not line or line[0] == 35:
            continue
        entry, text = _split(line)
        rejected = entry[:1] == b"-"
        key = entry[rejected:].lower()
        local, at, domain = key.rpartition(b"@")
        if not at or b"@" in local:
            problem = "expected one @ in user@domain or @domain"
        elif local.translate(None, _VISIBLE):
            problem = "the local part is not printable ASCII"
        elif not _hostname(domain):
            problem = "invalid domain %s" % _text(domain)
        elif text and not rejected:
            problem = "text after an accepted address (only a -address takes one)"
        else:
            problem = None
        value = b"-" + text if rejected else b""
        if problem:
            report(number, problem, True)
            continue
        first = seen.setdefault(key, number)
        if first != number:
            same = "repeats" if refused.get(key, b"") == value else "contradicts, and loses to,"
            report(number, "%s %s line %d" % (_text(key), same, first), False)
            continue
        if rejected:
            refused[key] = value
        yield key, value
    # a bare "domain" key marks each domain the list speaks for: validrcptto
    # refuses unlisted addresses there and leaves other domains to qmail
    for domain in dict.fromkeys(key.rpartition(b"@")[2] for key in seen):
        yield domain, b""
    yield _marker(), b""


def _marker():
    """The record that says qtools-mkcdb built the list, and so wrote its domain markers."""
    from qtools.validrcptto import MARKER

    return MARKER


def networks(lines, report):
    """Yield network/host list records in the key format of qtools.netlist."""
    seen = {}
    bits = {b"\0bits4": set(), b"\0bits6": set()}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line[0] == 35:
            continue
        entry, text = _split(line)
        try:
            key, length, family = network_key(entry)
        except ValueError as error:
            report(number, str(error), True)
            continue
        first = seen.setdefault(key, number)
        if first != number:
            report(number, "%s repeats line %d, which wins" % (_text(key), first), False)
            continue
        if length is not None:
            bits[family].add(length)
        yield key, text.strip()
    for key, lengths in bits.items():
        yield key, b",".join(b"%d" % n for n in sorted(lengths, reverse=True))


def network_key(entry):
    """Return (key, prefix length, bits key) for one entry of a network list.

    A network with bits set beyond its prefix is refused, not rounded: the
    line probably says something other than what its author meant.
    """
    from qtools.core import format_ip, network_of, parse_ip

    if entry[:1] in (b"=", b"."):
        name = entry[1:] if entry[:1] == b"=" else entry
        name = name.lower().rstrip(b".")
        if not _hostname(name[1:] if name[:1] == b"." else name):
            raise ValueError("invalid host name %s" % _text(entry))
        return b"=" + name, None, None
    address, slash, length = entry.partition(b"/")
    if not slash and address.endswith(b".") and not address.strip(_DIGITS + b"."):
        octets = address[:-1].split(b".")  # a tcprules prefix: 10.1.
        if len(octets) < 4:
            address = b".".join(octets + [b"0"] * (4 - len(octets)))
            length, slash = b"%d" % (8 * len(octets)), b"/"
    parsed = parse_ip(address.decode("latin-1"))
    if parsed is None:
        name = entry.lower().rstrip(b".")
        # a name's last label has a letter: 1.2.3.400 is a broken address
        if slash or not _hostname(name) or not name.rsplit(b".")[-1].strip(_DIGITS + b"-_"):
            raise ValueError("invalid address, network or host name %s" % _text(entry))
        return b"=" + name, None, None
    packed = parsed[1]
    width = len(packed) * 8
    if not slash:
        bits = width
    elif length.isdigit() and int(length) <= 128:
        bits = int(length)
        if width == 32 and b":" in address:  # v4-mapped: ::ffff:192.0.2.0/120
            bits -= 96
        if not 0 <= bits <= width:
            raise ValueError("invalid prefix length /%s" % _text(length))
    else:
        raise ValueError("invalid prefix length /%s" % _text(length))
    key = network_of(packed, bits)
    if key.split("/")[0] != format_ip(packed):
        what = (_text(entry), bits, key)
        raise ValueError("%s has bits set beyond /%d: the network is %s" % what)
    return key.encode("ascii"), bits, b"\0bits4" if width == 32 else b"\0bits6"


def _hostname(name):
    """Return True for a plausible host or domain name (lowercase)."""
    return bool(name) and not name.translate(None, _HOST) and b"" not in name.split(b".")


def _split(line):
    """Split a line at its first blank into (entry, rest)."""
    parts = line.split(None, 1)
    return parts[0], parts[1] if len(parts) > 1 else b""


def _text(data):
    from qtools.core import clean

    return clean(data.decode("latin-1"))


FORMATS = {"t": tcprules, "a": addresses, "n": networks}
