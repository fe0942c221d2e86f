# SPDX-License-Identifier: ISC
"""Shared timing helpers for the benchmarks: medians and a ratio table."""

import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(os.path.abspath(sys.executable))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))


def children_cpu():
    """Return the user+system CPU seconds of the waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(argv, runs=RUNS, env=None, stdin=None):
    """Return the median (wall, cpu) seconds of running argv.

    stdin is None (no input), bytes (fed to the program) or a file path.
    """
    walls, cpus = [], []
    for _ in range(runs):
        cpu, start = children_cpu(), time.perf_counter()
        if isinstance(stdin, str):
            with open(stdin, "rb") as source:
                subprocess.run(
                    argv,
                    stdin=source,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
        else:
            subprocess.run(
                argv,
                input=stdin or b"",
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        walls.append(time.perf_counter() - start)
        cpus.append(children_cpu() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def measure_many(cases, runs=RUNS):
    """Return the median (wall, cpu) seconds of each (argv, env[, stdin]) in cases.

    The cases take turns, run after run, so a change in the load of the
    machine while the benchmark runs falls on all of them alike.
    """
    walls, cpus = [[] for _ in cases], [[] for _ in cases]
    for _ in range(runs):
        for i, case in enumerate(cases):
            wall, cpu = measure(case[0], 1, *case[1:])
            walls[i].append(wall)
            cpus[i].append(cpu)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(walls, cpus)]


def measure_call(function, runs=RUNS):
    """Return the median wall seconds of calling function() in this process."""
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def table(rows, title=None):
    """Print rows of (what, ours, reference, reference name, target ratio, unit).

    The ratio is ours / reference; a row passes when it is at most the
    target.  A target of None only reports.  Return the number of failures.
    """
    if title:
        print("\n" + title)
    print("%-52s %10s %10s %-16s %7s %7s  %s" % ("measurement", "ours", "ref", "ref is", "ratio", "target", "result"))
    failures = 0
    for what, ours, ref, ref_name, target, unit in rows:
        ratio = ours / ref if ref else float("inf")
        if target is None:
            verdict, shown = "info", "-"
        else:
            verdict = "pass" if ratio <= target else "FAIL"
            shown = "%.1fx" % target
            failures += verdict == "FAIL"
        print(
            "%-52s %9.2f%s %9.2f%s %-16s %6.2fx %7s  %s"
            % (what, ours, unit, ref, unit, ref_name, ratio, shown, verdict)
        )
    sys.stdout.flush()
    return failures
