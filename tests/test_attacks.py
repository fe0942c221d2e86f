# SPDX-License-Identifier: ISC
"""Protocol attacks and DNS faults: SMTP smuggling, STARTTLS injection, over-long lines, hostile DNS.

Cases covered elsewhere are not repeated here: STARTTLS plaintext injection
with TLS on (test_proxy.py TestStarttls and TestTls), the 1 MB command line
(test_proxy.py TestProgram), DNS silence and SERVFAIL under tcpserver
(test_rblcheck.py TestEndToEnd), random DNS replies (test_resolver.py
TestHostileReplies).
"""

import os
import re
import socket
import subprocess
import sys
import time

import dns.message
import dns.rrset
import pytest

from conftest import VENV_BIN, base_env, read_maildir, run_prog, sink_cmd
from dnsserver import DNSServer
from helpers_proxy import FakeQmail, converse
from qtools import core, proxy, smtp
from qtools.validrcptto import NOT_LISTED as NOT_LISTED_TEXT

NOT_LISTED = NOT_LISTED_TEXT.encode()

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers_proxy.py")
CLIENT = core.Client("192.0.2.7", bytes([192, 0, 2, 7]))

START = b"EHLO attacker.example\r\nMAIL FROM:<a@attacker.example>\r\nRCPT TO:<ok@example.com>\r\nDATA\r\n"
SMUGGLED = b"MAIL FROM:<admin@bank.example>\r\nRCPT TO:<ok@example.com>\r\nDATA\r\nsmuggled\r\n"

# Each attack ends the first message with a sequence some MTA might take
# for the end of data, then smuggles a second transaction after it.
SMUGGLING = {
    "lf-dot-lf": b"Subject: one\r\n\r\nhello\n.\n" + SMUGGLED + b".\r\nQUIT\r\n",
    "lf-dot-crlf": b"Subject: one\r\n\r\nhello\n.\r\n" + SMUGGLED + b".\r\nQUIT\r\n",
    "cr-dot-cr": b"Subject: one\r\n\r\nhello\r.\r" + SMUGGLED + b".\r\nQUIT\r\n",
    "crlf-dot-lf": b"Subject: one\r\n\r\nhello\r\n.\n" + SMUGGLED + b".\r\nQUIT\r\n",
    "crlf-dot-cr": b"Subject: one\r\n\r\nhello\r\n.\r" + SMUGGLED + b".\r\nQUIT\r\n",
    "dot-cr-crlf": b"Subject: one\r\n\r\nhello\r\n.\r\r\n" + SMUGGLED + b".\r\nQUIT\r\n",
    "nul-dot": b"Subject: one\r\n\r\nhello\r\n\x00.\r\n" + SMUGGLED + b".\r\nQUIT\r\n",
}


def qmail_reads(data):
    """Return (commands, messages) qmail-smtpd parses from data sent to it directly."""
    backend = FakeQmail()
    backend.feed(data)
    return backend.commands, backend.messages


def valid_replies(out):
    """Return True when out is nothing but complete SMTP reply lines."""
    return re.fullmatch(rb"(?:[2-5][0-9][0-9][ -][\x20-\x7e]*\r\n)*", out) is not None


@pytest.fixture
def vcdb(tmp_path):
    path = str(tmp_path / "validrcptto.cdb")
    done = run_prog(["qtools-mkcdb", "-a", path, path + ".tmp"], stdin=b"ok@example.com\n")
    assert done.rc == 0, done.err
    return path


