# SPDX-License-Identifier: ISC
"""The fuzz harness: every program fed hostile sessions, in-process for the bulk and as real processes.

$QTOOLS_FUZZ_SESSIONS sessions go to each in-process target (make fuzz sets
100000; make test runs the small default).  $QTOOLS_FUZZ_SEED picks the
sessions, so a failure can be replayed.  Each target prints one line,
"fuzz: TARGET sessions=N bytes=B replies=R ...", the figures of the README's
Reliability table.

In-process targets (the bulk):
  rblcheck, rhostcheck, greylist, tarpit
      the program's own main() refusing the client (an override, or the
      greylist directory store deferring), its fds 0/1/2 on memory files:
      the refusal conversation as the program runs it.
  proxy-filters
      the proxy engine with the filters validrcptto, greylist -T and tarpit
      build in their main(), a qmail-smtpd stand-in as the backend and a
      clock the harness moves, so tarpit holds are served.
  proxy-qmail
      the engine without a refusing filter, against qmail-smtpd fed the
      same bytes directly: both must parse the same commands and messages.
  proxy-backend
      the engine in front of a qmail-smtpd that sends replies unasked,
      says 421 on its own or dies at any byte of its replies.
  proxy-timing (hypothesis, SESSIONS / 10 examples)
      random command sequences through validrcptto, greylist -T and tarpit,
      sent whole, cut at random, byte by byte, and with the backend's
      replies handed over late and in pieces: the backend must read the
      same commands and messages every way.

Real processes: the installed programs on socketpairs, fed the same kind of
sessions in random chunks, drip-fed byte by byte (slowloris) or half-closed,
bounded by their timeouts.
"""

import os
import random
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import VENV_BIN, base_env
from helpers_proxy import FakeQmail, deliver
from qtools import address, core, proxy

SESSIONS = int(os.environ.get("QTOOLS_FUZZ_SESSIONS") or 400)
SEED = int(os.environ.get("QTOOLS_FUZZ_SEED") or 1993)
# Real-process sessions per program: a thousandth of the in-process count.
PROCESSES = max(4, SESSIONS // 1000)
HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers_proxy.py")
MEGABYTE = 1 << 20

REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([\x20-\x7e]*)\r\n")


def reply_lines(out):
    """Return the reply lines in out; fail unless every byte is part of a valid SMTP reply line.

    A line is a code, a space or hyphen, printable text and CR LF; a hyphen
    line continues a reply that a later line of the same code ends.
    """
    lines, at, open_code = [], 0, None
    while at < len(out):
        match = REPLY_LINE.match(out, at)
        assert match, "invalid reply bytes at %d: %r" % (at, out[at : at + 80])
        code, dash = match.group(1), match.group(2)
        assert open_code in (None, code), "reply %r continued with code %r" % (open_code, code)
        open_code = code if dash == b"-" else None
        lines.append(match.group(0))
        at = match.end()
    assert open_code is None, "unfinished multi-line reply %r" % out[-80:]
    return lines


# --- sessions -----------------------------------------------------------------

COMMANDS = [
    b"EHLO client.example", b"HELO client.example", b"helo", b"MAIL FROM:<a@b.example>",
    b"MAIL FROM:<>", b"mail from: <list-42@lists.example> SIZE=100", b"RCPT TO:<ok@example.com>",
    b"RCPT TO:<nobody@example.com>", b"rcpt to:<spamtrap@example.com>", b"RCPT TO:<postmaster>",
    b"RCPT TO:<a@b@c>", b"RCPT TO:", b"DATA", b"data", b"RSET", b"NOOP", b"QUIT", b"quit now",
    b"STARTTLS", b"starttls x", b"BDAT 10 LAST", b"VRFY root", b"AUTH PLAIN AAAA", b"\x00\x00",
    b"", b" ", b"MAIL", b"RCPT TO:<ok@example.com> NOTIFY=NEVER",
]
BODY = [b"Subject: x", b"", b".", b"..", b". ", b"hello", b"\x00", b"From: <a@b>"]
SMUGGLE = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r\n", b"\r\n.\n", b".\r\n", b"\r\n\r\n.\r\n",
           b"\rMAIL FROM:<evil@x>\r\n"]
