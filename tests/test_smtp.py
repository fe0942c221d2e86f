# SPDX-License-Identifier: ISC
"""Tests for `qtools.smtp`, the refusal conversation."""

import re
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtools import smtp

REPLY = re.compile(rb"^[2-5][0-9][0-9][ -][ -~]*$")


def converse(data, error="451 go away (#4.7.1)", close=True, **options):
    """Feed data to a Conversation over a socketpair; return (exit, output)."""
    ours, theirs = socket.socketpair()
    options.setdefault("timeout", 10)
    conversation = smtp.Conversation(
        error, "qtools.test", infd=theirs.fileno(), outfd=theirs.fileno(), **options
    )
    result = {}

    def serve():
        result["rc"] = conversation.run()
        theirs.shutdown(socket.SHUT_WR)  # our reader sees EOF once it is done

    worker = threading.Thread(target=serve)
    worker.start()
    ours.sendall(data)
    if close:
        ours.shutdown(socket.SHUT_WR)
    chunks = []
    ours.settimeout(20)
    while True:
        chunk = ours.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    worker.join(20)
    ours.close()
    theirs.close()
    return result.get("rc"), b"".join(chunks)


class TestConversation:
    """Tests for `Conversation`."""

    def test_rblsmtpd_table(self):
        """Greet, 250 to HELO/EHLO/MAIL/RSET/NOOP, the error to RCPT/DATA/others, 221 to QUIT."""
        rc, out = converse(
            b"helo x\r\nEHLO y\r\nmail from:<a@b>\r\nrcpt to:<c@d>\r\ndata\r\n"
            b"vrfy x\r\nrset\r\nnoop\r\nstarttls\r\n\r\nquit\r\nnoop\r\n"
        )
        assert rc == 0
        assert out.split(b"\r\n") == [
            b"220 qtools.test",
            b"250 qtools.test",
            b"250 qtools.test",
            b"250 qtools.test",
            b"451 go away (#4.7.1)",
            b"451 go away (#4.7.1)",
            b"451 go away (#4.7.1)",
            b"250 qtools.test",
            b"250 qtools.test",
            b"451 go away (#4.7.1)",
            b"451 go away (#4.7.1)",
            b"221 qtools.test",
            b"",
        ]

    def test_bare_lf_and_tab_are_handled_like_qmail(self):
        """A line ends at LF without CR; a TAB does not end the verb (rblsmtpd)."""
        rc, out = converse(b"helo x\nhelo\tx\r\nquit\n")
        assert out == b"220 qtools.test\r\n250 qtools.test\r\n451 go away (#4.7.1)\r\n221 qtools.test\r\n"

    def test_eof_ends_quietly(self):
        """EOF from the client ends the conversation with exit 0."""
        assert converse(b"helo x\r\n") == (0, b"220 qtools.test\r\n250 qtools.test\r\n")

    def test_timeout_0_says_the_error_once(self):
        """With timeout 0 the error is written once and nothing is read (rblsmtpd -t 0)."""
        assert converse(b"helo x\r\n", timeout=0) == (0, b"451 go away (#4.7.1)\r\n")

    def test_total_timeout_closes_with_421(self):
        """A client that stays silent gets a 421 when the session time is up."""
        rc, out = converse(b"noop\r\n", close=False, timeout=1)
        assert rc == 0
        assert out == b"220 qtools.test\r\n250 qtools.test\r\n421 qtools.test timeout, closing connection (#4.4.2)\r\n"

    def test_command_limit(self):
        """The command after max_commands gets a 421 and the connection closes."""
        rc, out = converse(b"noop\r\n" * 10, max_commands=3)
        assert out.split(b"\r\n")[1:] == [
            b"250 qtools.test",
            b"250 qtools.test",
            b"250 qtools.test",
            b"421 qtools.test too many commands, closing connection (#4.7.0)",
            b"",
        ]

    def test_over_long_line_is_answered_once_with_the_error(self):
        """A line longer than max_line is discarded to its LF and answered with the error."""
        rc, out = converse(b"helo " + b"x" * 100000 + b"\r\nquit\r\n", max_line=1000)
        assert out == b"220 qtools.test\r\n451 go away (#4.7.1)\r\n221 qtools.test\r\n"

    def test_null_sender_is_deferred_at_data(self):
        """With error_at_data_for_null_sender, MAIL FROM:<> gets 250 at RCPT and the error at DATA."""
        rc, out = converse(
            b"mail from: <>\r\nrcpt to:<a@b>\r\ndata\r\nrset\r\nmail from:<x@y>\r\nrcpt to:<a@b>\r\n",
            error_at_data_for_null_sender=True,
        )
        assert out.split(b"\r\n")[1:-1] == [
            b"250 qtools.test",
            b"250 qtools.test",
            b"451 go away (#4.7.1)",
            b"250 qtools.test",
            b"250 qtools.test",
            b"451 go away (#4.7.1)",
        ]

    def test_client_gone_is_not_an_error(self):
        """Writing to a client that closed its socket ends with exit 0."""
        ours, theirs = socket.socketpair()
        ours.close()
        conversation = smtp.Conversation("451 x", "n", infd=theirs.fileno(), outfd=theirs.fileno())
        assert conversation.run() == 0
        theirs.close()

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=3000))
    def test_any_bytes_get_valid_replies(self, data):
        """Whatever the client sends, every line we write is a valid SMTP reply."""
        rc, out = converse(data, max_line=200, max_commands=50)
        assert rc == 0
        assert out.endswith(b"\r\n")
        for line in out[:-2].split(b"\r\n"):
            assert REPLY.match(line), line


