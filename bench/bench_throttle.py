#!/usr/bin/env python3
# SPDX-License-Identifier: ISC
"""throttle: what it costs a connection, and whether the number of clients shows.

1. Per connection: the installed throttle (make install, bench/common.py)
   with every kind of connection limit set (-c 5 -C 20 -r, a client under
   them) handing the connection to true(1), against the same interpreter's
   python -I -S -c pass measured in the same run: target 1.3x.  Shown too:
   the venv's throttle against the venv's python -c pass, both paying for
   the site import.
2. The decision in this process (open the store, take an address and a
   network slot, count the connection, close) with 10 tracked clients and
   with BENCH_CLIENTS (default 100 000) networks in the rate table, 10
   connections held by another process in both.  Target: at most 1.3x.
   Shown too: 10 clients with BENCH_HELD (default 400) connections held at
   once, as on a busy MX.  The kernel keeps a file's record locks in one
   list, so a lock call costs a little more with each live connection
   (tcpserver -c bounds them), never with the clients seen before.
3. Shown when redis-server is installed: the same run of bin/throttle on a
   private Redis, installed (a round trip, and the fork of the watcher that renews the
   lease; the watcher's own CPU is not in the figure, its wall time is not
   either: it is detached).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from common import FLOOR, FLOOR_NAME, VENV_BIN, install_bin, measure_many, table  # noqa: E402

from qtools.throttlestore import DirStore  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "21"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "100000"))
HELD = int(os.environ.get("BENCH_HELD", "400"))
CALLS = 2000
TRUE = shutil.which("true")

# Holds a slot of each of the first argv[2] addresses in the store argv[1],
# as that many live connections would, until its input closes.
HOLDER = """
import sys
from qtools.throttlestore import DirStore
s = DirStore(sys.argv[1])
for i in range(int(sys.argv[2])):
    ip = "10.%d.%d.1" % (i // 256, i % 256)
    assert s.admit(ip, ip[:-1] + "0/24", 5, 20, 0, 60, 0.0).status == "ok"
print("held", flush=True)
sys.stdin.read()
"""


def network(i, first=11):
    """Return the i-th /24 network from first.0.0.0 on."""
    return "%d.%d.%d.0/24" % (first + i // 65536, i // 256 % 256, i % 256)


def populate(root, clients, held, now):
    """Count a connection of each of clients networks; return the holder process."""
    s = DirStore(root)
    for i in range(clients):
        s.count(network(i), "conn", 1000, 60, now)
    s.close()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, root, str(held)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline() == b"held\n"
    return holder


def decision(root, now):
    """Return the median microseconds of a whole decision over CALLS new clients."""
    times = []
    for i in range(CALLS):
        net = network(i, 100)
        start = time.perf_counter()
        s = DirStore(root)
        got = s.admit(net[:-4] + "7", net, 5, 20, 1000, 60, now)
        s.close()
        times.append(time.perf_counter() - start)
        assert got.status == "ok", got
    times.sort()
    return times[len(times) // 2] * 1e6


def main():
    scratch = tempfile.mkdtemp(prefix="bench_throttle.")
    holders = []
    try:
        now = time.time()
        stores = {}
        for label, clients, held in (("10", 10, 10), (str(CLIENTS), CLIENTS, 10),
                                     ("held", 10, HELD)):
            root = os.path.join(scratch, label)
            os.mkdir(root)
            start = time.perf_counter()
            holders.append(populate(root, clients, held, now))
            print("store of %d clients (%d held) in %.1f s" % (
                clients, held, time.perf_counter() - start), flush=True)
            stores[label] = root
        rows = []
        # Clients beyond those tracked: each decision writes a new record.
        small = decision(stores["10"], now)
        large = decision(stores[str(CLIENTS)], now)
        busy = decision(stores["held"], now)
        rows.append(("decision, %d tracked clients (us)" % CLIENTS, large, small,
                     "10 clients", 1.3, "us"))
        rows.append(("decision, %d connections held (us)" % HELD, busy, small,
                     "10 held", None, "us"))
        env = {"PATH": "%s:/usr/bin:/bin" % install_bin(), "TCPREMOTEIP": "192.0.2.7"}
        venv_env = dict(env, PATH="%s:/usr/bin:/bin" % VENV_BIN)
        run = os.path.join(scratch, "run")
        os.mkdir(run)
        limits = ["-c", "5", "-C", "20", "-r", "1000000", run, TRUE]
        throttle = [install_bin("throttle")] + limits
        cases = [(FLOOR, env), (throttle, env), ([sys.executable, "-c", "pass"], venv_env),
                 ([os.path.join(VENV_BIN, "throttle")] + limits, venv_env)]
        (bare, _), (ours, ours_wall), (site, _), (venv, _) = [
            (cpu, wall) for wall, cpu in measure_many(cases, RUNS)]
        rows.append(("installed throttle -c -C -r, under its limits: cpu", ours * 1e3, bare * 1e3,
                     FLOOR_NAME, 1.3, "ms"))
        rows.append(("venv throttle, the same: cpu", venv * 1e3, site * 1e3,
                     "venv python -c", None, "ms"))
        if shutil.which("redis-server"):
            from bench_redis import start_redis

            server, url = start_redis(scratch)
            holders.append(server)
            redis = [(throttle[:-2] + [url, TRUE], env)]
            ((wall, cpu),) = measure_many(redis, RUNS)
            rows.append(("installed, the same on Redis: cpu", cpu * 1e3, bare * 1e3,
                         FLOOR_NAME, None, "ms"))
            rows.append(("installed, the same on Redis: wall", wall * 1e3, ours_wall * 1e3,
                         "directory store", None, "ms"))
        failures = table(rows, "throttle, medians of %d runs" % RUNS)
        return 1 if failures else 0
    finally:
        for holder in holders:
            if holder.stdin is not None:
                holder.stdin.close()
            else:
                holder.terminate()  # redis-server
            holder.wait()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