ENDINGS = [b"\r\n"] * 6 + [b"\n", b"\r", b"", b"\r\r\n", b"\n\r"]


def piece(rng, big):
    """Return one random piece of a session."""
    kind = rng.random()
    if kind < 0.1:
        # A whole transaction, its body made of lines and smuggling attempts.
        body = b"".join(rng.choice(BODY) + rng.choice(ENDINGS) if rng.random() < 0.8
                        else rng.choice(SMUGGLE) for _ in range(rng.randrange(0, 8)))
        return (b"MAIL FROM:<s@sender.example>\r\nRCPT TO:<ok@example.com>\r\nDATA\r\n"
                + body + rng.choice([b"\r\n.\r\n", b".\r\n", b"\n.\n"]))
    if kind < 0.45:
        return rng.choice(COMMANDS) + rng.choice(ENDINGS)
    if kind < 0.6:
        return rng.choice(BODY) + rng.choice(ENDINGS)
    if kind < 0.68:
        return rng.choice(SMUGGLE)
    if kind < 0.78:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 48)))
    if kind < 0.82:
        return b"\x00" * rng.randrange(1, 300)
    if kind < 0.86:
        return rng.choice([b"\r", b"\n", b"\r\r", b"\n\n", b"\r\n\r\n"]) * rng.randrange(1, 20)
    if kind < 0.9:
        # A pipelined flood: one command many times in one write.
        return (rng.choice(COMMANDS[:12]) + b"\r\n") * rng.randrange(20, 400)
    if kind < 0.94:
        # An over-long line hiding a command past the limits.
        size = rng.choice([1001, 2047, 2049, 3000, 5000])
        return b"NOOP " + b"x" * (size - 5 - 6) + b"QUIT\r\n"
    if big:
        return b"RCPT TO:<" + b"A" * MEGABYTE + rng.choice([b">\r\n", b""])
    return b"X" * rng.randrange(1, 4000)


def session(rng):
    """Return (bytes the client sends, how it sends them: "whole", "chunks" or "drip")."""
    big = rng.random() < 0.002
    pieces = [piece(rng, big) for _ in range(rng.randrange(1, 30))]
    if rng.random() < 0.5:
        # Most real sessions start right: give the transaction a chance.
        pieces[:0] = [b"EHLO x\r\n", b"MAIL FROM:<s@sender.example>\r\n",
                      b"RCPT TO:<ok@example.com>\r\n", b"DATA\r\n"][: rng.randrange(1, 5)]
    if rng.random() < 0.3:
        pieces.append(b"QUIT\r\n")
    data = b"".join(pieces)
    how = rng.choice(["whole", "chunks", "chunks", "drip"] if len(data) < 600 else ["whole", "chunks"])
    return data, how


def chunks(rng, data, how):
    """Cut data as the client writes it."""
    if how == "whole":
        return [data]
    if how == "drip":
        return [data[i : i + 1] for i in range(len(data))]
    points = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 12)))
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)]) if data[a:b]]


class Tally:
    """Counts one target prints for the README table."""

    def __init__(self, name):
        self.name = name
        self.sessions = self.bytes = self.replies = 0
        self.counts = {}
        self.start = time.monotonic()

    def add(self, key, n=1):
        self.counts[key] = self.counts.get(key, 0) + n

    def report(self, capfd):
        """Print the figures past pytest's capture, so make fuzz shows them."""
        extra = " ".join("%s=%d" % kv for kv in sorted(self.counts.items()))
        line = "fuzz: %s sessions=%d bytes=%d replies=%d %s seconds=%.0f" % (
            self.name, self.sessions, self.bytes, self.replies, extra,
            time.monotonic() - self.start)
        with capfd.disabled():
            print(line)


# --- the refusal conversation, run by each program's main() --------------------


