# SPDX-License-Identifier: ISC
"""Tests for `qtools.validrcptto`, the jms1-compatible recipient check."""

import subprocess

import pytest

from conftest import read_maildir, run_prog, sink_cmd
from qtools import core, proxy, validrcptto
from qtools.address import read
from qtools.validrcptto import NOT_LISTED

CDB = {
    b"joe@example.com": b"",
    b"list-default@example.com": b"",
    b"list-owner@example.com": b"-",
    b"gone@example.com": b"-moved away",
    b"example.com": b"",
    b"@catchall.org": b"",
    b"catchall.org": b"",
    b"spam@catchall.org": b"-",
}

REFUSED = lambda why, **more: core.Verdict(  # noqa: E731
    "refuse", 553, NOT_LISTED, (("why", why),) + tuple(more.items())
)
PASSED = lambda why, **more: core.Verdict(  # noqa: E731
    "pass", why=(("why", why),) + tuple(more.items())
)


class TestKeys:
    """Tests for `keys`."""

    @pytest.mark.parametrize(
        "addr, expected",
        [
            (b"joe@x", [b"joe@x", b"@x"]),
            (b"a-b-c@x", [b"a-b-c@x", b"a-b-default@x", b"a-default@x", b"@x"]),
            (b"-a@x", [b"-a@x", b"-default@x", b"@x"]),
            (b"joe", [b"joe"]),
        ],
    )
    def test_order(self, addr, expected):
        """Exact address, then the -default walk from the longest prefix, then @domain."""
        assert list(validrcptto.keys(addr)) == expected


class TestDecide:
    """Tests for `decide`."""

    @pytest.mark.parametrize(
        "addr, strict, expected",
        [
            (b"joe@example.com", False, PASSED("found", key=b"joe@example.com")),
            (b"JOE@Example.Com", False, PASSED("found", key=b"joe@example.com")),
            (b"list-x-y@example.com", False, PASSED("found", key=b"list-default@example.com")),
            (b"list-owner@example.com", False, REFUSED("rejected", key=b"list-owner@example.com")),
            (b"gone@example.com", False, REFUSED("rejected", key=b"gone@example.com", note=b"moved away")),
            (b"nobody@example.com", False, REFUSED("notfound")),
            (b"anyone@catchall.org", False, PASSED("found", key=b"@catchall.org")),
            (b"spam@catchall.org", False, REFUSED("rejected", key=b"spam@catchall.org")),
            (b"someone@elsewhere.net", False, PASSED("unlisted")),
            (b"someone@elsewhere.net", True, REFUSED("notfound")),
            (b"nobody", False, REFUSED("notfound")),
            (b"postmaster", False, PASSED("postmaster")),
            (b"PostMaster@example.com", True, PASSED("postmaster")),
            (b"joe%other.org@example.com", False, REFUSED("probe")),
            (b"other.org!joe@example.com", False, REFUSED("probe")),
            (b"joe@other.org@example.com", False, REFUSED("probe")),
            (b"postmaster%x@example.com", False, REFUSED("probe")),
            (b"", False, REFUSED("empty")),
            (None, False, PASSED("syntax")),
        ],
    )
    def test_table(self, addr, strict, expected):
        """decide follows the jms1 lookup order, with unlisted domains left to qmail unless strict."""
        assert validrcptto.decide(addr, CDB, strict) == expected

    def test_trace(self):
        """trace hears every key tried, in order."""
        tried = []
        validrcptto.decide(b"a-b@example.com", CDB, trace=tried.append)
        assert tried == [b"a-b@example.com", b"a-default@example.com", b"@example.com"]


def session(logs):
    return proxy.Session(core.Client("192.0.2.7", b"\xc0\0\2\7"), {},
                         logger=lambda *a: logs.append(a[2:]))


