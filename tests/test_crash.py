# SPDX-License-Identifier: ISC
"""Crash safety: SIGKILL at random points of greylist updates and cdb rebuilds.

$QTOOLS_CRASH_ROUNDS sets the number of kills per test (make test: 15);
$QTOOLS_FUZZ_SEED picks the kill times.  Each test prints its figures.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import BASE_PATH, VENV_BIN
from qtools import cdb
from qtools.store import DirStore, Timers

ROUNDS = int(os.environ.get("QTOOLS_CRASH_ROUNDS") or 15)
SEED = int(os.environ.get("QTOOLS_FUZZ_SEED") or 1993)
TIMERS = dict(delay=1, window=4, lifetime=6)

# Network keys and triplet keys long enough to be stored under a hash.
KEYS = ["192.0.%d.0/24" % n for n in range(12)] + [
    "2001:db8:%x::/64" % n for n in range(4)] + [
    "192.0.2.0/24 list-#@lists.example %s%d@example.com" % ("x" * 220, n) for n in range(8)]

# The worker: greylist updates on the connection path as fast as it can,
# reporting each one once it has returned.
WORKER = r"""
import random, sys, time
from qtools.store import DirStore, Timers
root, seed, keys = sys.argv[1], int(sys.argv[2]), sys.argv[3].split("|")
store = DirStore(root, Timers(%(delay)d, %(window)d, %(lifetime)d))
rng = random.Random(seed)
while True:
    key, now, op = rng.choice(keys), time.time(), rng.random()
    if op < 0.8:
        # half of them count passes (greylist -c), as a connection does
        status = store.check(key, now, 3 if op < 0.4 else 0).status
    elif op < 0.9:
        store.allow(key, now)
        status = "allow"
    elif op < 0.95:
        store.passed(key, now, 3)
        status = "refresh"
    else:
        store.purge(now)
        status = "purge"
    sys.stdout.write("%%s|%%r|%%s\n" %% (key, now, status))
    sys.stdout.flush()
