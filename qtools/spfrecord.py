# SPDX-License-Identifier: ISC
"""SPF records (RFC 7208): their syntax, macro expansion and address matching.

qtools.spf evaluates; this module only reads text and compares addresses,
so every syntax error is found before any DNS question is asked.
"""

from qtools import core
from qtools.dnswire import valid_domain  # noqa: F401 (spfrecord.valid_domain to qtools.spf)

QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
DELIMITERS = ".-+,/_="
UNRESERVED = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")


class PermError(Exception):
    """The domain's record is wrong or asks too much: permerror."""


def _toplabel_ok(label):
    return (label != "" and all(c.isalnum() or c == "-" for c in label) and label.isascii()
            and not label.isdigit() and label[0] != "-" and label[-1] != "-")


def _network(text, bits, size):
    """Return (packed, bits) of an ip4/ip6 argument, or raise PermError."""
    import _socket

    family = _socket.AF_INET if size == 4 else _socket.AF_INET6
    if bits is not None and (not bits.isdigit() or (bits[0] == "0" and bits != "0")
                             or int(bits) > size * 8):
        raise PermError("bad prefix length /%s" % bits)
    try:
        packed = _socket.inet_pton(family, text)
    except (OSError, ValueError):
        raise PermError("bad address %s" % text)
    return packed, size * 8 if bits is None else int(bits)


def within(ip, packed, bits):
    """Return True when address ip is in the network packed/bits (both of one family)."""
    if len(ip) != len(packed):
        return False
    shift = len(ip) * 8 - bits
    return int.from_bytes(ip, "big") >> shift == int.from_bytes(packed, "big") >> shift


def _cidr(arg):
    """Split "domain/24//64" into (domain, ip4 bits, ip6 bits); raise PermError on bad bits."""
    four = six = None
    if "//" in arg:
        arg, six = arg.rsplit("//", 1)
    head, slash, tail = arg.rpartition("/")
    if slash and (tail.isdigit() or not tail):
        arg, four = head, tail
    for bits, size in ((four, 32), (six, 128)):
        if bits is not None and (not bits.isdigit() or (bits[0] == "0" and bits != "0")
                                 or int(bits) > size):
            raise PermError("bad prefix length /%s" % bits)
    return arg, 32 if four is None else int(four), 128 if six is None else int(six)


def parse(text):
    """Return (directives, modifiers) of a record "v=spf1 ...", or raise PermError.

    directives are (result, mechanism, argument or None, v4 bits, v6 bits).
    """
    directives, modifiers = [], {}
    for term in text.split(" ")[1:]:
        if not term:
            continue
        name, equals, value = term.partition("=")
        if equals and name[:1].isalpha() and all(c.isalnum() or c in "-_." for c in name):
            name = name.lower()
            if name in modifiers and name in ("redirect", "exp"):
                raise PermError("%s twice" % name)
            check_spec(value, domain=name in ("redirect", "exp"))
            modifiers[name] = value
            continue
        result = QUALIFIERS.get(term[0])
        body = term[1:] if result else term
        mech, colon, arg = body.partition(":")
        mech = mech.lower()
        four = six = None
        if not colon and "/" in mech:
            mech, slash, rest = mech.partition("/")
            arg = "/" + rest
        if mech not in MECHANISMS:
            raise PermError("unknown mechanism %s" % core.clean(term))
        if not colon and arg and mech not in ("a", "mx"):
            raise PermError("%s takes no prefix length" % mech)
        if mech in ("a", "mx"):
            arg, four, six = _cidr(arg)
            arg = arg or None
        elif mech in ("ip4", "ip6"):
            address, slash, bits = arg.partition("/")
            arg = _network(address, bits if slash else None, 4 if mech == "ip4" else 16)
        elif mech == "all":
            if colon or arg:
                raise PermError("all takes no argument")
            arg = None
        elif not colon:
            arg = None
        if mech in ("include", "exists") and not arg:
            raise PermError("%s needs a domain" % mech)
        if isinstance(arg, str) or (colon and arg is None):
            check_spec(arg or "", domain=True)
        directives.append((result or "pass", mech, arg, four, six))
    return directives, modifiers


def check_spec(spec, domain):
    """Raise PermError unless spec's macros parse and, for a domain-spec, it ends well."""
    expand(spec, lambda letter: "x", explanation=not domain)
    if domain:
        if spec.endswith("}"):
            return
        text = spec[:-1] if spec.endswith(".") else spec
        head, dot, top = text.rpartition(".")
        if not dot or not _toplabel_ok(top):
            raise PermError("bad domain %s" % core.clean(spec))


def expand(spec, value, explanation=False):
    """Return spec with its macros expanded by value(letter); raise PermError on bad syntax."""
    out, i = [], 0
    while i < len(spec):
        c = spec[i]
        if c != "%":
            if not (" " <= c <= "~") or (c == " " and not explanation):
                raise PermError("bad character in %s" % core.clean(spec))
            out.append(c)
            i += 1
            continue
        following = spec[i + 1 : i + 2]
        if following in ("%", "_", "-"):
            out.append({"%": "%", "_": " ", "-": "%20"}[following])
            i += 2
            continue
        end = spec.find("}", i)
        if following != "{" or end < 0:
            raise PermError("bad macro in %s" % core.clean(spec))
        body, i = spec[i + 2 : end], end + 1
        letter = body[:1]
        if not letter or letter.lower() not in ("crt" if explanation else "") + "slodiphv":
            raise PermError("bad macro letter in %s" % core.clean(spec))
        at = 1
        while at < len(body) and body[at].isdigit():
            at += 1
        digits = body[1:at]
        reverse = body[at : at + 1].lower() == "r"
        delimiters = body[at + reverse :] or "."
        if any(d not in DELIMITERS for d in delimiters) or digits[:1] == "0":
            raise PermError("bad macro transformer in %s" % core.clean(spec))
        text = value(letter.lower())
        for d in delimiters[1:]:
            text = text.replace(d, delimiters[0])
        parts = text.split(delimiters[0]) if delimiters else [text]
        if reverse:
            parts.reverse()
        if digits:
            parts = parts[-int(digits):]
        text = ".".join(parts)
        if letter.isupper():
            text = "".join(ch if ch in UNRESERVED else "".join("%%%02X" % b for b in ch.encode())
                           for ch in text)
        out.append(text)
    return "".join(out)


def shorten(name):
    """Cut a name longer than 253 characters from the left, a label at a time (section 7.3)."""
    while len(name) > 253 and "." in name:
        name = name.split(".", 1)[1]
    return name
