# SPDX-License-Identifier: ISC
"""qtools-adaptive: block the clients whose recent attempts were mostly bad, from the logs.

It reads the decision lines of the chain and of qtools-queue (from multilog
directories, where it stopped last time, or from standard input), counts
per client address and per IPv6 /64 the attempts of the last window and
the bad ones among them, and blocks a client with more than -c attempts of
which more than -p percent were bad, for -t, twice as long for each
earlier block (at most -m).  The blocks go to a qtools-mkcdb -n cdb that
rblcheck -D reads, with a reply naming the reason and the end.
"""

import sys
import time

from qtools import core
from qtools.attempts import PROGRAMS, Rules, Tracker, classify, decide, keys_of, quick
from qtools.logread import parse as parse_line, tai64n

PROG = "qtools-adaptive"
USAGE = (
    "qtools-adaptive [ -B ] [ -P ] [ -R ] [ -r ] [ -w window ] [ -c count ] [ -p percent ]"
    " [ -t bantime ] [ -m maxtime ] [ -a allow.cdb ] [ -q ip | -l | -u ip ]"
    " state cdb [ logdir ... ]"
)

# The reply rblcheck -D gives a blocked client (it cuts it to 200 characters).
BLOCKED = ("%s is blocked until %s: %d of its %d attempts in %s were invalid recipients,"
           " spam or viruses (#%d.7.1)")

