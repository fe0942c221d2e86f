# SPDX-License-Identifier: ISC
"""Tests for `qtools.proxy`, the SMTP proxy engine."""

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import VENV_BIN, base_env, read_maildir, run_prog, sink_cmd
from helpers_proxy import FakeQmail, converse
from qtools import core, proxy, proxyfilter, proxyio

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers_proxy.py")
CLIENT = core.Client("192.0.2.7", bytes([192, 0, 2, 7]))


class Recorder(proxy.Filter):
    """A filter that notes the commands it passes and refuses RCPTs containing "bad"."""

    def __init__(self):
        self.passed = []
        self.replies = []

    def command(self, session, verb, cmd):
        if verb == b"rcpt" and b"bad" in cmd.line:
            return b"553 sorry, bad (#5.7.1)\r\n"
        self.passed.append(cmd.line)
        return None

    def reply(self, session, verb, lines):
        self.replies.append((verb, b"".join(lines)))
        return None


class Hold(proxy.Filter):
    """A filter that holds each reply to RCPT for seconds, as the tarpit does."""

    def __init__(self, seconds):
        self.seconds = seconds

    def reply(self, session, verb, lines):
        if verb == b"rcpt":
            session.hold(self.seconds)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make(filters=None, tls=False, clock=None, logs=None, max_line=proxy.MAX_LINE):
    """Return (engine, session) with a Recorder unless filters are given."""
    record = (lambda *a: logs.append(a)) if logs is not None else (lambda *a: None)
    session = proxy.Session(CLIENT, {}, logger=record)
    if filters is None:
        filters = [("test", Recorder())]
    engine = proxy.Engine(filters, session, tls=tls, max_line=max_line,
                          clock=clock or time.monotonic)
    return engine, session


def replies(data):
    """Split client output into reply codes, one per final reply line."""
    return [line[:3] for line in data.split(b"\r\n") if line[3:4] == b" " or len(line) == 3]


