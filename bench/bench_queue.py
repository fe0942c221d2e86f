#!/usr/bin/env python3
# SPDX-License-Identifier: ISC
"""qtools-queue against qmail-spamc's way, in wall and CPU time per message, and its memory.

Ours is the qtools-queue of make install (bench/common.py), as an admin
runs it.  The reference is what qmail-spamc does: spamc reading the message and
piping spamd's rewritten message into qmail-queue (here `spamc -U sock |
qmail-queue`, run by sh).  Ours is qtools-queue as $QMAILQUEUE, asking the
same spamd with SYMBOLS and exec'ing the same stand-in qmail-queue, which
reads fd 0 and fd 1 to their end.  Both take turns in the same run on the
same private spamd (local tests only), so spamd's own scanning is in both
wall times and the ratio is what qtools-queue adds or saves; CPU is that
of the processes each way starts (spamd's is in neither).

Memory: qtools-queue's peak RSS for a 1 MB and a 50 MB message (both over
spamd's size limit, so spooled and handed on): flat means the same.

BENCH_RUNS (default 5) sets the runs per case.
"""

import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
sys.path.insert(0, HERE)

from common import RUNS, install_bin, measure_many, table  # noqa: E402
from helpers_queue import GTUBE, envelope, peak_rss, spamd_binary, start_spamd  # noqa: E402

STANDIN = "#!/bin/sh\ncat > /dev/null\ncat <&1 > /dev/null\n"
HAM = (b"From: alice@example.org\nTo: joe@example.com\nSubject: lunch\n"
       b"Date: Mon, 30 Nov 2026 10:00:00 +0000\nMessage-ID: <1@example.org>\n\n"
       + b"Shall we meet at noon? The usual place, by the river.\n" * 40)
SPAM = b"From: spammer@example.org\nTo: joe@example.com\nSubject: offer\n\n" + GTUBE + b"\n"
BIG = HAM + b"".join(b"line %06d of a long report, nothing to see here.\n" % i
                                    for i in range(4000))  # about 200 KB, under spamc's limit


def write(path, data, mode=0o644):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def main():
    if not spamd_binary() or not subprocess.run(["sh", "-c", "command -v spamc"],
                                                capture_output=True).returncode == 0:
        print("skipped: spamd or spamc is not installed (make debs installs them)")
        return 0
    top = tempfile.mkdtemp(prefix="bench_queue.")
    os.chmod(top, 0o755)
    spamd = start_spamd()
    try:
        return run(top, spamd.socket)
    finally:
        spamd.stop()
        subprocess.run(["rm", "-rf", top])


def run(top, sock):
    standin = write(os.path.join(top, "qmail-queue"), STANDIN.encode(), 0o755)
    env_file = write(os.path.join(top, "envelope"), envelope(b"alice@example.org", b"joe@example.com"))
    queue = install_bin("qtools-queue")
    ours_env = {"PATH": "/usr/bin:/bin", "QTOOLS_SPAMD": sock, "QTOOLS_QMAILQUEUE": standin,
                "TCPREMOTEIP": "192.0.2.7"}
    theirs = ["sh", "-c", 'exec 1<"$ENVELOPE"; spamc -U "$SOCK" -u joe@example.com | "$STANDIN"']
    theirs_env = {"PATH": "/usr/bin:/bin", "SOCK": sock, "STANDIN": standin, "ENVELOPE": env_file}
    rows = []
    for label, data in (("ham, 2 KB", HAM), ("GTUBE", SPAM), ("ham, 200 KB", BIG)):
        message = write(os.path.join(top, "message"), data)
        # qtools-queue reads the envelope on fd 1: a shell redirection gives it.
        ours = ["sh", "-c", 'exec "$QUEUE" 1<"$ENVELOPE" 2>/dev/null']
        env = dict(ours_env, QUEUE=queue, ENVELOPE=env_file)
        (ow, oc), (tw, tc) = measure_many([(ours, env, message), (theirs, theirs_env, message)], RUNS)
        rows.append(("%s: wall per message" % label, ow * 1000, tw * 1000, "spamc | qq", 1.1, "ms"))
        rows.append(("%s: CPU per message (spamd's excluded)" % label, oc * 1000, tc * 1000, "spamc | qq",
                     None, "ms"))
    failures = table(rows, "qtools-queue vs qmail-spamc's way, same spamd (%d runs, medians)" % RUNS)
    small, large = message_rss(top, standin, env_file, 1), message_rss(top, standin, env_file, 50)
    failures += table([("peak RSS, 50 MB message vs 1 MB", large, small, "1 MB message", 1.2, "MB")],
                      "qtools-queue's memory (maximum resident set of the process)")
    return 1 if failures else 0


def message_rss(top, standin, env_file, megabytes):
    """Return qtools-queue's peak RSS in MB for a message of megabytes (not sent to spamd)."""
    path = os.path.join(top, "big.msg")
    with open(path, "wb") as f:
        f.write(b"Subject: big\n\n")
        line = b"y" * 76 + b"\n"
        for _ in range(megabytes * 13797):
            f.write(line)
    env = {"PATH": "/usr/bin:/bin", "QTOOLS_SPAMD": "", "QTOOLS_QMAILQUEUE": standin, "TCPREMOTEIP": "192.0.2.7"}
    code, peak = peak_rss(path, env_file, env, (install_bin("qtools-queue"),))
    os.unlink(path)
    if code != 0:
        raise RuntimeError("qtools-queue exited %d" % code)
    return peak


if __name__ == "__main__":
    sys.exit(main())
