# SPDX-License-Identifier: ISC
"""greylist: defer a client network's first connection, pass its retries."""

import time

from qtools import core

PROG = "greylist"
USAGE = (
    "greylist [ -nsfiT ] [ -m delay ] [ -w window ] [ -l lifetime ] [ -4 bits ] [ -6 bits ]"
    " [ -a allow.cdb ] [ -e address ] [ -c passes ] [ -t timeout ] dir prog..."
    " | -P dir | -q dir [ ip... ] | -A dir ip... | -D dir ip..."
)
OVERRIDE = "QTOOLS_GREYLIST"
STORE = "QTOOLS_GREYLIST_STORE"  # replaces dir for a connection: tcp.smtp picks the store
TRUST = PROG + ":passed"  # the trust mark of a network that passed -c times

# SMTP replies.
DEFER = "greylisted, try again in %d seconds (#4.7.1)"
FAILED = "temporary greylist failure, try again later (#4.3.0)"


class Config:
    """The options of one run, with their defaults."""

    def __init__(self):
        self.delay, self.window, self.lifetime = 300, 86400, 36 * 86400
        self.v4, self.v6 = 24, 64
        self.learn = self.selective = self.fail_closed = self.triplet = False
        self.allow = None
        self.timeout = 60
        self.exempt = core.EXEMPT.split()  # recipients -T never defers
        self.trust = 0  # passes after which a network is trusted (-c); 0: never

    @property
    def timers(self):
        """The timers as the stores take them."""
        from qtools.store import Timers

        return Timers(self.delay, self.window, self.lifetime)


def key_of(packed, config):
    """Return the store key of a client address: its network."""
    return core.network(packed, config.v4, config.v6)


def key_of_argument(text, config):
    """Return the store key of an address or network given on the command line."""
    base, _, bits = text.partition("/")
    parsed = core.parse_ip(base)
    if parsed is None or (bits and (not bits.isdigit() or int(bits) > len(parsed[1]) * 8)):
        raise core.Usage("invalid address: %s" % core.clean(text))
    return core.network_of(parsed[1], int(bits)) if bits else key_of(parsed[1], config)


