# SPDX-License-Identifier: ISC
"""qtools-queue against a real spamd and a real clamd, and behind the demo sink under tcpserver.

spamd runs with local tests only (-L) and clamd with a one-line EICAR
signature file, both on unix sockets in a temporary directory: nothing
leaves the machine, no sa-update or freshclam is needed.
"""

import base64
import hashlib
import os
import re
import signal
import socket
import subprocess

import pytest

from conftest import VENV_BIN, base_env, run_prog
from helpers_queue import (EICAR, GTUBE, FakeScanner, clamd_binary, envelope, make_standin,
                           peak_rss, queued, run_queue, spamd_binary, start_clamd, start_spamd)

pytestmark = pytest.mark.e2e

CLEAN = (b"From: alice@example.org\nTo: joe@example.com\nSubject: lunch\n"
         b"Date: Mon, 30 Nov 2026 10:00:00 +0000\nMessage-ID: <1@example.org>\n\n"
         b"Shall we meet at noon?\n")
SPAM = (b"From: spammer@example.org\nTo: joe@example.com\nSubject: offer\n\n" + GTUBE + b"\n")
ONE = envelope(b"alice@example.org", b"joe@example.com")


def with_attachment(payload):
    return (b"From: alice@example.org\nTo: joe@example.com\nSubject: the file\nMIME-Version: 1.0\n"
            b"Content-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\nContent-Type: text/plain\n\n"
            b"see attached\n--b1\nContent-Type: application/octet-stream\n"
            b"Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=\"t.com\"\n\n"
            + base64.encodebytes(payload) + b"--b1--\n")


@pytest.fixture(scope="module")
def scanners(tmp_path_factory):
    """A real spamd and a real clamd for this module, on unix sockets."""
    missing = [name for name, found in (("spamd (Debian package spamd)", spamd_binary()),
                                        ("clamd (Debian package clamav-daemon)", clamd_binary()))
               if not found]
    if missing:
        pytest.skip("not installed: %s; make debs installs them" % ", ".join(missing))
    top = tmp_path_factory.mktemp("scanners")
    os.chmod(str(top), 0o755)
    clamd = start_clamd(top / "clamd")
    try:
        spamd = start_spamd()
    except Exception:
        clamd.stop()
        raise
    yield {"QTOOLS_SPAMD": spamd.socket, "QTOOLS_CLAMD": clamd.socket, "spamd": spamd, "clamd": clamd}
    spamd.stop()
    clamd.stop()


@pytest.fixture
def env(tmp_path, scanners):
    path, out = make_standin(tmp_path)
    return {"QTOOLS_QMAILQUEUE": path, "STANDIN_DIR": out, "QTOOLS_SPAMD": scanners["QTOOLS_SPAMD"],
            "QTOOLS_CLAMD": scanners["QTOOLS_CLAMD"], "QMAILQUEUE": "/loop", "QTOOLS_SCAN_TIMEOUT": "30"}


def test_clean_mail_delivered_with_spam_status_no(tmp_path, env):
    run = run_queue(tmp_path, CLEAN, ONE, env)
    assert run.rc == 0, run
    [(message, env_bytes)] = queued(env["STANDIN_DIR"])
    head, _, rest = message.partition(b"From: alice")
    assert head.startswith(b"X-Spam-Status: No, score=") and b"required=5.0" in head
    assert b"From: alice" + rest == CLEAN and env_bytes == ONE
    assert " deliver from=alice@example.org rcpts=1 size=%d spam=no score=" % len(CLEAN) in run.log()
    assert " required=5.0 " in run.log() and " rcpt=joe@example.com" in run.log()


def test_gtube_tagged_with_subject_prefix(tmp_path, env):
    run = run_queue(tmp_path, SPAM, ONE, dict(env, QTOOLS_SPAM_SUBJECT="[SPAM]", QTOOLS_SPAM_DELTA="5"))
    assert run.rc == 0, run
    [(message, _)] = queued(env["STANDIN_DIR"])
    assert re.match(rb"X-Spam-Flag: YES\nX-Spam-Status: Yes, score=\d{3,4}\.\d required=5\.0 ", message)
    assert b"tests=GTUBE" in message.replace(b"\n\t", b"")
    assert message.endswith(SPAM.replace(b"Subject: offer", b"Subject: [SPAM] HIGH offer"))
    assert " tag " in run.log() and " spam=yes " in run.log() and "GTUBE" in run.log()


