# SPDX-License-Identifier: ISC
"""Tests for `qtools.tarpit`: the RCPT tarpit and the early-talker test."""

import resource
import socket
import subprocess
import time

import pytest

from conftest import read_maildir, run_prog, sink_cmd
from qtools import core, proxy, tarpit


def config(**values):
    result = tarpit.Config()
    for name, value in values.items():
        setattr(result, name, value)
    return result


def delay(rcpt, seconds):
    return core.Verdict("delay", why=(("rcpt", rcpt), ("seconds", seconds)))


PASS = core.Verdict("pass")


class TestDecide:
    """Tests for `decide`."""

    @pytest.mark.parametrize(
        "accepted, values, expected",
        [
            (5, {"count": 0}, PASS),
            (1, {"count": 3}, PASS),
            (2, {"count": 3}, PASS),
            (3, {"count": 3}, delay(3, 5)),
            (9, {"count": 3}, delay(9, 5)),
            (1, {"count": 1, "delay": 2}, delay(1, 2)),
            (3, {"count": 3, "grow": True}, delay(3, 5)),
            (4, {"count": 3, "grow": True}, delay(4, 10)),
            (6, {"count": 3, "grow": True}, delay(6, 20)),
            (50, {"count": 3, "grow": True, "max": 30}, delay(50, 30)),
        ],
    )
    def test_table(self, accepted, values, expected):
        """The count-th and later accepted RCPTs wait, fixed or growing up to max."""
        assert tarpit.decide(accepted, config(**values)) == expected

    @pytest.mark.parametrize(
        "talked, mark, expected",
        [
            (False, False, PASS),
            (True, False, core.Verdict("refuse", 554, "SMTP protocol violation (#5.5.1)",
                                       (("why", "pregreet"),))),
            (True, True, core.Verdict("mark", why=(("why", "pregreet"),))),
        ],
    )
    def test_greeting(self, talked, mark, expected):
        """A client that talks first is refused, or marked with -k."""
        assert tarpit.decide_greeting(talked, config(mark=mark)) == expected