def verdict_of(state, fields, config, now):
    """Turn a store State into a Verdict: defer while the key must wait."""
    fields = list(fields) + [("state", state.status)]
    if state.first is not None and state.status != "new":
        fields.append(("age", int(now - state.first)))
    if not state.defer:
        return core.Verdict("pass", why=fields + trusting(state, config))
    left = max(1, int(-(-state.left // 1)))
    if config.learn:
        return core.Verdict("pass", why=fields + [("learn", "defer"), ("left", left)])
    return core.Verdict("refuse", 451, DEFER % left, fields)


def trusting(state, config):
    """Return the log fields of a passing State under -c: its passes, and the trust it earned."""
    if not config.trust:
        return []
    fields = [("passes", state.passes)]
    return fields + [("trust", TRUST)] if state.passes >= config.trust else fields


def failed(error, config):
    """Return the Verdict when our own state cannot be used: fail open or 451."""
    why = (("why", "failure"), ("error", str(error)))
    if config.fail_closed:
        return core.Verdict("refuse", 451, FAILED, why)
    return core.Verdict("pass", why=why)


def decide(client, environ, config, store, now, allowlist=None):
    """Return the Verdict for a connection from client at time now.

    In triplet mode a network that has not passed gets the action "proxy":
    its recipients are judged one by one by the Triplets filter.
    """
    verdict = exemption(client, environ, config, allowlist)
    return judge(client, environ, config, store, now) if verdict is None else verdict


def exemption(client, environ, config, allowlist=None):
    """Return the Verdict of a client the store is not asked about, else None."""
    verdict = core.exempt_client(client, environ)  # RELAYCLIENT, WHITELISTED, the trust mark
    if verdict is not None:
        return verdict
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
    return None


def judge(client, environ, config, store, now):
    """Return the Verdict of the store on the client's network."""
    from qtools.store import StoreError

    key = key_of(client.packed, config)
    try:
        if not config.triplet:
            state = store.check(key, now, config.trust)
        else:
            state = store.passed(key, now, config.trust)
            if state is None:
                return core.Verdict("proxy", why=(("key", key),))
            why = [("key", key), ("state", "known")] + trusting(state, config)
            return core.Verdict("pass", why=why)
    except StoreError as error:
        return failed(error, config)
    tags = core.marks(environ)
    fields = [("key", key)] + ([("marks", ",".join(tags))] if tags else [])
    return verdict_of(state, fields, config, now)


def sender_of(address):
    """Return the envelope sender as a triplet key uses it.

    Lowercase, with what changes from message to message taken out: a BATV
    tag (prvs=TAG=user), the hash and time stamp of an SRS address, a +ext,
    and digits (VERP and ezmlm bounce numbers become "#"), so a list's next
    message finds the same triplet.
    """
    from qtools.address import fold, split

    local, domain = split(fold(address))
    for prefix in (b"prvs=", b"msprvs1="):
        if local.startswith(prefix) and b"=" in local[len(prefix) :]:
            local = local[len(prefix) :].split(b"=", 1)[1]
    if local[:5] in (b"srs0=", b"srs1=") and local.count(b"=") >= 4:
        local = b"srs=" + b"=".join(local.rsplit(b"=", 2)[1:])
    if b"+" in local[1:]:
        local = local[: local.index(b"+", 1)]
    out = bytearray()
    for byte in local:
        if not (0x30 <= byte <= 0x39):
            out.append(byte)
        elif out[-1:] != b"#":
            out += b"#"
    return bytes(out) + (b"@" + domain if domain else b"")


def triplet_key(network, sender, rcpt):
    """Return the store key of (network, sender, recipient)."""
    from qtools.address import fold

    text = b"%s %s" % (sender_of(sender), fold(rcpt))
    return "%s %s" % (network, text.decode("utf-8", "surrogateescape"))


class Triplets:
    """The proxy filter: defer each recipient of an unproven triplet.

    A bounce (MAIL FROM:<>) is judged at DATA, for all its recipients at
    once, so that address verification callouts are not deferred.
    """

    def __init__(self, config, store, network, clock=time.time):
        self.config, self.store, self.network, self.clock = config, store, network, clock

    def command(self, session, verb, command):
        sender = session.mail_from
        if verb == b"rcpt" and sender:
            rcpt = command.path  # as qmail-smtpd reads it
            return None if rcpt is None else self.judge(session, sender, [rcpt])
        if verb == b"data" and sender == b"" and session.rcpts:
            return self.judge(session, sender, session.rcpts)
        return None

    def reply(self, session, verb, lines):
        return None

    def judge(self, session, sender, rcpts):
        """Check each triplet; return the deferral reply if one must wait."""
        from qtools.store import StoreError

        now = self.clock()
        refusal, longest = None, -1
        for rcpt in rcpts:
            shown = rcpt.decode("latin-1")
            entry = core.exempt_entry(shown, self.config.exempt)
            if entry is not None:  # postmaster@ (RFC 5321 section 4.5.1) is never deferred
                session.log("pass", (("rcpt", shown), ("why", "exempt"), ("entry", entry)))
                continue
            key = triplet_key(self.network, sender, rcpt)
            try:
                state = self.store.check(key, now)
                verdict = verdict_of(state, [("key", key)], self.config, now)
                if state.status == "pass":
                    # One proven triplet shows the network retries like an
                    # MTA: its other senders (pools, VERP) pass from now on.
                    self.store.allow(self.network, now)
                    if self.config.trust:  # and it counts as a pass of the network
                        self.store.passed(self.network, now, self.config.trust)
            except StoreError as error:
                core.warn(PROG, str(error))
                state, verdict = None, failed(error, self.config)
            refused = verdict.action == "refuse"
            session.log(verdict.reply if refused else verdict.action, verdict.why)
            left = state.left if state is not None else 0
            if refused and left > longest:
                refusal, longest = verdict, left
        return None if refusal is None else (refusal.reply + "\r\n").encode("ascii", "replace")


def parse(argv, environ=None):
    """Return (config, command letter or None, rest of argv)."""
    options, rest = core.getopt(argv, "nsfiTm:w:l:4:6:a:e:c:t:PqAD")
    config, command, exempts = Config(), None, []
    flags = {"n": "learn", "s": "selective", "f": "fail_closed", "T": "triplet"}
    numbers = {"m": ("delay", 0, None), "w": ("window", 1, None), "l": ("lifetime", 1, None),
               "4": ("v4", 0, 32), "6": ("v6", 0, 128), "t": ("timeout", 0, None),
               "c": ("trust", 0, 1000)}
    for letter, value in options:
        if letter in "PqAD":
            if command not in (None, letter):
                raise core.Usage()
            command = letter
        elif letter in flags:
            setattr(config, flags[letter], True)
        elif letter in numbers:
            name, low, high = numbers[letter]
            setattr(config, name, core.number(PROG, letter, value, low, high))
        elif letter == "i":
            config.v4, config.v6 = 32, 128
        elif letter == "e":
            exempts.append(value)
        else:
            config.allow = value
    config.exempt = core.exemptions(exempts, environ or {})
    if config.delay >= config.window:
        raise core.Usage("the delay (-m) must be shorter than the window (-w)")
    if not rest or (command is None and len(rest) < 2):
        raise core.Usage()
    return config, command, rest


def open_allowlist(path):
    """Return the opened allow-list cdb, None without one, or the error."""
    if path is None:
        return None
    from qtools.cdb import Reader
    from qtools.store import StoreError

    try:
        return Reader(path)
    except OSError as error:
        return StoreError("unable to open %s: %s" % (path, core.strerror(error)))


def open_or_die(where, config):
    """Return the store at where; an unknown kind of store is a usage error."""
    from qtools.store import StoreError, open_store

    try:
        return open_store(where, config.timers)
    except StoreError as error:
        raise core.Die(core.USAGE_EXIT, str(error))


@core.main_of(PROG, USAGE)
def main(argv, environ):
    """Greylist the connection, or run a command on the store."""
    config, command, rest = parse(argv, environ)
    if command is not None:
        from qtools.store import StoreError, admin

        store = open_or_die(rest[0], config)
        keys = [key_of_argument(text, config) for text in rest[1:]]
        try:
            code = admin(command, store, keys, time.time(), print)
        except StoreError as error:
            raise core.Die(core.TEMP_EXIT, str(error))
        finally:
            store.close()
        if code == core.USAGE_EXIT:
            raise core.Usage()
        return code
    client = core.client(environ)
    # a client the store is not asked about does not load the store's code
    verdict = exemption(client, environ, config, open_allowlist(config.allow))
    if verdict is None:
        store = open_or_die(environ.get(STORE) or rest[0], config)
        verdict = judge(client, environ, config, store, time.time())
        if verdict.action != "proxy":
            store.close()  # no server connection held through the rest of the session
    why = dict(verdict.why)
    if why.get("why") == "failure":
        core.warn(PROG, why["error"])
    if verdict.action == "pass" and "trust" in why:
        core.trust(environ, why["trust"])  # postgrey's auto-allowlist: later checks step aside
    if verdict.action == "proxy":
        from qtools import proxy

        filter = Triplets(config, store, why["key"])
        return proxy.add_filter(PROG, filter, rest[1:], environ)
    return core.act(
        PROG, verdict, client.ip, rest[1:], environ,
        timeout=config.timeout, error_at_data_for_null_sender=True,
    )
