#!/usr/bin/env python3
# SPDX-License-Identifier: ISC
"""mfcheck's cost per accepted session: alone with the MX lookup, and in the whole chain.

The programs are those of make install (bench/common.py), as an admin
runs them.  Each run is one scripted session (EHLO, MAIL with a sender whose domain
has an MX and an SPF record, one RCPT, a short message, QUIT) fed to the
program on standard input, in front of the demo sink; the DNS server is
tests/dnsserver.py on loopback, in this process, so its work is not
counted.  The sink alone is measured the same way and subtracted.
Targets (issue 17): mfcheck alone with the MX lookup at most 1.5 times
python -I -S -c pass (the installation's interpreter); the whole chain (rhostcheck rblcheck greylist
mfcheck validrcptto tarpit) with the MX lookup and an SPF check at most 3
times, the README's whole-chain goal.  validrcptto alone, the same
proxy with a cdb lookup instead of DNS, is measured beside them: it is
the floor any proxy-level program stands on.
"""

import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from common import FLOOR, FLOOR_NAME, REPO, install_bin, measure_many, table  # noqa: E402
from dnsserver import DNSServer  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "11"))
SESSION = (b"EHLO mail.bench.example\r\nMAIL FROM:<joe@bench.example>\r\n"
           b"RCPT TO:<joe@example.com>\r\nDATA\r\nSubject: bench\r\n\r\nhello\r\n.\r\nQUIT\r\n")
RECORDS = {
    "bench.example": [("MX", "10 mx.bench.example."),
                      ("TXT", '"v=spf1 ip4:192.0.2.0/24 include:_spf.bench.example -all"')],
    "_spf.bench.example": [("TXT", '"v=spf1 ip4:127.0.0.0/8 -all"')],
}


prog = install_bin


def main():
    work = tempfile.mkdtemp(prefix="bench_mfcheck.")
    maildir = os.path.join(work, "mail")
    os.mkdir(maildir)
    cdb = os.path.join(work, "validrcptto.cdb")
    subprocess.run([prog("qtools-mkcdb"), "-a", cdb, cdb + ".tmp"], input=b"joe@example.com\n",
                   check=True)
    sink = [sys.executable, os.path.join(REPO, "examples", "smtpsink"), maildir]
    try:
        return measured(work, maildir, cdb, sink)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measured(work, maildir, cdb, sink):
    """Run the cases against the DNS server; print the table, return the exit code."""
    with DNSServer(RECORDS) as server:
        env = {"PATH": "%s:/usr/bin:/bin" % install_bin(), "TCPREMOTEIP": "127.0.0.9",
               "TCPREMOTEHOST": "mail.bench.example", "QTOOLS_RESOLVER": server.address,
               "VALIDRCPTTO_CDB": cdb}
        alone = [prog("mfcheck")] + sink
        chain = ([prog("rhostcheck"), prog("rblcheck"), "-r", "bl.bench.test", prog("greylist"),
                  "-m", "0", os.path.join(work, "greylist"), prog("mfcheck"), "-p", "3",
                  prog("validrcptto"), prog("tarpit")] + sink)
        # The first session through greylist makes its entry; the others pass.
        for argv in (chain, alone):
            done = subprocess.run(argv, input=SESSION, env=env, capture_output=True)
            if b"pass from=joe@bench.example" not in done.stderr:
                sys.exit("bench_mfcheck: fatal: mfcheck did not pass the sender:\n"
                         + done.stderr.decode("utf-8", "replace"))
        before = len(os.listdir(maildir))
        proxy = [prog("validrcptto")] + sink
        results = measure_many([(sink, env, SESSION), (alone, env, SESSION), (chain, env, SESSION),
                                (proxy, env, SESSION),
                                (FLOOR, env)], RUNS)
        spf_asked = ("_spf.bench.example", "TXT") in server.questions
    stored = len(os.listdir(maildir)) - before
    if stored != 4 * RUNS or not spf_asked:
        print("bench_mfcheck: %d of %d messages stored, SPF asked: %s" % (stored, 4 * RUNS, spf_asked))
        return 1
    sink_cpu, alone_cpu, chain_cpu, proxy_cpu, floor = (cpu for _, cpu in results)
    ms = 1000
    rows = [
        ("mfcheck alone, one MAIL with its MX lookup: cpu", (alone_cpu - sink_cpu) * ms,
         floor * ms, FLOOR_NAME, 1.5, "ms"),
        ("whole chain with mfcheck -p 3, MX and SPF: cpu", (chain_cpu - sink_cpu) * ms,
         floor * ms, FLOOR_NAME, 3.0, "ms"),
        ("  validrcptto alone: the proxy by itself: cpu", (proxy_cpu - sink_cpu) * ms,
         floor * ms, FLOOR_NAME, None, "ms"),
        ("sink alone (subtracted above): cpu", sink_cpu * ms, floor * ms, FLOOR_NAME, None, "ms"),
    ]
    return 1 if table(rows, "mfcheck per session, medians of %d runs" % RUNS) else 0


if __name__ == "__main__":
    sys.exit(main())
