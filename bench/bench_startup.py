#!/usr/bin/env python3
# SPDX-License-Identifier: ISC
"""Per-connection cost of each program on its pass path, against the floors.

Each program hands the connection to true(1) without sending a DNS query
(the per-client skip variables a tcp.smtp would set), so what is measured
is start-up plus the decision: the cost every connection pays.  References,
measured in the same run: a bare interpreter (python -I -S -c pass) and
rblsmtpd (C) with $RBLSMTPD empty.  Target (issue 9): a pass path that
sends no query -- $RBLSMTPD empty, RELAYCLIENT set, an allow-list hit --
costs at most 1.5 times the bare interpreter's CPU.  The venv interpreter
with its site import (python -c pass) is shown too: it is the floor a
program started without -S cannot go below.

The programs of make install (bench/common.py install_bin(): PYTHON=
$BENCH_INSTALL_PYTHON, Debian's /usr/bin/python3 by default) run as
"#!python -IS" with their own library directory on sys.path, so they pay
for no site import: target (issue 15), every no-query row at most 1.2
times that interpreter's python -I -S -c pass.  The venv's rows stay:
they show what the site import costs a program installed with pip.
"""

import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import FLOOR, FLOOR_NAME, VENV_BIN, install_bin, measure_many, table  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "21"))
TRUE = shutil.which("true")


def prog(name):
    return os.path.join(VENV_BIN, name)


def no_query_cases(bin_, env, check_env, allow, state):
    """The rows with a target: a pass path that sends no DNS query."""
    def prog(name):
        return os.path.join(bin_, name)

    rbl = [prog("rblcheck"), "-r", "x.invalid", TRUE]
    five = [prog("rhostcheck"), prog("rblcheck"), "-r", "x.invalid", prog("greylist"), state,
            prog("validrcptto"), prog("tarpit"), TRUE]
    return [
        ("no query: rblcheck, $RBLSMTPD empty", rbl, dict(check_env, RBLSMTPD="")),
        ("no query: rblcheck, RELAYCLIENT set", rbl, dict(check_env, RELAYCLIENT="")),
        ("no query: rblcheck -A, allow-list hit", rbl[:1] + ["-A", allow] + rbl[1:], check_env),
        ("no query: chain of five, RELAYCLIENT", five, dict(check_env, RELAYCLIENT="")),
    ]


def main():
    state = tempfile.mkdtemp(prefix="bench_startup.")
    installed = install_bin()
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
    allow = os.path.join(state, "allow.cdb")
    subprocess.run([prog("qtools-mkcdb"), "-n", allow, allow + ".tmp"], input=b"127.0.0.0/24\n",
                   check=True)
    check_env = {k: v for k, v in env.items() if k not in ("RBLSMTPD", "RELAYCLIENT")}
    five = [prog("rhostcheck"), prog("rblcheck"), "-r", "x.invalid", prog("greylist"), state,
            prog("validrcptto"), prog("tarpit"), TRUE]
    # (what, argv, environment, target): the venv's targets are issue 9's.
    cases = [
        ("python -I -S -c pass", [sys.executable, "-I", "-S", "-c", "pass"], env, None),
        ("python -c pass (the venv, with site)", [sys.executable, "-c", "pass"], env, None),
    ] + [(what, argv, case_env, 1.5)
         for what, argv, case_env in no_query_cases(VENV_BIN, env, check_env, allow, state)] + [
        ("rhostcheck true", [prog("rhostcheck"), TRUE], env, None),
        ("greylist DIR true", [prog("greylist"), state, TRUE], env, None),
        ("validrcptto true", [prog("validrcptto"), TRUE], env, None),
        ("tarpit true", [prog("tarpit"), TRUE], env, None),
        ("chain of five, every check skipped", five, env, None),
    ]
    if shutil.which("rblsmtpd"):
        cases.append(("rblsmtpd -r x.invalid true", ["rblsmtpd", "-r", "x.invalid", TRUE], env,
                      None))
    bare = FLOOR
    mine = [(what, argv, case_env, 1.2)
            for what, argv, case_env in no_query_cases(installed, env, check_env, allow, state)]
    both = measure_many([(argv, case_env) for _, argv, case_env, _ in cases + mine]
                        + [(bare, env)], RUNS)
    results, theirs, floor2 = both[:len(cases)], both[len(cases):-1], both[-1]
    floor = results[0]
    rows = []
    for (what, _, _, target), (wall, cpu) in zip(cases[1:], results[1:]):
        rows.append((what + ": cpu", cpu * 1000, floor[1] * 1000, "python -I -S", target, "ms"))
    for (what, _, _, target), (wall, cpu) in zip(mine, theirs):
        rows.append(("installed, " + what[10:] + ": cpu", cpu * 1000, floor2[1] * 1000,
                     FLOOR_NAME, target, "ms"))
    if cases[-1][0].startswith("rblsmtpd"):
        for (what, _, _, _), (wall, cpu) in zip(cases[2:-1], results[2:-1]):
            rows.append((what + ": wall", wall * 1000, results[-1][0] * 1000, "rblsmtpd (C)",
                         None, "ms"))
    shutil.rmtree(state, ignore_errors=True)
    failures = table(rows, "per-connection cost on the pass path, medians of %d runs" % RUNS)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
