#!/usr/bin/env python3
# SPDX-License-Identifier: ISC
"""Greylist decisions per second on the Redis store against the directory store.

1. In one process: RedisStore.check against DirStore.check for a passed, a
   waiting and a new network, on stores holding BENCH_COUNT (default
   100 000) entries.
2. Several MX at once: BENCH_PROCS (default 4) processes deciding on one
   store, in decisions per second for the whole.
3. Whole runs of the installed greylist (make install, bench/common.py)
   for a passed client (the cost a connection
   pays, the Redis client's import included) against the directory store
   and a bare interpreter, and the import of that client (qtools.resp)
   alone.
The redis-server is Debian's, private, on a loopback port.  Every row is
information: what the shared store costs, not a target to meet.
"""

import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from common import (FLOOR, FLOOR_NAME, INSTALL_PYTHON, RUNS, install_bin,  # noqa: E402
                    install_prefix, measure_many, table)

from qtools.redisstore import PREFIX, RedisStore  # noqa: E402
from qtools.resp import Client  # noqa: E402
from qtools.store import DirStore  # noqa: E402

COUNT = int(os.environ.get("BENCH_COUNT", "100000"))
PROCS = int(os.environ.get("BENCH_PROCS", "4"))
CALLS = 5000


def network(i):
    return "%d.%d.%d.0/24" % (1 + i // 65536, (i // 256) % 256, i % 256)


def start_redis(directory):
    """Start a private redis-server; return (process, url)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(10) == b"+PONG\r\n":
                    return process, "redis://127.0.0.1:%d/0" % port
        except OSError:
            time.sleep(0.05)
    process.kill()
    sys.exit("redis-server did not start")


def populate(stores, now):
    """Give every store COUNT entries: even networks passed, odd ones waiting."""
    for s in stores:
        if isinstance(s, RedisStore):
            client = Client(s.url, 10.0)
            for start in range(0, COUNT, 10000):
                commands = []
                for i in range(start, min(start + 10000, COUNT)):
                    name = PREFIX + network(i)
                    commands += [("HSET", name, "last" if i % 2 == 0 else "first", now - 10),
                                 ("PEXPIRE", name, 86400000)]
                client.pipeline(commands)
            client.close()
        else:
            for i in range(COUNT):
                (s.allow if i % 2 == 0 else s.check)(network(i), now - 10)


def rate(function, keys):
    """Return the median decisions per second of function over keys."""
    rates = []
    for _ in range(RUNS):
        start = time.perf_counter()
        for key in keys:
            function(key)
        rates.append(len(keys) / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


def in_process(redis_store, dir_store, now):
    rng = random.Random(1)
    passed = [network(i) for i in rng.sample(range(0, COUNT, 2), min(CALLS, COUNT // 2))]
    waiting = [network(i) for i in rng.sample(range(1, COUNT, 2), min(CALLS, COUNT // 2))]
    rows = []
    for label, keys in (("passed", passed), ("waiting", waiting)):
        ours = rate(lambda k: redis_store.check(k, now), keys)
        ref = rate(lambda k: dir_store.check(k, now), keys)
        rows.append(("check, %s network (us)" % label, 1e6 / ours, 1e6 / ref, "directory", None, ""))
        print("decisions/s, %-8s network: redis %8.0f  directory %8.0f" % (label, ours, ref))
    fresh = [network(COUNT + i) for i in range(CALLS)]
    start = time.perf_counter()
    for key in fresh:
        redis_store.check(key, now)
    ours = len(fresh) / (time.perf_counter() - start)
    start = time.perf_counter()
    for key in fresh:
        dir_store.check(key, now)
    ref = len(fresh) / (time.perf_counter() - start)
    print("decisions/s, new      network: redis %8.0f  directory %8.0f" % (ours, ref))
    rows.append(("check, new network (us)", 1e6 / ours, 1e6 / ref, "directory", None, ""))
    return rows


def _worker(where, seed, now, calls, queue):
    s = RedisStore(where) if "://" in where else DirStore(where)
    rng = random.Random(seed)
    keys = [network(rng.randrange(COUNT)) for _ in range(calls)]
    queue.put(None)  # ready
    start = time.perf_counter()
    for key in keys:
        s.check(key, now)
    queue.put(time.perf_counter() - start)


def parallel(where, now):
    """Return the decisions per second of PROCS processes on one store."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(where, n, now, CALLS, queue)) for n in range(PROCS)]
    for w in workers:
        w.start()
    for _ in workers:
        queue.get()
    longest = max(queue.get() for _ in workers)
    for w in workers:
        w.join()
    return PROCS * CALLS / longest


def whole_runs(url, root, now):
    env = {"PATH": install_bin() + ":/usr/bin:/bin", "TCPREMOTEIP": network(0).split("/")[0]}
    greylist = install_bin("greylist")
    # The Redis client's import as an installed program pays it.
    resp = "import sys; sys.path[:0] = [%r]; import qtools.resp" % os.path.join(
        install_prefix(), "lib", "qtools")
    # In turns: a millisecond is in question, less than the drift of the
    # machine's load from one block of runs to the next.
    (ours, _), (ref, _), (bare, _), (relay, _), (imports, _) = measure_many([
        ([greylist, url, "/bin/true"], env),
        ([greylist, root, "/bin/true"], env),
        (FLOOR, None),
        ([greylist, url, "/bin/true"], dict(env, RELAYCLIENT="")),
        ([INSTALL_PYTHON, "-I", "-S", "-c", resp], None),
    ], RUNS * 4)
    return [
        ("python -I -S, import qtools.resp (ms)", imports * 1e3, bare * 1e3, FLOOR_NAME, None,
         ""),
        ("greylist run, passed client (ms)", ours * 1e3, ref * 1e3, "directory", None, ""),
        ("greylist run, passed client (ms)", ours * 1e3, bare * 1e3, FLOOR_NAME, None, ""),
        ("greylist run, RELAYCLIENT, Redis URL (ms)", relay * 1e3, ref * 1e3, "directory", None, ""),
    ]


def main():
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (make debs): skipped")
        return 0
    scratch = tempfile.mkdtemp(prefix="bench-redis-", dir=os.environ.get("BENCH_DIR"))
    process, url = start_redis(scratch)
    try:
        root = os.path.join(scratch, "grey")
        os.mkdir(root)
        now = time.time()
        redis_store, dir_store = RedisStore(url), DirStore(root)
        start = time.perf_counter()
        populate((redis_store, dir_store), now)
        print("wrote %d entries in each store in %.1f s" % (COUNT, time.perf_counter() - start))
        rows = in_process(redis_store, dir_store, time.time())
        ours, ref = parallel(url, time.time()), parallel(root, time.time())
        print("decisions/s, %d processes:   redis %8.0f  directory %8.0f" % (PROCS, ours, ref))
        rows.append(("check, %d processes at once (us)" % PROCS, 1e6 / ours, 1e6 / ref,
                     "directory", None, ""))
        rows += whole_runs(url, root, time.time())
        table(rows, "Redis store (ours) against the directory store")
        return 0
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