@pytest.mark.parametrize(("variable", "action", "code"), [
    ("QTOOLS_SPAM_QUARANTINE", "quarantine", 0),
    ("QTOOLS_SPAM_DELETE", "drop", 0),
    ("QTOOLS_SPAM_REJECT", "reject", 31),
])
def test_gtube_at_each_threshold(tmp_path, env, variable, action, code):
    maildir = tmp_path / "quarantine"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    settings = {variable: "10", "QTOOLS_QUARANTINE": str(maildir)}
    # Clean mail goes through whatever the line.
    assert run_queue(tmp_path, CLEAN, ONE, dict(env, **settings)).rc == 0
    assert len(queued(env["STANDIN_DIR"])) == 1
    run = run_queue(tmp_path, SPAM, ONE, dict(env, **settings))
    assert run.rc == code, run
    assert len(queued(env["STANDIN_DIR"])) == 1  # the spam was not queued
    assert (" %s " % action) in run.log() and "why=spam" in run.log()
    assert len(os.listdir(maildir / "new")) == (action == "quarantine")


def test_highest_line_reached_wins(tmp_path, env):
    settings = {"QTOOLS_SPAM_QUARANTINE": "1", "QTOOLS_SPAM_DELETE": "2", "QTOOLS_SPAM_REJECT": "3",
                "QTOOLS_QUARANTINE": str(tmp_path)}
    run = run_queue(tmp_path, SPAM, ONE, dict(env, **settings))
    assert run.rc == 31 and " reject " in run.log()
    run = run_queue(tmp_path, SPAM, ONE, dict(env, TCPREMOTEIP="127.0.0.1", **settings))
    assert run.rc == 0 and " drop " in run.log()
    assert queued(env["STANDIN_DIR"]) == []


def test_eicar_attachment_refused_or_quarantined(tmp_path, env):
    message = with_attachment(EICAR)
    run = run_queue(tmp_path, message, ONE, env)
    assert run.rc == 31, run
    assert " reject " in run.log() and "virus=Test.EICAR.NDB.UNOFFICIAL" in run.log()
    assert " spam=skipped " in run.log()  # spamd is not asked about a virus
    maildir = tmp_path / "q"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    run = run_queue(tmp_path, message, ONE, dict(env, QTOOLS_VIRUS="quarantine", QTOOLS_QUARANTINE=str(maildir)))
    assert run.rc == 0 and " quarantine " in run.log()
    [name] = os.listdir(maildir / "new")
    assert (maildir / "new" / name).read_bytes().endswith(message)
    assert queued(env["STANDIN_DIR"]) == []
    # The same attachment without the virus goes through.
    assert run_queue(tmp_path, with_attachment(b"harmless"), ONE, env).rc == 0


def test_envelope_kept_byte_for_byte(tmp_path, env):
    many = envelope(b"", b"joe@example.com", b"Mary.Smith+tag@Example.COM", b"x@[192.0.2.1]",
                    b"\"odd name\"@example.net")
    run = run_queue(tmp_path, CLEAN, many, env)
    assert run.rc == 0, run
    [(message, env_bytes)] = queued(env["STANDIN_DIR"])
    assert env_bytes == many and message.endswith(CLEAN)
    assert 'from="" rcpts=4 ' in run.log() and " rcpt=" not in run.log()


