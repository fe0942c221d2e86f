#!/usr/bin/env python3
# SPDX-License-Identifier: ISC
"""The whole chain under tcpserver: CPU and peak memory per accepted connection.

tcpserver runs `rhostcheck rblcheck greylist validrcptto tarpit`, the
programs of make install (bench/common.py) as an admin runs them, in front
of the demo sink, with a DNSBL served by rbldnsd on 127.53.x.y port 53 (the
only port rblsmtpd can ask, so both chains ask the same server).  Each
session is accepted: EHLO, MAIL, one valid RCPT, a short message, QUIT,
from a client listed nowhere, whose greylist entry is already old enough.
tcpserver runs under a small parent that reports the CPU time and largest
resident set of the whole process tree once tcpserver has ended, so every
process of every connection is counted.  The same is measured for the
sink alone under tcpserver, and the difference per connection is what the
chain costs.  References in the same run: python -I -S -c pass (the
installation's interpreter), and the
chain with rblsmtpd (C) in place of rblcheck.
"""

import os
import random
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import FLOOR, FLOOR_NAME, REPO, install_bin, measure, table  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_RUNS", "5"))
SESSIONS = int(os.environ.get("BENCH_SESSIONS", "10"))
CLIENT = "127.0.0.9"
ZONE = "bl.qtools.test"

# The parent tcpserver runs under: passes TERM on, then writes the CPU
# seconds and peak RSS (kB) of everything it and its children ran.
REPORTER = """
import os, resource, signal, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
child.wait()
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    f.write("%f %d\\n" % (usage.ru_utime + usage.ru_stime, usage.ru_maxrss))
"""


prog = install_bin


def start_rbldnsd(work):
    """Start rbldnsd serving ZONE on 127.53.x.y:53; return (process, address)."""
    data = os.path.join(work, "dnsbl")
    os.mkdir(data)
    with open(os.path.join(data, ZONE), "w") as f:
        f.write(":127.0.0.2:Listed by %s\n127.0.0.2\n127.0.0.3\n" % ZONE)
    os.chmod(work, 0o755)
    os.chmod(data, 0o755)
    os.chmod(os.path.join(data, ZONE), 0o644)
    user = ["-u", "nobody"] if os.getuid() == 0 else []
    # Port 53 (the only one rblsmtpd asks) needs root; elsewhere any port.
    places = [("127.53.%d.%d" % (random.randint(1, 254), random.randint(1, 254)), 53)
              for _ in range(5)]
    places += [("127.0.0.1", random.randint(20000, 60000)) for _ in range(5)]
    for host, port in places:
        process = subprocess.Popen(
            ["rbldnsd", "-n", "-q", "-f", "-c", "0"] + user
            + ["-w", data, "-b", "%s/%d" % (host, port), "%s:ip4set:%s" % (ZONE, ZONE)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)
        if process.poll() is None:
            return process, host, port
    sys.exit("bench_chain: fatal: unable to start rbldnsd on a loopback address")


class Server:
    """tcpserver running argv under the reporting parent."""

    def __init__(self, work, argv, env):
        self.report = tempfile.mktemp(dir=work)
        self.logpath = self.report + ".log"
        self.log = open(self.logpath, "wb")
        command = [sys.executable, "-c", REPORTER, self.report, "tcpserver", "-v", "-R", "-H",
                   "-l", "localhost", "-1", "-x", os.path.join(work, "tcp.smtp.cdb"),
                   "-c", "40", "127.0.0.1", "0"] + argv
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=self.log)
        self.port = int(self.process.stdout.readline())

    def ended(self):
        with open(self.logpath, "rb") as f:
            return f.read().count(b"tcpserver: end ")

    def stop(self, sessions):
        """Wait for every connection's end, stop tcpserver; return (cpu seconds, peak kB)."""
        deadline = time.monotonic() + 30
        while self.ended() < sessions and time.monotonic() < deadline:
            time.sleep(0.02)
        self.process.send_signal(signal.SIGTERM)
        self.process.wait()
        self.log.close()
        with open(self.report) as f:
            cpu, rss = f.read().split()
        return float(cpu), int(rss)


