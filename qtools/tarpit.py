# SPDX-License-Identifier: ISC
"""tarpit: slow down senders of many recipients, refuse clients that talk first."""

import posix
import time

from qtools import core

PROG = "tarpit"
USAGE = "tarpit [ -gk ] [ -c count ] [ -t delay ] [ -m max ] [ -d greetdelay ] prog..."
OVERRIDE = "QTOOLS_TARPIT"

# SMTP replies.
EARLY = "554 SMTP protocol violation (#5.5.1)"

DELAY = 5  # the patch's control/tarpitdelay default
MAX_DELAY = 120  # growing delays stop here, well inside a client's 5-minute RCPT timeout
# No delay is longer than an hour: no client waits that long for a reply
# (RFC 5321 gives it 5 minutes), and a wait stays a number poll() takes.
LONGEST = 3600
MARK = "tarpit:pregreet"


class Config:
    """The options and variables of one run, with their defaults."""

    def __init__(self):
        self.count = 0
        self.delay = DELAY
        self.grow = False
        self.max = MAX_DELAY
        self.greet = 0
        self.mark = False


def decide(accepted, config):
    """Return the Verdict for the reply to the accepted-th accepted RCPT of a transaction.

    As in Chris Johnson's patch: the count-th and every later accepted
    recipient wait delay seconds before their 250; with grow, each one
    waits delay seconds more than the one before, up to max.
    """
    if not config.count or accepted < config.count:
        return core.Verdict("pass")
    seconds = config.delay
    if config.grow:
        seconds = min(config.max, config.delay * (accepted - config.count + 1))
    return core.Verdict("delay", why=(("rcpt", accepted), ("seconds", seconds)))


def decide_greeting(talked, config):
    """Return the Verdict for a client that did or did not talk before the greeting."""
    if not talked:
        return core.Verdict("pass")
    if config.mark:
        return core.Verdict("mark", why=(("why", "pregreet"),))
    return core.Verdict("refuse", 554, EARLY[4:], (("why", "pregreet"),))


def talks_first(fd, seconds, clock=time.monotonic):
    """Wait up to seconds for the client to send (or close); read nothing."""
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = clock() + seconds
    while True:
        left = deadline - clock()
        if left <= 0:
            return False
        if poller.poll(left * 1000):
            return True


def _refuse_early(verdict, ip):
    """Log what the early talker said, tell it 554 and close."""
    import select

    said = b""
    try:
        said = posix.read(0, 512)
    except OSError:
        pass
    core.log(PROG, ip, verdict.reply, verdict.why
             + (("text", said.decode("latin-1")),))
    try:
        posix.write(1, (verdict.reply + "\r\n").encode())
    except OSError:
        return 0
    # Read a little more before closing, so the reply is not lost to a reset.
    poller = select.poll()
    poller.register(0, select.POLLIN)
    for _ in range(8):
        if not poller.poll(250):
            break
        try:
            if not posix.read(0, 4096):
                break
        except OSError:
            break
    return 0


class Tarpit:
    """The proxy filter: hold the 250 of the count-th and later accepted RCPTs."""

    def __init__(self, config):
        self.config = config
        self.accepted = 0

    def command(self, session, verb, command):
        return None

    def reply(self, session, verb, lines):
        if session.authenticated:
            return None
        ok = lines[0][:1] == b"2"
        if verb == b"mail" and ok:
            self.accepted = 0  # the patch resets its count at every MAIL
        elif verb == b"rcpt" and ok:
            self.accepted += 1
            verdict = decide(self.accepted, self.config)
            if verdict.action == "delay":
                session.hold(dict(verdict.why)["seconds"])
                session.log("delay", verdict.why)
        return None


def parse(argv, environ):
    """Return (config, rest of argv); variables set per client override the options."""
    options, rest = core.getopt(argv, "gkc:t:m:d:")
    if not rest:
        raise core.Usage()
    config = Config()
    for letter, value in options:
        if letter == "g":
            config.grow = True
        elif letter == "k":
            config.mark = True
        elif letter == "c":
            config.count = core.number(PROG, letter, value)
        elif letter == "t":
            config.delay = core.number(PROG, letter, value)
        elif letter == "m":
            config.max = core.number(PROG, letter, value)
        elif letter == "d":
            config.greet = core.number(PROG, letter, value)
    for name, attribute in (("TARPITCOUNT", "count"), ("TARPITDELAY", "delay"),
                            ("TARPIT_MAX", "max"), ("GREETDELAY", "greet")):
        value = environ.get(name, "")
        if value:
            if not value.isdigit():
                raise core.Die(core.USAGE_EXIT, "invalid $%s: %s" % (name, core.clean(value)))
            setattr(config, attribute, int(value))
    for name, attribute in (("TARPIT_GROW", "grow"), ("TARPIT_MARK", "mark")):
        setattr(config, attribute, core.flag(environ, name, getattr(config, attribute)))
    for attribute in ("delay", "max", "greet"):
        setattr(config, attribute, min(getattr(config, attribute), LONGEST))
    return config, rest


@core.main_of(PROG, USAGE)
def main(argv, environ):
    """Watch for an early talker, then tarpit RCPTs through the proxy."""
    config, rest = parse(argv, environ)
    client = core.client(environ)
    wish = core.override(environ, OVERRIDE)
    if client.relay or core.trusted(environ) or wish.action == "skip":
        return core.chain(PROG, rest, environ)
    if wish.action == "refuse":
        return core.act(PROG, core.from_override(wish), client.ip, rest, environ)
    if config.greet:
        verdict = decide_greeting(talks_first(0, config.greet), config)
        if verdict.action == "refuse":
            return _refuse_early(verdict, client.ip)
        if verdict.action == "mark":
            core.mark(environ, MARK)
            core.log(PROG, client.ip, "mark", verdict.why)
    if not config.count:
        return core.chain(PROG, rest, environ)
    from qtools import proxy

    return proxy.add_filter(PROG, Tarpit(config), rest, environ)
