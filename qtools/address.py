# SPDX-License-Identifier: ISC
"""Read envelope addresses from MAIL FROM and RCPT TO the way qmail-smtpd does.

The proxy and its filters must see the same address qmail-smtpd will see,
so parse_path follows qmail-smtpd's addrparse: the text inside <...> (or,
without "<", the word after the colon), a source route dropped, quotes
removed and backslash escapes resolved.  Case is kept; fold() lowercases
for lookups, as the validrcptto patch does.
"""

# qmail-smtpd refuses longer addresses with a syntax error.
MAX_ADDRESS = 900


def argument(line):
    """Return the text after the verb of a command line (qmail splits at the first space)."""
    at = line.find(b" ")
    return line[at + 1 :] if at >= 0 else b""


def parse_path(line):
    """Return the address of a MAIL FROM/RCPT TO command line, or None if too long.

    MAIL FROM:<> gives b"", the null sender.
    """
    arg = argument(line)
    at = arg.find(b"<")
    if at >= 0:
        arg = arg[at + 1 :]
        terminator = 0x3E  # ">"
    else:
        # A client that never read RFC 821: the word after the colon.
        colon = arg.find(b":")
        arg = arg[colon + 1 :] if colon >= 0 else b""
        arg = arg.lstrip(b" ")
        terminator = 0x20
    if arg[:1] == b"@":
        # Source route "@a,@b:user@c": only "user@c" matters.
        colon = arg.find(b":")
        arg = arg[colon + 1 :] if colon >= 0 else b""
    out = bytearray()
    escaped = quoted = False
    for byte in arg:
        if escaped:
            out.append(byte)
            escaped = False
        elif byte == terminator and not quoted:
            break
        elif byte == 0x5C:  # backslash
            escaped = True
        elif byte == 0x22:  # double quote
            quoted = not quoted
        else:
            out.append(byte)
    if len(out) > MAX_ADDRESS:
        return None
    return bytes(out)


def fold(address):
    """Return address lowercased (ASCII only), the form lookups use."""
    return address.lower()


def split(address):
    """Return (local part, domain) split at the last "@"; domain b"" without one."""
    local, at, domain = address.rpartition(b"@")
    if not at:
        return address, b""
    return local, domain


def is_probe(address):
    """Return True for a relay probe: "%", "!" or a second "@" in the address.

    Quotes are gone by now, so "a@b"@c reads as a@b@c, which is what a
    percent-hack or bang-path relay would route on.
    """
    return b"%" in address or b"!" in address or address.count(b"@") > 1


def is_postmaster(address):
    """Return True for postmaster, bare or at any domain (RFC 5321 section 4.5.1)."""
    local, _ = split(fold(address))
    return local == b"postmaster"