class TestFraming:
    """The engine splits and forwards bytes exactly as qmail-smtpd reads them."""

    def test_pipelined_transaction(self):
        """MAIL, RCPT, RCPT, DATA in one write get their replies in order and the message goes through."""
        engine, _ = make()
        backend = FakeQmail()
        got = converse(engine, backend, [
            b"EHLO a\r\n",
            b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\n",
            b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
        ])
        assert replies(got) == [b"220", b"250", b"250", b"250", b"250", b"354", b"250", b"221"]
        assert backend.messages == [b"Subject: x\r\n\r\nbody\r\n.\r\n"]

    def test_rejected_rcpt_mid_pipeline(self):
        """A pipelined command is filtered once the earlier ones are answered; a refusal is never forwarded."""
        engine, _ = make()
        backend = FakeQmail()
        engine.server_data(backend.greeting)
        engine.client_data(b"MAIL FROM:<a@b>\r\nRCPT TO:<bad@d>\r\nRCPT TO:<e@f>\r\n")
        assert bytes(engine.to_client) == b"220 fake.local ESMTP\r\n"
        assert bytes(engine.to_server) == b"MAIL FROM:<a@b>\r\n"
        engine.server_data(b"250 ok\r\n")
        assert bytes(engine.to_client).endswith(b"250 ok\r\n553 sorry, bad (#5.7.1)\r\n")
        assert bytes(engine.to_server) == b"MAIL FROM:<a@b>\r\nRCPT TO:<e@f>\r\n"
        engine.server_data(b"250 ok\r\n")
        assert bytes(engine.to_client).endswith(b"553 sorry, bad (#5.7.1)\r\n250 ok\r\n")

    def test_local_reply_waits_for_greeting(self):
        """A refusal made before the backend greets is sent after the greeting."""
        engine, _ = make()
        engine.client_data(b"RCPT TO:<bad@x>\r\n")
        assert engine.to_client == b""
        engine.server_data(b"220 hi\r\n")
        assert bytes(engine.to_client) == b"220 hi\r\n553 sorry, bad (#5.7.1)\r\n"

    @pytest.mark.parametrize(
        "raw, line, barelf",
        [
            (b"NOOP\r\n", b"NOOP", False),
            (b"NOOP\n", b"NOOP", True),
            (b"NOOP\r\r\n", b"NOOP\r", False),
            (b"NOOP x\ry\r\n", b"NOOP x\ry", False),
            (b"NOOP\r\0\n", b"NOOP\r\0", True),
        ],
    )
    def test_line_ends_at_lf(self, raw, line, barelf):
        """A command ends at LF and only one CR is dropped; the raw bytes are forwarded unchanged.

        The filter's Command tells whether the line ended in a bare LF.
        """
        seen = []

        class Ending(proxy.Filter):
            def command(self, session, verb, cmd):
                seen.append(cmd.barelf)

        engine, _ = make([("test", Recorder()), ("ending", Ending())])
        recorder = engine.filters[0][1]
        for byte in range(len(raw)):  # byte by byte: the same answer
            engine.client_data(raw[byte : byte + 1])
        assert recorder.passed == [line]
        assert seen == [barelf]
        assert bytes(engine.to_server) == raw

    def test_bare_lf_command_not_rewritten(self):
        """Line endings are never rewritten, not even for a bare LF command."""
        engine, _ = make()
        backend = FakeQmail()
        converse(engine, backend, [b"MAIL FROM:<a@b>\nRCPT TO:<c@d>\r\n"])
        assert bytes(backend.raw) == b"MAIL FROM:<a@b>\nRCPT TO:<c@d>\r\n"

    def test_data_mode_needs_354(self):
        """After a DATA the backend refuses, the next lines are commands again."""
        engine, _ = make()
        backend = FakeQmail()
        got = converse(engine, backend, [b"DATA\r\nNOOP\r\nQUIT\r\n"])
        assert replies(got) == [b"220", b"503", b"250", b"221"]
        assert backend.commands == [b"DATA", b"NOOP", b"QUIT"]

    def test_input_after_data_waits_for_354(self):
        """Bytes pipelined after DATA are held, not lost, and become the message on 354."""
        engine, _ = make()
        engine.server_data(b"220 hi\r\n")
        engine.client_data(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n")
        assert bytes(engine.to_server) == b"MAIL FROM:<a@b>\r\n"
        engine.server_data(b"250 ok\r\n250 ok\r\n")
        assert bytes(engine.to_server) == b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
        del engine.to_server[:]
        engine.server_data(b"354 go\r\n")
        assert bytes(engine.to_server) == b"x\r\n.\r\n"

    @pytest.mark.parametrize("body", [b"a\n.\nb\r\n.\r\n", b"a\n.\r\nb\r\n.\r\n", b"a\nb\r\n.\r\n"])
    def test_bare_lf_in_data_refused(self, body):
        """A bare LF in DATA gets qmail-smtpd's 451 and closes; the backend never sees it."""
        logs = []
        engine, _ = make(logs=logs)
        backend = FakeQmail()
        got = converse(engine, backend, [b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", body])
        assert got.endswith(proxy.BARE_LF)
        assert engine.closing and engine.why == "barelf"
        assert b"\n.\n" not in bytes(backend.raw) and backend.messages == []
        assert logs[-1][2:] == (proxy.BARE_LF[:-2].decode(), (("why", "barelf"),))

    def test_lone_cr_and_dot_lines_are_data(self):
        """A lone CR, a dot-stuffed line and CR LF . CR CR LF stay inside the message."""
        engine, _ = make()
        backend = FakeQmail()
        body = b"a\rb\r\n..x\r\n.\r\r\nc\r\n.\r\n"
        got = converse(engine, backend, [b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", body])
        assert replies(got)[-1] == b"250"
        assert backend.messages == [body]

    def test_end_of_data_split_everywhere(self):
        """The end of data is found whichever way the chunks cut CR LF . CR LF."""
        body = b"line one\r\n.\r\nQUIT\r\n"
        for cut in range(1, len(body)):
            engine, _ = make()
            backend = FakeQmail()
            got = converse(engine, backend, [
                b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", body[:cut], body[cut:],
            ])
            assert replies(got) == [b"220", b"250", b"250", b"354", b"250", b"221"], cut

    def test_dot_at_start_of_data_ends_it(self):
        """An empty message (a dot right after 354) ends DATA, as in qmail-smtpd."""
        engine, _ = make()
        backend = FakeQmail()
        got = converse(engine, backend, [b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", b".\r\nNOOP\r\n"])
        assert replies(got) == [b"220", b"250", b"250", b"354", b"250", b"250"]

    def test_long_line_refused_whole(self):
        """A 1 MB command line gets one 500 and is never split into commands."""
        logs = []
        engine, _ = make(logs=logs)
        backend = FakeQmail()
        long = b"RCPT TO:<" + b"x" * (1 << 20) + b"\r\nRSET\r\nNOOP\r\n"
        chunks = [long[i : i + 65536] for i in range(0, len(long), 65536)]
        got = converse(engine, backend, [b"MAIL FROM:<a@b>\r\n"] + chunks)
        assert replies(got) == [b"220", b"250", b"500", b"250", b"250"]
        assert backend.commands == [b"MAIL FROM:<a@b>", b"RSET", b"NOOP"]
        assert len(engine.cin) < 2 * proxy.MAX_LINE
        assert (proxy.TOO_LONG[:-2].decode(), (("why", "toolong"),)) in [a[2:] for a in logs]

    @pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
    @pytest.mark.parametrize("max_line", [20, proxy.MAX_LINE])
    def test_line_at_limit_passes(self, ending, max_line):
        """max_line bytes pass and one more is refused, whether the line ends in LF or CR LF, whole or cut before its LF."""
        engine, _ = make(max_line=max_line)
        engine.server_data(b"220 hi\r\n")
        at_limit = b"NOOP " + b"x" * (max_line - 5)
        engine.client_data(at_limit + ending)
        assert bytes(engine.to_server) == at_limit + ending
        engine.server_data(b"250 ok\r\n")
        engine.client_data(at_limit + b"y" + ending)
        assert bytes(engine.to_client).endswith(b"250 ok\r\n" + proxy.TOO_LONG)
        engine.client_data(at_limit + ending[:-1])  # the LF comes later
        engine.client_data(b"\n")
        assert bytes(engine.to_server) == (at_limit + ending) * 2
        engine.server_data(b"250 ok\r\n")
        engine.client_data(at_limit + b"y" + ending[:-1])
        engine.client_data(b"\n")
        assert bytes(engine.to_client).endswith(b"250 ok\r\n" + proxy.TOO_LONG)
        assert len(engine.to_server) == 2 * len(at_limit + ending)

    def test_bdat_not_forwarded(self):
        """BDAT is answered 502 by the proxy, so no backend enters chunk mode."""
        engine, _ = make()
        backend = FakeQmail()
        got = converse(engine, backend, [b"BDAT 5 LAST\r\n"])
        assert got.endswith(proxy.UNIMPLEMENTED) and backend.commands == []

    def test_client_eof_mid_data(self):
        """A client that leaves mid-DATA leaves no message; its bytes so far reached the backend."""
        engine, _ = make()
        backend = FakeQmail()
        converse(engine, backend, [b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", b"partial"])
        engine.client_data(b"")
        assert engine.client_eof and engine.drained()
        assert backend.messages == [] and bytes(backend.raw).endswith(b"partial")


class TestReplies:
    """Backend replies: EHLO editing, 421, holds, session tracking."""

    EHLO_REPLY = b"250-fake.local\r\n250-PIPELINING\r\n250-STARTTLS\r\n250-CHUNKING\r\n250 8BITMIME\r\n"

    def test_ehlo_hides_chunking_and_starttls(self):
        """Without a certificate, EHLO offers neither CHUNKING nor STARTTLS."""
        engine, _ = make()
        got = converse(engine, FakeQmail(), [b"EHLO a\r\n"])
        assert got.endswith(b"250-fake.local\r\n250-PIPELINING\r\n250 8BITMIME\r\n")

    def test_ehlo_offers_own_starttls(self):
        """With a certificate the proxy offers STARTTLS itself."""
        engine, _ = make(tls=True)
        got = converse(engine, FakeQmail(), [b"EHLO a\r\n"])
        assert got.endswith(b"250-fake.local\r\n250-STARTTLS\r\n250-PIPELINING\r\n250 8BITMIME\r\n")

    @pytest.mark.parametrize(
        "lines, offer, expected",
        [
            ([b"250 x\r\n"], True, [b"250-x\r\n", b"250 STARTTLS\r\n"]),
            ([b"250-x\r\n", b"250 CHUNKING\r\n"], False, [b"250 x\r\n"]),
            ([b"250-x\n", b"250 starttls\n"], False, [b"250 x\n"]),
            ([b"250-x\r\n", b"250-SIZE 1000\r\n", b"250 STARTTLS\r\n"], False,
             [b"250-x\r\n", b"250 SIZE 1000\r\n"]),
        ],
    )
    def test_edit_ehlo(self, lines, offer, expected):
        """edit_ehlo keeps the continuation marks right after removing or adding lines."""
        assert proxy.edit_ehlo(lines, offer) == expected

    def test_backend_421_closes(self):
        """A 421 from the backend is passed on and closes the connection."""
        engine, _ = make()
        backend = FakeQmail(answers={b"mail": b"421 out of memory (#4.3.0)\r\n"})
        got = converse(engine, backend, [b"MAIL FROM:<a@b>\r\nNOOP\r\n"])
        assert got.endswith(b"421 out of memory (#4.3.0)\r\n") and engine.closing

    def test_filter_421_closes_after_earlier_replies(self):
        """A filter's 421 is sent after the replies owed before it, then the connection closes."""
        class Limit(proxy.Filter):
            def command(self, session, verb, cmd):
                return b"421 go away (#4.3.0)\r\n" if verb == b"rcpt" else None

        engine, _ = make([("limit", Limit())])
        engine.server_data(b"220 hi\r\n")
        engine.client_data(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nNOOP\r\n")
        assert not engine.closing
        assert bytes(engine.to_server) == b"MAIL FROM:<a@b>\r\n"
        engine.server_data(b"250 ok\r\n")
        assert bytes(engine.to_client) == b"220 hi\r\n250 ok\r\n421 go away (#4.3.0)\r\n"
        assert engine.closing and engine.why == "421"

    def test_hold_delays_in_turn(self):
        """A held reply and the replies behind it wait; two holds add up."""
        clock = Clock()
        engine, _ = make([("slow", Hold(5))], clock=clock)
        engine.server_data(b"220 hi\r\n")
        engine.client_data(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nNOOP\r\n")
        engine.server_data(b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n")
        assert replies(bytes(engine.to_client)) == [b"220", b"250"]
        assert engine.deadline() == 105.0
        clock.now = 105.0
        engine.tick()
        assert replies(bytes(engine.to_client)) == [b"220", b"250", b"250"]
        assert engine.deadline() == 110.0
        clock.now = 110.0
        engine.tick()
        assert replies(bytes(engine.to_client)) == [b"220", b"250", b"250", b"250", b"250"]

    def test_session_tracking(self):
        """The session knows the helo, the sender and the recipients the backend accepted."""
        backend = FakeQmail(answers={b"rcpt": b"550 no\r\n"})
        engine, session = make()
        converse(engine, backend, [b"HELO box\r\nMAIL FROM:<A@B>\r\nRCPT TO:<c@d>\r\n"])
        assert (session.helo, session.mail_from, session.rcpts) == (b"box", b"A@B", [])
        engine, session = make()
        converse(engine, FakeQmail(), [b"MAIL FROM:<> SIZE=10\r\nRCPT TO:<@r:c@d>\r\n"])
        assert (session.mail_from, session.rcpts) == (b"", [b"c@d"])
        converse(engine, FakeQmail(), [b"RSET\r\n"])
        assert (session.mail_from, session.rcpts) == (None, [])

    def test_quit_closes(self):
        """The 221 to QUIT closes the connection even if the backend stays."""
        engine, _ = make()
        got = converse(engine, FakeQmail(), [b"QUIT\r\nNOOP\r\n"])
        assert got.endswith(b"221 fake.local\r\n") and engine.closing and engine.why == "eof"

    def test_reply_without_line_end(self):
        """A filter reply without CR LF gets one, so the client is not left waiting."""
        class Terse(proxy.Filter):
            def command(self, session, verb, cmd):
                return b"550 no"

        engine, _ = make([("terse", Terse())])
        got = converse(engine, FakeQmail(), [b"NOOP\r\n"])
        assert got.endswith(b"550 no\r\n")

    def test_auth_success_noted(self):
        """A 235 from the backend marks the session authenticated; a 535 does not."""
        backend = FakeQmail(answers={b"auth": b"535 authorization failed (#5.7.0)\r\n"})
        engine, session = make()
        converse(engine, backend, [b"AUTH PLAIN AGpvZQBzZWNyZXQ=\r\n"])
        assert not session.authenticated
        backend = FakeQmail(answers={b"auth": b"235 ok, go ahead (#2.0.0)\r\n"})
        engine, session = make()
        converse(engine, backend, [b"AUTH PLAIN AGpvZQBzZWNyZXQ=\r\n"])
        assert session.authenticated

    def test_refused_mail_clears_sender(self):
        """A MAIL the backend refuses leaves no sender in the session."""
        backend = FakeQmail(answers={b"mail": b"553 no (#5.7.1)\r\n"})
        engine, session = make()
        converse(engine, backend, [b"MAIL FROM:<a@b>\r\n"])
        assert session.mail_from is None

    def test_filters_stack_in_chain_order(self):
        """Commands meet the filters in chain order, replies in reverse order."""
        seen = []

        class Note(proxy.Filter):
            def __init__(self, name):
                self.name = name

            def command(self, session, verb, cmd):
                seen.append((self.name, session.prog, "command"))

            def reply(self, session, verb, lines):
                if verb:
                    seen.append((self.name, session.prog, "reply"))

        engine, _ = make([("one", Note(1)), ("two", Note(2))])
        converse(engine, FakeQmail(), [b"NOOP\r\n"])
        assert seen == [(1, "one", "command"), (2, "two", "command"),
                        (2, "two", "reply"), (1, "one", "reply")]

    def test_broken_filter_fails_open(self, capfd):
        """A filter that raises is logged and the command passes."""
        class Broken(proxy.Filter):
            def command(self, session, verb, cmd):
                raise ValueError("oops")

        engine, _ = make([("broken", Broken())])
        got = converse(engine, FakeQmail(), [b"NOOP\r\n"])
        assert replies(got) == [b"220", b"250"]
        assert "broken: warning: filter failed: ValueError: oops" in capfd.readouterr().err

    def test_backend_eof_keeps_answered_replies(self):
        """When the backend leaves, replies it gave still go out and the session ends."""
        engine, _ = make()
        engine.server_data(b"220 hi\r\n")
        engine.client_data(b"NOOP\r\nNOOP\r\n")
        engine.server_data(b"250 ok\r\n")
        engine.server_data(b"")
        assert bytes(engine.to_client) == b"220 hi\r\n250 ok\r\n"
        del engine.to_client[:]
        assert engine.finished()


class Stamp(proxy.Filter):
    """A filter that adds a header field at each MAIL whose sender contains "stamp".

    verbs names other commands to add a field at (the verb in the field's
    name); refuse names commands it refuses after adding.
    """

    def __init__(self, name="X-Stamp", verbs=(), refuse=()):
        self.name, self.verbs, self.refuse = name, verbs, refuse

    def command(self, session, verb, cmd):
        if (verb == b"mail" and b"stamp" in cmd.line) or verb in self.verbs:
            session.add_header(self.name, verb.decode(), (cmd.path or b"").decode("latin-1"))
        if verb in self.refuse:
            return b"554 no (#5.7.1)\r\n"
        return None


MESSAGE = b"Subject: x\r\n\r\nbody\r\n.\r\n"
TRANSACTION = b"MAIL FROM:<stamp@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + MESSAGE


class TestHeaders:
    """Header fields the filters add (Session.add_header), written right after the 354."""

    def run(self, chunks, filters=None, backend=None, tls=False):
        engine, session = make(filters or [("stamp", Stamp())])
        session.tls = tls
        backend = backend or FakeQmail()
        got = converse(engine, backend, chunks)
        return got, backend

    def test_field_comes_first_in_the_message(self):
        """The field reaches the backend after its 354 and before the client's first byte."""
        got, backend = self.run([b"EHLO a\r\n", b"MAIL FROM:<stamp@b>\r\n", b"RCPT TO:<c@d>\r\n",
                                 b"DATA\r\n", MESSAGE])
        assert backend.messages == [b"X-Stamp: mail stamp@b\r\n" + MESSAGE]
        assert replies(got) == [b"220", b"250", b"250", b"250", b"354", b"250"]

    @pytest.mark.parametrize("split", ["pipelined", "bytes", "lines"])
    def test_however_the_client_sends(self, split):
        """Pipelined, byte by byte or line by line: the same bytes reach the backend."""
        whole = b"EHLO a\r\n" + TRANSACTION + b"QUIT\r\n"
        if split == "pipelined":
            chunks = [whole]
        elif split == "bytes":
            chunks = [whole[i : i + 1] for i in range(len(whole))]
        else:
            chunks = whole.splitlines(keepends=True)
        got, backend = self.run(chunks)
        assert backend.messages == [b"X-Stamp: mail stamp@b\r\n" + MESSAGE]
        assert bytes(backend.raw) == (b"EHLO a\r\nMAIL FROM:<stamp@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
                                      b"X-Stamp: mail stamp@b\r\n" + MESSAGE + b"QUIT\r\n")

    def test_once_a_transaction(self):
        """Each message gets the fields of its own transaction, once."""
        second = b"MAIL FROM:<plain@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + MESSAGE
        got, backend = self.run([TRANSACTION + second + TRANSACTION])
        assert backend.messages == [b"X-Stamp: mail stamp@b\r\n" + MESSAGE, MESSAGE,
                                    b"X-Stamp: mail stamp@b\r\n" + MESSAGE]

    @pytest.mark.parametrize("between", [b"RSET\r\n", b"HELO again\r\n", b"EHLO again\r\n",
                                         b"MAIL FROM:<plain@b>\r\n"])
    def test_forgotten_at_a_new_transaction(self, between):
        """RSET, HELO, EHLO and a new MAIL forget the fields of the transaction before."""
        got, backend = self.run([b"MAIL FROM:<stamp@b>\r\n" + between
                                 + b"MAIL FROM:<plain@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + MESSAGE])
        assert backend.messages == [MESSAGE]
        assert b"X-Stamp" not in backend.raw

    def test_not_written_when_data_is_refused(self):
        """A DATA the backend refuses writes nothing; the 354 that follows writes the field once."""
        got, backend = self.run([b"MAIL FROM:<stamp@b>\r\nDATA\r\nRCPT TO:<c@d>\r\nDATA\r\n" + MESSAGE])
        assert replies(got) == [b"220", b"250", b"503", b"250", b"354", b"250"]
        assert backend.messages == [b"X-Stamp: mail stamp@b\r\n" + MESSAGE]
        assert backend.raw.count(b"X-Stamp") == 1
        assert backend.raw.index(b"X-Stamp") > backend.raw.index(b"RCPT")

    def test_not_written_when_a_filter_refuses_data(self):
        """A DATA a filter refuses never reaches the backend, and neither do the fields."""
        filters = [("stamp", Stamp()), ("no", Stamp("X-No", refuse=(b"data",)))]
        got, backend = self.run([TRANSACTION], filters)
        assert replies(got)[:4] == [b"220", b"250", b"250", b"554"] and b"X-Stamp" not in backend.raw

    def test_refused_mail_adds_nothing(self):
        """A MAIL refused by a later filter or by the backend leaves no field behind."""
        filters = [("stamp", Stamp()), ("no", Stamp("X-No", refuse=(b"mail",)))]
        got, backend = self.run([TRANSACTION], filters)
        assert b"X-Stamp" not in backend.raw and b"X-No" not in backend.raw
        engine, session = make([("stamp", Stamp())])
        refusing = FakeQmail(answers={b"mail": b"553 no (#5.1.7)\r\n"})
        got = converse(engine, refusing, [b"MAIL FROM:<stamp@b>\r\n"])
        assert replies(got) == [b"220", b"553"]
        assert session.headers == [] and session.adding == []

    def test_fields_of_later_commands(self):
        """A field added at RCPT or DATA counts when the backend accepts that command, in order."""
        filters = [("stamp", Stamp(verbs=(b"rcpt", b"data")))]
        got, backend = self.run([b"RCPT TO:<early@d>\r\n" + TRANSACTION], filters)
        assert backend.messages == [b"X-Stamp: mail stamp@b\r\nX-Stamp: rcpt c@d\r\n"
                                    b"X-Stamp: data\r\n" + MESSAGE]

    def test_tls_received_line_comes_last(self):
        """On a TLS session the proxy's own Received line follows the filters' fields."""
        got, backend = self.run([b"EHLO a\r\n" + TRANSACTION], tls=True)
        (message,) = backend.messages
        assert message.startswith(b"X-Stamp: mail stamp@b\r\nReceived: from unknown (HELO a) ([192.0.2.7])\r\n"
                                  b"  by localhost (qtools) with ESMTPS; ")
        assert message.endswith(b" -0000\r\n" + MESSAGE)

    def test_outside_text_is_cleaned_and_folded(self):
        """A part from outside cannot end the field or start another; long fields are folded."""
        engine, session = make()
        assert session.add_header("X-Test", "a\r\nBcc: evil@example", "x" * 30, "y" * 60)
        assert session.adding == [b"X-Test: a??Bcc: evil@example " + b"x" * 30 + b"\r\n  " + b"y" * 60 + b"\r\n"]
        with pytest.raises(ValueError):
            session.add_header("X-Bad\r\nBcc", "a")

    def test_bounded(self, capfd):
        """The fields of one message are bounded: past MAX_HEADERS bytes a field is not added."""
        engine, session = make()
        added = [session.add_header("X-Big", "x" * 800) for _ in range(20)]
        assert added.count(True) == proxyfilter.MAX_HEADERS // len(session.adding[0])
        assert sum(map(len, session.adding)) <= proxyfilter.MAX_HEADERS
        assert "proxy: warning: header field X-Big not added: more than 8192 bytes" in capfd.readouterr().err

    def test_broken_filter_field_name_fails_open(self, capfd):
        """A filter that names a bad field fails open: the command goes on, without a field."""
        got, backend = self.run([TRANSACTION], [("bad", Stamp("Bad:Name"))])
        assert backend.messages == [MESSAGE]
        assert "bad: warning: filter failed: ValueError" in capfd.readouterr().err


class TestMemory:
    """Every buffer is bounded, replies the tarpit holds included."""

    def test_pipelining_behind_a_held_reply(self):
        """Finding 7: NOOPs pipelined behind a held reply stop being read; nothing grows; all are answered in turn."""
        clock = Clock()
        engine, _ = make([("hold", Hold(60))], clock=clock)
        backend = FakeQmail()
        engine.server_data(backend.greeting)
        engine.client_data(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        block = b"NOOP\r\n" * (65536 // 6)
        sent = peak = 0

        def answer():
            while engine.to_server:
                data = bytes(engine.to_server)
                del engine.to_server[:]
                engine.server_data(backend.feed(data))

        for _ in range(300):  # 20 MB offered, read only while the engine wants it
            answer()
            if engine.wants_input():
                engine.client_data(block)
                sent += len(block)
            peak = max(peak, engine.buffered())
        assert engine.deadline() == clock.now + 60
        assert not engine.wants_input()
        assert sent < 2 * len(block) and peak < 2 * len(block), (sent, peak)
        assert len(engine.queue) <= proxy.MAX_OWED
        clock.now += 60
        engine.tick()
        answer()
        got = bytes(engine.to_client)
        assert not engine.cin and len(backend.commands) == 2 + sent // 6
        assert replies(got) == [b"220", b"250", b"250"] + [b"250"] * (sent // 6)
        assert engine.wants_input() and not engine.queue

class TestStarttls:
    """STARTTLS: never a blind relay, never plaintext injection."""

    def test_without_certificate(self):
        """Without a certificate STARTTLS is answered 502 and never reaches the backend."""
        engine, _ = make()
        backend = FakeQmail()
        got = converse(engine, backend, [b"STARTTLS\r\nNOOP\r\n"])
        assert replies(got) == [b"220", b"502", b"250"]
        assert backend.commands == [b"NOOP"]

    def test_injected_plaintext_discarded(self):
        """Commands sent in the same packet after STARTTLS are thrown away."""
        engine, session = make(tls=True)
        backend = FakeQmail()
        got = converse(engine, backend, [b"EHLO a\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\n"])
        assert got.endswith(proxy.TLS_READY) and engine.tls_pending
        engine.client_data(b"RCPT TO:<more@x>\r\n")
        assert backend.commands == [b"EHLO a"] and engine.to_server == b""
        engine.tls_started()
        assert session.tls and session.helo is None
        assert bytes(engine.to_server) == b"RSET\r\n"
        engine.server_data(backend.feed(bytes(engine.to_server)))
        assert engine.to_client == b"" and not engine.queue

    def test_starttls_alone(self):
        """STARTTLS with no reply outstanding starts TLS at once."""
        engine, _ = make(tls=True)
        engine.server_data(b"220 hi\r\n")
        engine.client_data(b"STARTTLS\r\n")
        assert bytes(engine.to_client).endswith(proxy.TLS_READY) and engine.tls_pending

    @pytest.mark.parametrize("behind", ["backend", "tarpit"])
    @pytest.mark.parametrize("segments", [1, 3, "bytes"])
    def test_injection_before_and_after_220(self, behind, segments):
        """Finding 4: plaintext sent while the 220 waits (behind backend or held replies) or after it never runs."""
        clock = Clock()
        engine, session = make([("hold", Hold(5))], tls=True, clock=clock)
        backend = FakeQmail()
        engine.server_data(backend.greeting)
        if behind == "backend":
            start = b"EHLO a\r\n" + b"NOOP\r\n" * 50 + b"STARTTLS\r\n"
        else:
            start = b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nSTARTTLS\r\n"
        injected = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@x>\r\nDATA\r\n"

        def pieces(data):
            if segments == "bytes":
                return [data[i : i + 1] for i in range(len(data))]
            size = -(-len(data) // segments)
            return [data[i : i + size] for i in range(0, len(data), size)]

        owed = bytearray()  # the backend's replies the engine has not heard yet

        def answer(lines):
            for _ in range(lines):  # hand over one reply line at a time
                owed.extend(backend.feed(bytes(engine.to_server)))
                del engine.to_server[:]
                end = owed.find(b"\n") + 1
                if end:
                    line = bytes(owed[:end])
                    del owed[:end]
                    engine.server_data(line)

        for piece in pieces(start):
            engine.client_data(piece)
        answer(6)  # some replies are in, STARTTLS still waits behind the others
        assert not engine.tls_pending
        for piece in pieces(injected):
            engine.client_data(piece)
        answer(100)
        if behind == "tarpit":
            assert not engine.tls_pending and engine.deadline() == clock.now + 5
            for piece in pieces(b"RSET\r\n" + injected):  # while the hold lasts
                engine.client_data(piece)
            clock.now += 5
            engine.tick()
        assert bytes(engine.to_client).endswith(proxy.TLS_READY) and engine.tls_pending
        for piece in pieces(b"QUIT\r\n" + injected):  # after the 220, before the handshake
            engine.client_data(piece)
        engine.tls_started()
        answer(1)
        engine.client_data(b"EHLO b\r\nNOOP\r\n")  # what TLS decrypts
        answer(10)
        before = [b"NOOP"] * 50 if behind == "backend" else [b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>"]
        assert backend.commands == [b"EHLO a"] + before + [b"RSET", b"EHLO b", b"NOOP"]
        assert session.tls and not engine.cin

    @pytest.mark.parametrize("when", ["same-write", "held", "after"])
    def test_injection_with_real_tls(self, when, tmp_path, vcdb, certificate):
        """Finding 4 through proxyio and a real handshake: injected plaintext never reaches the backend."""
        cert, key = certificate
        raw = tmp_path / "raw"
        chain = ["tarpit", "-c", "1", "-t", "2"] if when == "held" else []
        ours, theirs = socket.socketpair()
        process = subprocess.Popen(
            [os.path.join(VENV_BIN, "validrcptto")] + chain + [sys.executable, HELPER, str(raw)],
            stdin=theirs, stdout=theirs, stderr=subprocess.PIPE,
            env=base_env(env_for(vcdb, QTOOLS_TLS_CERT=cert, QTOOLS_TLS_KEY=key)))
        theirs.close()
        ours.settimeout(20)
        injected = b"MAIL FROM:<evil@x>\r\nRCPT TO:<ok@example.com>\r\nDATA\r\nevil\r\n.\r\n"
        if when == "held":
            start = b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<ok@example.com>\r\nSTARTTLS\r\n"
        else:
            start = b"EHLO a\r\n" + b"NOOP\r\n" * 200 + b"STARTTLS\r\n"
        if when == "same-write":
            ours.sendall(start + injected)
        else:
            ours.sendall(start)
        if when == "held":
            for i in range(0, len(injected), 20):  # several segments while the 220 waits
                time.sleep(0.2)
                ours.sendall(injected[i : i + 20])
        got = b""
        while not got.endswith(proxy.TLS_READY):
            block = ours.recv(65536)
            assert block, got[-300:]
            got += block
        context = ssl.create_default_context(cafile=cert)
        if when == "after":
            ours.sendall(injected)  # plaintext after the 220: the handshake fails
            with pytest.raises((ssl.SSLError, OSError)):
                context.wrap_socket(ours, server_hostname="localhost").sendall(b"EHLO b\r\n")
        else:
            tls = context.wrap_socket(ours, server_hostname="localhost")
            secure = tls.makefile("rb")
            tls.sendall(b"EHLO b\r\n")
            assert read_reply(secure).startswith(b"250")
            tls.sendall(b"QUIT\r\n")
            assert read_reply(secure).startswith(b"221")
            tls.close()
        ours.close()
        err = process.communicate(timeout=20)[1]
        assert b"Traceback" not in err and b"fatal" not in err, err
        assert (b"end why=tls" if when == "after" else b"end why=eof") in err, err
        commands = FakeQmail()
        commands.feed(raw.read_bytes())
        assert not any(b"evil" in c for c in commands.commands), commands.commands
        assert commands.messages == []
        if when != "after":
            assert commands.commands[-3:] == [b"RSET", b"EHLO b", b"QUIT"]

    def test_starttls_with_parameter(self):
        """STARTTLS with a parameter gets 501 and no TLS."""
        engine, _ = make(tls=True)
        got = converse(engine, FakeQmail(), [b"STARTTLS now\r\n"])
        assert got.endswith(proxy.TLS_SYNTAX) and not engine.tls_pending


def slow_bare_lf(data, start, stop):
    for at in range(start, min(stop, len(data))):
        if data[at] == 10 and (at == 0 or data[at - 1] != 13):
            return at
    return -1


class TestBareLf:
    """Tests for `bare_lf`, the fast stray-newline finder."""

    @pytest.mark.parametrize(
        "data, start, expected",
        [
            (b"\r\nabc\r\n", 0, -1),
            (b"abc\ndef", 0, 3),
            (b"\r\n\n", 0, 2),
            (b"\r\r\n", 0, -1),
            (b"\n", 0, 0),
            (b"x\r\nab\n", 2, 5),
            (b"\r\nab", 2, -1),
        ],
    )
    def test_table(self, data, start, expected):
        """A LF counts as stray unless a CR comes right before it."""
        assert proxy.bare_lf(data, start, len(data)) == expected

    @given(st.binary(max_size=60).map(lambda b: b.replace(b"\x00", b"\r").replace(b"\x01", b"\n")),
           st.integers(min_value=0, max_value=60), st.integers(min_value=0, max_value=60))
    def test_same_as_byte_by_byte(self, data, start, stop):
        """bare_lf agrees with a byte-by-byte scan."""
        assert proxy.bare_lf(data, start, stop) == slow_bare_lf(data, start, stop)


class TestSpawn:
    """Tests for `spawn`: the child on a socketpair as its fds 0 and 1."""

    def test_child_talks_on_the_socket(self):
        """The child reads what we send on fd 0 and writes on fd 1 back to us."""
        pid, sock = proxyio.spawn(["sh", "-c", "read line; echo got $line"], dict(os.environ))
        try:
            sock.sendall(b"hello\n")
            sock.settimeout(10)
            assert sock.recv(100) == b"got hello\n"
        finally:
            sock.close()
            assert proxyio.reap(pid, grace=10) == (0, False)

    def test_backend_queue_is_asked_for(self):
        """The socket toward the child may queue more than a plain socketpair's default."""
        import _socket

        plain, other = _socket.socketpair()
        default = plain.getsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF)
        plain.close()
        other.close()
        pid, sock = proxyio.spawn(["true"], dict(os.environ))
        try:
            assert sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF) > default
        finally:
            sock.close()
            proxyio.reap(pid, grace=10)


class TestReap:
    """Tests for `reap`: the child's status as soon as it ends, and an end to a child that stays."""

    @pytest.fixture(params=["pidfd", "polled"])
    def waiting(self, request, monkeypatch):
        """Run each test with a pidfd and with the waitpid poll that stands in without one."""
        if request.param == "polled":
            monkeypatch.delattr(os, "pidfd_open", raising=False)
        return request.param

    @pytest.mark.parametrize(("script", "expected"), [("exit 3", (3, False)), ("kill -USR1 $$", (-10, False))])
    def test_status(self, waiting, script, expected):
        """An exit code, or minus the signal that ended the child, and not ended by us."""
        child = subprocess.Popen(["sh", "-c", "sleep 0.2; " + script])
        assert proxyio.reap(child.pid, grace=30) == expected

    def test_returns_when_the_child_ends(self, waiting):
        """The grace time is an upper bound, not a wait."""
        child = subprocess.Popen(["sh", "-c", "sleep 0.2"])
        start = time.monotonic()
        assert proxyio.reap(child.pid, grace=30) == (0, False)
        assert time.monotonic() - start < 10

    def test_a_child_that_stays_is_terminated(self, waiting):
        """After the grace time the child gets SIGTERM, and the status says we ended it."""
        child = subprocess.Popen(["sleep", "60"])
        start = time.monotonic()
        assert proxyio.reap(child.pid, grace=0.3) == (-15, True)
        assert time.monotonic() - start < 10

    def test_pidfd_wait_ends_at_the_time_limit(self):
        """_wait gives (0, 0) for a child still running when its time is up."""
        child = subprocess.Popen(["sleep", "60"])
        try:
            assert proxyio._wait(child.pid, 0.2) == (0, 0)
        finally:
            child.kill()
            child.wait()


# --- random input: the engine and qmail-smtpd never disagree -----------------

PIECES = st.sampled_from([
    b"EHLO a\r\n", b"helo b\n", b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<c@d>\r\n",
    b"rcpt to:<bad@d>\r\n", b"DATA\r\n", b"data\n", b"RSET\r\n", b"NOOP\r\n",
    b".\r\n", b"\r\n.\r\n", b"\n.\n", b"\n.\r\n", b"..x\r\n", b"\r", b"\n", b".",
    b"x" * 3000, b"BDAT 3\r\n", b"QUIT\r\n", b"STARTTLS\r\n", b"text line\r\n",
])
STREAM = st.lists(st.one_of(PIECES, st.binary(max_size=40)), max_size=40).map(b"".join)


def cut(data, points):
    """Cut data at the given points into chunks."""
    points = sorted({p % (len(data) + 1) for p in points})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)]) if data[a:b]]


class TestRandom:
    """Property tests of the engine fed arbitrary bytes."""

    @settings(max_examples=300, deadline=None)
    @given(STREAM, st.lists(st.integers(min_value=0), max_size=8), st.booleans())
    def test_same_commands_as_qmail(self, data, points, tls):
        """Whatever the bytes and chunks, the backend parses exactly the commands the filters passed."""
        engine, _ = make(tls=tls)
        recorder = engine.filters[0][1]
        backend = FakeQmail()
        got = converse(engine, backend, cut(data, points))
        assert backend.commands == recorder.passed
        assert all(re.match(rb"^[2-5][0-9][0-9][ -]", line) for line in got.split(b"\r\n")[:-1])

    @settings(max_examples=200, deadline=None)
    @given(STREAM, st.lists(st.integers(min_value=0), max_size=8))
    def test_chunking_does_not_matter(self, data, points):
        """Feeding the same bytes in other chunks gives the same replies and the same backend input.

        Header fields included: a field added at MAIL or RCPT lands only at
        the top of a message, never among the commands.
        """
        def filters():
            return [("test", Recorder()), ("stamp", Stamp(verbs=(b"mail", b"rcpt")))]

        one, _ = make(filters())
        first = FakeQmail()
        got_one = converse(one, first, [data])
        two, _ = make(filters())
        second = FakeQmail()
        got_two = converse(two, second, cut(data, points))
        assert got_one == got_two
        assert bytes(first.raw) == bytes(second.raw)
        assert not any(b"X-Stamp" in line for line in first.commands)
        for message in first.messages:
            assert b"X-Stamp" not in message.split(b"\r\n", message.count(b"X-Stamp:"))[-1]


# --- the real program, in a subprocess --------------------------------------


def build_cdb(path, entries):
    """Write a validrcptto-style cdb of entries (dict key -> value)."""
    import cdblib

    with open(path, "wb") as f:
        writer = cdblib.Writer(f)
        for key, value in entries.items():
            writer.put(key, value)
        writer.finalize()


@pytest.fixture
def vcdb(tmp_path):
    path = tmp_path / "validrcptto.cdb"
    build_cdb(str(path), {b"ok@example.com": b"", b"example.com": b""})
    return str(path)


def env_for(vcdb, **more):
    env = {"TCPREMOTEIP": "192.0.2.7", "VALIDRCPTTO_CDB": vcdb}
    env.update(more)
    return env


class TestProgram:
    """The proxy started by validrcptto, with a scripted backend and the sink."""

    def test_transcript_with_fake_backend(self, tmp_path, vcdb):
        """The backend receives the client's bytes minus refused commands, line endings untouched."""
        raw = tmp_path / "raw"
        stdin = (b"EHLO a\r\nMAIL FROM:<a@b>\nRCPT TO:<no@example.com>\r\n"
                 b"RCPT TO:<ok@example.com>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n")
        result = run_prog(["validrcptto", sys.executable, HELPER, str(raw)], env_for(vcdb), stdin)
        assert result.rc == 0
        assert replies(result.out) == [b"220", b"250", b"250", b"553", b"250", b"354", b"250", b"221"]
        assert b"CHUNKING" not in result.out and b"STARTTLS" not in result.out
        assert raw.read_bytes() == (b"EHLO a\r\nMAIL FROM:<a@b>\nRCPT TO:<ok@example.com>\r\n"
                                    b"DATA\r\nhi\r\n.\r\nQUIT\r\n")
        assert b"validrcptto: 192.0.2.7 pid x: end why=eof status=0\n" in result.err

    def test_sink_pipelined(self, tmp_path, vcdb):
        """The demo sink stores a pipelined message; the refused recipient is not in it."""
        maildir = tmp_path / "mail"
        maildir.mkdir()
        stdin = (b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<ok@example.com>\r\n"
                 b"RCPT TO:<no@example.com>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        result = run_prog(["validrcptto"] + sink_cmd(maildir), env_for(vcdb), stdin)
        assert replies(result.out) == [b"220", b"250", b"250", b"250", b"553", b"354", b"250", b"221"]
        (message,) = read_maildir(maildir)
        assert b"X-Sink-To: <ok@example.com>" in message and b"no@example.com" not in message
        assert message.endswith(b"Subject: s\r\n\r\nbody\r\n")

    def test_megabyte_command_line(self, tmp_path, vcdb):
        """A 1 MB command line through the real proxy gets one 500; the backend never sees a byte of it."""
        raw = tmp_path / "raw"
        stdin = b"NOOP\r\nRCPT TO:<" + b"y" * (1 << 20) + b">\r\nNOOP\r\nQUIT\r\n"
        result = run_prog(["validrcptto", sys.executable, HELPER, str(raw)], env_for(vcdb), stdin)
        assert replies(result.out) == [b"220", b"250", b"500", b"250", b"221"]
        assert raw.read_bytes() == b"NOOP\r\nNOOP\r\nQUIT\r\n"

    def test_sink_bare_lf_dot(self, tmp_path, vcdb):
        """LF . LF inside DATA never ends the message at the sink: the proxy refuses it."""
        maildir = tmp_path / "mail"
        maildir.mkdir()
        stdin = (b"MAIL FROM:<a@b>\r\nRCPT TO:<ok@example.com>\r\nDATA\r\nx\n.\n"
                 b"MAIL FROM:<evil@x>\r\nRCPT TO:<ok@example.com>\r\nDATA\r\nsmuggled\r\n.\r\n")
        result = run_prog(["validrcptto"] + sink_cmd(maildir), env_for(vcdb), stdin)
        assert result.out.endswith(proxy.BARE_LF)
        assert read_maildir(maildir) == []
        assert b"451 See http://pobox.com/~djb/docs/smtplf.html. why=barelf" in result.err

    def test_client_gone_mid_data(self, tmp_path, vcdb):
        """A client that closes mid-DATA stores nothing and the proxy ends cleanly."""
        maildir = tmp_path / "mail"
        maildir.mkdir()
        stdin = b"MAIL FROM:<a@b>\r\nRCPT TO:<ok@example.com>\r\nDATA\r\nhalf a mess"
        result = run_prog(["validrcptto"] + sink_cmd(maildir), env_for(vcdb), stdin)
        assert result.rc == 0 and read_maildir(maildir) == []
        assert replies(result.out) == [b"220", b"250", b"250", b"354"]

    def test_child_exit_status_reported(self, vcdb):
        """The child's exit status is logged and becomes the exit code."""
        result = run_prog(["validrcptto", "sh", "-c", "echo '220 x'; exit 3"], env_for(vcdb))
        assert result.rc == 3
        assert b"validrcptto: 192.0.2.7 pid x: end why=eof status=3\n" in result.err

    def test_cannot_run_child(self, vcdb):
        """A missing next program is a temporary failure."""
        result = run_prog(["validrcptto", "/nonexistent/qmail-smtpd"], env_for(vcdb))
        assert result.rc == 111
        assert result.err == (b"validrcptto: fatal: unable to run /nonexistent/qmail-smtpd: "
                              b"no such file or directory\n")

    def test_child_never_outlives(self, tmp_path, vcdb):
        """A child that ignores the end of its input is ended after the grace time."""
        pidfile = tmp_path / "pid"
        script = "echo $$ > %s; echo '220 x'; trap '' HUP; while :; do sleep 1; done" % pidfile
        start = time.monotonic()
        result = run_prog(["validrcptto", "sh", "-c", script], env_for(vcdb), b"", timeout=30)
        assert time.monotonic() - start < 20
        pid = int(pidfile.read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert b"end why=eof signal=15" in result.err

    def test_silent_backend_after_client_left(self, vcdb):
        """A backend that never answers a client who has left is cut off (here by the idle timeout)."""
        script = "echo '220 x'; exec sleep 60"
        start = time.monotonic()
        result = run_prog(["validrcptto", "sh", "-c", script],
                          env_for(vcdb, QTOOLS_IDLE_TIMEOUT="1"), b"NOOP\r\n", timeout=40)
        assert time.monotonic() - start < 30
        assert result.out == b"220 x\n" + proxy.TIMEOUT
        assert b"end why=timeout signal=15" in result.err

    @pytest.mark.parametrize("trap", ["", "trap '' TERM; "])
    def test_backend_ignoring_the_close(self, vcdb, trap):
        """Finding 10: a backend that stays after the client left gets 5 s, then SIGTERM, then SIGKILL."""
        script = trap + "echo '220 x'; exec sleep 60"
        start = time.monotonic()
        result = run_prog(["validrcptto", "sh", "-c", script], env_for(vcdb), b"NOOP\r\n",
                          timeout=60)
        elapsed = time.monotonic() - start
        assert result.out == b"220 x\n" + proxy.TIMEOUT
        if trap:
            assert 6.5 < elapsed < 15 and b"end why=timeout signal=9" in result.err
        else:
            assert 4.5 < elapsed < 10 and b"end why=timeout signal=15" in result.err

    def test_total_timeout_while_queuing(self, vcdb):
        """Finding 10: the total timeout waits for the reply to the final dot, then says 421."""
        backend = (
            "import os, sys, time\n"
            "w = lambda b: os.write(1, b)\n"
            "w(b'220 x\\r\\n'); data = b''; body = False\n"
            "while True:\n"
            "    got = os.read(0, 4096)\n"
            "    if not got: break\n"
            "    data += got\n"
            "    while True:\n"
            "        if body:\n"
            "            end = data.find(b'\\r\\n.\\r\\n')\n"
            "            if end < 0: break\n"
            "            data, body = data[end + 5:], False\n"
            "            time.sleep(3); w(b'250 ok queued\\r\\n'); continue\n"
            "        end = data.find(b'\\n')\n"
            "        if end < 0: break\n"
            "        line, data = data[:end], data[end + 1:]\n"
            "        body = line.startswith(b'DATA')\n"
            "        w(b'354 go\\r\\n' if body else b'250 ok\\r\\n')\n"
        )
        argv = [os.path.join(VENV_BIN, "validrcptto"), sys.executable, "-c", backend]
        env = env_for(vcdb, QTOOLS_TOTAL_TIMEOUT="1")
        process = subprocess.Popen(argv, env=base_env(env), stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        start = time.monotonic()
        process.stdin.write(b"HELO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<ok@example.com>\r\nDATA\r\n"
                            b"hello\r\n.\r\n")
        process.stdin.flush()
        out = process.stdout.read()  # stdin stays open: the proxy ends it
        elapsed = time.monotonic() - start
        process.stdin.close()
        process.wait(30)
        assert out.endswith(b"354 go\r\n250 ok queued\r\n" + proxy.TIMEOUT), out
        assert 2.5 < elapsed < 15
        assert b"end why=timeout" in process.stderr.read()

    def test_idle_timeout(self, vcdb):
        """An idle client gets 421 and the child is ended."""
        env = env_for(vcdb, QTOOLS_IDLE_TIMEOUT="1")
        argv = [os.path.join(VENV_BIN, "validrcptto"), sys.executable] + [HELPER, os.devnull]
        process = subprocess.Popen(argv, env=base_env(env), stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        start = time.monotonic()
        out = process.stdout.read()  # ends when the proxy closes, stdin still open
        elapsed = time.monotonic() - start
        process.stdin.close()
        process.wait(30)
        err = process.stderr.read()
        assert out == b"220 fake.local ESMTP\r\n" + proxy.TIMEOUT
        assert 0.5 < elapsed < 15
        assert b"end why=timeout" in err

    def test_total_timeout(self, vcdb):
        """A client that keeps talking is still cut off at the total timeout."""
        env = env_for(vcdb, QTOOLS_TOTAL_TIMEOUT="2", QTOOLS_IDLE_TIMEOUT="60")
        argv = [os.path.join(VENV_BIN, "validrcptto"), sys.executable, HELPER, os.devnull]
        process = subprocess.Popen(argv, env=base_env(env), stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        start = time.monotonic()
        try:
            while process.poll() is None and time.monotonic() - start < 20:
                process.stdin.write(b"NOOP\r\n")
                process.stdin.flush()
                time.sleep(0.2)
        except BrokenPipeError:
            pass
        out = process.stdout.read()
        process.wait(30)
        elapsed = time.monotonic() - start
        assert out.endswith(proxy.TIMEOUT) and out.count(b"250 fake.local") >= 3
        assert 1.5 < elapsed < 20
        assert b"end why=timeout" in process.stderr.read()

    def test_invalid_timeout_variable(self, vcdb):
        """A timeout that is not a number is a usage error."""
        result = run_prog(["validrcptto", "true"], env_for(vcdb, QTOOLS_TOTAL_TIMEOUT="soon"))
        assert result.rc == 100
        assert result.err == b"validrcptto: fatal: invalid $QTOOLS_TOTAL_TIMEOUT: soon\n"


# --- TLS ------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate and key made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


def read_reply(sock_file):
    """Read one SMTP reply (all its lines) from a file-like object."""
    lines = []
    while True:
        line = sock_file.readline()
        lines.append(line)
        if not line or line[3:4] != b"-":
            return b"".join(lines)


@pytest.mark.e2e
class TestTls:
    """The proxy terminates TLS itself and keeps filtering."""

    def session(self, tcpserver, tmp_path, vcdb, env):
        maildir = tmp_path / "mail"
        maildir.mkdir()
        server = tcpserver(["validrcptto"] + sink_cmd(maildir), env=env_for(vcdb, **env))
        return server, maildir

    def test_starttls_and_filtering(self, tcpserver, tmp_path, vcdb, certificate):
        """After STARTTLS, injected plaintext is dropped and RCPTs are still checked."""
        cert, key = certificate
        server, maildir = self.session(tcpserver, tmp_path, vcdb,
                                       {"QTOOLS_TLS_CERT": cert, "QTOOLS_TLS_KEY": key})
        raw = socket.create_connection((server.host, server.port), timeout=30)
        plain = raw.makefile("rb")
        assert read_reply(plain).startswith(b"220 ")
        raw.sendall(b"EHLO me\r\n")
        ehlo = read_reply(plain)
        assert b"250-STARTTLS\r\n" in ehlo and b"CHUNKING" not in ehlo
        raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@x>\r\n")
        assert read_reply(plain) == b"220 ready to start TLS\r\n"
        context = ssl.create_default_context(cafile=cert)
        tls = context.wrap_socket(raw, server_hostname="localhost")
        secure = tls.makefile("rb")
        tls.sendall(b"EHLO me\r\n")
        ehlo = read_reply(secure)
        assert ehlo.startswith(b"250") and b"STARTTLS" not in ehlo
        tls.sendall(b"MAIL FROM:<a@b>\r\nRCPT TO:<no@example.com>\r\nRCPT TO:<ok@example.com>\r\n"
                    b"DATA\r\n")
        got = [read_reply(secure)[:3] for _ in range(4)]
        assert got == [b"250", b"553", b"250", b"354"]
        tls.sendall(b"secret\r\n.\r\nQUIT\r\n")
        assert read_reply(secure)[:3] == b"250"
        assert read_reply(secure)[:3] == b"221"
        tls.close()
        (message,) = read_maildir(maildir)
        assert b"injected" not in message and message.endswith(b"secret\r\n")

    def test_unreadable_certificate(self, tcpserver, tmp_path, vcdb):
        """An unreadable certificate means no STARTTLS and a warning, not a refusal."""
        server, _ = self.session(tcpserver, tmp_path, vcdb, {"QTOOLS_TLS_CERT": "/nonexistent.pem"})
        smtp = __import__("smtplib").SMTP(server.host, server.port, timeout=30)
        code, text = smtp.ehlo("me")
        assert code == 250 and b"STARTTLS" not in text.upper()
        smtp.quit()
        deadline = time.monotonic() + 10
        while "unable to load /nonexistent.pem" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "validrcptto: warning: unable to load /nonexistent.pem" in server.log()


def test_a_recipient_qmail_smtpd_cannot_read_is_never_one_the_filters_see():
    """A backend that takes an address of 900 bytes (qmail-smtpd's syntax error) adds nothing to session.rcpts.

    make fuzz found greylist -T judging such a None recipient of a bounce
    at DATA and failing.
    """
    engine, session = make()
    long_rcpt = b"RCPT TO:<" + b"a" * 950 + b"@example.net>\r\n"
    converse(engine, FakeQmail(addrparse=False),
             [b"HELO a\r\nMAIL FROM:<>\r\n" + long_rcpt + b"RCPT TO:<b@c>\r\n"])
    assert session.rcpts == [b"b@c"]


def test_a_mail_the_backend_refuses_leaves_the_transaction_as_qmail_smtpd_does():
    """A MAIL whose address addrparse() cannot read gets 555 and qmail-smtpd keeps the
    transaction before it: so do the filters' sender and recipients."""
    engine, session = make()
    long_mail = b"MAIL FROM:<" + b"a" * 950 + b"@example.org>\r\n"
    got = converse(engine, FakeQmail(), [b"HELO a\r\nMAIL FROM:<s@example.org>\r\n"
                                         b"RCPT TO:<b@c>\r\n" + long_mail + b"RCPT TO:<d@e>\r\n"])
    assert replies(got) == [b"220", b"250", b"250", b"250", b"555", b"250"]
    assert (session.mail_from, session.rcpts) == (b"s@example.org", [b"b@c", b"d@e"])