class TestCheck:
    """Tests for the `Check` filter."""

    def test_limit_hangs_up(self):
        """The limit-th invalid recipient gets 421 instead of 553."""
        logs = []
        check = validrcptto.Check(CDB, limit=3)
        s = session(logs)
        got = [check.command(s, b"rcpt", read(b"RCPT TO:<x%d@example.com>" % n)) for n in range(3)]
        assert got[:2] == [b"553 " + NOT_LISTED.encode() + b"\r\n"] * 2
        assert got[2] == b"421 too many invalid addresses, goodbye (#4.3.0)\r\n"
        assert logs[-1] == ("421 too many invalid addresses, goodbye (#4.3.0)",
                            (("rcpt", "x2@example.com"), ("why", "limit"), ("count", 3)))

    def test_valid_do_not_count(self):
        """Valid recipients neither count nor reset the count."""
        check = validrcptto.Check(CDB, limit=2)
        s = session([])
        assert check.command(s, b"rcpt", read(b"RCPT TO:<bad@example.com>"))[:3] == b"553"
        assert check.command(s, b"rcpt", read(b"RCPT TO:<joe@example.com>")) is None
        assert check.command(s, b"rcpt", read(b"RCPT TO:<bad2@example.com>"))[:3] == b"421"

    def test_limit_zero_never_hangs_up(self):
        """VALIDRCPTTO_LIMIT=0 refuses forever without hanging up."""
        check = validrcptto.Check(CDB, limit=0)
        s = session([])
        for n in range(50):
            assert check.command(s, b"rcpt", read(b"RCPT TO:<x%d@example.com>" % n))[:3] == b"553"

    def test_authenticated_steps_aside(self):
        """After the backend accepted SMTP AUTH, recipients are not checked."""
        s = session([])
        s.authenticated = True
        assert validrcptto.Check(CDB, strict=True).command(s, b"rcpt", read(b"RCPT TO:<x@far.example>")) is None

    def test_other_verbs_pass(self):
        """Only RCPT is checked."""
        check = validrcptto.Check(CDB)
        assert check.command(session([]), b"mail", read(b"MAIL FROM:<nobody@example.com>")) is None

    @pytest.mark.parametrize(
        "level, expected",
        [
            (0, [("553 " + NOT_LISTED, (("rcpt", "no@example.com"), ("why", "notfound")))]),
            (1, [("pass", (("rcpt", "joe@example.com"), ("why", "found"), ("key", "joe@example.com"))),
                 ("553 " + NOT_LISTED, (("rcpt", "no@example.com"), ("why", "notfound")))]),
            (2, [("try", (("key", "joe@example.com"),)),
                 ("pass", (("rcpt", "joe@example.com"), ("why", "found"), ("key", "joe@example.com"))),
                 ("try", (("key", "no@example.com"),)), ("try", (("key", "@example.com"),)),
                 ("553 " + NOT_LISTED, (("rcpt", "no@example.com"), ("why", "notfound")))]),
        ],
    )
    def test_log_levels(self, level, expected):
        """VALIDRCPTTO_LOG 0 logs refusals, 1 also passes, 2 also every key tried."""
        logs = []
        check = validrcptto.Check(CDB, level=level)
        s = session(logs)
        check.command(s, b"rcpt", read(b"RCPT TO:<joe@example.com>"))
        check.command(s, b"rcpt", read(b"RCPT TO:<no@example.com>"))
        assert logs == expected


# --- the installed program ---------------------------------------------------


def build(path, text):
    """Build a validrcptto cdb with qtools-mkcdb -a from text."""
    result = run_prog(["qtools-mkcdb", "-a", str(path), str(path) + ".tmp"], stdin=text)
    assert result.rc == 0, result
    return str(path)


@pytest.fixture
def vcdb(tmp_path):
    return build(tmp_path / "validrcptto.cdb",
                 b"joe@example.com\nlist-default@example.com\n-owner@example.com\n@catchall.org\n")


@pytest.fixture
def maildir(tmp_path):
    path = tmp_path / "mail"
    path.mkdir()
    return path


SESSION = (b"HELO me\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<joe@example.com>\r\n"
           b"RCPT TO:<nobody@example.com>\r\nRCPT TO:<x@elsewhere.net>\r\nDATA\r\n"
           b"Subject: t\r\n\r\nhi\r\n.\r\nQUIT\r\n")


def codes(out):
    return [line[:3] for line in out.split(b"\r\n") if line[3:4] == b" "]