class Fds:
    """Run a function with fds 0, 1 and 2 on memory files; give back what went to 1 and 2."""

    def run(self, data, function):
        inp, out, err = (os.memfd_create(n) for n in ("in", "out", "err"))
        os.write(inp, data)
        os.lseek(inp, 0, 0)
        saved = [os.dup(fd) for fd in (0, 1, 2)]
        try:
            for fd, new in zip((0, 1, 2), (inp, out, err)):
                os.dup2(new, fd)
            code = function()
        finally:
            for fd, old in zip((0, 1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
        got = [os.pread(fd, os.fstat(fd).st_size, 0) for fd in (out, err)]
        for fd in (inp, out, err):
            os.close(fd)
        return code, got[0], got[1]


def refusing_programs(tmp):
    """Return {name: function(rng) -> (main, argv, environ)} for the refusal targets."""
    from qtools import greylist, rblcheck, rhostcheck, tarpit

    store = os.path.join(tmp, "greylist")
    os.mkdir(store)
    base = {"TCPREMOTEIP": "192.0.2.7", "PATH": "/nonexistent"}

    def text(rng):
        return rng.choice(["-", ""]) + rng.choice(
            ["go away", "listed: see http://bl.example/?\x01\x7f\xff", "x" * 400, "  ", "\r\n250 ok"])

    return {
        "rblcheck": lambda rng: (rblcheck.main, ["-r", "bl.example", "-t", "60", "qmail-smtpd"],
                                 dict(base, RBLSMTPD=text(rng))),
        "rhostcheck": lambda rng: (rhostcheck.main, ["qmail-smtpd"],
                                   dict(base, QTOOLS_RHOSTCHECK=text(rng))),
        "greylist": lambda rng: (greylist.main, ["-t", "60", store, "qmail-smtpd"], dict(base)),
        "tarpit": lambda rng: (tarpit.main, ["-c", "2", "qmail-smtpd"],
                               dict(base, QTOOLS_TARPIT=text(rng))),
    }


@pytest.mark.parametrize("name", ["rblcheck", "rhostcheck", "greylist", "tarpit"])
def test_refusal_conversation(name, tmp_path, capfd):
    """Every byte a refusing program sends is a valid reply line; it ends at EOF, QUIT or the limit, never by a crash."""
    rng = random.Random("%s %s" % (SEED, name))
    make = refusing_programs(str(tmp_path))[name]
    fds, tally = Fds(), Tally(name)
    for n in range(SESSIONS):
        data, _ = session(rng)
        main, argv, environ = make(rng)
        code, out, err = fds.run(data, lambda: main(argv, environ))
        assert code == 0, (n, err)
        assert b"Traceback" not in err and b"fatal" not in err, (n, err)
        lines = reply_lines(out)
        assert lines[0].startswith(b"220 "), (n, out[:200])
        commands = data.count(b"\n")
        assert len(lines) <= commands + 2, (n, len(lines), commands)
        if any(line.startswith(b"221 ") for line in lines):
            assert lines[-1].startswith(b"221 ")
            tally.add("quit")
        if lines[-1].startswith(b"421 "):
            tally.add("limit")
        assert all(line[:1] in b"2345" for line in lines)
        tally.sessions += 1
        tally.bytes += len(data)
        tally.replies += len(lines)
    tally.report(capfd)


# --- the proxy engine -----------------------------------------------------------


class Recorder(proxy.Filter):
    """The last filter of a stack: notes every command the filters before it passed."""

    def __init__(self):
        self.passed = []

    def command(self, session, verb, cmd):
        self.passed.append(cmd.line)
        return None


class Clock:
    """A clock the harness moves."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def drive(engine, backend, pieces, clock):
    """Feed pieces through engine to backend, then EOF; return what the client got."""
    got = bytearray()

    def pump():
        for _ in range(100000):
            deliver(engine, backend)
            due = engine.deadline()
            if due is None or engine.closing:
                break
            clock.now = max(clock.now, due)  # the tarpit's wait passes
            engine.tick()
        got.extend(engine.to_client)
        del engine.to_client[:]

    engine.server_data(backend.greeting)
    pump()
    for data in pieces:
        if engine.closing:
            break
        engine.client_data(data)
        pump()
    engine.client_data(b"")
    pump()
    return bytes(got)


def filter_stack(tmp, rng, clock):
    """Return the filters validrcptto, greylist -T and tarpit build in their main()."""
    from qtools import greylist, tarpit, validrcptto

    captured = []

    def run(filters, argv, environ, infd=0, outfd=1):
        captured.extend(filters)
        return 0

    environ = {"TCPREMOTEIP": "192.0.2.%d" % rng.randrange(1, 4), "PATH": "/nonexistent",
               "VALIDRCPTTO_CDB": os.path.join(tmp, "validrcptto.cdb"),
               "VALIDRCPTTO_LIMIT": str(rng.choice([0, 3, 10]))}
    from qtools import proxyio

    saved = proxyio.run
    proxyio.run = run
    try:
        assert validrcptto.main(["qmail-smtpd"], dict(environ)) == 0
        assert greylist.main(["-T", "-m", "5", os.path.join(tmp, "triplets"), "qmail-smtpd"],
                             dict(environ)) == 0
        assert tarpit.main(["-g", "-c", "2", "-t", "3", "qmail-smtpd"], dict(environ)) == 0
    finally:
        proxyio.run = saved
    assert [prog for prog, _ in captured] == ["validrcptto", "greylist", "tarpit"]
    # The Triplets filter judges at the harness's clock, the other one in the engine.
    captured[1][1].clock = lambda: clock.now
    return captured


def make_vcdb(tmp):
    path = os.path.join(tmp, "validrcptto.cdb")
    done = subprocess.run(
        [os.path.join(VENV_BIN, "qtools-mkcdb"), "-a", path, path + ".tmp"],
        input=b"ok@example.com\n-spamtrap@example.com\n@lists.example\n", capture_output=True)
    assert done.returncode == 0, done.stderr
    os.mkdir(os.path.join(tmp, "triplets"))


def test_proxy_with_filters(tmp_path, capfd):
    """Through validrcptto, greylist -T and tarpit: valid replies only, and the backend parses exactly the commands the filters passed."""
    tmp = str(tmp_path)
    make_vcdb(tmp)
    rng = random.Random("%s proxy-filters" % SEED)
    tally = Tally("proxy-filters")
    for n in range(SESSIONS):
        data, how = session(rng)
        clock = Clock()
        filters = filter_stack(tmp, rng, clock)
        recorder = Recorder()
        engine = proxy.Engine(filters + [("recorder", recorder)],
                              proxy.Session(core.client({"TCPREMOTEIP": "192.0.2.7"}), {},
                                            logger=lambda *a: None),
                              tls=rng.random() < 0.2, clock=clock)
        backend = FakeQmail()
        got = drive(engine, backend, chunks(rng, data, how), clock)
        lines = reply_lines(got)
        assert backend.commands == recorder.passed, n
        assert all(len(c) <= proxy.MAX_LINE for c in backend.commands)
        assert not any(address.read(c).verb in (b"starttls", b"bdat") for c in backend.commands)
        for line in lines:
            tally.add("code" + line[:1].decode() + "xx")
        if clock.now > 1000.0:
            tally.add("held")
        tally.sessions += 1
        tally.bytes += len(data)
        tally.replies += len(lines)
        if n % 500 == 0:
            err = capfd.readouterr().err  # keep the captured log small
            assert "Traceback" not in err and "filter failed" not in err, err[-2000:]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "filter failed" not in err, err[-2000:]
    tally.report(capfd)


def dropped(line):
    """Return True for a command the proxy answers itself and never passes on."""
    verb = address.read(line).verb
    return verb in (b"starttls", b"bdat") or len(line) > proxy.MAX_LINE


def test_proxy_same_as_qmail(tmp_path, capfd):
    """The engine passing everything gives the backend the commands and messages qmail-smtpd reads from the same bytes."""
    rng = random.Random("%s proxy-qmail" % SEED)
    tally = Tally("proxy-qmail")
    for n in range(SESSIONS):
        data, how = session(rng)
        recorder = Recorder()
        engine = proxy.Engine([("recorder", recorder)],
                              proxy.Session(core.client({"TCPREMOTEIP": "192.0.2.7"}), {},
                                            logger=lambda *a: None))
        backend, direct = FakeQmail(), FakeQmail()
        got = drive(engine, backend, chunks(rng, data, how), Clock())
        direct.feed(data)
        lines = reply_lines(got)
        if any(dropped(c) for c in direct.commands):
            # qmail-smtpd would run what the proxy refuses (a QUIT hidden in
            # an over-long line, say): the two agree up to that command.
            first = [dropped(c) for c in direct.commands].index(True)
            assert backend.commands[:first] == direct.commands[:first], n
            tally.add("dropped")
        else:
            assert backend.commands == direct.commands, n
            assert backend.messages == direct.messages, n
            tally.add("same")
        tally.add("messages", len(backend.messages))
        tally.sessions += 1
        tally.bytes += len(data)
        tally.replies += len(lines)
    tally.report(capfd)


# --- decisions independent of timing ---------------------------------------------

# Lines a client may send, hostile readings included; a DATA is followed by
# a body, which is a message when the backend says 354 and commands otherwise.
TIMING_OTHER = [b"EHLO client.example", b"HELO client.example", b"RSET", b"NOOP", b"VRFY x",
                b"QUIT", b"DATA", b"AUTH PLAIN AAAA"]
TIMING_MAIL = [b"MAIL FROM:<s@sender.example>", b"MAIL FROM:<known@sender.example>",
               b"MAIL FROM:<>", b"MAIL\0 FROM:<known@sender.example>", b"MAIL FROM:<\0x@y>",
               b"mail from:<s@sender.example> SIZE=10"]
TIMING_RCPT = [
    b"RCPT TO:<ok@example.com>", b"RCPT TO:<known@example.com>", b"RCPT TO:<nobody@example.com>",
    b"RCPT TO:<spamtrap@example.com>", b"RCPT TO:<x@elsewhere.example>",
    b"RCPT TO:<nobody@example.com\0.elsewhere.example>", b"RCPT\0 TO:<ok@example.com>",
    b"RCPT TO:<nobody@[127.0.0.1]>", b"RCPT TO:<ok@[192.0.2.1]>", b'RCPT TO:<"ok"@example.com>',
    b"RCPT TO:<@r.example:known@example.com>", b"rcpt to:<KNOWN@EXAMPLE.COM>",
]
TIMING_LINES = TIMING_OTHER + TIMING_MAIL + TIMING_RCPT
# A session: lines of any kind, and transactions (MAIL, RCPTs, DATA).
TIMING_SESSION = st.lists(
    st.one_of(st.sampled_from(TIMING_LINES).map(lambda line: [line]),
              st.tuples(st.sampled_from(TIMING_MAIL),
                        st.lists(st.sampled_from(TIMING_RCPT), min_size=1, max_size=4))
              .map(lambda t: [t[0]] + t[1] + [b"DATA"])),
    min_size=1, max_size=8).map(lambda blocks: [line for block in blocks for line in block])
TIMING_EXAMPLES = max(20, SESSIONS // 10)


@pytest.fixture(scope="module")
def timing_tmp(tmp_path_factory):
    """A validrcptto cdb, a QMAILHOME with control/me, and a triplet store with one proven triplet."""
    tmp = str(tmp_path_factory.mktemp("timing"))
    make_vcdb(tmp)
    os.makedirs(os.path.join(tmp, "control"))
    with open(os.path.join(tmp, "control", "me"), "wb") as me:
        me.write(b"example.com\n")
    filters = timing_stack(tmp, os.path.join(tmp, "triplets"), Clock())
    triplets = filters[1][1]
    session = proxy.Session(core.client({"TCPREMOTEIP": "192.0.2.7"}), {}, logger=lambda *a: None)
    triplets.clock = lambda: 0.0
    triplets.judge(session, b"known@sender.example", [b"known@example.com"])
    return tmp


def timing_stack(tmp, store, clock):
    """Return the filters validrcptto, greylist -T and tarpit build in their main(), on store."""
    from qtools import greylist, proxyio, tarpit, validrcptto

    captured = []
    environ = {"TCPREMOTEIP": "192.0.2.7", "PATH": "/nonexistent", "QMAILHOME": tmp,
               "VALIDRCPTTO_CDB": os.path.join(tmp, "validrcptto.cdb"), "VALIDRCPTTO_LIMIT": "4"}
    saved = proxyio.run
    proxyio.run = lambda filters, *a, **k: captured.extend(filters) or 0
    try:
        assert validrcptto.main(["qmail-smtpd"], dict(environ)) == 0
        assert greylist.main(["-T", "-m", "5", store, "qmail-smtpd"], dict(environ)) == 0
        assert tarpit.main(["-c", "2", "-t", "3", "qmail-smtpd"], dict(environ)) == 0
    finally:
        proxyio.run = saved
    # Greylisting judges at a time past the delay of the proven triplets;
    # the tarpit's holds pass on the engine's clock.
    captured[1][1].clock = lambda: 1000.0
    return captured


def timed_run(tmp, n, pieces, late):
    """Run one session: pieces from the client, backend replies handed over late (a Random) or at once.

    Return (commands the backend read, messages it got, replies to the client).
    """
    import shutil

    store = os.path.join(tmp, "run-%d" % n)
    shutil.copytree(os.path.join(tmp, "triplets"), store)
    clock = Clock()
    engine = proxy.Engine(timing_stack(tmp, store, clock),
                          proxy.Session(core.client({"TCPREMOTEIP": "192.0.2.7"}),
                                        {"QMAILHOME": tmp}, logger=lambda *a: None), clock=clock)
    backend = FakeQmail()
    owed = bytearray(backend.greeting)  # what the backend said and the engine has not heard yet
    got = bytearray()

    def settle(final):
        while True:
            if engine.to_server:
                owed.extend(backend.feed(bytes(engine.to_server)))
                del engine.to_server[:]
            if owed and (final or late is None or late.random() < 0.6):
                size = len(owed) if final or late is None else late.randrange(1, len(owed) + 1)
                engine.server_data(bytes(owed[:size]))
                del owed[:size]
                continue
            if backend.dead and not owed and not engine.server_eof:
                engine.server_data(b"")
                continue
            due = engine.deadline()
            if due is not None and not engine.closing and (final or late is None or late.random() < 0.5):
                clock.now = max(clock.now, due)  # the tarpit's wait passes
                engine.tick()
                continue
            break
        got.extend(engine.to_client)
        del engine.to_client[:]

    for piece in pieces:
        if engine.closing:
            break
        engine.client_data(piece)
        settle(False)
    settle(True)
    engine.client_data(b"")
    settle(True)
    shutil.rmtree(store)
    return backend.commands, backend.messages, bytes(got)


@settings(max_examples=TIMING_EXAMPLES, deadline=None)
@given(lines=TIMING_SESSION,
       cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
       seed=st.integers(min_value=0, max_value=1 << 30))
def test_decisions_independent_of_timing(timing_tmp, lines, cuts, seed):
    """Whole, cut at random, byte by byte, replies early or late: the same commands and messages reach the backend."""
    data = b""
    for n, line in enumerate(lines):
        data += line + b"\r\n"
        if line == b"DATA":
            data += b"Subject: %d\r\n\r\nbody %d\r\n.\r\n" % (n, n)
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    cut = [data[a:b] for a, b in zip([0] + points, points + [len(data)]) if data[a:b]]
    drip = [data[i : i + 1] for i in range(len(data))]
    runs = [
        ("whole", [data], None),
        ("cut", cut, None),
        ("drip", drip, None),
        ("whole-late", [data], random.Random(seed)),
        ("cut-late", cut, random.Random(seed + 1)),
        ("drip-late", drip, random.Random(seed + 2)),
    ]
    results = {}
    for n, (name, pieces, late) in enumerate(runs):
        commands, messages, got = timed_run(timing_tmp, n, pieces, late)
        reply_lines(got)
        results[name] = (commands, messages)
    first = results["whole"]
    for name, result in results.items():
        assert result == first, (name, data)


class Dying(FakeQmail):
    """qmail-smtpd as it may behave on a bad day: extra replies, a 421 on its own, death at any byte."""

    def __init__(self, rng):
        super().__init__()
        self.rng = rng
        self.unfinished = False

    def feed(self, data):
        replies = super().feed(data)
        roll = self.rng.random()
        if roll < 0.03:
            replies += b"250-unasked\r\n250 reply\r\n"
        elif roll < 0.05:
            replies += b"421 fake.local timeout (#4.4.2)\r\n"
            self.dead = True
        elif roll < 0.08 and replies:
            # Killed in the middle of writing: part of its replies, then EOF.
            replies = replies[: self.rng.randrange(len(replies))]
            last = replies[replies.rfind(b"\n", 0, len(replies) - 1) + 1 :]
            self.unfinished = bool(replies) and (not replies.endswith(b"\n") or last[3:4] == b"-")
            self.dead = True
        return replies


def test_proxy_dying_backend(capfd):
    """A backend that says too much, closes with 421 or dies mid-reply: valid replies only, and the session ends."""
    rng = random.Random("%s proxy-backend" % SEED)
    tally = Tally("proxy-backend")
    for n in range(SESSIONS):
        data, how = session(rng)
        clock = Clock()
        engine = proxy.Engine([("recorder", Recorder())],
                              proxy.Session(core.client({"TCPREMOTEIP": "192.0.2.7"}), {},
                                            logger=lambda *a: None), clock=clock)
        backend = Dying(rng)
        got = drive(engine, backend, chunks(rng, data, how), clock)
        if not engine.server_eof:
            engine.server_data(b"")  # the client left; the backend goes too
            got += bytes(engine.to_client)
            del engine.to_client[:]
        assert engine.finished(), n
        lines = reply_lines(got)
        if backend.unfinished:
            # Unless the client had heard the last word already (221 to QUIT).
            assert got.endswith(proxy.BACKEND_GONE) or got.endswith(b"221 fake.local\r\n"), n
            tally.add("cut")
        tally.add("died", backend.dead)
        tally.sessions += 1
        tally.bytes += len(data)
        tally.replies += len(lines)
    tally.report(capfd)


EHLO_REPLY = b"250-fake.local\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n"


@pytest.mark.parametrize("at", [1, 3, 4, 10, 15, 16, 30, 45, len(EHLO_REPLY) - 1])
def test_backend_cut_mid_reply(at):
    """A reply cut by the backend's death becomes one whole 421 line of the proxy's."""
    engine = proxy.Engine([], proxy.Session(core.client({"TCPREMOTEIP": "192.0.2.7"}), {},
                                            logger=lambda *a: None))
    engine.server_data(b"220 fake.local\r\n")
    engine.client_data(b"EHLO x\r\n")
    engine.server_data(EHLO_REPLY[:at])
    engine.server_data(b"")
    assert bytes(engine.to_client) == b"220 fake.local\r\n" + proxy.BACKEND_GONE
    assert engine.finished()


# --- real processes ---------------------------------------------------------------


def converse_process(argv, env, data, how, rng, limit):
    """Run argv on a socketpair, send data as how says, read to EOF; return (rc, out, err, seconds)."""
    ours, theirs = socket.socketpair()
    start = time.monotonic()
    process = subprocess.Popen(argv, stdin=theirs, stdout=theirs, stderr=subprocess.PIPE,
                               env=base_env(env))
    theirs.close()
    out = bytearray()
    done = threading.Event()

    def read():
        while True:
            try:
                block = ours.recv(65536)
            except OSError:
                break
            if not block:
                break
            out.extend(block)
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for part in chunks(rng, data, how):
            if done.is_set():
                break
            ours.sendall(part)
            if how == "drip":
                time.sleep(0.01)
        if how == "drip-forever":
            while not done.wait(0.2):
                ours.sendall(b"N")
        elif rng.random() < 0.5:
            ours.shutdown(socket.SHUT_WR)  # half-closed: we stop talking, still listen
    except OSError:
        pass  # the program closed on us: allowed, checked below by its output
    finished = done.wait(limit)
    seconds = time.monotonic() - start
    ours.close()
    try:
        err = process.communicate(timeout=limit)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        err = process.communicate()[1]
        pytest.fail("%s did not end: %r" % (argv[0], err[-500:]))
    assert finished, "%s left the client waiting past %s seconds" % (argv[0], limit)
    return process.returncode, bytes(out), err, seconds


def real_programs(tmp):
    """Return {name: (argv, environ)}: each program refusing, or proxying to a stand-in qmail-smtpd."""
    bin_ = lambda name: os.path.join(VENV_BIN, name)  # noqa: E731
    raw = os.path.join(tmp, "raw")
    backend = [sys.executable, HELPER, raw]
    base = {"TCPREMOTEIP": "192.0.2.7", "QTOOLS_TOTAL_TIMEOUT": "3"}
    return {
        "rblcheck": ([bin_("rblcheck"), "-t", "3", "-r", "bl.example", "true"],
                     dict(base, RBLSMTPD="-go away")),
        "rhostcheck": ([bin_("rhostcheck"), "-t", "3", "true"], dict(base, QTOOLS_RHOSTCHECK="no")),
        "greylist": ([bin_("greylist"), "-t", "3", os.path.join(tmp, "grey"), "true"], base),
        "tarpit": ([bin_("tarpit"), "-c", "1", "-t", "1"] + backend, base),
        "validrcptto": ([bin_("validrcptto"), "tarpit", "-c", "5"] + backend,
                        dict(base, VALIDRCPTTO_CDB=os.path.join(tmp, "validrcptto.cdb"))),
    }


@pytest.mark.parametrize("name", ["rblcheck", "rhostcheck", "greylist", "tarpit", "validrcptto"])
def test_real_process(name, tmp_path, capfd):
    """The installed program on a socket: valid replies, no traceback, done within its timeout."""
    tmp = str(tmp_path)
    make_vcdb(tmp)
    os.mkdir(os.path.join(tmp, "grey"))
    argv, env = real_programs(tmp)[name]
    rng = random.Random("%s real %s" % (SEED, name))
    tally = Tally("process-" + name)
    for n in range(PROCESSES):
        data, how = session(rng)
        if n % 4 == 3:
            how = "drip-forever"  # slowloris: a byte every 0.2 s, forever
        elif len(data) > 200000:
            how = "whole"
        rc, out, err, seconds = converse_process(argv, env, data, how, rng, 30)
        assert b"Traceback" not in err and b"fatal" not in err, (n, err[-1000:])
        assert rc == 0, (n, rc, err[-1000:])
        lines = reply_lines(out)
        assert lines, (n, err)
        if how == "drip-forever":
            # The 3-second timeouts end it: a 421 when nothing else ended it first.
            assert seconds < 20, (n, seconds)
            tally.add("slowloris")
            tally.add("timeout421", lines[-1].startswith(b"421 "))
        tally.sessions += 1
        tally.bytes += len(data)
        tally.replies += len(lines)
    tally.report(capfd)


def test_filter_stacks_built_in_process_leak_no_descriptor(tmp_path):
    """make fuzz builds 100 000 filter stacks in one process: none may keep a descriptor."""
    tmp = str(tmp_path)
    make_vcdb(tmp)
    rng = random.Random("%s leak" % SEED)
    filter_stack(tmp, rng, Clock())  # the first build opens what stays (the module's own)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        filter_stack(tmp, rng, Clock())
    assert len(os.listdir("/proc/self/fd")) == before
