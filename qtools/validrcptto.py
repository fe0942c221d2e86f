# SPDX-License-Identifier: ISC
"""validrcptto: refuse recipients missing from a validrcptto.cdb, as the jms1 patch does."""

from qtools import core
from qtools.address import fold, is_postmaster, is_probe, split

PROG = "validrcptto"
USAGE = "validrcptto [ -s ] [ -t ] prog..."
OVERRIDE = "QTOOLS_VALIDRCPTTO"

# SMTP replies: the jms1 patch's texts, word for word.
NOT_LISTED = "sorry, this recipient is not in my validrcptto list (#5.7.1)"
TOO_MANY = "421 too many invalid addresses, goodbye (#4.3.0)"
NO_CONTROLS = "451 unable to read controls (#4.3.0)"

LIMIT = 10
# The record qtools-mkcdb -a writes in every cdb it builds: a key no
# address can be.  Only such a cdb, whose domain markers say which domains
# it speaks for, is read relaxed; any other (mkvalidrcptto, cdbmake) is
# read as the patch reads it.
MARKER = b"\0qtools-mkcdb -a"


def keys(address):
    """Yield the keys tried for a lowercased address: exact, the -default walk, @domain."""
    yield address
    local, domain = split(address)
    if not domain:
        return
    at = len(local)
    while True:
        at = local.rfind(b"-", 0, at)
        if at < 0:
            break
        yield local[: at + 1] + b"default@" + domain
    yield b"@" + domain


def decide(address, cdb, strict=False, trace=None):
    """Return the Verdict for one recipient address as qtools.address.read gives it.

    Unless strict (see strict_for), a domain with no key in the cdb
    (neither "@domain" nor the bare "domain" marker qtools-mkcdb writes)
    passes to qmail-smtpd's own rcpthosts rules; an address without a
    domain never passes unlisted, because qmail-smtpd accepts those for
    any client.  qtools-mkcdb -a -q answers with this function too.
    """
    if address is None:
        return core.Verdict("pass", why=(("why", "syntax"),))  # qmail-smtpd says 555
    address = fold(address)
    if is_probe(address) or not address:
        return core.Verdict("refuse", 553, NOT_LISTED, (("why", "probe" if address else "empty"),))
    if is_postmaster(address):
        return core.Verdict("pass", why=(("why", "postmaster"),))
    for key in keys(address):
        if trace is not None:
            trace(key)
        value = cdb.get(key)
        if value is not None:
            if value[:1] == b"-":
                # The text of a "-address text" line is the admin's note:
                # logged, never told to the client, as in the patch.
                note = (("note", bytes(value[1:])),) if value[1:] else ()
                return core.Verdict("refuse", 553, NOT_LISTED, (("why", "rejected"), ("key", key)) + note)
            return core.Verdict("pass", why=(("why", "found"), ("key", key)))
    domain = split(address)[1]
    if strict or not domain or cdb.get(domain) is not None:
        return core.Verdict("refuse", 553, NOT_LISTED, (("why", "notfound"),))
    return core.Verdict("pass", why=(("why", "unlisted"),))


def strict_for(cdb, strict=False):
    """Return True when cdb must be read as the patch reads it: -s, or not built by qtools-mkcdb."""
    return strict or cdb.get(MARKER) is None


def text(data):
    """Return bytes from the wire as text for the log."""
    return data.decode("latin-1") if isinstance(data, bytes) else str(data)


class Check:
    """The RCPT filter: answer invalid recipients, hang up after limit of them."""

    def __init__(self, cdb, strict=False, limit=LIMIT, level=0, refusal=None):
        self.cdb = cdb
        self.strict = strict
        self.limit = limit
        self.level = level
        self.refusal = refusal  # a fixed refusal: the override, or unreadable cdb
        self.bad = 0

    def reply(self, session, verb, lines):
        return None

    def command(self, session, verb, command):
        if verb != b"rcpt" or session.authenticated:
            return None  # after SMTP AUTH the patch stepped aside too
        address = command.path  # the address qmail-smtpd will act on
        shown = text(address if address is not None else command.arg)
        if self.refusal is not None:
            verdict = self.refusal
        elif command.literal:
            # user@[our IP] is user@localiphost to qmail-smtpd, and neither
            # control/localiphost nor control/me could be read: our failure.
            verdict = core.Verdict("refuse", 451, NO_CONTROLS[4:], (("why", "literal"),))
        else:
            trace = None
            if self.level >= 2:
                trace = lambda key: session.log("try", (("key", text(key)),))
            verdict = decide(address, self.cdb, self.strict, trace)
        why = tuple((k, text(v)) for k, v in verdict.why)
        if verdict.action == "pass":
            if self.level >= 1:
                session.log("pass", (("rcpt", shown),) + why)
            return None
        if verdict.code == 553:
            self.bad += 1
            if self.limit and self.bad >= self.limit:
                session.log(TOO_MANY, (("rcpt", shown), ("why", "limit"),
                                       ("count", self.bad)))
                return (TOO_MANY + "\r\n").encode()
        session.log(verdict.reply, (("rcpt", shown),) + why)
        return (verdict.reply + "\r\n").encode("ascii", "replace")


def number(environ, name, default):
    """Return $name as a whole number, default when unset or empty."""
    value = environ.get(name, "")
    if value == "":
        return default
    if not value.isdigit():
        raise core.Die(core.USAGE_EXIT, "invalid $%s: %s" % (name, core.clean(value)))
    return int(value)


@core.main_of(PROG, USAGE)
def main(argv, environ):
    """Check each RCPT against $VALIDRCPTTO_CDB, then hand the connection on."""
    options, rest = core.getopt(argv, "st")
    if not rest:
        raise core.Usage()
    letters = {letter for letter, _ in options}
    client = core.client(environ)
    limit = number(environ, "VALIDRCPTTO_LIMIT", LIMIT)
    level = number(environ, "VALIDRCPTTO_LOG", 0)
    path = environ.get("VALIDRCPTTO_CDB", "")
    wish = core.override(environ, OVERRIDE)
    skip = "relayclient" if client.relay else "override" if wish.action == "skip" else None
    if skip is None and not path and wish.action == "check":
        skip = "nocdb"
    if skip is not None:
        # a relay client is logged at every level: qtools-adaptive never blocks it
        if level >= 1 or skip == "relayclient":
            core.log(PROG, client.ip, "skip", (("why", skip),))
        return core.chain(PROG, rest, environ)
    check = Check(None, "s" in letters, limit, level)
    if wish.action == "refuse":
        check.refusal = core.from_override(wish)
    else:
        from qtools.cdb import Reader

        try:
            check.cdb = Reader(path)
            check.strict = strict_for(check.cdb, check.strict)
        except OSError as error:
            # Our own failure is never a 5xx: pass, or 451 with -t.
            core.warn(PROG, "unable to open %s: %s" % (path, core.strerror(error)))
            if "t" not in letters:
                return core.chain(PROG, rest, environ)
            check.refusal = core.Verdict("refuse", 451, NO_CONTROLS[4:], (("why", "failure"),))
    # The proxy is loaded here, not at the top: a client that skips the
    # check (RELAYCLIENT, the override) never pays for it.
    from qtools import proxy

    return proxy.add_filter(PROG, check, rest, environ)
