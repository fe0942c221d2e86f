#!/usr/bin/env python3
# SPDX-License-Identifier: ISC
"""Time greylist on a store of a million entries, and its purge against find.

1. Decision cost: DirStore.check in this process for a passed, a waiting and
   a new network, with BENCH_COUNT (default 1 000 000) entries in the store
   and with an empty one; and whole runs of the installed greylist (make
   install, bench/common.py) against its bare interpreter.  The store's size should not show.
2. Purge: `greylist -P` on the same store, first with nothing expired, then
   with every entry expired, against `find DIR -mmin +N -delete` on as many
   files in cqgreylist's layout (DIR/first-octet/ip), which must stat every
   file whether it goes or stays.
Targets: a decision with a full store costs at most 1.5 times one with an
empty store; a purge with nothing dead takes at most as long as find, and
one with everything dead (where both only unlink) at most 1.5 times.
"""

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from common import FLOOR, FLOOR_NAME, install_bin  # noqa: E402
from qtools import store  # noqa: E402

COUNT = int(os.environ.get("BENCH_COUNT", "1000000"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
CALLS = 20000


def network(i):
    return "%d.%d.%d.0/24" % (1 + i // 65536, (i // 256) % 256, i % 256)


def populate(s, count, now):
    """Write count entries the way the store does, half unproven, half passed."""
    made = set()
    for i in range(count):
        name = store.file_name(network(i))
        path = s._path("grey" if i % 2 else "pass", now - (i % 200), 0, name)
        directory = os.path.dirname(path)
        if directory not in made:
            os.makedirs(directory, exist_ok=True)
            made.add(directory)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        t = now - (i % 200)
        os.utime(fd, (t, t))
        os.close(fd)


def populate_cqgreylist(root, count, mtime):
    """Write count empty files as cqgreylist does: root/first-octet/ip."""
    for octet in range(1, 256):
        os.mkdir(os.path.join(root, str(octet)))
    # Clients arrive in no order: a fixed shuffle, as the hash does to ours.
    order = list(range(count))
    random.Random(2).shuffle(order)
    for i in order:
        ip = "%d.%d.%d.%d" % (1 + i % 255, (i // 255) % 256, (i // 65280) % 256, 1 + i // 16711680)
        path = os.path.join(root, ip.split(".")[0], ip)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.utime(fd, (mtime, mtime))
        os.close(fd)


def per_call(function, keys):
    """Return the median over RUNS of the mean microseconds of function(key)."""
    means = []
    for _ in range(RUNS):
        start = time.perf_counter()
        for key in keys:
            function(key)
        means.append((time.perf_counter() - start) / len(keys) * 1e6)
    return statistics.median(means)


def run(argv, env=None):
    """Return the median wall seconds of running argv."""
    walls = []
    for _ in range(RUNS * 4):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def decisions(full, empty, now):
    """Time check on the full and the empty store; return table rows."""
    rng = random.Random(1)
    rows = []
    passed = [network(i) for i in rng.sample(range(0, COUNT, 2), min(CALLS, COUNT // 2))]
    waiting = [network(i) for i in rng.sample(range(1, COUNT, 2), min(CALLS, COUNT // 2))]
    fresh = [network(COUNT + i) for i in range(CALLS)]
    for s in (empty,):
        for key in passed:
            s.allow(key, now)
        for key in waiting:
            s.check(key, now - 10)
    for label, keys in (("passed network", passed), ("waiting network", waiting)):
        ours = per_call(lambda k: full.check(k, now), keys)
        ref = per_call(lambda k: empty.check(k, now), keys)
        rows.append(("check, %s (us)" % label, ours, ref, "empty store", 1.5))
    # A new network is created once: time one pass over fresh keys per store.
    start = time.perf_counter()
    for key in fresh:
        full.check(key, now)
    ours = (time.perf_counter() - start) / len(fresh) * 1e6
    start = time.perf_counter()
    for key in fresh:
        empty.check(key, now)
    ref = (time.perf_counter() - start) / len(fresh) * 1e6
    rows.append(("check, new network (us)", ours, ref, "empty store", 1.5))
    env = {"PATH": install_bin() + ":/usr/bin:/bin", "TCPREMOTEIP": passed[0].split("/")[0]}
    greylist = install_bin("greylist")
    bare = run(FLOOR)
    for label, root in (("full", full.root), ("empty", empty.root)):
        ours = run([greylist, root, "/bin/true"], env)
        rows.append(("greylist run, passed, %s store (ms)" % label, ours * 1e3, bare * 1e3,
                     FLOOR_NAME, None))
    return rows


def count_files(root):
    return sum(len(files) for _, _, files in os.walk(root))


def timed(argv):
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, check=True).stdout
    return time.perf_counter() - start, out


def purges(scratch, full):
    """Time greylist -P and find on stores with nothing, then everything, expired."""
    greylist = install_bin("greylist")
    entries = count_files(full.root)
    cq = os.path.join(scratch, "cqgreylist")
    os.mkdir(cq)
    populate_cqgreylist(cq, entries, time.time())
    find = ["find", cq, "-type", "f", "-mmin", "+1440", "-delete"]
    rows = []
    ours, _ = timed([greylist, "-P", full.root])
    assert count_files(full.root) == entries
    ref, _ = timed(find)
    assert count_files(cq) == entries
    rows.append(("purge, %d live entries, none dead (s)" % entries, ours, ref, "find -delete", 1.0))
    past = int(time.time()) - 400 * 86400
    for tree in ("grey", "pass"):
        top = os.path.join(full.root, tree)
        for n, end in enumerate(os.listdir(top)):
            # Renaming the generations into the past makes every entry dead.
            os.rename(os.path.join(top, end), os.path.join(top, str(past - n)))
    old = time.time() - 3 * 86400
    for directory, _, files in os.walk(cq):
        for name in files:
            os.utime(os.path.join(directory, name), (old, old))
    ours, _ = timed([greylist, "-P", full.root])
    assert count_files(full.root) == 0
    ref, _ = timed(find)
    assert count_files(cq) == 0
    # Both are bound by unlink here; parity within noise is the goal.
    rows.append(("purge, %d entries, all dead (s)" % entries, ours, ref, "find -delete", 1.5))
    return rows


def table(rows):
    print("%-44s %10s %10s %-14s %7s %7s  %s" % ("measurement", "ours", "ref", "ref is", "ratio", "target", "result"))
    failures = 0
    for what, ours, ref, name, target in rows:
        ratio = ours / ref if ref else float("inf")
        verdict = "info" if target is None else ("pass" if ratio <= target else "FAIL")
        failures += verdict == "FAIL"
        print("%-44s %10.2f %10.2f %-14s %6.2fx %7s  %s" % (
            what, ours, ref, name, ratio, "-" if target is None else "%.1fx" % target, verdict))
    sys.stdout.flush()
    return failures


def main():
    scratch = tempfile.mkdtemp(prefix="bench-greylist-", dir=os.environ.get("BENCH_DIR"))
    try:
        now = time.time()
        full_root, empty_root = os.path.join(scratch, "full"), os.path.join(scratch, "empty")
        os.mkdir(full_root)
        os.mkdir(empty_root)
        full, empty = store.DirStore(full_root), store.DirStore(empty_root)
        start = time.perf_counter()
        populate(full, COUNT, now)
        print("wrote %d entries in %.1f s" % (COUNT, time.perf_counter() - start), flush=True)
        rows = decisions(full, empty, time.time())
        subprocess.run(["sync"])
        return 1 if table(rows + purges(scratch, full)) else 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
