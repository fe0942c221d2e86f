# SPDX-License-Identifier: ISC
"""Write a day of made-up but lifelike smtpd log lines, as multilog stores them.

    python bench/samplelog.py [ -n connections ] [ -d day ] [ -s seed ] > current

Every line is what the programs write (qtools.core.log_line) behind a
TAI64N stamp: tcpserver's ok/end lines, rhostcheck, rblcheck, greylist,
mfcheck, throttle, validrcptto, tarpit, the proxy's end line and
qtools-queue's per-message line.  For make demo-report and bench_report.
"""

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qtools import core, logread  # noqa: E402

LISTS = (("zen.spamhaus.org", 0.24), ("bl.spamcop.net", 0.05), ("b.barracudacentral.org", 0.03))
VIRUSES = ("Win.Trojan.Agent-1234", "Eicar-Signature", "Doc.Dropper.Emotet-42")
USERS = ("joe", "ann", "sales", "info", "postmaster", "bob")
TESTS = "BAYES_99,HTML_MESSAGE,RCVD_IN_SBL,URIBL_BLACK,DKIM_INVALID"


class Writer:
    def __init__(self, out):
        self.out = out
        self.own = " pid %d: " % os.getpid()

    def line(self, when, prog, ip, pid, verdict, fields=()):
        text = core.log_line(prog, ip, verdict, fields).replace(self.own, " pid %d: " % pid, 1)
        self.raw(when, text)

    def raw(self, when, text):
        seconds = int(when)
        self.out.write("@%016x%08x %s\n" % (seconds + logread.TAI64_EPOCH,
                                            int((when - seconds) * 1e9), text))


def client_ip(rng):
    if rng.random() < 0.05:
        return "2001:db8:%x:%x::%x" % (rng.randrange(65536), rng.randrange(16), rng.randrange(1, 65536))
    # A few busy networks and a long tail, as real traffic has.
    if rng.random() < 0.4:
        return "198.51.100.%d" % rng.randrange(1, 40) if rng.random() < 0.5 else \
            "203.0.113.%d" % rng.randrange(1, 250)
    return "%d.%d.%d.%d" % (rng.choice((45, 62, 77, 85, 91, 103, 176, 185, 193)),
                            rng.randrange(256), rng.randrange(256), rng.randrange(1, 255))


def connection(w, rng, when, pid, ip, grey):
    """Write one connection's lines; return the time it ended."""
    w.raw(when, "tcpserver: pid %d from %s" % (pid, ip))
    w.raw(when, "tcpserver: ok %d mx.example.com:192.0.2.25:25 :%s::%d" % (pid, ip, rng.randrange(1024, 65536)))
    when += rng.random() * 0.3
    roll = rng.random()
    if roll < 0.12:
        w.line(when, "rhostcheck", ip, pid, "553 bad reverse DNS: %s has no forward-confirmed name (#5.7.25)" % ip,
               (("why", "nordns"),))
        return when + 2
    if roll < 0.18:
        host = "dyn-%s.pool.example.net" % ip.replace(".", "-").replace(":", "-")
        w.line(when, "rhostcheck", ip, pid, "553 bad reverse DNS: %s looks dynamic, please use your provider's "
               "relay (#5.7.1)" % host, (("host", host), ("why", "dynamic"), ("match", "pool")))
        return when + 2
    host = "mail%d.example.org" % rng.randrange(50)
    w.line(when, "rhostcheck", ip, pid, "pass", (("host", host),))
    for name, share in LISTS:
        if rng.random() < share:
            w.line(when, "rblcheck", ip, pid, "451 Listed by %s, see https://check.%s/query/ip/%s" % (name, name, ip),
                   (("why", "listed"), ("list", name)))
            return when + 3
    w.line(when, "rblcheck", ip, pid, "pass")
    if rng.random() < 0.02:
        w.line(when, "throttle", ip, pid, "421 too many connections from your network, slow down (#4.7.0)",
               (("why", "rate"), ("key", core.network(core.parse_ip(ip)[1]))))
        return when + 1
    key = core.network(core.parse_ip(ip)[1])
    seen = grey.get(key)
    if seen is None:
        grey[key] = [when, False]
        w.line(when, "greylist", ip, pid, "451 greylisted, try again in 300 seconds (#4.7.1)",
               (("key", key), ("state", "new")))
        return when + 2
    if not seen[1] and when - seen[0] < 300:
        w.line(when, "greylist", ip, pid, "451 greylisted, try again in %d seconds (#4.7.1)"
               % max(1, 300 - int(when - seen[0])), (("key", key), ("state", "wait"), ("age", int(when - seen[0]))))
        return when + 2
    state = "known" if seen[1] else "pass"
    seen[1] = True
    w.line(when, "greylist", ip, pid, "pass", (("key", key), ("state", state), ("age", int(when - seen[0]))))
    when += rng.random()
    if rng.random() < 0.04:
        why = rng.choice(("helo", "spf", "nxdomain"))
        w.line(when, "mfcheck", ip, pid, "553 sender rejected: %s check failed (#5.7.1)" % why,
               (("why", why), ("from", "x@%s.example" % rng.choice(("spam", "bulk")))))
        w.line(when + 1, "mfcheck", ip, pid, "end", (("why", "eof"), ("status", 0)))
        return when + 1
    accepted = []
    for _ in range(1 + int(rng.expovariate(1.5))):
        user = rng.choice(USERS)
        if rng.random() < 0.15:
            rcpt = "%s%d@example.com" % (user, rng.randrange(100))
            w.line(when, "validrcptto", ip, pid, "553 sorry, this recipient is not in my validrcptto list (#5.7.1)",
                   (("rcpt", rcpt), ("why", "notfound")))
        else:
            accepted.append("%s@example.com" % user)
            if len(accepted) >= 3:
                w.line(when, "tarpit", ip, pid, "delay", (("rcpt", len(accepted)), ("seconds", 5)))
                when += 5
    if accepted:
        queue(w, rng, when + rng.random() * 3, ip, pid + 1, accepted)
    # The proxy's end line, under the name of the first program that proxies.
    w.line(when + 4, "mfcheck", ip, pid, "end", (("why", "eof"), ("status", 0)))
    return when + 4


