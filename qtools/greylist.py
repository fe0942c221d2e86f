# SPDX-License-Identifier: ISC
"""greylist: defer a client network's first connection, pass its retries."""

import sys
import time

from qtools import core
from qtools.store import StoreError, Timers, admin, open_store

PROG = "greylist"
USAGE = (
    "greylist [ -nsfiT ] [ -m delay ] [ -w window ] [ -l lifetime ] [ -4 bits ] [ -6 bits ]"
    " [ -a allow.cdb ] [ -t timeout ] DIR prog... | -P DIR | -q DIR [ ip... ] | -A DIR ip..."
    " | -D DIR ip..."
)
OVERRIDE = "QTOOLS_GREYLIST"

# SMTP replies.
DEFER = "greylisted, try again in %d seconds (#4.7.1)"
FAILED = "temporary greylist failure, try again later (#4.3.0)"


class Config:
    """The options of one run, with their defaults."""

    def __init__(self):
        self.timers = Timers()
        self.v4 = 24
        self.v6 = 64
        self.learn = False
        self.selective = False
        self.fail_closed = False
        self.triplet = False
        self.allow = None
        self.timeout = 60


def key_of(packed, config):
    """Return the store key of a client address: its network."""
    return core.network(packed, config.v4, config.v6)


def key_of_argument(text, config):
    """Return the store key of an address or network given on the command line."""
    base, _, bits = text.partition("/")
    parsed = core.parse_ip(base)
    if parsed is None:
        raise core.Usage("invalid address: %s" % core.clean(text))
    packed = parsed[1]
    if not bits:
        return key_of(packed, config)
    if not bits.isdigit() or int(bits) > len(packed) * 8:
        raise core.Usage("invalid network: %s" % core.clean(text))
    return core.network_of(packed, int(bits))


def verdict_of(state, fields, config, now):
    """Turn a store State into a Verdict: defer while the key must wait."""
    fields = list(fields) + [("state", state.status)]
    if state.first is not None and state.status != "new":
        fields.append(("age", int(now - state.first)))
    if not state.defer:
        return core.Verdict("pass", why=fields)
    left = max(1, int(-(-state.left // 1)))
    if config.learn:
        return core.Verdict("pass", why=fields + [("learn", "defer"), ("left", left)])
    return core.Verdict("refuse", 451, DEFER % left, fields)


def failed(error, config):
    """Return the Verdict when our own state cannot be used: fail open or 451."""
    why = (("why", "failure"), ("error", str(error)))
    if config.fail_closed:
        return core.Verdict("refuse", 451, FAILED, why)
    return core.Verdict("pass", why=why)


def decide(client, environ, config, store, now, allowlist=None):
    """Return the Verdict for a connection from client at time now."""
    if client.relay:
        return core.Verdict("skip", why=(("why", "relayclient"),))
    if "WHITELISTED" in environ:
        return core.Verdict("skip", why=(("why", "whitelisted"),))
    wish = core.override(environ, OVERRIDE)
    if wish.action == "skip":
        return core.Verdict("skip", why=(("why", "override"),))
    if wish.action == "refuse":
        return core.from_override(wish)
    tags = core.marks(environ)
    if config.selective and not tags:
        return core.Verdict("skip", why=(("why", "unmarked"),))
    if isinstance(allowlist, Exception):
        return failed(allowlist, config)
    if allowlist is not None:
        from qtools import netlist

        found = netlist.lookup(allowlist, client.packed, client.host)
        if found is not None:
            return core.Verdict("skip", why=(("why", "allowlist"), ("entry", found[0].decode())))
    if config.triplet:
        return core.Verdict("pass", why=(("mode", "triplet"),))
    key = key_of(client.packed, config)
    try:
        state = store.check(key, now)
    except StoreError as error:
        return failed(error, config)
    fields = [("key", key)] + ([("marks", ",".join(tags))] if tags else [])
    return verdict_of(state, fields, config, now)


def parse(argv):
    """Return (config, command letter or None, rest of argv)."""
    options, rest = core.getopt(argv, "nsfiTm:w:l:4:6:a:t:PqAD")
    config, command = Config(), None
    timers = config.timers
    for letter, value in options:
        if letter in "PqAD":
            if command not in (None, letter):
                raise core.Usage()
            command = letter
        elif letter == "n":
            config.learn = True
        elif letter == "s":
            config.selective = True
        elif letter == "f":
            config.fail_closed = True
        elif letter == "i":
            config.v4, config.v6 = 32, 128
        elif letter == "T":
            config.triplet = True
        elif letter == "m":
            timers.delay = core.number(PROG, letter, value, 0)
        elif letter == "w":
            timers.window = core.number(PROG, letter, value, 1)
        elif letter == "l":
            timers.lifetime = core.number(PROG, letter, value, 1)
        elif letter == "4":
            config.v4 = core.number(PROG, letter, value, 0, 32)
        elif letter == "6":
            config.v6 = core.number(PROG, letter, value, 0, 128)
        elif letter == "a":
            config.allow = value
        elif letter == "t":
            config.timeout = core.number(PROG, letter, value, 0)
    if timers.delay >= timers.window:
        raise core.Usage("the delay (-m) must be shorter than the window (-w)")
    if not rest or (command is None and len(rest) < 2):
        raise core.Usage()
    return config, command, rest


def open_allowlist(path):
    """Return the opened allow-list cdb, None without one, or the error."""
    if path is None:
        return None
    from qtools.cdb import Reader

    try:
        return Reader(path)
    except OSError as error:
        return StoreError("unable to open %s: %s" % (path, core.strerror(error)))


@core.main_of(PROG, USAGE)
def main(argv, environ):
    """Greylist the connection, or run a command on the store."""
    config, command, rest = parse(argv)
    store = open_store(rest[0], config.timers)
    if command is not None:
        keys = [key_of_argument(text, config) for text in rest[1:]]
        try:
            code = admin(command, store, keys, time.time(), lambda line: print(line))
        except StoreError as error:
            raise core.Die(core.TEMP_EXIT, str(error))
        if code == core.USAGE_EXIT:
            raise core.Usage()
        sys.stdout.flush()
        return code
    client = core.client(environ)
    allowlist = open_allowlist(config.allow)
    verdict = decide(client, environ, config, store, time.time(), allowlist)
    why = dict(verdict.why)
    if why.get("why") == "failure":
        core.warn(PROG, why["error"])
    if config.triplet and verdict.action == "pass":
        from qtools import greytriplet

        return greytriplet.add(PROG, config, store, rest[1:], environ)
    return core.act(
        PROG, verdict, client.ip, rest[1:], environ,
        timeout=config.timeout, error_at_data_for_null_sender=True,
    )