def session(port):
    """Send one message through the server on port; raise if it was not accepted."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(CLIENT, 0), timeout=30) as client:
        client.ehlo("bench.example")
        client.sendmail("sender@bench.example", ["joe@example.com"],
                        b"Subject: bench\r\n\r\nhello\r\n")


def run(work, argv, env, sessions=SESSIONS):
    """Return (cpu seconds, peak kB) of tcpserver and sessions accepted connections."""
    server = Server(work, argv, env)
    for _ in range(sessions):
        session(server.port)
    usage = server.stop(sessions)
    with open(server.logpath, "rb") as f:
        log = f.read()
    # Every rblcheck decision must have had its answer from rbldnsd.
    if any(arg.endswith("/rblcheck") for arg in argv) and (
            log.count(b"rblcheck: 127.0.0.9") != sessions or b"dnsfail" in log):
        sys.exit("bench_chain: fatal: rblcheck did not get its answers:\n" + log.decode())
    return usage


def main():
    for tool in ("tcpserver", "tcprules", "rbldnsd", "rblsmtpd"):
        if shutil.which(tool) is None:
            sys.exit("bench_chain: fatal: %s not found: run make debs" % tool)
    work = tempfile.mkdtemp(prefix="bench_chain.")
    rbldnsd, dns_host, dns_port = start_rbldnsd(work)
    try:
        maildir = os.path.join(work, "mail")
        greylist = os.path.join(work, "greylist")
        os.mkdir(maildir)
        cdb = os.path.join(work, "validrcptto.cdb")
        subprocess.run([prog("qtools-mkcdb"), "-a", cdb, cdb + ".tmp"],
                       input=b"joe@example.com\n", check=True)
        rules = os.path.join(work, "tcp.smtp.cdb")
        subprocess.run(["tcprules", rules, rules + ".tmp"], check=True,
                       input=b'127.0.0.:allow,TCPREMOTEHOST="mail.bench.example"\n:allow\n')
        env = {
            "PATH": "%s:/usr/bin:/bin" % install_bin(),
            "VALIDRCPTTO_CDB": cdb,
        }
        if dns_port == 53:
            env["DNSCACHEIP"] = dns_host
        else:
            env["QTOOLS_RESOLVER"] = "%s:%d" % (dns_host, dns_port)
        sink = [os.path.join(REPO, "examples", "smtpsink"), maildir]
        tail = [prog("greylist"), "-m", "1", greylist, prog("validrcptto"), prog("tarpit")] + sink
        chains = {
            "qtools": [prog("rhostcheck"), prog("rblcheck"), "-r", ZONE] + tail,
            "rblsmtpd": [prog("rhostcheck"), "rblsmtpd", "-r", ZONE] + tail,
            "sink": sink,
        }
        if dns_port != 53:
            print("rbldnsd could not take port 53 (not root?): no rblsmtpd chain to compare")
            del chains["rblsmtpd"]
        # The first session is greylisted; later ones find an old entry.
        warm = Server(work, chains["qtools"], env)
        try:
            session(warm.port)
        except smtplib.SMTPException:
            pass
        warm.stop(1)
        time.sleep(1.2)
        before = len(os.listdir(maildir))
        per, rss = {name: [] for name in chains}, {name: [] for name in chains}
        floors = []
        for _ in range(ROUNDS):
            # The floor in each round too, so that the machine's load falls on it alike.
            floors.append(measure(FLOOR, 5, env)[1])
            for name, argv in chains.items():
                cpu, peak = run(work, argv, env)
                per[name].append(cpu / SESSIONS)
                rss[name].append(peak / 1024.0)
        stored = len(os.listdir(maildir)) - before
        floor = statistics.median(floors)
    finally:
        rbldnsd.terminate()
        rbldnsd.wait()
        shutil.rmtree(work, ignore_errors=True)
    expected = ROUNDS * len(chains) * SESSIONS
    if stored != expected:
        print("bench_chain: %d of %d messages stored: the chain is broken" % (stored, expected))
        return 1
    ms = 1000
    sink = statistics.median(per["sink"])
    ours = statistics.median(per["qtools"]) - sink
    rows = [
        ("full chain, accepted session, one DNSBL query: cpu", ours * ms, floor * ms,
         FLOOR_NAME, 3.0, "ms"),
    ]
    if "rblsmtpd" in per:
        theirs = statistics.median(per["rblsmtpd"]) - sink
        rows.append(("full chain, accepted session, one DNSBL query: cpu", ours * ms, theirs * ms,
                     "rblsmtpd chain", None, "ms"))
    rows += [
        ("full chain: peak RSS of any process", max(rss["qtools"]), 30.0, "30 MB", 1.0, "MB"),
        ("sink alone under tcpserver: cpu (subtracted above)", sink * ms, floor * ms,
         FLOOR_NAME, None, "ms"),
    ]
    title = "the chain per connection, medians of %d rounds of %d sessions" % (ROUNDS, SESSIONS)
    return 1 if table(rows, title) else 0


if __name__ == "__main__":
    sys.exit(main())