""" % TIMERS


def report(capfd, line):
    with capfd.disabled():
        print(line)


def kill_after(process, seconds):
    time.sleep(seconds)
    process.send_signal(signal.SIGKILL)
    return process.wait(30)


def test_greylist_store(tmp_path, capfd):
    """After each SIGKILL the store reads back, keeps every update that completed, and purges."""
    root = str(tmp_path / "greylist")
    os.mkdir(root)
    rng = random.Random("%s greylist" % SEED)
    store = DirStore(root, Timers(**TIMERS))
    updates = checked = 0
    for round_ in range(ROUNDS):
        process = subprocess.Popen(
            [sys.executable, "-c", WORKER, root, str(rng.randrange(1 << 30)), "|".join(KEYS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": BASE_PATH})
        # Let it start (imports) before the random point.
        time.sleep(0.15)
        assert kill_after(process, rng.uniform(0.0, 0.3)) == -signal.SIGKILL
        out, err = process.communicate()
        assert err == b"", err
        now = time.time()
        last = {}
        for line in out.splitlines()[:-1] if not out.endswith(b"\n") else out.splitlines():
            key, when, status = line.decode().split("|")
            last[key] = (float(when), status)
            updates += 1
        # Every update that returned is in the store, unless its time ran out.
        for key, (when, status) in last.items():
            state = store.peek(key, now)
            if status in ("pass", "known", "allow") and now < when + TIMERS["lifetime"] - 1:
                assert state.status == "known", (key, when, status, state)
                checked += 1
            elif status == "new" and now < when + TIMERS["window"] - 1:
                assert state.status in ("wait", "pass", "known"), (key, when, status, state)
                checked += 1
        # The whole store reads back: only keys that were written, each once.
        items = list(store.items(now))
        assert {key for key, _ in items} <= set(KEYS)
        assert len(items) == len({key for key, _ in items})
        # The program reads it too.
        shown = subprocess.run([os.path.join(VENV_BIN, "greylist"), "-q", root],
                               capture_output=True, env={"PATH": BASE_PATH})
        assert shown.returncode == 0 and shown.stderr == b"", shown
        for key in KEYS:
            store.check(key, now, 3)  # no leftover makes a later update fail
    store.purge(time.time() + 10 * TIMERS["lifetime"])
    left = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]
    assert left == [], left[:5]
    report(capfd, "crash: greylist-store kills=%d updates=%d verified=%d lost=0" % (
        ROUNDS, updates, checked))


def build(target, version, lines, writer):
    text = b"".join(b"v%d-%d@example.com\n" % (version, n) for n in range(lines))
    process = subprocess.Popen(
        [os.path.join(VENV_BIN, "qtools-mkcdb"), "-a", target, target + ".tmp"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={"PATH": BASE_PATH, "QTOOLS_CDB_WRITER": writer})
    return process, text


def complete_version(target, lines):
    """Return the version of the cdb at target after checking every key of it is there."""
    with cdb.Reader(target) as reader:
        keys = [key for key, _ in reader.items()]
        assert len(keys) == lines + 2  # and the domain marker, and the mark of qtools-mkcdb
        version = int(keys[0].split(b"-")[0][1:])
        for n in range(0, lines, 997):
            assert reader.get(b"v%d-%d@example.com" % (version, n)) == b""
    return version


@pytest.mark.parametrize("writer", ["pure", "fast"])
def test_cdb_rebuild(tmp_path, writer, capfd):
    """A cdb rebuild killed anywhere leaves the old cdb or the new one, whole, and no stray file."""
    lines = 100000
    target = str(tmp_path / "validrcptto.cdb")
    process, text = build(target, 0, lines, writer)
    process.communicate(text)
    assert process.returncode == 0
    rng = random.Random("%s cdb %s" % (SEED, writer))
    current, outcomes = 0, {"old": 0, "new": 0}
    for round_ in range(1, ROUNDS + 1):
        process, text = build(target, round_, lines, writer)
        start = time.monotonic()
        try:
            process.stdin.write(text)
            process.stdin.close()
        except BrokenPipeError:
            pass
        time.sleep(rng.uniform(0.0, 0.5))
        process.send_signal(signal.SIGKILL)
        code = process.wait(30)
        assert code in (0, -signal.SIGKILL), (code, process.stderr.read())
        version = complete_version(target, lines)
        assert version in (current, round_), (version, current, round_)
        outcomes["new" if version == round_ else "old"] += 1
        current = version
        assert time.monotonic() - start < 30
        # A killed build may leave its tmp file; the next build replaces it.
        assert set(os.listdir(str(tmp_path))) <= {"validrcptto.cdb", "validrcptto.cdb.tmp"}
    report(capfd, "crash: cdb-rebuild writer=%s kills=%d old-kept=%d new-whole=%d torn=0" % (
        writer, ROUNDS, outcomes["old"], outcomes["new"]))


# --- SIGKILL before each file system call of one update -------------------------

CALLS = ("open", "write", "utime", "link", "rename", "unlink", "mkdir", "fchown", "close")
SHORT = "192.0.2.0/24"
HASHED = KEYS[-1]  # stored under a hash: the key is inside the entry


def killed_before(k, action):
    """Run action in a child that SIGKILLs itself before its k-th file system call; return True if it died."""
    pid = os.fork()
    if pid == 0:
        count = [0]

        def wrap(name):
            real = getattr(os, name)

            def call(*args, **kwargs):
                count[0] += 1
                if count[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*args, **kwargs)

            setattr(os, name, call)

        for name in CALLS:
            wrap(name)
        try:
            action()
        finally:
            os._exit(0)
    return os.WIFSIGNALED(os.waitpid(pid, 0)[1])


STEPS = {
    # name: (what the store holds before, the update, what may be seen after a kill)
    "first-sight": (lambda s, key, now: None, lambda s, key, now: s.check(key, now),
                    ("new", "wait")),
    "pass": (lambda s, key, now: s.check(key, now - 2), lambda s, key, now: s.check(key, now),
             ("pass", "known")),
    "allow": (lambda s, key, now: None, lambda s, key, now: s.allow(key, now), ("new", "known")),
    "deny": (lambda s, key, now: s.allow(key, now), lambda s, key, now: s.deny(key, now),
             ("known", "new", "wait")),  # new: forgotten, greylisted anew all the same
}


@pytest.mark.parametrize("key", [SHORT, HASHED], ids=["short", "hashed"])
@pytest.mark.parametrize("step", sorted(STEPS))
def test_greylist_kill_points(tmp_path, key, step, capfd):
    """Killed before any one system call of an update, the store shows the key before or after it, and lists it right."""
    before, update, seen = STEPS[step]
    k = 0
    while True:
        k += 1
        root = str(tmp_path / ("store%d" % k))
        os.mkdir(root)
        store = DirStore(root, Timers(**TIMERS))
        now = time.time()
        before(store, key, now)
        died = killed_before(k, lambda: update(store, key, now))
        state = store.peek(key, now).status
        assert state in seen, (k, state)
        listed = dict(store.items(now))
        if state == "new":
            assert listed == {}, k
        else:
            assert list(listed) == [key], (k, listed)
        update(store, key, now)  # what a kill left does not stop the next connection
        if not died:
            break
    assert k > 2  # the update made system calls, and each was a kill point
    report(capfd, "crash: kill-points update=%s key=%s points=%d" % (
        step, "hashed" if key == HASHED else "short", k - 1))