class TestSmuggling:
    """The backend sees exactly the commands and messages qmail-smtpd would see without us."""

    @pytest.mark.parametrize("name", sorted(SMUGGLING))
    def test_engine(self, name):
        """In the engine, fed whole and byte by byte."""
        data = START + SMUGGLING[name]
        expected = qmail_reads(data)
        for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
            session = proxy.Session(CLIENT, {}, logger=lambda *a: None)
            engine = proxy.Engine([], session)
            backend = FakeQmail()
            got = converse(engine, backend, pieces)
            assert (backend.commands, backend.messages) == expected
            assert valid_replies(got)

    @pytest.mark.parametrize("name", sorted(SMUGGLING))
    def test_real_program(self, name, tmp_path, vcdb):
        """Through the installed validrcptto and tarpit, bytes recorded by the backend process."""
        raw = tmp_path / "raw"
        data = START + SMUGGLING[name]
        result = run_prog(["validrcptto", "tarpit", "-c", "9", sys.executable, HELPER, str(raw)],
                          {"TCPREMOTEIP": "192.0.2.7", "VALIDRCPTTO_CDB": vcdb}, data)
        assert result.rc == 0 and b"Traceback" not in result.err
        assert valid_replies(result.out)
        assert qmail_reads(raw.read_bytes()) == qmail_reads(data)

    def test_whole_chain_to_the_sink(self, tcpserver, tmp_path, vcdb):
        """Under tcpserver, each attack delivers what qmail-smtpd would deliver: never the smuggled message."""
        maildir = tmp_path / "mail"
        maildir.mkdir()
        server = tcpserver(["validrcptto", "tarpit", "-c", "9"] + sink_cmd(maildir),
                           env={"VALIDRCPTTO_CDB": vcdb})
        expected = 0
        for name in sorted(SMUGGLING):
            data = START + SMUGGLING[name]
            expected += len(qmail_reads(data)[1])
            with socket.create_connection((server.host, server.port), timeout=30) as s:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                out = b""
                while True:
                    block = s.recv(65536)
                    if not block:
                        break
                    out += block
            assert valid_replies(out), (name, out)
        messages = read_maildir(maildir)
        assert len(messages) == expected
        assert not any(b"X-Sink-From: <admin@bank.example>" in m for m in messages)


class TestStarttls:
    """STARTTLS where no TLS is offered: never a blind relay, never a second session."""

    def test_proxy_without_certificate(self, tmp_path, vcdb):
        """STARTTLS offered by qmail-smtpd is hidden, answered 502 and never reaches it."""
        raw = tmp_path / "raw"
        data = b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\nQUIT\r\n"
        result = run_prog(["validrcptto", sys.executable, HELPER, str(raw)],
                          {"TCPREMOTEIP": "192.0.2.7", "VALIDRCPTTO_CDB": vcdb}, data)
        assert b"STARTTLS" not in result.out
        assert b"502 unimplemented (#5.5.1)\r\n" in result.out
        assert qmail_reads(raw.read_bytes())[0] == [b"EHLO x", b"MAIL FROM:<evil@x>", b"QUIT"]

    def test_refusal_conversation(self):
        """The refusal conversation answers STARTTLS with its error; what follows stays plaintext commands."""
        r = run_prog(["rblcheck", "-r", "bl.example", "true"],
                     {"TCPREMOTEIP": "192.0.2.7", "RBLSMTPD": "go away"},
                     b"EHLO x\r\nSTARTTLS\r\nRCPT TO:<a@b>\r\nQUIT\r\n")
        assert r.out == (b"220 rblcheck.local\r\n250 rblcheck.local\r\n451 go away\r\n"
                         b"451 go away\r\n221 rblcheck.local\r\n")


