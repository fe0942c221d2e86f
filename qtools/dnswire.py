# SPDX-License-Identifier: ISC
"""Build DNS queries and read their replies in wire format (RFC 1035), stdlib only."""

# Hand-written rather than dnspython: importing dns.message costs tens of
# milliseconds, more than the rest of a connection's start-up, and the
# resolver needs five record types out of the whole protocol.

TYPES = {"A": 1, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
NOERROR, NXDOMAIN = 0, 3
CLASS_IN = 1
# Bytes dnspython and BIND print escaped in a name's text form.
_SPECIAL = b'"().;\\@$'


class FormError(ValueError):
    """A reply that is not a well-formed answer to our question."""


def encode_name(name):
    """Return the wire form of a domain name (text, final dot optional), or raise ValueError."""
    text = name[:-1] if name.endswith(".") else name
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("not an ASCII name: %r" % name)
    labels = raw.split(b".") if raw else []
    if any(not 0 < len(label) < 64 for label in labels):
        raise ValueError("empty or over-long label in %r" % name)
    wire = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    if len(wire) > 255:
        raise ValueError("name too long: %r" % name)
    return wire


def valid_domain(name):
    """Return True for a multi-label name that DNS can ask (RFC 7208 section 4.3)."""
    name = name[:-1] if name.endswith(".") else name
    try:
        encode_name(name)
    except ValueError:
        return False
    return "." in name


def make_query(name, rdtype_text, ident):
    """Return the query packet asking for name's records of rdtype_text, recursion desired."""
    rdtype = TYPES.get(rdtype_text)
    if rdtype is None:
        raise ValueError("unknown record type %s" % rdtype_text)
    header = ident.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    return header + encode_name(name) + rdtype.to_bytes(2, "big") + b"\x00\x01"


def read_name(data, at):
    """Return (labels, end offset) of the name at offset at, following compression pointers."""
    labels, end, jumps, length = [], None, 0, 0
    while True:
        if at >= len(data):
            raise FormError("name runs past the end")
        size = data[at]
        if size >= 0xC0:
            if at + 1 >= len(data) or jumps > 64:
                raise FormError("bad compression pointer")
            if end is None:
                end = at + 2
            at, jumps = (size & 0x3F) << 8 | data[at + 1], jumps + 1
        elif size >= 0x40:
            raise FormError("unknown label type")
        elif size == 0:
            return labels, at + 1 if end is None else end
        else:
            label = data[at + 1 : at + 1 + size]
            length += size + 1
            if len(label) != size or length > 255:
                raise FormError("bad label")
            labels.append(label)
            at += 1 + size


def name_text(labels):
    """Return the text of a name, lowercased, special bytes escaped as dnspython does."""
    out = []
    for label in labels:
        text = ""
        for byte in label.lower():
            if byte in _SPECIAL or byte == 0x2E:
                text += "\\" + chr(byte)
            elif 0x20 < byte < 0x7F:
                text += chr(byte)
            else:
                text += "\\%03d" % byte
        out.append(text)
    return ".".join(out)


def _rdata(rdtype, data, start, end):
    """Return the plain value of one record: text for A, AAAA and PTR, bytes for TXT,
    (preference, exchange text) for MX; a null MX (RFC 7505) has exchange ""."""
    rdata = data[start:end]
    if rdtype == 1 or rdtype == 28:
        import _socket

        if len(rdata) != (4 if rdtype == 1 else 16):
            raise FormError("bad address length")
        return _socket.inet_ntop(_socket.AF_INET if rdtype == 1 else _socket.AF_INET6, rdata)
    if rdtype == 12 or rdtype == 15:
        first = start + 2 if rdtype == 15 else start
        labels, stop = read_name(data, first)
        if stop != end or first > end:
            raise FormError("bad %s length" % ("MX" if rdtype == 15 else "PTR"))
        if rdtype == 15:
            return int.from_bytes(rdata[:2], "big"), name_text(labels)
        return name_text(labels)
    strings, at = [], 0
    if not rdata:
        raise FormError("empty TXT record")
    while at < len(rdata):
        size = rdata[at]
        if at + 1 + size > len(rdata):
            raise FormError("TXT string runs past its record")
        strings.append(rdata[at + 1 : at + 1 + size])
        at += 1 + size
    return b"".join(strings)


def parse_reply(data, query):
    """Return (rcode, truncated, values) of a reply to query, or raise FormError."""
    # values are the answer section's records of the asked type and class,
    # whatever their owner name (CNAME targets included), as dnspython's
    # answer section gives them.
    if len(data) < 12:
        raise FormError("reply shorter than a header")
    if data[:2] != query[:2] or not data[2] & 0x80 or data[2] & 0x78 != query[2] & 0x78:
        raise FormError("not a reply to our query")
    counts = [int.from_bytes(data[i : i + 2], "big") for i in (4, 6)]
    if counts[0] != 1:
        raise FormError("reply with %d questions" % counts[0])
    question = query[12:]
    labels, at = read_name(data, 12)
    asked, _ = read_name(query, 12)
    if [label.lower() for label in labels] != [label.lower() for label in asked]:
        raise FormError("reply does not match the question")
    if data[at : at + 4] != question[-4:]:
        raise FormError("reply does not match the question")
    at += 4
    rdtype = int.from_bytes(question[-4:-2], "big")
    truncated = bool(data[2] & 0x02)
    values = []
    for _ in range(counts[1]):
        _, at = read_name(data, at)
        if at + 10 > len(data):
            if truncated:
                break
            raise FormError("record runs past the end")
        kind, klass = int.from_bytes(data[at : at + 2], "big"), int.from_bytes(data[at + 2 : at + 4], "big")
        size = int.from_bytes(data[at + 8 : at + 10], "big")
        start, at = at + 10, at + 10 + size
        if at > len(data):
            if truncated:
                break
            raise FormError("record runs past the end")
        if kind == rdtype and klass == CLASS_IN:
            values.append(_rdata(rdtype, data, start, at))
    return data[3] & 0x0F, truncated, values


def rcode_text(rcode):
    """Return the mnemonic of a reply code ("SERVFAIL"), or its number."""
    return RCODES.get(rcode, str(rcode))
