# SPDX-License-Identifier: ISC
"""The feedback loop end to end: validrcptto under tcpserver logs through a real
multilog, qtools-adaptive reads the directory, rblcheck -D refuses what it blocked."""

import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from conftest import base_env, free_port, sink_cmd, smtp_from, wait_for_port, VENV_BIN

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not shutil.which("multilog"), reason="needs multilog")]

GOOD, BAD = "joe@example.com", "nobody@example.com"


class Gateway:
    """tcpserver running chain, its stderr through multilog t into logdir."""

    def __init__(self, tmp_path, chain, size=99999):
        self.logdir = tmp_path / "log"
        self.logdir.mkdir(exist_ok=True)
        (tmp_path / "mail").mkdir(exist_ok=True)
        vcdb = str(tmp_path / "validrcptto.cdb")
        subprocess.run([os.path.join(VENV_BIN, "qtools-mkcdb"), "-a", vcdb, vcdb + ".tmp"],
                       input=GOOD.encode() + b"\n", check=True)
        env = base_env({"VALIDRCPTTO_CDB": vcdb, "VALIDRCPTTO_LOG": "1", "VALIDRCPTTO_LIMIT": "0",
                        "DNSCACHEIP": "127.0.0.1"})
        self.multilog = subprocess.Popen(["multilog", "t", "s%d" % size, "n200", str(self.logdir)],
                                         stdin=subprocess.PIPE)
        argv = ["tcpserver", "-R", "-H", "-l", "localhost", "-1", "127.0.0.1", "0"] + chain
        argv += sink_cmd(tmp_path / "mail")
        self.server = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                       stderr=self.multilog.stdin, stdin=subprocess.DEVNULL)
        self.port = int(self.server.stdout.readline())
        wait_for_port("127.0.0.1", self.port)

    def session(self, source, recipients):
        """One SMTP session from source trying each recipient; return the RCPT replies."""
        client = smtp_from("127.0.0.1", self.port, source)
        try:
            client.ehlo("client.example")
            client.mail("sender@example.org")
            return [client.rcpt(r) for r in recipients]
        finally:
            client.quit()

    def lines(self, word):
        """Return how many lines of the log directory hold word."""
        while True:
            try:
                return self._count(word)
            except FileNotFoundError:
                continue  # multilog renamed a file between listing and opening

    def _count(self, word):
        count, inodes = 0, set()
        for name in os.listdir(self.logdir):
            if name in ("current", "previous") or name[:1] == "@":
                with open(self.logdir / name, "rb") as f:
                    inode = os.fstat(f.fileno()).st_ino
                    if inode not in inodes:  # one file seen under two names
                        inodes.add(inode)
                        count += f.read().count(word.encode())
        return count

    def wait_lines(self, word, count, timeout=20):
        deadline = time.monotonic() + timeout
        while self.lines(word) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.lines(word) == count, self.matching(word)

    def matching(self, word):
        """Return the log lines that hold word, for a failure's message."""
        found = []
        for name in sorted(os.listdir(self.logdir)):
            if name in ("current", "previous") or name[:1] == "@":
                with open(self.logdir / name, "rb") as f:
                    found += [line for line in f if word.encode() in line]
        return b"".join(found).decode("ascii", "replace")

    def stop(self):
        self.server.terminate()
        self.server.wait(10)
        self.multilog.stdin.close()
        self.multilog.wait(10)


@pytest.fixture
def gateway(tmp_path):
    made = []

    def start(chain, size=99999):
        made.append(Gateway(tmp_path, chain, size))
        return made[-1]

    yield start
    for gw in made:
        gw.stop()