def queue(w, rng, when, ip, pid, rcpts):
    score = round(rng.gauss(-1.0, 2.0) if rng.random() < 0.7 else rng.gauss(9.0, 4.5), 1)
    virus = rng.choice(VIRUSES) if rng.random() < 0.01 else None
    action = "deliver"
    if virus:
        action = "reject"
    elif score >= 15:
        action = "reject"
    elif score >= 10:
        action = "quarantine"
    elif score >= 5:
        action = "tag"
    fields = [("from", "someone%d@example.org" % rng.randrange(500)), ("rcpts", len(rcpts)),
              ("size", int(rng.lognormvariate(8.5, 1.2))), ("spam", "yes" if score >= 5 else "no"),
              ("score", score), ("required", "5.0"), ("tests", TESTS if score >= 5 else "BAYES_00")]
    if virus:
        fields.append(("virus", virus))
    fields.append(("ms", rng.randrange(40, 900)))
    if len(rcpts) == 1:
        fields.append(("rcpt", rcpts[0]))
    w.line(when, "qtools-queue", ip, pid, action, fields)


def write(out, connections, day, seed=1):
    """Write the log of `connections` connections during the day starting at Unix time day."""
    rng = random.Random(seed)
    w = Writer(out)
    grey = {}
    retries = []
    pid = 1000
    for number in range(connections):
        # More mail by day than by night.
        hour = rng.choices(range(24), weights=[2, 1, 1, 1, 1, 2, 4, 7, 9, 10, 10, 9,
                                               8, 9, 10, 10, 9, 8, 6, 5, 4, 4, 3, 2])[0]
        retries.append(day + hour * 3600 + rng.random() * 3600)
    retries.sort()
    ips = []
    for when in retries:
        if ips and rng.random() < 0.35:
            ip = rng.choice(ips[-200:])  # a retry or a regular sender
        else:
            ip = client_ip(rng)
            ips.append(ip)
        pid = pid + 2 if pid < 4000000 else 1000
        end = connection(w, rng, when, pid, ip, grey)
        w.raw(end, "tcpserver: end %d status 0" % pid)


def main(argv):
    connections, seed = 5000, 1
    day = time.mktime(time.localtime()[:3] + (0, 0, 0, 0, 0, -1)) - 86400
    args = list(argv)
    while args:
        flag = args.pop(0)
        if flag == "-n":
            connections = int(args.pop(0))
        elif flag == "-s":
            seed = int(args.pop(0))
        elif flag == "-d":
            day = time.mktime(time.strptime(args.pop(0), "%Y-%m-%d"))
        else:
            sys.stderr.write("samplelog: usage: samplelog [ -n connections ] [ -d YYYY-MM-DD ] [ -s seed ]\n")
            return 100
    write(sys.stdout, connections, day, seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
