# SPDX-License-Identifier: ISC
"""throttle: limit what one client and its network may take, connections and mail."""

import posix
import time

from qtools import core

PROG = "throttle"
USAGE = (
    "throttle [ -f ] [ -c maxconnip ] [ -C maxconnnet ] [ -r connrate ] [ -m msgrate ]"
    " [ -R rcptrate ] [ -w window ] [ -4 bits ] [ -6 bits ] [ -a allow.cdb ] [ -t timeout ]"
    " store prog... | -q store ip..."
)
OVERRIDE = "QTOOLS_THROTTLE"

# SMTP replies.
TOO_MANY = "421 too many connections from your network, try again later (#4.3.2)"
MAILS = "451 too many messages from your network, try again later (#4.7.0)"
RCPTS = "451 too many recipients from your network, try again later (#4.7.0)"
FAILED = "temporary throttle failure, try again later (#4.3.0)"

# Variables (per client in tcp.smtp) and the options they override.
LIMITS = (("THROTTLE_MAXCONNIP", "c", "maxip"), ("THROTTLE_MAXCONNNET", "C", "maxnet"),
          ("THROTTLE_CONNRATE", "r", "connrate"), ("THROTTLE_MSGRATE", "m", "msgrate"),
          ("THROTTLE_RCPTRATE", "R", "rcptrate"), ("THROTTLE_WINDOW", "w", "window"))
HIGHEST = 4096  # connections per key the directory store can hold (throttlestore.SLOTS)


class Config:
    """The options of one run, with their defaults: every limit off."""

    def __init__(self):
        self.maxip = self.maxnet = self.connrate = self.msgrate = self.rcptrate = 0
        self.window = 60
        self.v4, self.v6 = 24, 64
        self.allow = None
        self.fail_closed = False
        self.timeout = 60


def amount(value):
    """Return a count for the log: whole numbers without a fraction, others to a tenth."""
    return int(value) if value == int(value) else round(value, 1)


def network_of(packed, config):
    return core.network(packed, config.v4, config.v6)


def failed(error, config):
    """Return the Verdict when our own state cannot be used: fail open or 451."""
    why = (("why", "failure"), ("error", str(error)))
    if config.fail_closed:
        return core.Verdict("refuse", 451, FAILED, why)
    return core.Verdict("pass", why=why)


def exemption(client, environ, config, allowlist=None):
    """Return the Verdict of a client the store is not asked about, else None."""
    verdict = core.step_aside(client, environ, OVERRIDE)
    if verdict is not None:
        return verdict
    if not (config.maxip or config.maxnet or config.connrate or config.msgrate
            or config.rcptrate):
        return core.Verdict("skip", why=(("why", "nolimits"),))
    if isinstance(allowlist, Exception):  # the allow list could not be opened
        return failed(allowlist, config)
    entry = None
    if allowlist is not None:
        from qtools.netlist import listed

        entry = listed(allowlist, client)
    return None if entry is None else core.Verdict("skip", why=(("why", "allowlist"),
                                                                ("entry", entry)))


def judge(client, config, store, now):
    """Take the client's connection slots and count it; return the Verdict."""
    from qtools.throttlestore import StoreError

    net = network_of(client.packed, config)
    try:
        got = store.admit(client.ip, net, config.maxip, config.maxnet, config.connrate,
                          config.window, now)
    except StoreError as error:
        return failed(error, config)
    fields = [("net", net)]
    if got.status == "ok":
        for name, value, limit in (("ipconn", got.ip, config.maxip),
                                   ("netconn", got.net, config.maxnet),
                                   ("connrate", amount(got.rate), config.connrate)):
            if limit:
                fields.append((name, value))
        return core.Verdict("pass", why=fields)
    why, limit, seen = {"ip": ("maxconnip", config.maxip, got.ip),
                        "net": ("maxconnnet", config.maxnet, got.net),
                        "rate": ("connrate", config.connrate, amount(got.rate))}[got.status]
    fields = [("why", why), ("limit", limit), ("seen", seen)] + fields
    if got.status == "rate":
        fields.append(("window", config.window))
    code, text = TOO_MANY.split(" ", 1)
    return core.Verdict("refuse", int(code), text, fields)


def decide(client, environ, config, store, now, allowlist=None):
    """Return the Verdict for a connection from client at time now."""
    verdict = exemption(client, environ, config, allowlist)
    return judge(client, config, store, now) if verdict is None else verdict