def adaptive(tmp_path, *args):
    argv = [os.path.join(VENV_BIN, "qtools-adaptive"), "-R"] + [str(a) for a in args]
    done = subprocess.run(argv, env=base_env(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stderr.decode()


def blocked(cdb, ip):
    done = subprocess.run([os.path.join(VENV_BIN, "qtools-mkcdb"), "-n", "-q", ip, str(cdb)],
                          capture_output=True)
    return done.returncode == 0


def counts(state, ip):
    with open(state / "state") as f:
        return tuple(json.load(f)["windows"][ip][:2])


def test_the_guides_rule_from_real_log_lines(tmp_path, gateway):
    """11 attempts with 6 bad block; 11 with 5 bad and 10 with 10 bad do not; rblcheck -D refuses."""
    gw = gateway(["validrcptto"])
    replies = gw.session("127.0.0.11", [BAD] * 6 + [GOOD] * 5)
    assert [code for code, _ in replies] == [553] * 6 + [250] * 5
    gw.session("127.0.0.12", [BAD] * 5 + [GOOD] * 6)
    gw.session("127.0.0.13", [BAD] * 10)
    # a line a recipient and one end line a session (the start-up probe's
    # connection from 127.0.0.1 logs too, at a time of its own)
    for client, lines in (("127.0.0.11", 12), ("127.0.0.12", 12), ("127.0.0.13", 11)):
        gw.wait_lines("validrcptto: %s pid" % client, lines)
    state, cdb = tmp_path / "state", tmp_path / "block.cdb"
    err = adaptive(tmp_path, state, cdb, gw.logdir)
    assert "qtools-adaptive: 127.0.0.11 pid " in err and "attempts=11 bad=6" in err
    assert [blocked(cdb, "127.0.0.%d" % n) for n in (11, 12, 13)] == [True, False, False]
    assert counts(state, "127.0.0.12") == (11, 5) and counts(state, "127.0.0.13") == (10, 10)
    gw.stop()
    # the block at work: a second gateway with rblcheck -D in front refuses the client
    gw = gateway(["rblcheck", "-D", str(cdb), "validrcptto"])
    ((code, text),) = gw.session("127.0.0.11", [GOOD])
    assert code == 451 and text.startswith(b"your address 127.0.0.11 is blocked until ")
    assert text.endswith(b"6 of its 11 attempts in 60 minutes were invalid recipients,"
                         b" spam or viruses (#4.7.1)")
    assert gw.session("127.0.0.12", [GOOD])[0][0] == 250
    # and the block ends after 4 hours
    subprocess.run(["faketime", "-f", "+4h", os.path.join(VENV_BIN, "qtools-adaptive"), "-R",
                    str(state), str(cdb), str(gw.logdir)], env=base_env(), check=True,
                   capture_output=True)
    assert not blocked(cdb, "127.0.0.11")


def test_rotation_in_a_burst_loses_no_line_and_a_restart_reads_none_twice(tmp_path, gateway):
    gw = gateway(["validrcptto"], size=4096)
    state, cdb = tmp_path / "state", tmp_path / "block.cdb"
    done = threading.Event()
    runs = []

    def follow():
        while not done.is_set():
            try:
                adaptive(tmp_path, state, cdb, gw.logdir)
            except AssertionError as error:
                runs.append(error)  # said by the test, not lost in the thread
                return
            runs.append(1)

    reader = threading.Thread(target=follow)
    reader.start()
    try:
        for _ in range(4):
            gw.session("127.0.0.21", [GOOD] * 100)
    finally:
        gw.wait_lines("validrcptto: 127.0.0.21 pid", 404)
        done.set()
        reader.join()
    assert len([n for n in os.listdir(gw.logdir) if n[:1] == "@"]) >= 5  # it did rotate
    assert len(runs) >= 2 and runs.count(1) == len(runs), runs
    adaptive(tmp_path, state, cdb, gw.logdir)
    assert counts(state, "127.0.0.21") == (400, 0)
    adaptive(tmp_path, state, cdb, gw.logdir)
    assert counts(state, "127.0.0.21") == (400, 0)


def test_as_multilogs_processor(tmp_path):
    """multilog gives each full current to qtools-adaptive -P, which blocks and keeps the lines."""
    from test_adaptive import burst

    logdir, state, cdb = tmp_path / "log", tmp_path / "state", tmp_path / "block.cdb"
    processor = "!%s -P %s %s" % (os.path.join(VENV_BIN, "qtools-adaptive"), state, cdb)
    lines = "".join(burst("192.0.2.7", 5, 6, time.time() - 60)).encode()
    lines = b"".join(l.split(b" ", 1)[1] for l in lines.splitlines(True))  # multilog stamps them
    filler = b"".join(b"greylist: 192.0.2.%d pid 1: pass\n" % (n % 200) for n in range(400))
    subprocess.run(["multilog", "t", "s4096", "n100", processor, str(logdir)],
                   input=lines + filler, env=base_env(), check=True, timeout=60)
    assert blocked(cdb, "192.0.2.7")
    archived = b"".join((logdir / n).read_bytes() for n in sorted(os.listdir(logdir)) if n[:1] == "@")
    assert archived.count(b"validrcptto: 192.0.2.7 pid") == 6  # the processor's output is the archive
