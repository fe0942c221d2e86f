#!/usr/bin/env python3
# SPDX-License-Identifier: ISC
"""rblcheck against rblsmtpd: five lists that each answer after 50 ms.

A client listed nowhere makes both programs ask every list before they
run true(1), so the wall time is the decision time.  rblsmtpd asks the
lists one after the other; rblcheck asks them at once.  The DNS server
is tests/dnsserver.py on 127.53.x.y port 53, the only port rblsmtpd can
ask; it answers each question 50 ms after it came, several at a time.
Targets (issue 9): the decision takes at most d + 20 ms when every list
answers after d ms (start-up included), and less than rblsmtpd's.
Also: the CPU time of one connection with and without a query sent.
rblcheck is that of make install (bench/common.py), as an admin runs it.
"""

import os
import random
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from common import FLOOR, FLOOR_NAME, install_bin, measure, table  # noqa: E402
from dnsserver import DNSServer  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "11"))
DELAY = 0.05
LISTS = ["bl%d.test" % n for n in range(1, 6)]
TRUE = shutil.which("true")


def start_server():
    """Return a DNSServer answering after DELAY on 127.53.x.y:53, or on any port."""
    for _ in range(10):
        host = "127.53.%d.%d" % (random.randint(1, 254), random.randint(1, 254))
        try:
            return DNSServer(delay=DELAY, host=host, port=53)
        except OSError:
            continue
    return DNSServer(delay=DELAY)


def main():
    server = start_server()
    env = {
        "PATH": "%s:/usr/bin:/bin" % install_bin(),
        "TCPREMOTEIP": "127.0.0.9",
        "DNSCACHEIP": server.host,
        "QTOOLS_RESOLVER": server.address,
    }
    rblcheck = install_bin("rblcheck")
    r_options = [w for base in LISTS for w in ("-r", base)]
    l_options = [w for base in LISTS for w in ("-l", base + "=127.0.0.[2..11]*1")]
    rows = []
    try:
        ours = measure([rblcheck] + r_options + [TRUE], RUNS, env)
        ours_a = measure([rblcheck] + l_options + [TRUE], RUNS, env)
        skip = measure([rblcheck] + r_options + [TRUE], RUNS, dict(env, RBLSMTPD=""))
        one = measure([rblcheck, "-r", LISTS[0], TRUE], RUNS, env)
        floor = measure(FLOOR, RUNS, env)
        if server.port == 53 and shutil.which("rblsmtpd"):
            theirs = measure(["rblsmtpd"] + r_options + [TRUE], RUNS, env)
        else:
            theirs = (len(LISTS) * DELAY, 0.0)
            print("rblsmtpd or port 53 unavailable: comparing with %d x 50 ms" % len(LISTS))
    finally:
        server.close()
    ms = 1000
    rows += [
        ("decision time, 5 TXT lists (-r), unlisted client", ours[0] * ms, (DELAY + 0.02) * ms,
         "d + 20 ms", 1.0, "ms"),
        ("decision time, 5 A lists (-l), unlisted client", ours_a[0] * ms, (DELAY + 0.02) * ms,
         "d + 20 ms", 1.0, "ms"),
        ("decision time, 5 TXT lists (-r), unlisted client", ours[0] * ms, theirs[0] * ms,
         "rblsmtpd", 1.0, "ms"),
        ("decision time, 5 A lists (-l), unlisted client", ours_a[0] * ms, theirs[0] * ms,
         "rblsmtpd", 1.0, "ms"),
        ("decision time, 1 TXT list, unlisted client", one[0] * ms, DELAY * ms,
         "one answer", None, "ms"),
        ("cpu per connection, 5 queries sent", ours[1] * ms, skip[1] * ms,
         "no query", None, "ms"),
        ("cpu per connection, no query ($RBLSMTPD empty)", skip[1] * ms, floor[1] * ms,
         FLOOR_NAME, None, "ms"),
    ]
    if theirs[1]:
        rows.append(("cpu per connection, 5 queries sent", ours[1] * ms, theirs[1] * ms,
                     "rblsmtpd", None, "ms"))
    failures = table(rows, "rblcheck against rblsmtpd, medians of %d runs" % RUNS)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
