#!/usr/bin/env python3
# SPDX-License-Identifier: ISC
"""Per-connection cost of each program on its pass path, against the floors.

Each program hands the connection to true(1) without sending a DNS query
(the per-client skip variables a tcp.smtp would set), so what is measured
is start-up plus the decision: the cost every connection pays.  References,
measured in the same run: a bare interpreter (python -I -S -c pass) and
rblsmtpd (C) with $RBLSMTPD empty.
"""

import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import VENV_BIN, measure, table  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "21"))
TRUE = shutil.which("true")


def prog(name):
    return os.path.join(VENV_BIN, name)


def main():
    state = tempfile.mkdtemp(prefix="bench_startup.")
    env = {
        "PATH": "%s:/usr/bin:/bin" % VENV_BIN,
        "TCPREMOTEIP": "127.0.0.9",
        "TCPLOCALIP": "127.0.0.1",
        "RBLSMTPD": "",
        "RHOSTCHECK": "",
        "GREYLIST": "",
        "TARPITCOUNT": "0",
        "RELAYCLIENT": "",
    }
    floor = measure([sys.executable, "-I", "-S", "-c", "pass"], RUNS, env)
    rows = []
    if shutil.which("rblsmtpd"):
        c_tool = measure(["rblsmtpd", "-r", "x.invalid", TRUE], RUNS, env)
    else:
        c_tool = None
    cases = [
        ("rblcheck -r x.invalid true", [prog("rblcheck"), "-r", "x.invalid", TRUE]),
        ("rhostcheck true", [prog("rhostcheck"), TRUE]),
        ("greylist DIR true", [prog("greylist"), state, TRUE]),
        ("validrcptto true", [prog("validrcptto"), TRUE]),
        ("tarpit true", [prog("tarpit"), TRUE]),
        (
            "chain of all five, then true",
            [prog("rhostcheck"), prog("rblcheck"), "-r", "x.invalid", prog("greylist"), state,
             prog("validrcptto"), prog("tarpit"), TRUE],
        ),
    ]
    for what, argv in cases:
        wall, cpu = measure(argv, RUNS, env)
        rows.append((what + ": cpu", cpu * 1000, floor[1] * 1000, "python -I -S", None, "ms"))
        rows.append((what + ": wall", wall * 1000, floor[0] * 1000, "python -I -S", None, "ms"))
        if c_tool:
            rows.append((what + ": wall", wall * 1000, c_tool[0] * 1000, "rblsmtpd (C)", None, "ms"))
    shutil.rmtree(state, ignore_errors=True)
    table(rows, "per-connection cost on the pass path, medians of %d runs" % RUNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