class TestFilter:
    """The tarpit filter inside the proxy engine."""

    def engine(self, logs, clock, **values):
        session = proxy.Session(core.Client("192.0.2.7", b"\xc0\0\2\7"), {},
                                logger=lambda *a: logs.append(a[2:]))
        filt = tarpit.Tarpit(config(**values))
        return proxy.Engine([("tarpit", filt)], session, clock=clock)

    def test_counts_accepted_and_resets_at_mail(self):
        """Only accepted RCPTs count, and each MAIL starts the count again."""
        logs = []
        now = [0.0]
        engine = self.engine(logs, lambda: now[0], count=2, delay=7)
        engine.server_data(b"220 hi\r\n")
        engine.client_data(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nRCPT TO:<z@y>\r\nRCPT TO:<w@y>\r\n")
        engine.server_data(b"250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n")
        assert engine.to_client == b"220 hi\r\n250 ok\r\n250 ok\r\n550 no\r\n"
        assert engine.deadline() == 7.0
        now[0] = 7.0
        engine.tick()
        assert engine.to_client.endswith(b"550 no\r\n250 ok\r\n")
        engine.client_data(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\n")
        engine.server_data(b"250 ok\r\n250 ok\r\n")
        assert engine.deadline() is None
        assert logs == [("delay", (("rcpt", 2), ("seconds", 7)))]

    def test_authenticated_not_delayed(self):
        """After SMTP AUTH succeeded, no RCPT is delayed."""
        logs = []
        engine = self.engine(logs, lambda: 0.0, count=1, delay=7)
        engine.server_data(b"220 hi\r\n")
        engine.client_data(b"AUTH PLAIN AGpvZQBzZWNyZXQ=\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\n")
        engine.server_data(b"235 ok\r\n250 ok\r\n250 ok\r\n")
        assert engine.to_client.endswith(b"250 ok\r\n250 ok\r\n") and logs == []


def codes(out):
    return [line[:3] for line in out.split(b"\r\n") if line[3:4] == b" "]


RCPTS = (b"MAIL FROM:<a@b.example>\r\nRCPT TO:<one@x>\r\nRCPT TO:<two@x>\r\nRCPT TO:<three@x>\r\n"
         b"QUIT\r\n")


def timed(argv, env, stdin, timeout=60):
    """Run a program; return (result, wall seconds, CPU seconds of children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    result = run_prog(argv, env, stdin, timeout=timeout)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result, wall, cpu


@pytest.fixture
def maildir(tmp_path):
    path = tmp_path / "mail"
    path.mkdir()
    return path


class TestProgram:
    """Transcripts of the installed tarpit with the demo sink."""

    def test_delays_rcpts(self, maildir):
        """TARPITCOUNT=2 TARPITDELAY=1: the second and third RCPT wait a second each, without spinning."""
        env = {"TCPREMOTEIP": "192.0.2.7", "TARPITCOUNT": "2", "TARPITDELAY": "1"}
        result, wall, cpu = timed(["tarpit"] + sink_cmd(maildir), env, RCPTS)
        assert codes(result.out) == [b"220", b"250", b"250", b"250", b"250", b"221"]
        assert wall >= 1.9
        assert cpu < wall / 2
        assert (b"tarpit: 192.0.2.7 pid x: delay rcpt=2 seconds=1\n"
                b"tarpit: 192.0.2.7 pid x: delay rcpt=3 seconds=1\n") in result.err

    def test_options_and_variables(self, maildir):
        """-c and -t set the defaults; TARPITCOUNT from tcp.smtp wins over them."""
        env = {"TCPREMOTEIP": "192.0.2.7", "TARPITCOUNT": "3"}
        result = run_prog(["tarpit", "-c", "1", "-t", "0"] + sink_cmd(maildir), env, RCPTS)
        assert b"delay rcpt=3 seconds=0" in result.err and b"rcpt=2" not in result.err

    @pytest.mark.parametrize(
        "argv, env, expected",
        [
            ([], {}, {"count": 0, "delay": 5, "grow": False, "max": 120, "greet": 0, "mark": False}),
            (["-g", "-k", "-c", "3", "-t", "2", "-m", "9", "-d", "4"], {},
             {"count": 3, "delay": 2, "grow": True, "max": 9, "greet": 4, "mark": True}),
            (["-g", "-k", "-c", "3"], {"TARPITCOUNT": "7", "TARPIT_GROW": "0", "TARPIT_MARK": "no",
                                       "TARPIT_MAX": "60", "GREETDELAY": "2", "TARPITDELAY": "1"},
             {"count": 7, "delay": 1, "grow": False, "max": 60, "greet": 2, "mark": False}),
            ([], {"TARPIT_GROW": "1", "TARPIT_MARK": "1", "GREETDELAY": ""},
             {"count": 0, "delay": 5, "grow": True, "max": 120, "greet": 0, "mark": True}),
        ],
    )
    def test_parse(self, argv, env, expected):
        """Options give the defaults; the variables set per client in tcp.smtp win."""
        config, rest = tarpit.parse(argv + ["prog"], env)
        assert rest == ["prog"]
        assert {name: getattr(config, name) for name in expected} == expected

    def test_refused_rcpts_not_counted(self, maildir, tmp_path):
        """Behind validrcptto, refused recipients are neither counted nor delayed."""
        cdb = tmp_path / "v.cdb"
        assert run_prog(["qtools-mkcdb", "-a", str(cdb), str(cdb) + ".tmp"],
                        stdin=b"one@x\nthree@x\n").rc == 0
        env = {"TCPREMOTEIP": "192.0.2.7", "TARPITCOUNT": "2", "TARPITDELAY": "0",
               "VALIDRCPTTO_CDB": str(cdb)}
        result = run_prog(["validrcptto", "tarpit"] + sink_cmd(maildir), env, RCPTS)
        assert codes(result.out) == [b"220", b"250", b"250", b"553", b"250", b"221"]
        assert b"tarpit: 192.0.2.7 pid x: delay rcpt=2 seconds=0\n" in result.err
        assert result.err.count(b"end why=") == 1  # one proxy for both programs

    @pytest.mark.parametrize(
        "env",
        [{"RELAYCLIENT": ""}, {"WHITELISTED": "1"}, {"QTOOLS_TRUSTED": "rblcheck:al.test"},
         {"QTOOLS_TARPIT": ""}, {"TARPITCOUNT": "0"}],
    )
    def test_steps_aside(self, maildir, env):
        """Relay, whitelisted and trusted clients, the empty override and TARPITCOUNT=0 start no proxy."""
        env = dict({"TCPREMOTEIP": "192.0.2.7", "TARPITCOUNT": "1", "TARPITDELAY": "30"}, **env)
        result, wall, _ = timed(["tarpit"] + sink_cmd(maildir), env, RCPTS)
        assert wall < 20 and b"tarpit:" not in result.err
        assert codes(result.out)[-1] == b"221"

    def test_early_talker_refused(self, maildir):
        """A client whose bytes are there before the greeting gets 554; the next program never runs."""
        env = {"TCPREMOTEIP": "192.0.2.7", "GREETDELAY": "30"}
        result, wall, _ = timed(["tarpit"] + sink_cmd(maildir), env, b"EHLO spammer\r\n")
        assert (result.rc, result.out) == (0, b"554 SMTP protocol violation (#5.5.1)\r\n")
        assert result.err == (b'tarpit: 192.0.2.7 pid x: 554 SMTP protocol violation (#5.5.1) why=pregreet '
                              b'text="EHLO spammer??"\n')
        assert wall < 20  # refused as soon as it spoke, not after the delay

    def test_early_talker_marked(self, maildir):
        """With -k the early talker is marked, and its bytes still reach the next program."""
        env = {"TCPREMOTEIP": "192.0.2.7", "GREETDELAY": "5"}
        stdin = b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n"
        result = run_prog(["tarpit", "-k"] + sink_cmd(maildir), env, stdin)
        assert codes(result.out) == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"]
        assert b"tarpit: 192.0.2.7 pid x: mark why=pregreet\n" in result.err
        (message,) = read_maildir(maildir)
        assert b"X-Sink-Env: QTOOLS_SUSPECT=tarpit:pregreet\r\n" in message

    def test_override_refuses(self, maildir):
        """$QTOOLS_TARPIT with text refuses the client in the rblsmtpd-style conversation."""
        env = {"TCPREMOTEIP": "192.0.2.7", "QTOOLS_TARPIT": "-go away"}
        result = run_prog(["tarpit"] + sink_cmd(maildir), env,
                          b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nQUIT\r\n")
        assert result.rc == 0
        assert codes(result.out) == [b"220", b"250", b"250", b"553", b"221"]
        assert b"553 go away\r\n" in result.out

    @pytest.mark.parametrize("env", [
        {"GREETDELAY": "2147484"},  # 2^31 ms
        {"GREETDELAY": "99999999999999999999999"},
        {"TARPITDELAY": "2147484", "TARPITCOUNT": "1", "QTOOLS_TOTAL_TIMEOUT": "0"},
    ])
    def test_huge_delay_is_an_hour(self, maildir, env):
        """A delay of 2^31 ms or more is taken as an hour, not an OverflowError."""
        config, _ = tarpit.parse(["prog"], env)
        assert max(config.delay, config.greet) == 3600
        env = dict({"TCPREMOTEIP": "192.0.2.7"}, **env)
        try:
            result = run_prog(["tarpit"] + sink_cmd(maildir), env,
                              b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nQUIT\r\n", timeout=3)
        except subprocess.TimeoutExpired as waiting:  # the hour is not spent here
            assert waiting.stderr.endswith(b" delay rcpt=1 seconds=3600\n"), waiting.stderr
            return
        assert result.out == b"554 SMTP protocol violation (#5.5.1)\r\n", result  # it spoke first

    def test_invalid_variable(self, maildir):
        """A TARPITDELAY that is not a number is a permanent misconfiguration."""
        env = {"TCPREMOTEIP": "192.0.2.7", "TARPITDELAY": "5s"}
        result = run_prog(["tarpit"] + sink_cmd(maildir), env)
        assert (result.rc, result.err) == (100, b"tarpit: fatal: invalid $TARPITDELAY: 5s\n")

    def test_usage(self):
        """Without a program tarpit prints its usage."""
        result = run_prog(["tarpit"], {"TCPREMOTEIP": "192.0.2.7"})
        assert result.rc == 100 and result.err == b"tarpit: usage: %s\n" % tarpit.USAGE.encode()


class TestTalksFirst:
    """Tests for `talks_first`."""

    def test_silent_and_talking(self):
        """A silent peer gives False after the wait; a talking one True, its bytes left unread."""
        ours, theirs = socket.socketpair()
        with ours, theirs:
            start = time.monotonic()
            assert tarpit.talks_first(theirs.fileno(), 0.3) is False
            assert time.monotonic() - start >= 0.29
            ours.sendall(b"EHLO x\r\n")
            assert tarpit.talks_first(theirs.fileno(), 5) is True
            assert theirs.recv(100) == b"EHLO x\r\n"


@pytest.mark.e2e
class TestEndToEnd:
    """tarpit under the real tcpserver."""

    def test_tarpit_delays_measured(self, tcpserver, maildir):
        """Each RCPT from the TARPITCOUNT-th on takes TARPITDELAY seconds longer."""
        import smtplib

        server = tcpserver(["tarpit"] + sink_cmd(maildir),
                           env={"TARPITCOUNT": "2", "TARPITDELAY": "2"})
        smtp = smtplib.SMTP(server.host, server.port, timeout=30)
        smtp.ehlo("client.example")
        smtp.mail("a@client.example")
        took = []
        for n in range(3):
            start = time.monotonic()
            assert smtp.rcpt("r%d@example.com" % n)[0] == 250
            took.append(time.monotonic() - start)
        smtp.quit()
        assert took[1] >= 1.95 and took[2] >= 1.95
        assert took[0] < took[1]  # the first recipient is not delayed

    def test_early_talker(self, tcpserver, maildir):
        """A client that speaks before the banner gets 554; a patient one gets the banner late."""
        server = tcpserver(["tarpit", "-d", "2"] + sink_cmd(maildir))
        rude = socket.create_connection((server.host, server.port), timeout=30)
        rude.sendall(b"EHLO rude.example\r\n")
        reply = rude.makefile("rb").readline()
        rude.close()
        assert reply == b"554 SMTP protocol violation (#5.5.1)\r\n"
        start = time.monotonic()
        polite = socket.create_connection((server.host, server.port), timeout=30)
        banner = polite.makefile("rb").readline()
        waited = time.monotonic() - start
        polite.sendall(b"QUIT\r\n")
        polite.close()
        assert banner.startswith(b"220 ") and waited >= 1.9
        deadline = time.monotonic() + 10
        while "pregreet" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert '554 SMTP protocol violation (#5.5.1) why=pregreet text="EHLO rude.example??"' in server.log()

    def test_swaks_through_validrcptto_and_tarpit(self, tcpserver, maildir, tmp_path):
        """swaks with four recipients: one refused, the third and fourth accepted ones delayed."""
        import subprocess

        cdb = tmp_path / "v.cdb"
        assert run_prog(["qtools-mkcdb", "-a", str(cdb), str(cdb) + ".tmp"],
                        stdin=b"a@example.com\nb@example.com\nc@example.com\n").rc == 0
        server = tcpserver(["validrcptto", "tarpit"] + sink_cmd(maildir),
                           env={"VALIDRCPTTO_CDB": str(cdb), "TARPITCOUNT": "2", "TARPITDELAY": "1"})
        start = time.monotonic()
        done = subprocess.run(
            ["swaks", "--server", server.host, "--port", str(server.port), "--timeout", "30",
             "--from", "s@client.example", "--to", "a@example.com,x@example.com,b@example.com,c@example.com"],
            capture_output=True, timeout=60)
        wall = time.monotonic() - start
        out = done.stdout.decode("latin-1")
        assert "<** 553 sorry, this recipient is not in my validrcptto list (#5.7.1)" in out
        assert wall >= 1.9
        (message,) = read_maildir(maildir)
        assert message.count(b"X-Sink-To:") == 3
        log = server.log()
        assert "tarpit: 127.0.0.1 pid" in log and "delay rcpt=3 seconds=1" in log
