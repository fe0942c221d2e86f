#!/usr/bin/env python3
# SPDX-License-Identifier: ISC
"""Time qtools-report on a million log lines in a multilog directory.

The lines are bench/samplelog.py's (every program's decision lines behind
TAI64N stamps), split over archives and current as multilog leaves them.
Measured: whole runs of `qtools-report --json DIR`, `qtools-report -H` (the
HTML page as well), and for scale the admin's one-liner
`awk '{n[$2]++}' DIR/@* DIR/current`, which only counts programs.
Target: at least 200 000 lines a second for the text report.
BENCH_LINES (default 1 000 000) and BENCH_RUNS (default 3) set the size.
"""

import io
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import samplelog  # noqa: E402
from common import install_bin, measure_many  # noqa: E402

LINES = int(os.environ.get("BENCH_LINES", "1000000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
TARGET = 200000
ARCHIVE = 16 * 1024 * 1024  # multilog's largest s: bytes per archive


def make_logdir(top):
    """Write about LINES sample lines into top/log as multilog would; return (path, lines)."""
    out = io.StringIO()
    # About six lines a connection.
    samplelog.write(out, LINES // 6, 1796000000 - 1796000000 % 86400, seed=7)
    text = out.getvalue()
    logdir = os.path.join(top, "log")
    os.mkdir(logdir)
    start, number = 0, 0
    while start < len(text):
        end = text.rfind("\n", start, start + ARCHIVE) + 1 if start + ARCHIVE < len(text) else len(text)
        chunk = text[start:end]
        name = "current" if end == len(text) else "%s.s" % chunk.rsplit("\n", 2)[-2][:25]
        with open(os.path.join(logdir, name), "w") as handle:
            handle.write(chunk)
        start, number = end, number + 1
    return logdir, text.count("\n")


def main():
    top = tempfile.mkdtemp(prefix="bench_report.")
    try:
        logdir, lines = make_logdir(top)
        files = sorted(os.path.join(logdir, name) for name in os.listdir(logdir))
        report = install_bin("qtools-report")
        page = os.path.join(top, "report.html")
        cases = [([report, logdir], None), ([report, "--json", logdir], None),
                 ([report, "-H", page, logdir], None)]
        awk = shutil.which("mawk") or shutil.which("awk")
        if awk:
            cases.append(([awk, "{n[$2]++} END {for (p in n) print p, n[p]}"] + files, None))
        results = measure_many(cases, RUNS)
        print("%d lines in %d files, medians of %d runs" % (lines, len(files), RUNS))
        names = ["qtools-report (text)", "qtools-report --json", "qtools-report -H", "awk (count by program)"]
        for name, (wall, cpu) in zip(names, results):
            print("  %-24s %6.2f s  %9.0f lines/s  cpu %6.2f s" % (name, wall, lines / wall, cpu))
        if awk:
            print("  text report / awk: %.1fx" % (results[0][0] / results[3][0]))
        speed = lines / results[0][0]
        print("target: >= %d lines/s: %s (%.0f)" % (TARGET, "met" if speed >= TARGET else "MISSED", speed))
        return 0 if speed >= TARGET else 1
    finally:
        shutil.rmtree(top)


if __name__ == "__main__":
    sys.exit(main())
