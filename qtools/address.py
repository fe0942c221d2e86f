# SPDX-License-Identifier: ISC
"""Read a client's command line the way qmail-smtpd will act on it.

The proxy and every filter must decide on what qmail-smtpd will do with a
line, or a line read two ways is a bypass.  read() is that one reading,
taken from qmail-smtpd's commands() (commands.c) and addrparse()
(qmail-smtpd.c):

- C strings: qmail-smtpd keeps the line in a C string, so a NUL ends
  everything it sees of it, in the verb as in the argument
  ("RCPT\\0 TO:<x>" is RCPT with an empty argument).
- The verb ends at the first space (commands.c: str_chr(cmd.s,' ')), and
  is compared without regard to case; the argument starts after the
  spaces that follow it.  A tab is part of the verb.
- The address is the text after the first "<" up to ">", or without "<"
  the word after the first ":"; a source route "@a,@b:" is dropped;
  double quotes are removed and a backslash takes the next byte as is,
  so neither quoted nor escaped ">" (or space) ends the address.
- An address literal "user@[d.d.d.d]" that is one of qmail-smtpd's own
  IP addresses becomes "user@" + control/localiphost (default control/me).
  The proxy cannot know which addresses qmail-smtpd counts as its own
  (ipme_is() also says yes when it cannot list them), so every literal
  that qmail-smtpd's ip_scanbracket() reads whole is taken as one of them:
  the check then judges the address qmail-smtpd accepts, and a literal
  that is not ours is refused by qmail-smtpd's rcpthosts anyway.  When
  neither control file can be read, Command.literal tells the check that
  it cannot know the address (validrcptto answers 451).
- An address of 900 bytes or more (addr.len counts the final NUL) is a
  syntax error: path None.

Case is kept; fold() lowercases for lookups, as the validrcptto patch does.
"""

# qmail-smtpd: "if (addr.len > 900) return 0;" with the NUL counted.
MAX_ADDRESS = 899
PATH_VERBS = (b"mail", b"rcpt")


class Command:
    """One client command line as qmail-smtpd reads it.

    line: the line as received, without its line ending (for logs and
    records only: a check decides on the reading); verb: lowercased, up
    to the first space or NUL; arg: the argument, up to the first NUL;
    path: for MAIL and RCPT, the address addrparse() gives (b"" for the
    null sender), None when qmail-smtpd answers it with a syntax error;
    literal: True when path ends in an address literal that could not be
    mapped to the local name (no control file); barelf: True when the line
    ended in a LF without a CR before it (qmail-smtpd takes it; no SMTP
    client sends it).
    """

    __slots__ = ("line", "verb", "arg", "path", "literal", "barelf")

    def __init__(self, line, verb, arg, path=None, literal=False, barelf=False):
        self.line, self.verb, self.arg, self.path, self.literal = line, verb, arg, path, literal
        self.barelf = barelf

    def __repr__(self):
        return "Command(%r, %r, %r, %r, %r, %r)" % (self.line, self.verb, self.arg, self.path,
                                                   self.literal, self.barelf)


def read(line, localiphost=None, barelf=False):
    """Return the Command qmail-smtpd makes of line (without its line ending).

    localiphost is a function returning the name qmail-smtpd puts in place
    of its own address literals, or None when it cannot be known; it is
    called only for a line with a literal.  barelf tells how the line
    ended (the framing's business: the line itself no longer shows it).
    """
    text = line
    nul = text.find(b"\0")
    if nul >= 0:
        text = text[:nul]  # commands.c: cmd.s is a C string
    at = text.find(b" ")
    if at < 0:
        verb, arg = text, b""
    else:
        verb, arg = text[:at], text[at + 1 :].lstrip(b" ")
    verb = verb.lower()
    if verb not in PATH_VERBS:
        return Command(line, verb, arg, barelf=barelf)
    path, literal = addrparse(arg, localiphost)
    return Command(line, verb, arg, path, literal, barelf)


def addrparse(arg, localiphost=None):
    """Return (address, literal) as qmail-smtpd's addrparse() reads arg (no NUL in it).

    address is None for a syntax error (too long).
    """
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
    literal = False
    at = out.rfind(b"@")
    if at >= 0 and is_literal(out[at + 1 :]):
        name = localiphost() if localiphost is not None else None
        if name is None:
            literal = True
        else:
            del out[at + 1 :]
            out += name
    if len(out) > MAX_ADDRESS:
        return None, False
    return bytes(out), literal


def is_literal(domain):
    """Return True if domain is all of a literal qmail's ip_scanbracket() reads: [d.d.d.d]."""
    if domain[:1] != b"[" or domain[-1:] != b"]":
        return False
    parts = bytes(domain[1:-1]).split(b".")
    # scan_ulong() takes any run of digits (the byte keeps its low 8 bits).
    return len(parts) == 4 and all(part.isdigit() for part in parts)


def localiphost(environ):
    """Return the name qmail-smtpd gives its own address literals, or None.

    control/localiphost, else control/me, under $QMAILHOME (default
    /var/qmail): the first line without trailing spaces, tabs and LF, as
    qmail's control_readline() gives it.  None when neither can be read.
    """
    home = environ.get("QMAILHOME") or "/var/qmail"
    for name in ("localiphost", "me"):
        try:
            with open(home.rstrip("/") + "/control/" + name, "rb") as control:
                first = control.readline()
        except FileNotFoundError:
            continue
        except OSError:
            return None  # qmail-smtpd itself would stop with 421 here
        return first.rstrip(b"\n \t")
    return None


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