BATCH = 2000  # keys counted before their sums are asked of Redis
PRUNE = 1 << 16  # lines between two sweeps of the idle windows
# Programs whose lines count only with a why= (trust) or with -r.
QUIET = frozenset(("rblcheck", "rhostcheck", "greylist", "tarpit", "throttle", "mfcheck"))
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(letter, text):
    """Return "90", "60m", "4h", "1d" or "2w" as seconds, or raise Usage."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in UNITS else (text, "s")
    if not (number.isdigit() and number.isascii()) or int(number) == 0:
        raise core.Usage("invalid value for -%s: %s" % (letter, text))
    return int(number) * UNITS[unit]


def spoken(seconds):
    """Return a length of time in the largest unit that divides it more than once: "60 minutes", "4 hours"."""
    for name, unit in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % unit == 0 and seconds > unit:
            count = seconds // unit
            return "%d %s%s" % (count, name, "s" * (count != 1))
    return "%d seconds" % seconds


def stamp(when):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def reply(key, block, rules, permanent=False):
    """Return the reply text of a block, as rblcheck -D will say it."""
    what = ("your network %s" if "/" in key else "your address %s") % key
    return BLOCKED % (what, stamp(block["until"]), block["bad"], block["attempts"],
                      spoken(rules.window), 5 if permanent else 4)


class Run:
    """One pass over new lines: counts, decisions, blocks."""

    def __init__(self, rules, state, allow=None, now=None):
        self.rules, self.state, self.allow = rules, state, allow
        self.now = now if now is not None else time.time()
        self.tracker = Tracker(rules, getattr(state, "windows", None) if not state.shared else None)
        self.pending = {} if state.shared else None
        self.latest = {}
        self.lines = 0
        self.keys = {}  # address text -> keys_of()

    def line(self, text):
        """Count one log line, if it is an attempt or says a client is trusted."""
        stamped = text[:1] == "@"
        if stamped:
            text, stamp_text = text[26:], text[:25]
        colon = text.find(": ")
        prog = text[:colon]
        if prog not in PROGRAMS:
            return
        if prog in QUIET and " why=" not in text and " trust=" not in text and not self.rules.refusals:
            return  # a pass or a deferral: nothing to count
        if '"' in text:  # a quoted field: the whole parse
            record = parse_line(text, self.now)
            if record is None:
                return
            ip, kind = record.ip, classify(record, self.rules)
        else:
            pid = text.find(" pid ", colon)
            verdict = text.find(": ", pid)
            if pid < 0 or verdict < 0:
                return
            ip, kind = text[colon + 2:pid], quick(prog, text[verdict + 2:], self.rules)
        if kind is not None:
            when = tai64n(stamp_text) if stamped else self.now
            if when is not None:
                self.event(ip, min(when, self.now), kind)
        self.lines += 1
        if self.lines % PRUNE == 0:
            self.tracker.prune(self.now)

    def event(self, ip, when, kind):
        found = self.keys.get(ip)
        if found is None:
            if len(self.keys) > PRUNE:
                self.keys.clear()
            found = self.keys[ip] = keys_of(ip, self.rules)
        packed, keys = found
        if packed is None:
            return
        if kind == "exempt":
            from qtools.adaptstore import EXEMPT_TIME

            for key in keys:
                if self.state.set_exempt(key, when + EXEMPT_TIME):
                    core.log(PROG, key, "lift", (("why", "trusted"),))
            return
        bad = kind == "bad"
        for key in keys:
            attempts, failed = self.tracker.add(key, when, bad)
            if self.pending is not None:
                buckets = self.pending.setdefault(key, {})
                counts = buckets.setdefault(int(when // self.rules.width), [0, 0])
                counts[0] += 1
                counts[1] += bad
                self.latest[key] = max(when, self.latest.get(key, 0))
            if decide(attempts, failed, self.rules):
                self.block(key, packed, when, attempts, failed)
        if self.pending is not None and len(self.pending) >= BATCH:
            self.sync()

    def allowed(self, key, packed):
        if self.allow is None:
            return False
        from qtools import netlist

        if "/" in key:  # a network: its first address stands for it
            packed = core.parse_ip(key.split("/")[0])[1]
        return netlist.lookup(self.allow, packed) is not None

    def block(self, key, packed, when, attempts, bad):
        if self.state.blocked(key, when) or self.state.is_exempt(key, when):
            return
        if self.allowed(key, packed):
            return
        made = self.state.block(key, when, attempts, bad, self.now)
        if made is not None:
            fields = (("until", stamp(made["until"])), ("attempts", attempts), ("bad", bad),
                      ("offence", made["offences"] + 1))
            core.log(PROG, key, "block", fields)

    def sync(self):
        """Redis: add this run's counts to every host's and block on the sums."""
        if not self.pending:
            self.state.commit({})
            return
        sums = self.state.commit(self.pending)
        self.pending = {}
        for key, (attempts, bad) in sums.items():
            if decide(attempts, bad, self.rules):
                packed, _ = keys_of(key.split("/")[0], self.rules)
                self.block(key, packed, self.latest[key], attempts, bad)
        self.latest = {}


def records(blocks, rules, permanent):
    """Return the qtools-mkcdb -n text of the blocks."""
    lines = ["%s %s\n" % (key, reply(key, block, rules, permanent))
             for key, block in sorted(blocks.items())]
    return "".join(lines).encode("ascii")


def write_cdb(path, text, writer="auto"):
    """Build path from -n text unless it already holds exactly those records; return True if written."""
    from qtools import cdb, mkcdb

    wanted = sorted(mkcdb.records("n", path, text, mkcdb.strict))
    try:
        with cdb.Reader(path) as reader:
            if sorted((bytes(k), bytes(v)) for k, v in reader.items()) == wanted:
                return False
    except OSError:
        pass
    mkcdb.build("n", path, text, path, None, writer)
    return True


def options_of(argv):
    """Return (rules, flag letters, command or None, allow cdb or None, state cdb [logdir...])."""
    options, rest = core.getopt(argv, "BPRrw:c:p:t:m:a:q:lu:")
    rules, flags, command = {}, set(), None
    times = {"w": "window", "t": "bantime", "m": "maxtime"}
    for letter, value in options:
        if letter in "qlu":
            if command is not None:
                raise core.Usage("only one of -q, -l, -u")
            command = (letter, value)
        elif letter in times:
            rules[times[letter]] = duration(letter, value)
        elif letter == "c":
            rules["count"] = core.number(PROG, letter, value)
        elif letter == "p":
            rules["percent"] = core.number(PROG, letter, value, 0, 99)
        elif letter == "a":
            flags.add(("a", value))
        else:
            flags.add(letter)
    rules["recipients"], rules["refusals"] = "R" in flags, "r" in flags
    if len(rest) < 2 or (command is not None and len(rest) != 2):
        raise core.Usage()
    allow = [value for flag, value in (f for f in flags if isinstance(f, tuple))]
    return Rules(**rules), flags, command, allow[0] if allow else None, rest


@core.main_of(PROG, USAGE)
def main(argv, environ):
    """Read the new log lines, block and lift, and write the block list."""
    from qtools import adaptrun
    from qtools.adaptstore import StateError, open_state

    rules, flags, command, allow_path, rest = options_of(argv)
    state = open_state(rest[0], rules)
    now = time.time()
    writer = environ.get("QTOOLS_CDB_WRITER") or "auto"
    try:
        if command is not None:
            return adaptrun.command(PROG, command, state, rules, rest[1], flags, now, writer)
        return adaptrun.follow(PROG, Run, state, rules, allow_path, flags, rest, now, writer)
    except StateError as error:
        raise core.Die(core.TEMP_EXIT, str(error))
    finally:
        state.close()
