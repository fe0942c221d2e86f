# SPDX-License-Identifier: ISC
"""make demo end to end: the whole chain under tcpserver in front of the sink."""

import contextlib
import os
import socket
import signal
import smtplib
import subprocess
import time

import pytest

from conftest import REPO, VENV_BIN, free_port, read_maildir, smtp_from, wait_for_port

pytestmark = pytest.mark.e2e


def demo_env(tmp_path, port, dnsport):
    """The environment of a demo in tmp_path/demo with a 2-second greylist delay."""
    return dict(
        os.environ,
        QTOOLS_DEMO_DIR=str(tmp_path / "demo"),
        QTOOLS_DEMO_PORT=str(port),
        QTOOLS_DEMO_DNSPORT=str(dnsport),
        QTOOLS_DEMO_DELAY="2",
        QTOOLS_BIN=VENV_BIN,
    )


@contextlib.contextmanager
def running_demo(tmp_path, name="demo.log"):
    """Run examples/demo on free loopback ports; yield (port, maildir, log path)."""
    port, dnsport = free_port(), free_port()
    log = open(tmp_path / name, "wb")
    process = subprocess.Popen(
        ["sh", os.path.join(REPO, "examples", "demo")],
        env=demo_env(tmp_path, port, dnsport),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", port, 20)
        time.sleep(0.5)  # rbldnsd loads its zone beside tcpserver
        yield port, tmp_path / "demo" / "mail", tmp_path / name
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
        log.close()


@pytest.fixture
def demo(tmp_path):
    """Run examples/demo on free loopback ports with a 2-second greylist delay."""
    with running_demo(tmp_path) as running:
        yield running


def send(port, source, rcpt):
    """Send one message; return (code, text) of the first refusal, or (250, b"")."""
    client = smtp_from("127.0.0.1", port, source)
    try:
        client.ehlo("client.example")
        client.mail("sender@example.org")
        code, text = client.rcpt(rcpt)
        if code != 250:
            return code, text
        code, text = client.data(b"Subject: demo\r\n\r\nhello\r\n")
        return (250, b"") if code == 250 else (code, text)
    finally:
        try:
            client.quit()
        except smtplib.SMTPException:
            pass


def test_demo_serves_the_whole_chain(demo):
    """Greylisted first, accepted after the delay into the sink; bad recipient and listed IP refused."""
    port, maildir, log = demo
    code, text = send(port, "127.0.0.1", "joe@example.com")
    assert (code, text) == (451, b"greylisted, try again in 2 seconds (#4.7.1)")
    time.sleep(2.5)
    assert send(port, "127.0.0.1", "joe@example.com") == (250, b"")
    messages = read_maildir(maildir)
    assert len(messages) == 1
    assert b"X-Sink-To: <joe@example.com>" in messages[0]
    # qtools-queue behind the sink: stored with qmail-smtpd's LF line ends
    assert b"\n\nhello\n" in messages[0]
    code, text = send(port, "127.0.0.5", "nobody@example.com")
    assert (code, text) == (553, b"sorry, this recipient is not in my validrcptto list (#5.7.1)")
    code, text = send(port, "127.0.0.2", "joe@example.com")
    assert (code, text) == (451, b"Listed by bl.qtools.test, see http://bl.qtools.test/?127.0.0.2")
    code, text = send(port, "127.0.0.66", "joe@example.com")
    assert code == 553
    assert send(port, "127.0.0.10", "anyone@example.org") == (250, b"")
    assert len(read_maildir(maildir)) == 2
    logged = log.read_bytes().decode()
    assert "greylist: 127.0.0.1 pid " in logged
    assert "throttle: 127.0.0.2 pid " in logged
    assert "rblcheck: 127.0.0.2 pid " in logged
    assert "qtools-queue: 127.0.0.1 pid " in logged


def test_demo_throttles_a_fourth_connection(demo):
    """Three connections from one address are served; a fourth hears throttle's 421."""
    port, _, _ = demo

    def greeting():
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        return s, s.makefile("rb").readline()

    held = [greeting() for _ in range(3)]
    try:
        assert [line[:4] for _, line in held] == [b"220 "] * 3
        s, line = greeting()
        s.close()
        assert line == b"421 too many connections from your network, try again later (#4.3.2)\r\n"
    finally:
        for s, _ in held:
            s.close()


def test_second_demo_starts_clean(tmp_path):
    """A second make demo shows the first example's 451 again: no greylist state or mail kept."""
    with running_demo(tmp_path, "first.log") as (port, maildir, _):
        assert send(port, "127.0.0.1", "joe@example.com")[0] == 451
        time.sleep(2.5)
        assert send(port, "127.0.0.1", "joe@example.com") == (250, b"")
        assert len(read_maildir(maildir)) == 1
    with running_demo(tmp_path, "second.log") as (port, maildir, _):
        assert read_maildir(maildir) == []
        assert send(port, "127.0.0.1", "joe@example.com")[0] == 451


def test_demo_on_a_taken_port_fails_before_its_banner(tmp_path):
    """QTOOLS_DEMO_PORT in use: a fatal message naming the variable, exit 111, no banner."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(["sh", os.path.join(REPO, "examples", "demo")],
                              env=demo_env(tmp_path, port, free_port()),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert done.returncode == 111
    assert b"qtools demo:" not in done.stdout
    assert b"demo: fatal: unable to listen on 127.0.0.1:%d" % port in done.stderr
    assert b"QTOOLS_DEMO_PORT" in done.stderr