class Limits:
    """The proxy filter: count MAILs and RCPTs of the network, 451 over the limit."""

    def __init__(self, config, store, net, clock=time.time):
        self.config, self.store, self.net, self.clock = config, store, net, clock

    def command(self, session, verb, cmd):
        config = self.config
        # The trust mark may be set after throttle in the chain (rblcheck -a):
        # it is read at each command, as mfcheck's soft tests read it.
        if session.authenticated or core.trusted(session.environ):
            return None
        if verb == b"mail" and config.msgrate:
            return self.judge(session, "mail", config.msgrate, MAILS)
        if verb == b"rcpt" and config.rcptrate and session.mail_from is not None:
            return self.judge(session, "rcpt", config.rcptrate, RCPTS)
        return None

    def reply(self, session, verb, lines):
        return None

    def judge(self, session, kind, limit, refusal):
        """Count one more kind; return the refusal when the network is at its limit."""
        from qtools.throttlestore import StoreError

        try:
            seen = self.store.count(self.net, kind, limit, self.config.window, self.clock())
        except StoreError as error:
            core.warn(PROG, str(error))
            verdict = failed(error, self.config)
            if verdict.action == "pass":
                return None
            session.log(verdict.reply, verdict.why)
            return (verdict.reply + "\r\n").encode()
        if seen < limit:
            return None
        session.log(refusal, (("why", kind + "rate"), ("limit", limit), ("seen", amount(seen)),
                              ("net", self.net), ("window", self.config.window)))
        return (refusal + "\r\n").encode()


def parse(argv):
    """Return (config, query, rest of argv)."""
    options, rest = core.getopt(argv, "fqc:C:r:m:R:w:4:6:a:t:")
    config, query = Config(), False
    letters = {letter: name for _, letter, name in LIMITS}
    for letter, value in options:
        if letter == "f":
            config.fail_closed = True
        elif letter == "q":
            query = True
        elif letter == "a":
            config.allow = value
        elif letter in "46":
            setattr(config, "v" + letter, core.number(PROG, letter, value, 0,
                                                      32 if letter == "4" else 128))
        elif letter == "t":
            config.timeout = core.number(PROG, letter, value)
        else:
            setattr(config, letters[letter], core.number(
                PROG, letter, value, 1 if letter == "w" else 0,
                HIGHEST if letter in "cC" else None))
    if len(rest) < 2:  # a store and a program, or a store and an address
        raise core.Usage()
    return config, query, rest


def configure(config, environ):
    """Apply the variables set for this client over the options."""
    for name, _, attribute in LIMITS:
        value = environ.get(name, "")
        if value:
            high = HIGHEST if attribute in ("maxip", "maxnet") else None
            if not (value.isdigit() and value.isascii()) or (high and int(value) > high) or (
                    attribute == "window" and int(value) == 0):
                raise core.Die(core.USAGE_EXIT, "invalid $%s: %s" % (name, core.clean(value)))
            setattr(config, attribute, int(value))
    return config


def open_or_die(where):
    from qtools.throttlestore import StoreError, open_store

    try:
        return open_store(where)
    except StoreError as error:
        raise core.Die(core.USAGE_EXIT, str(error))


def show(config, store, texts, now, write):
    """Print a line of counts for each address of texts (throttle -q)."""
    for text in texts:
        parsed = core.parse_ip(text)
        if parsed is None:
            raise core.Usage("invalid address: %s" % core.clean(text))
        ip = core.format_ip(parsed[1])
        net = network_of(parsed[1], config)
        found = store.query(ip, net, config.window, now)
        write("%s net=%s ipconn=%d netconn=%d connrate=%.1f msgrate=%.1f rcptrate=%.1f"
              " window=%d" % (ip, net, len(found["ip"]), len(found["net"]), found["conn"],
                              found["mail"], found["rcpt"], config.window))


def refuse(verdict, ip):
    """Say the 421 and hang up: the next program never runs."""
    core.log(PROG, ip, verdict.reply, verdict.why)
    try:
        posix.write(1, (verdict.reply + "\r\n").encode())
    except OSError:
        pass
    return 0


@core.main_of(PROG, USAGE)
def main(argv, environ):
    """Throttle the connection, or show a client's counts."""
    config, query, rest = parse(argv)
    if query:
        from qtools.throttlestore import StoreError

        store = open_or_die(rest[0])
        try:
            show(config, store, rest[1:], time.time(), print)
        except StoreError as error:
            raise core.Die(core.TEMP_EXIT, str(error))
        return 0
    configure(config, environ)
    client = core.client(environ)
    allowlist = None
    if config.allow is not None:
        from qtools.greylist import open_allowlist

        allowlist = open_allowlist(config.allow)
    verdict = exemption(client, environ, config, allowlist)
    store = None
    if verdict is None:
        store = open_or_die(rest[0])
        verdict = judge(client, config, store, time.time())
    why = dict(verdict.why)
    if why.get("why") == "failure":
        core.warn(PROG, why["error"])
    if verdict.code == 421:
        return refuse(verdict, client.ip)
    if verdict.action == "pass" and "net" in why:
        from qtools.throttlestore import StoreError

        try:
            store.keep()
        except (OSError, StoreError) as error:  # the slots still last one lease
            core.warn(PROG, "unable to keep the slots: %s" % error)
        if config.msgrate or config.rcptrate:
            from qtools import proxy

            core.log(PROG, client.ip, verdict.action, verdict.why)
            return proxy.add_filter(PROG, Limits(config, store, why["net"]), rest[1:], environ)
        store.idle()
    return core.act(PROG, verdict, client.ip, rest[1:], environ, timeout=config.timeout)