class TestProgram:
    """Transcripts of the installed validrcptto with the demo sink."""

    def run(self, maildir, env, stdin=SESSION, options=()):
        env = dict({"TCPREMOTEIP": "192.0.2.7"}, **env)
        return run_prog(["validrcptto"] + list(options) + sink_cmd(maildir), env, stdin)

    def test_session(self, maildir, vcdb):
        """A listed recipient passes, an unlisted one at a listed domain gets 553, other domains pass."""
        result = self.run(maildir, {"VALIDRCPTTO_CDB": vcdb})
        assert codes(result.out) == [b"220", b"250", b"250", b"250", b"553", b"250", b"354",
                                     b"250", b"221"]
        assert (b"553 sorry, this recipient is not in my validrcptto list (#5.7.1)\r\n"
                in result.out)
        assert result.err.startswith(
            b"validrcptto: 192.0.2.7 pid x: 553 sorry, this recipient is not in my validrcptto list (#5.7.1) rcpt=nobody@example.com why=notfound\n")
        (message,) = read_maildir(maildir)
        assert b"X-Sink-To: <joe@example.com>\r\nX-Sink-To: <x@elsewhere.net>\r\n" in message

    def test_strict(self, maildir, vcdb):
        """-s refuses addresses at domains the cdb does not list, as the jms1 patch does."""
        result = self.run(maildir, {"VALIDRCPTTO_CDB": vcdb}, options=["-s"])
        assert codes(result.out)[3:6] == [b"250", b"553", b"553"]

    def test_relayclient_steps_aside(self, maildir, vcdb):
        """With RELAYCLIENT set nothing is checked and no proxy runs."""
        result = self.run(maildir, {"VALIDRCPTTO_CDB": vcdb, "RELAYCLIENT": ""})
        assert b"\r\n553 " not in result.out and b"end why" not in result.err
        # logged at every level, so that qtools-adaptive never blocks a relay client
        assert b"validrcptto: 192.0.2.7 pid x: skip why=relayclient\n" in result.err

    def test_no_cdb(self, maildir):
        """Without $VALIDRCPTTO_CDB every recipient passes."""
        result = self.run(maildir, {})
        assert b"\r\n553 " not in result.out and result.err.count(b"\n") == 1  # the sink's line

    def test_unreadable_cdb_fails_open(self, maildir, tmp_path):
        """An unreadable cdb is a warning and every recipient passes."""
        missing = str(tmp_path / "missing.cdb")
        result = self.run(maildir, {"VALIDRCPTTO_CDB": missing})
        assert b"\r\n553 " not in result.out and result.rc == 0
        assert result.err.startswith(
            b"validrcptto: warning: unable to open %s: no such file or directory\n" % missing.encode())

    def test_unreadable_cdb_with_t(self, maildir, tmp_path):
        """With -t an unreadable cdb makes every RCPT a 451, never a 5xx."""
        result = self.run(maildir, {"VALIDRCPTTO_CDB": str(tmp_path / "missing.cdb")}, options=["-t"])
        assert codes(result.out)[3:6] == [b"451", b"451", b"451"]
        assert b"451 unable to read controls (#4.3.0)\r\n" in result.out

    @pytest.mark.parametrize(
        "value, reply",
        [
            ("-go away", b"553 go away\r\n"),
            ("try later", b"451 try later\r\n"),
        ],
    )
    def test_override_refuses(self, maildir, vcdb, value, reply):
        """$QTOOLS_VALIDRCPTTO with text refuses every recipient with it."""
        result = self.run(maildir, {"VALIDRCPTTO_CDB": vcdb, "QTOOLS_VALIDRCPTTO": value})
        assert result.out.count(reply) == 3

    def test_override_empty_skips(self, maildir, vcdb):
        """An empty $QTOOLS_VALIDRCPTTO skips the check."""
        result = self.run(maildir, {"VALIDRCPTTO_CDB": vcdb, "QTOOLS_VALIDRCPTTO": ""})
        assert b"\r\n553 " not in result.out

    def test_limit_transcript(self, maildir, vcdb):
        """The limit-th invalid RCPT gets 421 and the connection closes; nothing is stored."""
        stdin = (b"MAIL FROM:<a@b.example>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                 b"RCPT TO:<joe@example.com>\r\nDATA\r\nx\r\n.\r\n")
        result = self.run(maildir, {"VALIDRCPTTO_CDB": vcdb, "VALIDRCPTTO_LIMIT": "2"}, stdin)
        assert codes(result.out) == [b"220", b"250", b"553", b"421"]
        assert result.out.endswith(b"421 too many invalid addresses, goodbye (#4.3.0)\r\n")
        assert b"421 too many invalid addresses, goodbye (#4.3.0) rcpt=b@example.com why=limit count=2" in result.err
        assert b"end why=421" in result.err and read_maildir(maildir) == []

    @pytest.mark.parametrize(
        "env, err",
        [
            ({"VALIDRCPTTO_LIMIT": "ten"}, b"validrcptto: fatal: invalid $VALIDRCPTTO_LIMIT: ten\n"),
            ({"VALIDRCPTTO_LOG": "-1"}, b"validrcptto: fatal: invalid $VALIDRCPTTO_LOG: -1\n"),
            ({"TCPREMOTEIP": "nonsense"}, b"validrcptto: fatal: invalid $TCPREMOTEIP: nonsense\n"),
        ],
    )
    def test_misconfiguration(self, maildir, vcdb, env, err):
        """Bad variables are permanent errors: exit 100, nothing said to the client."""
        result = self.run(maildir, dict({"VALIDRCPTTO_CDB": vcdb}, **env))
        assert (result.rc, result.out, result.err) == (100, b"", err)

    def test_usage(self):
        """Without a program to run, validrcptto prints its usage."""
        result = run_prog(["validrcptto", "-x"], {"TCPREMOTEIP": "192.0.2.7"})
        assert result.rc == 100
        assert result.err == (b"validrcptto: illegal option -- x\n"
                              b"validrcptto: usage: validrcptto [ -s ] [ -t ] prog...\n")


# --- end to end: tcpserver and swaks ----------------------------------------------


def swaks(server, to, *more):
    """Run swaks against server; return its transcript."""
    argv = ["swaks", "--server", server.host, "--port", str(server.port), "--from",
            "sender@client.example", "--to", to, "--helo", "client.example", "--timeout", "30"]
    done = subprocess.run(argv + list(more), capture_output=True, timeout=60)
    return done.stdout.decode("latin-1")


@pytest.mark.e2e
class TestEndToEnd:
    """validrcptto under the real tcpserver, talked to by swaks."""

    def test_valid_and_invalid(self, tcpserver, maildir, vcdb):
        """swaks delivers to a valid recipient; an invalid one gets the 553 from the proxy."""
        server = tcpserver(["validrcptto"] + sink_cmd(maildir), env={"VALIDRCPTTO_CDB": vcdb})
        good = swaks(server, "list-news@example.com")
        assert "<-  250 ok" in good
        bad = swaks(server, "nobody@example.com")
        assert "<** 553 sorry, this recipient is not in my validrcptto list (#5.7.1)" in bad
        (message,) = read_maildir(maildir)
        assert b"X-Sink-To: <list-news@example.com>" in message
        assert "553 sorry, this recipient is not in my validrcptto list (#5.7.1) rcpt=nobody@example.com why=notfound" in server.log()

    def test_limit_hang_up(self, tcpserver, maildir, vcdb):
        """A dictionary attack is cut off at the limit with 421 and a closed connection."""
        server = tcpserver(["validrcptto"] + sink_cmd(maildir),
                           env={"VALIDRCPTTO_CDB": vcdb, "VALIDRCPTTO_LIMIT": "3"})
        import smtplib

        smtp = smtplib.SMTP(server.host, server.port, timeout=30)
        smtp.ehlo("client.example")
        smtp.mail("a@client.example")
        assert [smtp.rcpt("guess%d@example.com" % n)[0] for n in range(2)] == [553, 553]
        assert smtp.rcpt("guess2@example.com") == (
            421, b"too many invalid addresses, goodbye (#4.3.0)")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.noop()

    def test_limit_hang_up_swaks(self, tcpserver, maildir, vcdb):
        """swaks guessing addresses hears 421 at the limit and the server hangs up."""
        server = tcpserver(["validrcptto"] + sink_cmd(maildir),
                           env={"VALIDRCPTTO_CDB": vcdb, "VALIDRCPTTO_LIMIT": "2"})
        out = swaks(server, "guess1@example.com,guess2@example.com,joe@example.com")
        assert "<** 553 sorry" in out, out
        assert "<** 421 too many invalid addresses, goodbye (#4.3.0)" in out, out
        assert " 354 " not in out and read_maildir(maildir) == [], out

    def test_pipelined_swaks(self, tcpserver, maildir, vcdb):
        """swaks --pipeline with a refused recipient in the middle still delivers to the others."""
        server = tcpserver(["validrcptto"] + sink_cmd(maildir), env={"VALIDRCPTTO_CDB": vcdb})
        out = swaks(server, "joe@example.com,nobody@example.com,anyone@catchall.org", "--pipeline")
        assert "553 sorry" in out
        (message,) = read_maildir(maildir)
        assert b"X-Sink-To: <joe@example.com>\r\nX-Sink-To: <anyone@catchall.org>\r\n" in message


# --- a cdb qtools-mkcdb did not build: read as the patch reads it ------------


def cdbmake(path, records):
    """Build a cdb with djb's cdbmake (Debian freecdb), as mkvalidrcptto's users do."""
    import shutil

    if shutil.which("cdbmake") is None:
        pytest.fail("cdbmake is not installed: run make test, which installs freecdb")
    data = b"".join(b"+%d,%d:%s->%s\n" % (len(k), len(v), k, v) for k, v in records) + b"\n"
    subprocess.run(["cdbmake", str(path), str(path) + ".tmp"], input=data, check=True)
    return str(path)


# What mkvalidrcptto writes: addresses, -default addresses, @domain catch-alls.
MKVALIDRCPTTO = [(b"joe@example.com", b""), (b"list-default@example.com", b""),
                 (b"@catchall.org", b""), (b"owner@example.com", b"-")]


class TestPatchCdb:
    """validrcptto on a validrcptto.cdb built by cdbmake from mkvalidrcptto-style input."""

    RCPTS = [(b"joe@example.com", b"250"), (b"list-foo@example.com", b"250"),
             (b"anyone@catchall.org", b"250"), (b"postmaster@example.com", b"250"),
             (b"nobody@example.com", b"553"), (b"owner@example.com", b"553"),
             (b"x@elsewhere.net", b"553")]

    def test_unknown_addresses_are_refused_at_listed_and_unlisted_domains(self, tmp_path, maildir):
        """Not found = 553, whatever the domain, as under the patch with no option."""
        path = cdbmake(tmp_path / "validrcptto.cdb", MKVALIDRCPTTO)
        session = b"HELO me\r\nMAIL FROM:<a@b.example>\r\n" + b"".join(
            b"RCPT TO:<%s>\r\n" % rcpt for rcpt, _ in self.RCPTS) + b"QUIT\r\n"
        env = {"TCPREMOTEIP": "192.0.2.7", "VALIDRCPTTO_CDB": path, "VALIDRCPTTO_LIMIT": "0"}
        result = run_prog(["validrcptto"] + sink_cmd(maildir), env, session)
        assert codes(result.out)[3:-1] == [code for _, code in self.RCPTS]
        assert b"rcpt=x@elsewhere.net why=notfound" in result.err

    def test_only_a_cdb_qtools_mkcdb_built_is_read_relaxed(self, tmp_path):
        """The relaxed reading needs qtools-mkcdb's record, whatever keys the cdb holds."""
        from qtools.cdb import Reader

        theirs = cdbmake(tmp_path / "theirs.cdb", MKVALIDRCPTTO + [(b"example.com", b"")])
        ours = build(tmp_path / "ours.cdb", b"joe@example.com\n")
        with Reader(theirs) as reader:
            assert validrcptto.strict_for(reader) is True
            assert validrcptto.decide(b"x@elsewhere.net", reader, True).action == "refuse"
        with Reader(ours) as reader:
            assert validrcptto.strict_for(reader) is False
            assert validrcptto.strict_for(reader, strict=True) is True
            assert reader.get(validrcptto.MARKER) == b""
