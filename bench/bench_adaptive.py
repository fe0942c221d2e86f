#!/usr/bin/env python3
# SPDX-License-Identifier: ISC
"""Time qtools-adaptive over a million log lines, against multilog writing them.

A multilog directory is filled by multilog itself (t, 1 MB files) with
BENCH_LINES (default 1 000 000) decision lines of the chain and of
qtools-queue from 5000 clients, as a gateway under a spam run writes them:
rblcheck and greylist lines, validrcptto refusals, qtools-queue verdicts,
the proxy's end lines.  Then the installed qtools-adaptive reads the directory from
the start, in a process of its own.

Times are CPU seconds (the machine is shared).  Targets: at least 200 000
lines a second (multilog's own rate is shown beside it); its memory (maximum resident size) over a fifth of the lines of the
same clients at most 1.2 times that over all of them: memory follows the
clients, not the lines.
"""

import os
import random
import shutil
import resource
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from common import install_bin, table  # noqa: E402
from qtools import core  # noqa: E402

LINES = int(os.environ.get("BENCH_LINES", "1000000"))
CLIENTS = 5000
TARGET_RATE = 200000


def lines(count, clients=CLIENTS, seed=1):
    """Yield count decision lines (bytes, no stamp) from clients addresses."""
    rng = random.Random(seed)
    queue = (("from", "a@example.org"), ("rcpts", 1), ("size", 2300), ("spam", "no"),
             ("score", "0.4"), ("required", "5.0"), ("tests", "BAYES_00,SPF_PASS"), ("ms", 180),
             ("rcpt", "joe@example.com"))
    spam = tuple((k, {"spam": "yes", "score": "12.5"}.get(k, v)) for k, v in queue)
    bad = ("553 sorry, this recipient is not in my validrcptto list (#5.7.1)",
           (("rcpt", "nobody@example.com"), ("why", "notfound")))
    kinds = [core.log_line(prog, "IP", verdict, fields) + "\n" for prog, verdict, fields in (
        ("rblcheck", "pass", ()),
        ("greylist", "pass", (("key", "10.0.0.0/24"), ("state", "known"))),
        ("validrcptto", bad[0], bad[1]),
        ("validrcptto", bad[0], bad[1]),
        ("qtools-queue", "deliver", queue),
        ("qtools-queue", "reject", spam),
        ("validrcptto", "end", (("why", "eof"), ("status", 0))),
    )]
    for n in range(count):
        client = rng.randrange(clients)
        if client % 5:
            ip = "10.%d.%d.%d" % (client >> 16, (client >> 8) & 255, client & 255)
        else:
            ip = "2001:db8:%x::%x" % (client >> 4, client)
        yield kinds[n % len(kinds)].replace("IP", ip, 1).encode()


def fill(logdir, count):
    """Have multilog write count lines into logdir; return its CPU seconds."""
    data = b"".join(lines(count))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["multilog", "t", "s1000000", "n1000", logdir], input=data, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def run_adaptive(state, logdir):
    """Run qtools-adaptive over logdir from the start; return (wall, CPU seconds, max RSS kB)."""
    shutil.rmtree(state, ignore_errors=True)
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter();"
             " subprocess.run(sys.argv[1:], check=True, stderr=subprocess.DEVNULL);"
             " u = resource.getrusage(resource.RUSAGE_CHILDREN);"
             " print(time.perf_counter() - t, u.ru_utime + u.ru_stime, u.ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", probe, install_bin("qtools-adaptive"),
                           state, state + ".cdb", logdir], capture_output=True, check=True)
    wall, cpu, rss = done.stdout.split()
    return float(wall), float(cpu), int(rss)


def main():
    if shutil.which("multilog") is None:
        print("multilog is not installed: make bench installs daemontools")
        return 1
    top = tempfile.mkdtemp(prefix="bench-adaptive.")
    try:
        big, small = os.path.join(top, "big"), os.path.join(top, "small")
        multilog_cpu = fill(big, LINES)
        fill(small, LINES // 5)
        wall, cpu, rss = run_adaptive(os.path.join(top, "state"), big)
        small_rss = run_adaptive(os.path.join(top, "state2"), small)[2]
        print("%d lines from %d clients: qtools-adaptive %.0f lines per CPU second (%.0f per"
              " second of wall time on this shared machine), multilog %.0f per CPU second;"
              " max RSS %d kB (%d kB for a fifth of the lines)"
              % (LINES, CLIENTS, LINES / cpu, LINES / wall, LINES / multilog_cpu, rss, small_rss))
        failures = table([
            ("CPU s a million lines: qtools-adaptive / target", cpu * 1e6 / LINES,
             1e6 / TARGET_RATE, "200k lines/s", 1.0, "s"),
            ("CPU s a million lines: qtools-adaptive / multilog", cpu * 1e6 / LINES,
             multilog_cpu * 1e6 / LINES, "multilog t", None, "s"),
            ("max RSS: all the lines / a fifth of them", rss / 1024, small_rss / 1024,
             "a fifth", 1.2, "M"),
        ])
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
