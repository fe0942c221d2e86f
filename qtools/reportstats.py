# SPDX-License-Identifier: ISC
"""qtools-report's counting: what the decision lines say, added up.

Stats.feed() takes log lines (multilog-stamped or plain) and counts, by
program and hour: connections, accepted messages, refusals by program and
reason, greylist deferrals and the delays of the retries that passed,
tarpit delays, the content filter's actions, scores and viruses.  Any
program's refusal (a verdict starting with a 4xx/5xx code) is counted by
program and reason (list=, else why=, else the reply's first word), so a
new program appears without a change here.  as_dict() is the --json
output and what the text and HTML renderings read.
"""

import collections

from qtools import core, logread

EPOCH = logread.TAI64_EPOCH
QUEUE = "qtools-queue"
ACCEPTED = ("deliver", "tag", "quarantine", "drop", "unscanned")  # 250 to the client
DELIVERED = ("deliver", "tag", "unscanned")
# Greylist retry delays (seconds) as the charts and tables group them.
DELAY_BINS = ((60, "< 1 min"), (300, "1-5 min"), (600, "5-10 min"), (1800, "10-30 min"),
              (3600, "30-60 min"), (4 * 3600, "1-4 h"), (86400, "4-24 h"), (None, ">= 1 day"))


def stamp_of(unix):
    """Return the TAI64N label of a Unix time, as multilog writes it: comparable as text."""
    seconds = int(unix // 1)
    return "@%016x%08x" % (seconds + EPOCH, int(round((unix - seconds) * 1e9)) % 1000000000)


def reason_of(code, verdict, fields):
    """Return why a refusal was made: its list, else its why, else its reply's first word."""
    reason = fields.get("list") or fields.get("why")
    if reason:
        return reason
    word = verdict[4:].split(" ", 1)[0].strip(",.:;()").lower()
    return word or str(code)


class Stats:
    """Counters over the lines fed in, optionally limited to [start, end) Unix times."""

    def __init__(self, start=None, end=None):
        self.start, self.end = start, end
        self.lines = self.decisions = 0
        self.first = self.last = None
        self.tcp_connections = 0  # tcpserver's "ok" lines, when its -v is on
        self.guessed_connections = 0  # (ip, pid) pairs, when tcpserver says nothing
        self.hours = {}  # hour (Unix) -> [tcp connections, guessed, accepted, Counter(prog)]
        self.actions = collections.Counter()  # (prog, verdict) of the lines that refuse nothing
        self.whys = collections.Counter()  # (prog, verdict, why) of the same
        self.refusals = collections.Counter()  # (prog, code, reason)
        self.dryruns = collections.Counter()  # (prog, reason) of rblcheck -n's would-be refusals
        self.networks = collections.Counter()  # client network of each refusal
        self.recipients = collections.Counter()  # rcpt= of each refusal
        self.deferred = set()  # greylist keys deferred
        self.passed = {}  # greylist key -> seconds it waited before its first pass
        self.deferrals = 0
        self.tarpit_seconds = 0
        self.queue = collections.Counter()  # qtools-queue action
        self.spam = collections.Counter()  # spam= result
        self.scores = collections.Counter()  # whole points of score= (floor)
        self.required = collections.Counter()
        self.viruses = collections.Counter()
        self.queue_bytes = self.queue_rcpts = 0
        self.problems = collections.Counter()  # (prog, warning|fatal, text)
        self._open = {}  # pid -> ip of the connection being guessed
        self._ips = {}  # ip -> network

    # --- reading ------------------------------------------------------------

    def feed(self, lines):
        """Count each line of an iterable of text lines."""
        low = stamp_of(self.start) if self.start is not None else None
        high = stamp_of(self.end) if self.end is not None else None
        head = logread._HEAD.match
        split = logread.split_fields
        hours = self.hours
        actions = self.actions
        opened = self._open
        last_label, hour, when = None, None, None
        bucket = None
        count = decisions = 0
        first = last = None
        for line in lines:
            count += 1
            if line[:1] == "@":
                stamp = line[:25]
                if (low is not None and stamp < low) or (high is not None and stamp >= high):
                    continue
                label = line[1:17]
                if label != last_label:
                    try:
                        when = int(label, 16) - EPOCH
                    except ValueError:
                        continue
                    last_label = label
                    if first is None or when < first:
                        first = when
                    if last is None or when > last:
                        last = when
                    if hour != when - when % 3600:
                        hour = when - when % 3600
                        bucket = hours.get(hour)
                        if bucket is None:
                            bucket = hours[hour] = [0, 0, 0, collections.Counter()]
                line = line[26:]
            elif bucket is None or hour is not None:
                hour, last_label = None, None
                bucket = hours.get(None)
                if bucket is None:
                    bucket = hours[None] = [0, 0, 0, collections.Counter()]
            match = head(line)
            if match is None:
                self._other(line, bucket)
                continue
            decisions += 1
            prog, ip, pid, rest = match.groups()
            if opened.get(pid) != ip and prog != QUEUE:  # the queue is a child of qmail-smtpd
                opened[pid] = ip
                self.guessed_connections += 1
                bucket[1] += 1
            verdict, fields = split(rest.rstrip("\n"))
            first_char = verdict[:1]
            if "1" <= first_char <= "5" and verdict[3:4] in (" ", "") and verdict[:3].isdigit():
                self._refusal(prog, ip, int(verdict[:3]), verdict, fields, bucket)
                continue
            if prog == QUEUE:
                self._queue(ip, verdict, fields, bucket)
            elif verdict == "end":
                opened.pop(pid, None)
            elif verdict == "dryrun":
                reply = fields.get("reply", "")
                self.dryruns[prog, reason_of(reply[:3], reply, fields)] += 1
            elif prog == "greylist" and fields.get("state") == "pass":
                self._passed(fields)
            elif verdict == "delay":
                self.tarpit_seconds += int(fields.get("seconds", "0") or 0)
            actions[prog, verdict] += 1
            why = fields.get("why")
            if why:
                self.whys[prog, verdict, why] += 1
        self.lines += count
        self.decisions += decisions
        if first is not None:
            self.first = first if self.first is None else min(self.first, first)
            self.last = last if self.last is None else max(self.last, last)

    def _other(self, line, bucket):
        """Count what tcpserver says about connections, and the warnings."""
        if line.startswith("tcpserver: ok "):
            self.tcp_connections += 1
            bucket[0] += 1
        elif line.startswith("tcpserver: deny "):
            self.tcp_connections += 1
            bucket[0] += 1
            self.refusals["tcpserver", 0, "deny"] += 1
            bucket[3]["tcpserver"] += 1
        elif line.startswith("tcpserver: end "):
            self._open.pop(line.split(" ", 3)[2], None)
        else:
            prog, _, rest = line.partition(": ")
            kind, _, text = rest.partition(": ")
            if kind in ("warning", "fatal") and prog and " " not in prog:
                self.problems[prog, kind, text.rstrip("\n")[:120]] += 1

    def _refusal(self, prog, ip, code, verdict, fields, bucket):
        reason = reason_of(code, verdict, fields)
        self.refusals[prog, code, reason] += 1
        bucket[3][prog] += 1
        network = self._ips.get(ip)
        if network is None:
            parsed = core.parse_ip(ip)
            network = core.network(parsed[1]) if parsed else ""  # "-": no client address
            if len(self._ips) < 1000000:
                self._ips[ip] = network
        if network:
            self.networks[network] += 1
        rcpt = fields.get("rcpt")
        if rcpt:
            self.recipients[rcpt.lower()] += 1
        if prog == "greylist" and "key" in fields and code == 451 and reason == "greylisted":
            self.deferrals += 1
            self.deferred.add(fields["key"])

    def _passed(self, fields):
        key = fields.get("key")
        if key is not None and key not in self.passed:
            age = fields.get("age", "")
            self.passed[key] = int(age) if age.isdigit() else None

    def _queue(self, ip, action, fields, bucket):
        self.queue[action] += 1
        if action in ACCEPTED:
            bucket[2] += 1
        if action in ("reject", "tempfail"):
            code = 554 if action == "reject" else 451
            virus = fields.get("virus")
            reason = "virus" if virus else fields.get("why") or ("spam" if action == "reject" else action)
            self._refusal(QUEUE, ip, code, "%d %s" % (code, action), {"why": reason}, bucket)
        spam = fields.get("spam")
        if spam:
            self.spam[spam] += 1
        score = _number(fields.get("score"))
        if score is not None and action != "release":
            self.scores[int(score // 1)] += 1
        required = _number(fields.get("required"))
        if required is not None:
            self.required[required] += 1
        virus = fields.get("virus")
        if virus:
            self.viruses[virus] += 1
        size = fields.get("size", "")
        if size.isdigit() and action != "release":
            self.queue_bytes += int(size)
        rcpts = fields.get("rcpts", "")
        if rcpts.isdigit() and action in ACCEPTED:
            self.queue_rcpts += int(rcpts)

    # --- results ------------------------------------------------------------

    @property
    def connections(self):
        return self.tcp_connections if self.tcp_connections else self.guessed_connections

    def greylist(self):
        """Return the greylist's deferrals, retries that passed and their delays."""
        later = [key for key in self.deferred if key in self.passed]
        delays = sorted(self.passed[key] for key in self.passed if self.passed[key] is not None)
        bins = collections.OrderedDict((label, 0) for _, label in DELAY_BINS)
        for delay in delays:
            for limit, label in DELAY_BINS:
                if limit is None or delay < limit:
                    bins[label] += 1
                    break
        return {
            "deferrals": self.deferrals,
            "deferred": len(self.deferred),
            "passed_later": len(later),
            "passed": len(self.passed),
            "pass_rate": round(100.0 * len(later) / len(self.deferred), 1) if self.deferred else None,
            "median_delay": delays[len(delays) // 2] if delays else None,
            "delays": bins,
        }

    def as_dict(self, top=10, thresholds=None):
        """Return everything counted as plain values (the --json output)."""
        tcp = bool(self.tcp_connections)
        hours = []
        for hour in sorted((h for h in self.hours if h is not None)):
            bucket = self.hours[hour]
            hours.append({"hour": hour, "connections": bucket[0] if tcp else bucket[1],
                          "accepted": bucket[2], "refused": dict(bucket[3])})
        refusals = [{"prog": prog, "code": code, "reason": reason, "count": count}
                    for (prog, code, reason), count in _ordered(self.refusals)]
        by_prog = collections.Counter()
        for (prog, _, _), count in self.refusals.items():
            by_prog[prog] += count
        required = self.required.most_common(1)[0][0] if self.required else None
        marks = {}
        for (prog, verdict, why), count in _ordered(self.whys):
            if verdict == "mark":
                marks["%s:%s" % (prog, why)] = count
        return {
            "start": self.start, "end": self.end, "first": self.first, "last": self.last,
            "lines": self.lines, "decisions": self.decisions,
            "connections": self.connections,
            "connections_from": "tcpserver" if tcp else "decision lines",
            "accepted": sum(self.queue[action] for action in ACCEPTED),
            "delivered": sum(self.queue[action] for action in DELIVERED),
            "refused": sum(self.refusals.values()),
            "refused_by_prog": dict(_ordered(by_prog)),
            "refusals": refusals,
            "dryruns": [{"prog": p, "reason": r, "count": n} for (p, r), n in _ordered(self.dryruns)],
            "marks": marks,
            "actions": [{"prog": p, "verdict": v, "count": n} for (p, v), n in _ordered(self.actions)],
            "hours": hours,
            "top_networks": _ordered(self.networks)[:top],
            "top_recipients": _ordered(self.recipients)[:top],
            "greylist": self.greylist(),
            "tarpit": {"delays": self.actions["tarpit", "delay"], "seconds": self.tarpit_seconds},
            "queue": {
                "actions": dict(_ordered(self.queue)), "spam": dict(_ordered(self.spam)),
                "scores": {str(k): v for k, v in sorted(self.scores.items())},
                "required": required, "thresholds": _thresholds(required, thresholds),
                "viruses": dict(_ordered(self.viruses)),
                "bytes": self.queue_bytes, "recipients": self.queue_rcpts,
            },
            "problems": [{"prog": p, "kind": k, "text": t, "count": n}
                         for (p, k, t), n in _ordered(self.problems)[:top]],
        }


def _thresholds(required, given):
    """Return the tag, quarantine and reject scores: given ones first, tag from required= else."""
    given = dict(given or {})
    result = {"tag": given.get("tag", required)}
    for name in ("quarantine", "reject"):
        result[name] = given.get(name)
    return result


def _number(text):
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) < 1e6 else None


def _ordered(counter):
    """Return a Counter's items, most first, then by key, so that output is stable."""
    return sorted(counter.items(), key=lambda item: (-item[1], str(item[0])))