class TestReading:
    """The conversation reads each line as qmail-smtpd does (qtools.address.read)."""

    @pytest.mark.parametrize(
        ("line", "expected"),
        [
            (b"RCPT\0 TO:<a@b>", b"451 go away (#4.7.1)"),
            (b"MAIL\0 FROM:<a@b>", b"250 qtools.test"),
            (b"mail from:<a@b>\0\r\nrcpt", b"250 qtools.test"),
            (b"QUIT\0 now", b"221 qtools.test"),
            (b"HELO\0", b"250 qtools.test"),
            (b"NOOP\tx", b"451 go away (#4.7.1)"),
            (b"\0MAIL FROM:<a@b>", b"451 go away (#4.7.1)"),
        ],
    )
    def test_nul_ends_the_line(self, line, expected):
        """A NUL ends what counts of a line, in the verb as in the argument."""
        rc, out = converse(line + b"\r\n")
        assert out.split(b"\r\n")[1] == expected

    @pytest.mark.parametrize(
        ("mail", "deferred_at_data"),
        [
            (b"MAIL FROM:<>", True),
            (b"mail from: <> SIZE=10", True),
            (b"MAIL <>", True),  # addrparse() takes the text after the first "<"
            (b"MAIL", True),  # an empty argument is the null sender to qmail-smtpd
            (b"MAIL\0 FROM:<a@b>", True),  # so is one a NUL cut short
            (b"MAIL FROM:<>\0x", True),
            (b"MAIL FROM:<a@b>", False),
            (b"MAIL FROM:<\0>", True),
            (b"MAIL FROM:<\"\">", True),  # quotes removed: empty
            (b"MAIL FROM:<a\0@b>", False),  # "<a" is a sender
        ],
    )
    def test_null_sender_as_qmail_reads_it(self, mail, deferred_at_data):
        """Which MAIL is the null sender (and is deferred at DATA) is addrparse()'s answer."""
        rc, out = converse(mail + b"\r\nrcpt to:<a@b>\r\ndata\r\n", error_at_data_for_null_sender=True)
        replies = out.split(b"\r\n")[1:-1]
        assert replies[0] == b"250 qtools.test"
        if deferred_at_data:
            assert replies[1:] == [b"250 qtools.test", b"451 go away (#4.7.1)"]
        else:
            assert replies[1:] == [b"451 go away (#4.7.1)", b"451 go away (#4.7.1)"]


class TestHelpers:
    """Tests for the small helpers."""

    def test_greeting_name(self):
        """The name is $QTOOLS_HOSTNAME or PROG.local."""
        assert smtp.greeting_name("greylist", {}) == "greylist.local"
        assert smtp.greeting_name("greylist", {"QTOOLS_HOSTNAME": "mx.example"}) == "mx.example"


def test_refuse_uses_fds_0_and_1():
    """refuse() talks on stdin/stdout by default."""
    import subprocess
    import sys

    code = "from qtools import smtp; raise SystemExit(smtp.refuse('553 no (#5.7.1)', 'h', 5))"
    done = subprocess.run(
        [sys.executable, "-c", code], input=b"rcpt to:<a@b>\r\nquit\r\n", capture_output=True, timeout=20
    )
    assert done.returncode == 0
    assert done.stdout == b"220 h\r\n553 no (#5.7.1)\r\n221 h\r\n"
