# SPDX-License-Identifier: ISC
"""Shared helpers for the benchmarks: the installation measured, medians, a ratio table.

The benchmarks measure the programs as an admin runs them: a make install
(install_bin()), whose programs start with "#!PYTHON -IS" and so pay for
no site import, against FLOOR, the same interpreter's python -I -S -c
pass.  The venv's programs (VENV_BIN) pay for the venv's site import; a
benchmark shows them only where the difference says something.
"""

import atexit
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(os.path.abspath(sys.executable))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
# The interpreter make install is run with, and the floor's: Debian's
# python3 unless $BENCH_INSTALL_PYTHON names another.
INSTALL_PYTHON = os.environ.get("BENCH_INSTALL_PYTHON") or (
    "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable)
FLOOR = [INSTALL_PYTHON, "-I", "-S", "-c", "pass"]
FLOOR_NAME = "python3 -I -S"
_installed = []


def install(prefix):
    """make install (FAST=1: cdbx too, as in the venv) into prefix with INSTALL_PYTHON."""
    subprocess.run(["make", "-s", "-C", REPO, "install", "PYTHON=" + INSTALL_PYTHON, "FAST=1",
                    "PREFIX=" + prefix], check=True, stdout=subprocess.DEVNULL)


def install_prefix():
    """Return the prefix of the installation the benchmarks measure.

    bench/run.py installs once for the whole make bench run and names the
    prefix in $BENCH_PREFIX; a script run by itself installs into a
    temporary prefix of its own, removed when it exits.
    """
    if not _installed:
        prefix = os.environ.get("BENCH_PREFIX")
        if not prefix:
            top = tempfile.mkdtemp(prefix="bench_install.")
            atexit.register(shutil.rmtree, top, True)
            prefix = os.path.join(top, "prefix")
            install(prefix)
        _installed.append(prefix)
    return _installed[0]


def install_bin(name=None):
    """Return the installation's bin directory, or the path of its program name."""
    directory = os.path.join(install_prefix(), "bin")
    return directory if name is None else os.path.join(directory, name)


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