def dead_socket(path):
    """Leave a unix socket nobody listens on, as a stopped daemon does."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    return str(path)


@pytest.mark.parametrize("which", ["QTOOLS_SPAMD", "QTOOLS_CLAMD"])
def test_scanner_stopped_or_garbage(tmp_path, env, which):
    garbage = FakeScanner(tmp_path, "garbage", terminator=b"\0\0\0\0" if which == "QTOOLS_CLAMD" else None)
    try:
        for address, kind in ((dead_socket(tmp_path / "dead.sock"), "unreachable"),
                              (garbage.path, "protocol")):
            run = run_queue(tmp_path, SPAM, ONE, dict(env, **{which: address}))
            assert run.rc == 0, run
            assert " unscanned " in run.log() and "why=%s:%s" % (which[7:].lower(), kind) in run.log()
            run = run_queue(tmp_path, SPAM, ONE, dict(env, QTOOLS_QUEUE_TEMPFAIL="1", **{which: address}))
            assert run.rc == 71 and " tempfail " in run.log()
    finally:
        garbage.stop()
    delivered = queued(env["STANDIN_DIR"])
    assert len(delivered) == 2
    if which == "QTOOLS_SPAMD":  # no spamd answer: nothing claims a score
        assert all(m == SPAM for m, _ in delivered)


@pytest.mark.parametrize("which", ["spamd", "clamd"])
def test_scanner_hung(tmp_path, env, scanners, which):
    """The daemon stopped by SIGSTOP: the kernel still accepts, nothing answers."""
    process = scanners[which].process
    os.killpg(process.pid, signal.SIGSTOP)
    try:
        run = run_queue(tmp_path, SPAM, ONE, dict(env, QTOOLS_SCAN_TIMEOUT="2"))
        assert run.rc == 0 and "why=%s:timeout" % which in run.log()
        if which == "spamd":
            assert queued(env["STANDIN_DIR"])[0][0] == SPAM
        run = run_queue(tmp_path, SPAM, ONE, dict(env, QTOOLS_SCAN_TIMEOUT="2", QTOOLS_QUEUE_TEMPFAIL="1"))
        assert run.rc == 71 and "why=%s:timeout" % which in run.log()
        assert int(run.log().split(" ms=")[1].split()[0]) < 4000
    finally:
        os.killpg(process.pid, signal.SIGCONT)


def test_fifty_megabytes_with_flat_memory(tmp_path, env):
    """A 50 MB message: over spamd's size limit and clamd's StreamMaxLength, delivered as it is,
    in no more memory than a small message."""
    path = tmp_path / "big.msg"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        head = b"From: alice@example.org\nSubject: big\n\n"
        f.write(head)
        digest.update(head)
        block = (b"x" * 76 + b"\n") * 13797  # 1 MiB, a few bytes over
        for _ in range(50):
            f.write(block)
            digest.update(block)
    size = os.path.getsize(path)
    run = run_queue(tmp_path, None, ONE, env, message_path=str(path), timeout=120)
    assert run.rc == 0, run
    assert " size=%d spam=skipped " % size in run.log()
    [name] = [n for n in os.listdir(env["STANDIN_DIR"]) if n.endswith(".msg")]
    got = hashlib.sha256()
    with open(os.path.join(env["STANDIN_DIR"], name), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            got.update(chunk)
    assert got.digest() == digest.digest()
    small = tmp_path / "small.msg"
    small.write_bytes(CLEAN)
    (tmp_path / "env").write_bytes(ONE)
    launch_env = base_env(dict(env, TCPREMOTEIP="192.0.2.7"))
    code, peak_small = peak_rss(str(small), str(tmp_path / "env"), launch_env)
    code_big, peak_big = peak_rss(str(path), str(tmp_path / "env"), launch_env)
    print("qtools-queue peak RSS: %.1f MB for %d bytes, %.1f MB for %d bytes"
          % (peak_small, len(CLEAN), peak_big, size))
    assert (code, code_big) == (0, 0)
    assert peak_big < peak_small + 5


def test_release_reaches_the_recipients_once(tmp_path, env):
    maildir = tmp_path / "quarantine"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    two = envelope(b"spammer@example.org", b"joe@example.com", b"ann@example.com")
    run = run_queue(tmp_path, SPAM, two, dict(env, QTOOLS_SPAM_QUARANTINE="0", QTOOLS_QUARANTINE=str(maildir)))
    assert run.rc == 0 and " quarantine " in run.log()
    [name] = os.listdir(maildir / "new")
    admin = dict(env, QTOOLS_QUARANTINE=str(maildir))
    listed = run_prog(["qtools-queue", "-l"], env=admin)
    assert listed.out.startswith(name.encode() + b" from=spammer@example.org rcpts=2 ")
    done = run_prog(["qtools-queue", "-r", name], env=admin)
    assert done.rc == 0, done
    assert run_prog(["qtools-queue", "-r", name], env=admin).rc == 100
    [(message, env_bytes)] = queued(env["STANDIN_DIR"])
    assert env_bytes == two
    assert message.startswith(b"X-Spam-Flag: YES\n") and message.endswith(SPAM)
    assert os.listdir(maildir / "new") == [] and os.listdir(maildir / "tmp") == []


def test_check_against_the_real_scanners(tmp_path, env):
    run = run_prog(["qtools-queue", "-c"], env=env)
    assert run.rc == 0, run
    assert b"spamd at %s: SPAMD/1.5 0 PONG\n" % env["QTOOLS_SPAMD"].encode() in run.out
    assert b"clamd at %s: ClamAV " % env["QTOOLS_CLAMD"].encode() in run.out


def swaks(port, *args):
    """Run swaks from 127.0.0.5 (a client of the chain, not this host); return its transcript."""
    done = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % port, "--local-interface", "127.0.0.5",
                           "--from", "alice@example.org", "--to", "joe@example.com", "--timeout", "60"]
                          + list(args), capture_output=True, timeout=120)
    return done.stdout.decode("utf-8", "replace")


def test_chain_sink_and_qtools_queue_under_tcpserver(tmp_path, tcpserver, scanners):
    """swaks -> tcpserver -> validrcptto tarpit -> smtpsink -> $QMAILQUEUE=qtools-queue -> qmail-queue."""
    from conftest import REPO, SINK, read_maildir

    maildir = tmp_path / "mail"
    maildir.mkdir()
    rcpt = str(tmp_path / "validrcptto.cdb")
    assert run_prog(["qtools-mkcdb", "-a", rcpt, rcpt + ".tmp"], stdin=b"joe@example.com\n").rc == 0
    standin = tmp_path / "qmail-queue"
    standin.write_text("#!/bin/sh\nexec %s %s -q %s\n" % (SINK[0], os.path.join(REPO, "examples", "smtpsink"),
                                                           maildir))
    standin.chmod(0o755)
    env = {"QMAILQUEUE": os.path.join(VENV_BIN, "qtools-queue"), "QTOOLS_QMAILQUEUE": str(standin),
           "QTOOLS_SPAMD": scanners["QTOOLS_SPAMD"], "QTOOLS_CLAMD": scanners["QTOOLS_CLAMD"],
           "QTOOLS_SPAM_REJECT": "10", "VALIDRCPTTO_CDB": rcpt}
    server = tcpserver(["validrcptto", "tarpit"] + SINK + [str(maildir)], env=env)
    out = swaks(server.port, "--body", "Shall we meet at noon?")
    assert "<-  250 ok " in out and " qp " in out, out
    [stored] = read_maildir(maildir)
    assert b"X-Sink-To: <joe@example.com>\n" in stored and b"\nX-Spam-Status: No, score=" in stored
    assert b"\nReceived: from " in stored  # the sink's, under ours: the message's own bytes
    out = swaks(server.port, "--body", GTUBE.decode())
    assert "<** 554 mail server permanently rejected message (#5.3.0)" in out, out
    assert len(read_maildir(maildir)) == 1
    log = server.log()
    assert "qtools-queue: 127.0.0.5 pid " in log and " reject from=alice@example.org rcpts=1 " in log
    assert " deliver from=alice@example.org rcpts=1 " in log


def test_custom_text_on_fd_6_under_tcpserver(tmp_path, tcpserver, scanners):
    """With QTOOLS_REJECT_FD=6 the client hears why (notqmail 1.09's custom error)."""
    from conftest import SINK

    maildir = tmp_path / "mail"
    maildir.mkdir()
    env = {"QMAILQUEUE": os.path.join(VENV_BIN, "qtools-queue"), "QTOOLS_QMAILQUEUE": "/nonexistent",
           "QTOOLS_SPAMD": scanners["QTOOLS_SPAMD"], "QTOOLS_CLAMD": scanners["QTOOLS_CLAMD"],
           "QTOOLS_SPAM_REJECT": "0", "QTOOLS_REJECT_FD": "6"}
    server = tcpserver(SINK + [str(maildir)], env=env)
    out = swaks(server.port, "--attach-type", "application/octet-stream", "--attach", EICAR.decode())
    assert "<** 554 this message contains a virus: Test.EICAR.NDB.UNOFFICIAL (#5.7.1)" in out, out
    out = swaks(server.port, "--body", GTUBE.decode())
    assert re.search(r"<\*\* 554 this message looks like spam \(score \d{3,4}\.\d, required 5\.0\) \(#5\.7\.1\)",
                     out), out
