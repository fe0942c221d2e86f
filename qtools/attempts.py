# SPDX-License-Identifier: ISC
"""What qtools-adaptive counts: attempts read from decision lines, in sliding windows.

An attempt is one message that reached qtools-queue, or one recipient that
validrcptto refused (and, with the recipients rule, one it accepted, as it
logs them at VALIDRCPTTO_LOG=1).  classify() reads a logread.Record;
Tracker keeps, per key (an address, or an IPv6 network), the attempts and
the bad ones in buckets of a sixtieth of the window, so its memory grows
with the clients seen in the last window, never with the lines read.
"""

import re
from collections import deque

# The why= of a line that says the client is trusted: it is never blocked;
# so is a line with a trust= (the trust mark, QTOOLS_TRUSTED, as rblcheck
# logs it when it sets it).
EXEMPT = frozenset(("relayclient", "whitelisted", "trusted", "trust", "allow", "allowlist",
                    "antilisted"))
GOOD_MESSAGE = frozenset(("deliver", "tag", "unscanned"))
BAD_MESSAGE = frozenset(("quarantine", "drop", "reject"))
# validrcptto's refusals that are not the client's fault: the admin's
# override and our own failure to read the cdb.
NOT_THE_CLIENT = frozenset(("override", "failure"))
# The programs whose lines can matter; the others are skipped unparsed.
PROGRAMS = frozenset(("qtools-queue", "validrcptto", "rblcheck", "rhostcheck", "greylist", "tarpit",
                      "throttle", "mfcheck"))


class Rules:
    """The thresholds and what counts, as the command line set them."""

    def __init__(self, window=3600, count=10, percent=50, bantime=4 * 3600,
                 maxtime=7 * 86400, recipients=False, refusals=False, v6_bits=64):
        self.window = window
        self.count = count
        self.percent = percent
        self.bantime = bantime
        self.maxtime = max(maxtime, bantime)
        self.recipients = recipients  # count validrcptto's pass lines
        self.refusals = refusals  # count rblcheck and rhostcheck refusals as bad
        self.v6_bits = v6_bits
        self.width = max(1, window // 60)  # seconds a bucket covers
        # one bucket more than the window holds: a line a whole window old
        # still counts, even when the window does not begin on a bucket
        self.buckets = -(-window // self.width) + 1


def classify(record, rules):
    """Return "good", "bad", "exempt" or None (not an attempt) for one Record."""
    fields = record.fields
    why = "trusted" if fields.get("trust") else fields.get("why")
    return kind_of(record.prog, record.verdict, record.code, why, bool(fields.get("virus")), rules)


_WHY = re.compile(r" why=([^ \n]*)(?= |\n|\Z)")


def quick(prog, tail, rules):
    """classify() read straight off tail, what follows "pid N: " in a line
    without a double quote (so every " key=" after the verdict is a field)."""
    whys = _WHY.findall(tail)
    space = tail.find(" ")
    verdict = (tail if space < 0 else tail[:space]).rstrip("\n")
    code = int(tail[:3]) if tail[:3].isdigit() and tail[3:4] in ("", " ", "\n") else None
    why = "trusted" if " trust=" in tail else whys[-1] if whys else None
    return kind_of(prog, verdict, code, why, " virus=" in tail, rules)


def kind_of(prog, verdict, code, why, virus, rules):
    """The rule behind classify() and quick(): what a line of prog says of its client."""
    if why in EXEMPT:
        return "exempt"
    if prog == "qtools-queue":
        if virus or verdict in BAD_MESSAGE:
            return "bad"
        return "good" if verdict in GOOD_MESSAGE else None
    if prog == "validrcptto":
        if code in (553, 421) and why not in NOT_THE_CLIENT:
            return "bad"
        if verdict == "pass" and rules.recipients and why != "syntax":
            return "good"
        return None
    if prog in ("rblcheck", "rhostcheck") and rules.refusals and code is not None:
        # our own block (a -D hit) is not counted again, nor is an override
        return "bad" if why not in ("deny", "override", "tempfail", "localfail") else None
    return None


def keys_of(ip, rules):
    """Return (packed address, [keys]) for a logged client address; keys are text.

    An IPv6 client counts for its address and for its network (/64).
    """
    from qtools.core import format_ip, network_of, parse_ip

    parsed = parse_ip(ip)
    if parsed is None:
        return None, []
    packed = parsed[1]
    if len(packed) == 4:
        return packed, [format_ip(packed)]
    return packed, [format_ip(packed), network_of(packed, rules.v6_bits)]


def decide(attempts, bad, rules):
    """Return True when the counts of a window call for a block: more than
    count attempts and more than percent of them bad."""
    return attempts > rules.count and bad * 100 > rules.percent * attempts


def ban_time(offences, rules):
    """Return the block's length after offences earlier blocks (fail2ban's
    bantime increment: 1, 2, 4, 8... times the first), at most maxtime."""
    return min(rules.bantime * (1 << min(offences, 20)), rules.maxtime)


class Tracker:
    """Sliding-window counts per key: [attempts, bad, deque of [bucket, attempts, bad]]."""

    def __init__(self, rules, windows=None):
        self.rules = rules
        self.windows = {}
        for key, (attempts, bad, buckets) in (windows or {}).items():
            self.windows[key] = [attempts, bad, deque(list(b) for b in buckets)]

    def add(self, key, when, bad):
        """Count one attempt of key at time when; return (attempts, bad) in its window.

        The window ends at the newest line of key: a line older than that
        (from another log directory read after) counts in its own bucket,
        or not at all once it is a whole window older.
        """
        index = int(when // self.rules.width)
        entry = self.windows.get(key)
        if entry is None:
            entry = self.windows[key] = [0, 0, deque()]
        buckets = entry[2]
        oldest = max(index, buckets[-1][0] if buckets else index) - self.rules.buckets
        if index <= oldest:
            return entry[0], entry[1]
        while buckets and buckets[0][0] <= oldest:
            gone = buckets.popleft()
            entry[0] -= gone[1]
            entry[1] -= gone[2]
        if not buckets or buckets[-1][0] < index:
            bucket = [index, 0, 0]
            buckets.append(bucket)
        else:
            at = len(buckets) - 1
            while buckets[at][0] > index and at > 0:
                at -= 1
            if buckets[at][0] == index:
                bucket = buckets[at]
            else:
                bucket = [index, 0, 0]
                buckets.insert(at + (buckets[at][0] < index), bucket)
        bucket[1] += 1
        entry[0] += 1
        if bad:
            bucket[2] += 1
            entry[1] += 1
        return entry[0], entry[1]

    def counts(self, key, now):
        """Return (attempts, bad) of key in the window ending at now."""
        entry = self.windows.get(key)
        if entry is None:
            return 0, 0
        oldest = int(now // self.rules.width) - self.rules.buckets
        live = [b for b in entry[2] if b[0] > oldest]
        return sum(b[1] for b in live), sum(b[2] for b in live)

    def prune(self, now):
        """Forget the keys with no attempt in the window ending at now."""
        oldest = int(now // self.rules.width) - self.rules.buckets
        for key in [k for k, e in self.windows.items() if not e[2] or e[2][-1][0] <= oldest]:
            del self.windows[key]

    def dump(self):
        """Return the windows as plain lists, for JSON."""
        return {key: [e[0], e[1], [list(b) for b in e[2]]] for key, e in self.windows.items()}