class TestOverLongLines:
    """A command hidden past the line limit is never run, however the line is cut."""

    @pytest.mark.parametrize("size", [proxy.MAX_LINE - 4, proxy.MAX_LINE + 1, 4 * proxy.MAX_LINE])
    def test_proxy(self, size):
        """The tail of an over-long line does not reach the backend, cut anywhere."""
        line = b"NOOP " + b"x" * (size - 5) + b"RCPT TO:<evil@x>\r\n"
        data = b"MAIL FROM:<a@b>\r\n" + line + b"NOOP\r\n"
        for at in (0, 1, 17, len(data) // 2, size, size + 5, len(data) - 1):
            session = proxy.Session(CLIENT, {}, logger=lambda *a: None)
            backend = FakeQmail()
            got = converse(proxy.Engine([], session), backend, [data[:at], data[at:]])
            assert backend.commands == [b"MAIL FROM:<a@b>", b"NOOP"]
            assert got.count(b"500 command line too long") == 1

    def test_refusal_conversation(self):
        """A QUIT past the 1000 bytes of a line is not obeyed: the line gets the error once."""
        a, b = socket.socketpair()
        try:
            line = b"HELO " + b"x" * 996 + b"QUIT\r\n"
            a.sendall(line + b"NOOP\r\n")
            a.shutdown(socket.SHUT_WR)
            conversation = smtp.Conversation("451 no", "me", timeout=10,
                                             infd=b.fileno(), outfd=b.fileno())
            assert conversation.run() == 0
            b.shutdown(socket.SHUT_WR)
            out = a.makefile("rb").read()
        finally:
            a.close()
            b.close()
        assert out == b"220 me\r\n451 no\r\n250 me\r\n"

    def test_real_program(self):
        """Through the installed program, cut in many writes: the 221 comes only for the real QUIT."""
        data = b"HELO " + b"y" * 70000 + b"\r\nQUIT\r\n"
        r = run_prog(["rhostcheck", "true"], {"TCPREMOTEIP": "192.0.2.7", "QTOOLS_RHOSTCHECK": "no"},
                     data)
        assert r.out == b"220 rhostcheck.local\r\n451 no\r\n221 rhostcheck.local\r\n"


# --- DNS faults ------------------------------------------------------------------

HUGE = ['"%s"' % ("t%03d" % n * 50)[:250] for n in range(120)]  # about 30 KB of TXT


class TestOneReading:
    """A check decides on the line qmail-smtpd acts on: NUL bytes and address literals hide nothing."""

    def converse(self, argv, env, data, tmp_path):
        raw = tmp_path / "raw"
        result = run_prog(argv + [sys.executable, HELPER, str(raw)],
                          dict({"TCPREMOTEIP": "192.0.2.7"}, **env), data)
        assert result.rc == 0 and b"Traceback" not in result.err, result.err
        assert valid_replies(result.out)
        return result.out, qmail_reads(raw.read_bytes())[0]

    @pytest.fixture
    def listed(self, tmp_path):
        path = str(tmp_path / "listed.cdb")
        done = run_prog(["qtools-mkcdb", "-a", path, path + ".tmp"], stdin=b"ok@example.test\n")
        assert done.rc == 0, done.err
        return path

    @pytest.mark.parametrize("strict", [[], ["-s"]])
    @pytest.mark.parametrize("rcpt", [
        b"RCPT TO:<nobody@example.test\0.unlisted.org>",  # qmail-smtpd queues nobody@example.test
        b"RCPT\0 TO:<ok@example.test>",  # qmail-smtpd queues an empty recipient
        b"rcpt \0TO:<ok@example.test>",
        b"RCPT TO:<nobody@[127.0.0.1]>",  # qmail-smtpd queues nobody@localiphost
        b"RCPT TO:<nobody@\\[127.0.0.1]>",
    ])
    def test_validrcptto(self, rcpt, strict, tmp_path, listed):
        """Findings 1 and 6: validrcptto (also -s) refuses what qmail-smtpd would queue unlisted."""
        control = tmp_path / "qmail" / "control"
        control.mkdir(parents=True)
        (control / "me").write_bytes(b"example.test\n")
        data = b"EHLO x\r\nMAIL FROM:<a@sender.example>\r\n" + rcpt + b"\r\nQUIT\r\n"
        out, commands = self.converse(
            ["validrcptto"] + strict,
            {"VALIDRCPTTO_CDB": listed, "QMAILHOME": str(tmp_path / "qmail")}, data, tmp_path)
        assert NOT_LISTED in out
        assert commands == [b"EHLO x", b"MAIL FROM:<a@sender.example>", b"QUIT"]

    def test_literal_without_control_files(self, tmp_path, listed):
        """Finding 6, no control/me to map the literal to: a 451, never a pass."""
        data = b"EHLO x\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<nobody@[127.0.0.1]>\r\n"
        out, commands = self.converse(
            ["validrcptto"], {"VALIDRCPTTO_CDB": listed, "QMAILHOME": str(tmp_path / "none")},
            data, tmp_path)
        assert out.endswith(b"451 unable to read controls (#4.3.0)\r\n")
        assert commands == [b"EHLO x", b"MAIL FROM:<a@sender.example>"]

    @pytest.mark.parametrize("mail", [b"MAIL\0 FROM:<a@sender.example>", b"mail \0FROM:<a@x>",
                                      b"MAIL FROM:<\0a@sender.example>"])
    @pytest.mark.parametrize("pipelined", [True, False])
    def test_greylist_triplets_null_sender(self, mail, pipelined, tmp_path):
        """Finding 2: a sender hidden behind a NUL is the null sender qmail-smtpd takes, deferred at DATA."""
        store = tmp_path / "triplets"
        store.mkdir()
        lines = [b"EHLO x", mail, b"RCPT TO:<ok@example.test>", b"DATA"]
        # One write, or one line per write (the helper reads as it comes).
        data = b"".join(line + b"\r\n" for line in lines)
        argv = ["greylist", "-T", str(store)]
        if pipelined:
            out, commands = self.converse(argv, {}, data, tmp_path)
        else:
            out, commands = self.step_by_step(argv, lines, tmp_path)
        assert out.endswith(b"451 greylisted, try again in 300 seconds (#4.7.1)\r\n"), out
        assert commands == lines[:3]

    @pytest.mark.parametrize("pipelined", [True, False])
    def test_greylist_pipelined_bounce(self, pipelined, tmp_path):
        """Finding 3: a bounce sent in one write is judged on its recipients like one sent step by step."""
        store = tmp_path / "triplets"
        store.mkdir()
        lines = [b"EHLO x", b"MAIL FROM:<>", b"RCPT TO:<ok@example.test>",
                 b"RCPT TO:<other@example.test>", b"DATA", b"Subject: x", b"", b"body", b"."]
        argv = ["greylist", "-T", str(store)]
        if pipelined:
            out, commands = self.converse(argv, {}, b"".join(l + b"\r\n" for l in lines), tmp_path)
        else:
            out, commands = self.step_by_step(argv, lines[:5], tmp_path)
        assert b"354" not in out
        assert b"451 greylisted, try again in 300 seconds (#4.7.1)\r\n" in out
        assert commands[:4] == lines[:4] and b"DATA" not in commands

    def step_by_step(self, argv, lines, tmp_path):
        """Send each line after the reply to the one before; return (output, commands the backend read)."""
        raw = tmp_path / "raw-steps"
        ours, theirs = socket.socketpair()
        process = subprocess.Popen([os.path.join(VENV_BIN, argv[0])] + argv[1:]
                                   + [sys.executable, HELPER, str(raw)],
                                   stdin=theirs, stdout=theirs, stderr=subprocess.PIPE,
                                   env=base_env({"TCPREMOTEIP": "192.0.2.7"}))
        theirs.close()
        ours.settimeout(10)
        out = b""
        for count, line in enumerate([None] + lines, 1):
            if line is not None:
                ours.sendall(line + b"\r\n")
            while len(re.findall(rb"(?m)^[0-9]{3} ", out)) < count:  # its reply is in
                block = ours.recv(65536)
                assert block, out
                out += block
        ours.shutdown(socket.SHUT_WR)
        while True:
            block = ours.recv(65536)
            if not block:
                break
            out += block
        ours.close()
        process.communicate(timeout=15)
        return out, qmail_reads(raw.read_bytes())[0]


def cut_reply(size):
    """Return a DNS behaviour that answers with the first size bytes of a real reply."""
    def answer(query):
        message = dns.message.from_wire(query)
        response = dns.message.make_response(message)
        response.answer.append(dns.rrset.from_text_list(
            message.question[0].name, 60, "IN", "A", ["127.0.0.2"]))
        return response.to_wire()[:size]

    return answer


def no_answer(query):
    """A NOERROR reply with an empty answer section."""
    return dns.message.make_response(dns.message.from_wire(query)).to_wire()


def empty_packet(query):
    return b""


def header_only(query):
    return query[:2] + b"\x81\x80" + b"\x00" * 8


BEHAVIOURS = {
    "garbage": "garbage",
    "wrongid": "wrongid",
    "servfail": "servfail",
    "refused": "refused",
    "silent": "silent",
    "noanswer": no_answer,
    "empty": empty_packet,
    "header": header_only,
    "cut12": cut_reply(12),
    "cut20": cut_reply(20),
    "cut40": cut_reply(40),
}


@pytest.fixture(scope="module")
def hostile():
    records = {
        "2.0.0.127.huge.test": [("A", "127.0.0.2"), ("TXT", " ".join(HUGE))],
        "2.0.0.127.tc.test": [("A", "127.0.0.2"), ("TXT", '"listed, found over TCP"')],
    }
    zones = {name + ".test": rule for name, rule in BEHAVIOURS.items()}
    zones["tc.test"] = "truncate"
    with DNSServer(records, zones) as server:
        yield server


SESSION = b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nQUIT\r\n"


class TestDnsFaults:
    """Whatever the DNS server does: never a 5xx, never a traceback, done within the DNS timeout."""

    @pytest.mark.parametrize("name", sorted(BEHAVIOURS))
    @pytest.mark.parametrize("fail_closed", [False, True])
    def test_rblcheck(self, hostile, name, fail_closed):
        """A broken DNSBL server lets the client through (or 451 with -c), after at most -T seconds."""
        start = time.monotonic()
        r = run_prog(["rblcheck", "-T", "1"] + (["-c"] if fail_closed else []) +
                     ["-r", name + ".test", "echo", "passed"],
                     {"TCPREMOTEIP": "127.0.0.2", "QTOOLS_RESOLVER": hostile.address}, SESSION)
        took = time.monotonic() - start
        assert took < 8, took
        assert r.rc == 0 and b"Traceback" not in r.err and b"fatal" not in r.err, r
        if name == "noanswer":  # an empty answer is an answer: not listed
            assert r.out == b"passed\n"
        elif fail_closed:
            assert r.out.startswith(b"220 ") and b"\r\n451 " in r.out and b"\r\n5" not in r.out
        else:
            assert r.out == b"passed\n"
            assert b"rblcheck: warning: unable to look up 127.0.0.2 in " in r.err

    @pytest.mark.parametrize("name", sorted(BEHAVIOURS))
    def test_rhostcheck(self, hostile, name):
        """A broken PTR server never makes rhostcheck -h refuse permanently."""
        start = time.monotonic()
        r = run_prog(["rhostcheck", "-h", "-T", "1", "-S", hostile.address, "echo", "passed"],
                     {"TCPREMOTEIP": "127.0.0.2"}, SESSION)
        assert time.monotonic() - start < 8
        assert r.rc == 0 and b"Traceback" not in r.err and b"fatal" not in r.err, r
        assert b"\r\n5" not in r.out and not r.out.startswith(b"5")

    def test_huge_txt(self, hostile):
        """A 30 KB TXT record becomes a reply cut to 200 printable characters."""
        r = run_prog(["rblcheck", "-T", "2", "-r", "huge.test", "echo", "passed"],
                     {"TCPREMOTEIP": "127.0.0.2", "QTOOLS_RESOLVER": hostile.address}, SESSION)
        assert r.rc == 0, r
        lines = r.out.split(b"\r\n")
        assert lines[3].startswith(b"451 t000t000") and len(lines[3]) <= 4 + 200 + 20
        assert valid_replies(r.out)

    def test_truncated_answer_asked_again_over_tcp(self, hostile):
        """A UDP answer with TC set is asked again over TCP, and the TCP answer counts."""
        r = run_prog(["rblcheck", "-T", "2", "-r", "tc.test", "echo", "passed"],
                     {"TCPREMOTEIP": "127.0.0.2", "QTOOLS_RESOLVER": hostile.address}, SESSION)
        assert b"\r\n451 listed, found over TCP\r\n" in r.out
