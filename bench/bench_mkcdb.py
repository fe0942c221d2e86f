#!/usr/bin/env python3
# SPDX-License-Identifier: ISC
"""Time qtools-mkcdb and the cdb writers on a million addresses against djb's cdbmake.

Each row is a median over a few runs, measured in the same run as its
reference: the C tool given the same records (cdbmake) or the same rules
(tcprules).  The programs take turns with cdbmake, run after run, so that
a change in the machine's load falls on all of them.  Every output is
also checked to be the reference's bytes.
qtools-mkcdb is that of make install (bench/common.py, with FAST=1).
Target (issue 9): qtools-mkcdb -a on a million addresses, with the fast
writer (cdbx), in at most twice cdbmake's time; the pure-Python writer
and the tcprules format are reported only.
"""

import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from common import (INSTALL_PYTHON, install_bin, install_prefix, measure,  # noqa: E402
                    measure_call, measure_many, table)
from qtools import cdb  # noqa: E402
from qtools.validrcptto import MARKER  # noqa: E402

COUNT = int(os.environ.get("BENCH_COUNT", "1000000"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
TARGET = 2.0
# The least a Python program can do: read the lines and hand them to cdbx,
# with no check of any line, no repeat found, no domain marker made.  What
# qtools-mkcdb -a costs beyond this row is its parse.
FLOOR = """
import os, sys, cdbx
from collections import deque
from itertools import repeat
keys = sys.stdin.buffer.read().lower().split(b"\\n")
keys.pop()
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
maker = cdbx.CDB.make(fd, close=False, mmap=False)
deque(map(maker.add, keys, repeat(b"")), maxlen=0)
maker.commit().close()
os.fsync(fd)
"""

# The list turned into cdbmake's "+klen,dlen:key->data" lines by awk: a way
# from a list to a cdb with C tools alone, checking nothing.
AWK_CDBMAKE = 'awk \'{ print "+" length($0) ",0:" $0 "->" } END { print "" }\' | cdbmake "$1" "$1.tmp"'


def same(path, reference):
    with open(path, "rb") as a, open(reference, "rb") as b:
        if a.read() != b.read():
            sys.exit("bench_mkcdb: fatal: %s differs from %s" % (path, reference))


def main():
    for tool in ("cdbmake", "tcprules"):
        if shutil.which(tool) is None:
            sys.exit("bench_mkcdb: fatal: %s not found: run make debs" % tool)
    work = tempfile.mkdtemp(prefix="bench_mkcdb.")
    try:
        keys = [b"user%d@example%d.com" % (n, n % 1000) for n in range(COUNT)]
        # qtools-mkcdb -a adds a bare key per domain and its own marker
        # record: give cdbmake the same records
        domains = [b"example%d.com" % n for n in range(min(COUNT, 1000))]
        records = [(k, b"") for k in keys + domains + [MARKER]]
        addresses = os.path.join(work, "addresses")
        with open(addresses, "wb") as f:
            f.write(b"".join(k + b"\n" for k in keys))
        cdbmake_input = os.path.join(work, "cdbmake.in")
        with open(cdbmake_input, "wb") as f:
            f.write(b"".join(b"+%d,0:%s->\n" % (len(k), k) for k, _ in records) + b"\n")
        rules = os.path.join(work, "tcp.smtp")
        with open(rules, "wb") as f:
            f.write(b"".join(b'10.%d.%d.%d:allow,RELAYCLIENT=""\n' % (n >> 16 & 255, n >> 8 & 255, n & 255)
                             for n in range(COUNT // 10)))

        ref = os.path.join(work, "ref.cdb")
        # the floor and awk are given the domain markers as lines of their own
        lines = os.path.join(work, "lines")
        with open(lines, "wb") as f:
            f.write(b"".join(k + b"\n" for k, _ in records))
        # (what, argv, environment, stdin, output, target) for each program
        programs = [("cdbmake", ["cdbmake", ref, ref + ".tmp"], None, cdbmake_input, ref, None)]
        writers = ["fast", "pure"] if cdb.fast_available() else ["pure"]
        if "fast" not in writers:
            print("cdbx is not installed: no fast writer rows")
        for writer in writers:
            path = os.path.join(work, "mk-" + writer + ".cdb")
            programs.append(("qtools-mkcdb -a (%s), %d addresses" % (writer, COUNT),
                             [install_bin("qtools-mkcdb"), "-a", path, path + ".tmp"],
                             dict(os.environ, QTOOLS_CDB_WRITER=writer), addresses, path,
                             TARGET if writer == "fast" else None))
        if "fast" in writers:
            path = os.path.join(work, "floor.cdb")
            programs.append(("python reading lines into cdbx, no parse (floor)",
                             [INSTALL_PYTHON, "-I", "-S", "-c", "import sys; sys.path[:0] = [%r]%s" % (
                                 os.path.join(install_prefix(), "lib", "qtools"), FLOOR), path],
                             None, lines, path, None))
        path = os.path.join(work, "awk.cdb")
        programs.append(("awk writing cdbmake's input | cdbmake",
                         ["sh", "-c", AWK_CDBMAKE, "sh", path], None, lines, path, None))
        times = measure_many([argv_env_stdin for _, *argv_env_stdin, _, _ in programs], RUNS)
        cdbmake = times[0][0]
        rows = []
        for writer in writers:
            path = os.path.join(work, writer + ".cdb")
            took = measure_call(lambda: cdb.write(path, records, writer=writer))
            same(path, ref)
            rows.append(("cdb writer %s, %d records" % (writer, COUNT), took, cdbmake, "cdbmake",
                         TARGET if writer == "fast" else None, "s"))
        for (what, _, _, _, output, target), (took, _) in zip(programs[1:], times[1:]):
            same(output, ref)
            rows.append((what, took, cdbmake, "cdbmake", target, "s"))
        tcp_ref = os.path.join(work, "tcprules.cdb")
        tcprules, _ = measure(["tcprules", tcp_ref, tcp_ref + ".tmp"], stdin=rules)
        path = os.path.join(work, "rules.cdb")
        took, _ = measure([install_bin("qtools-mkcdb"), path, path + ".tmp"], stdin=rules)
        same(path, tcp_ref)
        rows.append(("qtools-mkcdb tcprules, %d rules" % (COUNT // 10), took, tcprules, "tcprules",
                     None, "s"))
        failures = table(rows, "cdb writing against the C tools, medians of %d runs" % RUNS)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
