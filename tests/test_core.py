# SPDX-License-Identifier: ISC
"""Tests for `qtools.core`."""

import os
import subprocess
import sys

import pytest

from qtools import core


class TestGetopt:
    """Tests for `getopt`."""

    @pytest.mark.parametrize(
        ("argv", "options", "rest"),
        [
            (["prog"], [], ["prog"]),
            (["-b", "prog", "-b"], [("b", None)], ["prog", "-b"]),
            (["-bC", "-r", "x", "-ry", "p"], [("b", None), ("C", None), ("r", "x"), ("r", "y")], ["p"]),
            (["--", "-b"], [], ["-b"]),
            (["-", "p"], [], ["-", "p"]),
            (["-t5", "p"], [("t", "5")], ["p"]),
        ],
    )
    def test_split(self, argv, options, rest):
        """Options stop at the first non-option or at "--"; the rest is the next program."""
        assert core.getopt(argv, "bCr:t:") == (options, rest)

    @pytest.mark.parametrize(("argv", "message"), [(["-z", "p"], "illegal option -- z"), (["-r"], "option requires an argument -- r")])
    def test_errors(self, argv, message):
        """An unknown option or a missing argument raises Usage."""
        with pytest.raises(core.Usage, match=message):
            core.getopt(argv, "r:")

    def test_number(self):
        """number() accepts a whole number in range and refuses anything else."""
        assert core.number("demo", "t", "60") == 60
        for bad in ("x", "-1", "", "1.5"):
            with pytest.raises(core.Usage):
                core.number("demo", "t", bad)
        with pytest.raises(core.Usage):
            core.number("demo", "t", "7", high=5)

    def test_seconds(self):
        """seconds() reads a time limit above 0 and at most high; anything else is a ValueError."""
        assert core.seconds("10") == 10.0
        assert core.seconds("0.5") == 0.5
        assert core.seconds("3600") == 3600.0
        assert core.seconds("86400", 86400) == 86400.0
        for bad, high in (("0", 3600), ("-1", 3600), ("3601", 3600), ("nan", 3600), ("x", 3600),
                          ("", 3600), ("86401", 86400)):
            with pytest.raises(ValueError):
                core.seconds(bad, high)

    def test_dns_options(self):
        """dns_options() takes -t, -T and -S, the last of each winning, and keeps the rest in order."""
        options = [("b", None), ("T", "2"), ("t", "5"), ("r", "x"), ("S", "127.0.0.1:5300"),
                   ("T", "0.5"), ("c", None)]
        assert core.dns_options("demo", options, 10.0) == (
            5, 0.5, "127.0.0.1:5300", [("b", None), ("r", "x"), ("c", None)])
        assert core.dns_options("demo", [("b", None)], 10.0) == (60, 10.0, None, [("b", None)])
        for bad in (("t", "x"), ("T", "0"), ("S", "nohost")):
            with pytest.raises(core.Usage, match="invalid value for -%s" % bad[0]):
                core.dns_options("demo", [bad], 10.0)


class TestOverride:
    """Tests for `override`, the $RBLSMTPD pattern."""

    @pytest.mark.parametrize(
        ("environ", "expected"),
        [
            ({}, core.Override("check")),
            ({"X": ""}, core.Override("skip")),
            ({"X": "go away"}, core.Override("refuse", "go away")),
            ({"X": "-go away"}, core.Override("refuse", "go away", permanent=True)),
            ({"X": "-"}, core.Override("refuse", "", permanent=True)),
        ],
    )
    def test_values(self, environ, expected):
        """Unset checks, empty skips, text refuses 4xx, "-text" refuses 5xx."""
        assert core.override(environ, "X") == expected

    def test_from_override(self):
        """A refusing override becomes a 451, or a 553 when permanent, with clean text."""
        assert core.from_override(core.override({"X": "a\tb"}, "X")).reply == "451 a?b"
        assert core.from_override(core.override({"X": "-no"}, "X")).reply == "553 no"

    @pytest.mark.parametrize(
        ("relay", "environ", "expected"),
        [
            (True, {"X": "no"}, ("skip", "relayclient")),
            (False, {"WHITELISTED": "", "X": "no"}, ("skip", "whitelisted")),
            (False, {"QTOOLS_TRUSTED": "rblcheck:dnswl.test", "X": "no"}, ("skip", "trusted")),
            (False, {"QTOOLS_TRUSTED": "", "X": "no"}, ("refuse", "override")),
            (False, {"X": ""}, ("skip", "override")),
            (False, {"X": "-no"}, ("refuse", "override")),
            (False, {}, None),
        ],
    )
    def test_step_aside(self, relay, environ, expected):
        """RELAYCLIENT first, then WHITELISTED and the trust mark, then the override variable."""
        client = core.Client("192.0.2.7", bytes([192, 0, 2, 7]), relay=relay)
        verdict = core.step_aside(client, environ, "X")
        assert (verdict and (verdict.action, dict(verdict.why)["why"])) == expected

    @pytest.mark.parametrize(
        ("given", "environ", "expected"),
        [
            (None, {}, ["postmaster@", "abuse@"]),
            ([], {}, ["postmaster@", "abuse@"]),
            (["hostmaster@", "@example.net"], {}, ["hostmaster@", "@example.net"]),
            ([""], {}, []),
            (["hostmaster@"], {"MFCHECK_EXEMPT": " a@b.example  @c.example "}, ["a@b.example", "@c.example"]),
            (None, {"MFCHECK_EXEMPT": ""}, []),
        ],
    )
    def test_exemptions(self, given, environ, expected):
        """$MFCHECK_EXEMPT over the -e options over postmaster@ and abuse@ (RFC 5321 section 4.5.1)."""
        assert core.exemptions(given, environ) == expected


class TestAddresses:
    """Tests for the address helpers."""

    @pytest.mark.parametrize(
        ("text", "canonical"),
        [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("::FFFF:192.0.2.7", "192.0.2.7"),
            ("2001:DB8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("fe80::1%eth0", "fe80::1"),
            ("::1", "::1"),
        ],
    )
    def test_parse_ip(self, text, canonical):
        """IPv4, IPv6 and v4-mapped addresses parse; v4-mapped becomes IPv4."""
        family, packed = core.parse_ip(text)
        assert core.format_ip(packed) == canonical

    @pytest.mark.parametrize("text", ["", "1.2.3", "1.2.3.256", "x", "1.2.3.4.5", "2001:db8:::1", None])
    def test_parse_ip_refuses(self, text):
        """Anything that is not an address gives None."""
        assert core.parse_ip(text) is None

    @pytest.mark.parametrize(
        ("text", "net"),
        [
            ("192.0.2.77", "192.0.2.0/24"),
            ("::ffff:10.1.2.3", "10.1.2.0/24"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ],
    )
    def test_network(self, text, net):
        """IPv4 groups by /24 and IPv6 by /64 by default."""
        assert core.network(core.parse_ip(text)[1]) == net

    def test_network_of_edges(self):
        """Prefix lengths 0 and full width work."""
        packed = core.parse_ip("192.0.2.77")[1]
        assert core.network_of(packed, 0) == "0.0.0.0/0"
        assert core.network_of(packed, 32) == "192.0.2.77/32"

    def test_reverse_ip(self):
        """IPv4 reverses octets; IPv6 gives 32 nibbles lowest first."""
        assert core.reverse_ip(core.parse_ip("127.0.0.2")[1]) == "2.0.0.127"
        expected = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
        assert core.reverse_ip(core.parse_ip("2001:db8::1")[1]) == expected


class TestClient:
    """Tests for `client`."""

    def test_reads_tcpserver_environment(self):
        """The client comes from TCPREMOTEIP/HOST/INFO, TCPLOCALIP and RELAYCLIENT."""
        c = core.client(
            {
                "TCPREMOTEIP": "::ffff:192.0.2.7",
                "TCPREMOTEHOST": "MX.Example.COM",
                "TCPREMOTEINFO": "joe",
                "TCPLOCALIP": "192.0.2.1",
                "RELAYCLIENT": "",
            }
        )
        assert (c.ip, c.host, c.info, c.local_ip, c.relay) == ("192.0.2.7", "mx.example.com", "joe", "192.0.2.1", True)

    def test_tcp6remoteip(self):
        """TCP6REMOTEIP is used when TCPREMOTEIP is missing."""
        assert core.client({"TCP6REMOTEIP": "2001:db8::5"}).ip == "2001:db8::5"

    @pytest.mark.parametrize(("environ", "message"), [({}, "TCPREMOTEIP not set"), ({"TCPREMOTEIP": "bogus\n"}, "invalid $TCPREMOTEIP: bogus?")])
    def test_missing_or_invalid_is_permanent(self, environ, message):
        """No usable client address is a misconfiguration: exit 100."""
        with pytest.raises(core.Die) as caught:
            core.client(environ)
        assert (caught.value.code, caught.value.message) == (100, message)


class TestReplies:
    """Tests for `clean` and the decision log line."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("plain text", "plain text"),
            ("a\tb\r\nc\xe9", "a?b??c?"),
            ("x" * 250, "x" * 200),
            ("nul\0 del\x7f esc\x1b", "nul? del? esc?"),
            (os.fsdecode(b"bad\xff\xfeutf8"), "bad??utf8"),  # as os.environ holds it
            (b"bytes\r\n\0\xff", "bytes????"),
            ("\u2028line\x85sep", "?line?sep"),
        ],
    )
    def test_clean(self, text, expected):
        """Outside text is cut to 200 characters of printable ASCII; nothing crashes it."""
        assert core.clean(text) == expected

    def test_every_message_line_is_clean(self, capfd):
        """Warnings and fatal messages carrying outside text are cleaned on their way out."""
        core.warn("prog", "unable to open /x\r\ny%s: no" % os.fsdecode(b"\xff"))
        core.fatal("prog", "a\nb")
        core.log("prog", "1.2.3.4", "451 x\r\n250 y", [("host", b"h\0")])
        assert capfd.readouterr().err == (
            "prog: warning: unable to open /x??y?: no\nprog: fatal: a?b\n"
            "prog: 1.2.3.4 pid %d: 451 x??250 y host=h?\n" % os.getpid())

    def test_reply_text_is_clean(self):
        """A Verdict's reply is clean whatever its text holds."""
        assert core.Verdict("refuse", 451, "a\r\n250 b\0").reply == "451 a??250 b?"

    def test_log_line(self):
        """The head is rblsmtpd's; fields are key=value, quoted when needed."""
        line = core.log_line("rblcheck", "192.0.2.7", "451 listed", [("list", "bl.example"), ("text", 'say "hi"'), ("n", 3)])
        assert line == 'rblcheck: 192.0.2.7 pid %d: 451 listed list=bl.example text="say \\"hi\\"" n=3' % os.getpid()

    @pytest.mark.parametrize(
        ("value", "default", "expected"),
        [(None, True, True), ("", False, False), ("1", False, True), ("0", True, False), ("no", True, False), ("yes", False, True)],
    )
    def test_flag(self, value, default, expected):
        """A switch variable: unset or empty keeps the default, "0" and "no" turn it off."""
        environ = {} if value is None else {"X": value}
        assert core.flag(environ, "X", default) is expected

    def test_marks(self):
        """Marks accumulate in $QTOOLS_SUSPECT, space separated."""
        environ = {}
        core.mark(environ, "rhostcheck:nordns")
        core.mark(environ, "rblcheck:bl.example")
        assert environ["QTOOLS_SUSPECT"] == "rhostcheck:nordns rblcheck:bl.example"
        assert core.marks(environ) == ["rhostcheck:nordns", "rblcheck:bl.example"]


def demo_main():
    @core.main_of("demo", "demo [ -x ] prog...")
    def main(argv, environ):
        options, rest = core.getopt(argv, "xd:")
        if not rest:
            raise core.Usage("")
        for letter, value in options:
            if letter == "d":
                raise core.Die(111, "unable to do %s" % value)
            if letter == "x":
                raise RuntimeError("boom")
        return core.chain("demo", rest, environ)

    return main


class TestMain:
    """Tests for `main_of` and the exit codes."""

    def test_usage_exits_100(self, capfd):
        """A missing program or a bad option prints the usage line and exits 100."""
        main = demo_main()
        assert main([], {}) == 100
        assert main(["-z", "p"], {}) == 100
        err = capfd.readouterr().err
        assert err == "demo: usage: demo [ -x ] prog...\ndemo: illegal option -- z\ndemo: usage: demo [ -x ] prog...\n"

    def test_die_prints_fatal(self, capfd):
        """Die prints "prog: fatal: ..." and exits with its code."""
        assert demo_main()(["-d", "it", "p"], {}) == 111
        assert capfd.readouterr().err == "demo: fatal: unable to do it\n"

    def test_internal_error_is_111_without_traceback(self, capfd):
        """An unexpected exception is one fatal line and 111, never a traceback."""
        assert demo_main()(["-x", "p"], {}) == 111
        captured = capfd.readouterr()
        assert captured.err == "demo: fatal: internal error: RuntimeError: boom\n"
        assert captured.out == ""

    def test_unrunnable_program_exits_111(self, capfd):
        """A next program that cannot be run exits 111 with a clear message."""
        assert demo_main()(["/nonexistent/qmail-smtpd"], {"PATH": "/bin"}) == 111
        assert capfd.readouterr().err == "demo: fatal: unable to run /nonexistent/qmail-smtpd: no such file or directory\n"


CHAIN = """
import sys
from qtools import core
@core.main_of("demo", "demo prog...")
def main(argv, environ):
    environ["SEEN"] = "yes"
    return core.chain("demo", argv, environ)
sys.exit(main())
"""


def test_exec_hands_on_environment_stdin_and_default_sigpipe():
    """The next program gets the environment, untouched stdin and SIGPIPE at its default."""
    script = "read line; echo \"$SEEN $line\"; grep SigIgn /proc/self/status"
    done = subprocess.run(
        [sys.executable, "-c", CHAIN, "sh", "-c", script],
        input=b"EHLO first bytes\r\n",
        capture_output=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=20,
    )
    lines = done.stdout.decode().split("\n")
    assert lines[0] == "yes EHLO first bytes\r"
    ignored = int(lines[1].split()[1], 16)
    assert not ignored & (1 << 12)  # SIGPIPE is signal 13


def test_chain_of_qtools_programs_runs_in_one_process(tmp_path):
    """rhostcheck, rblcheck and greylist run in one process, the one that finally execs the last program."""
    from conftest import VENV_BIN, base_env

    env = base_env(
        {
            "TCPREMOTEIP": "127.0.0.9",
            "TCPREMOTEHOST": "mx.example.org",
            "RBLSMTPD": "",
            "QTOOLS_GREYLIST": "",
        }
    )
    argv = [
        os.path.join(VENV_BIN, "rhostcheck"),
        "rblcheck", "-r", "bl.invalid",
        "greylist", str(tmp_path),
        "sh", "-c", "echo $$; exec cat",
    ]
    first_bytes = b"EHLO client.example\r\nMAIL FROM:<a@b>\r\n\x00\xff"
    done = subprocess.run(argv, input=first_bytes, env=env, capture_output=True, timeout=30)
    pid, _, rest = done.stdout.partition(b"\n")
    assert rest == first_bytes
    logged = [line for line in done.stderr.decode().splitlines() if " pid " in line]
    assert [line.split(":")[0] for line in logged] == ["rhostcheck", "rblcheck", "greylist"]
    assert {line.split(" pid ")[1].split(":")[0] for line in logged} == {pid.decode()}


def interpreter_starts(stderr):
    """Count interpreter starts in stderr written under PYTHONPROFILEIMPORTTIME."""
    return sum(1 for line in stderr.decode().splitlines() if line.startswith("import time:") and line.endswith("| site"))


@pytest.mark.parametrize(("exec_mode", "starts"), [("0", 1), ("1", 2)])
def test_qtools_exec_forces_a_real_exec(tmp_path, exec_mode, starts):
    """In-process hand-off starts one interpreter; QTOOLS_EXEC=1 makes each program start its own."""
    from conftest import VENV_BIN, base_env

    env = base_env(
        {
            "TCPREMOTEIP": "127.0.0.9",
            "RBLSMTPD": "",
            "QTOOLS_GREYLIST": "",
            "QTOOLS_EXEC": exec_mode,
            "PYTHONPROFILEIMPORTTIME": "1",
        }
    )
    argv = [os.path.join(VENV_BIN, "rblcheck"), "greylist", str(tmp_path), "sh", "-c", "echo $$"]
    done = subprocess.run(argv, env=env, capture_output=True, timeout=30)
    assert done.returncode == 0
    assert interpreter_starts(done.stderr) == starts


@pytest.mark.parametrize("program", sorted(core.PROGRAMS) + ["qtools-mkcdb"])
def test_version_is_the_package_version(program):
    """Every program answers --version with the one version of the package."""
    from conftest import run_prog
    from qtools import __version__

    result = run_prog([program, "--version"])
    expected = "%s (qtools) %s\n" % (program, __version__)
    assert (result.rc, result.out, result.err) == (0, expected.encode(), b"")


def test_environment_reads_as_os_environ():
    """main's environment, read without loading os, is os.environ's."""
    assert core.environment() == dict(os.environ)


def test_directory_of_follows_symlinks_as_realpath(tmp_path):
    """A program reached through a symlink counts as living where the link points."""
    real, other = tmp_path / "real", tmp_path / "other"
    real.mkdir()
    other.mkdir()
    (real / "greylist").write_text("#!/bin/sh\n")
    os.symlink(str(real / "greylist"), str(other / "greylist"))
    os.symlink("../real/greylist", str(other / "relative"))
    os.symlink(str(real), str(tmp_path / "linkdir"))
    mine = core._directory_of(str(real / "greylist"))
    assert mine is not None
    assert core._directory_of(str(other / "greylist")) == mine
    assert core._directory_of(str(other / "relative")) == mine
    assert core._directory_of(str(tmp_path / "linkdir" / "greylist")) == mine
    assert core._directory_of(str(other / "missing")) == core._directory_of(str(other / "x"))
    assert core._directory_of(str(other / "greylist")) != core._directory_of(str(other / "x"))
    assert core._directory_of(str(tmp_path / "nowhere" / "x")) is None


# --- every outside byte through every program ------------------------------------

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
BAD = "\r\n250 injected\x1b" + os.fsdecode(b"\xff")  # the environment holds no NUL
SHOWN = "??250 injected??"
SAID = b"HELO a\r\nRCPT TO:<a@b>\r\nQUIT\r\n"


def conversation(name, refusal):
    return ("220 {0}\r\n250 {0}\r\n{1}\r\n221 {0}\r\n".format(name, refusal)).encode()


def assert_log_clean(result):
    """Every log line is printable ASCII ended by LF."""
    assert result.err.endswith(b"\n")
    for line in result.err.split(b"\n")[:-1]:
        assert all(32 <= b < 127 for b in line), line


class TestHostileBytes:
    """CR, LF, NUL, control bytes and non-UTF-8 from outside, through every program."""

    @pytest.mark.parametrize("argv, override", [
        (["rblcheck"], "RBLSMTPD"),
        (["rblcheck"], "QTOOLS_RBLCHECK"),
        (["rhostcheck"], "QTOOLS_RHOSTCHECK"),
        (["rhostcheck"], "RHOSTCHECK"),
        (["greylist", "/nonexistent"], "QTOOLS_GREYLIST"),
        (["tarpit", "-c", "1"], "QTOOLS_TARPIT"),
    ])
    def test_override_text_and_hostname(self, argv, override):
        """An override text and $QTOOLS_HOSTNAME reach the greeting, the reply and the log clean."""
        from conftest import run_prog

        env = {"TCPREMOTEIP": "192.0.2.7", override: "-no" + BAD, "QTOOLS_HOSTNAME": "mx" + BAD}
        r = run_prog(argv + ["echo", "ran"], env, SAID)
        prog = argv[0]
        assert (r.rc, r.out) == (0, conversation("mx" + SHOWN, "553 no" + SHOWN))
        assert r.err == ("%s: 192.0.2.7 pid x: 553 no%s why=override\n" % (prog, SHOWN)).encode()

    def test_validrcptto_override(self, tmp_path):
        """validrcptto's refusal text and log line are clean too."""
        from conftest import SINK, run_prog

        env = {"TCPREMOTEIP": "192.0.2.7", "QTOOLS_VALIDRCPTTO": "-no" + BAD}
        # The proxy judges RCPT once the backend has answered HELO: a sink.
        r = run_prog(["validrcptto"] + SINK + [str(tmp_path)], env, SAID)
        assert ("\r\n553 no%s\r\n" % SHOWN).encode() in r.out
        assert b"injected" not in r.out.replace(SHOWN.encode(), b"")
        assert r.err.startswith(("validrcptto: 192.0.2.7 pid x: 553 no%s rcpt=a@b why=override\n"
                                 % SHOWN).encode())
        assert_log_clean(r)

    def test_rblcheck_host_and_txt(self):
        """rblcheck -d with a CR LF TCPREMOTEHOST, and -r with CR LF NUL in the TXT text."""
        from conftest import run_prog
        from dnsserver import DNSServer

        records = {"evil.example.dbl.test": [("A", "127.0.0.2")],
                   "2.0.0.127.bl.test": [("TXT", '"listed\\013\\010250 injected\\000"')]}
        with DNSServer(records) as dns:
            env = {"TCPREMOTEIP": "127.0.0.9", "TCPREMOTEHOST": "x\r\n250 injected\x1b.evil.example",
                   "QTOOLS_RESOLVER": dns.address}
            r = run_prog(["rblcheck", "-d", "dbl.test", "echo", "ran"], env, SAID)
            text = "451 your host name x??250 injected?.evil.example is listed by dbl.test (#4.7.1)"
            assert r.out == conversation("rblcheck.local", text)
            assert r.err == ("rblcheck: 127.0.0.9 pid x: %s score=1 hits=dbl.test why=score"
                             " list=dbl.test\n" % text).encode()
            env = {"TCPREMOTEIP": "127.0.0.2", "QTOOLS_RESOLVER": dns.address}
            r = run_prog(["rblcheck", "-r", "bl.test", "echo", "ran"], env, SAID)
            assert r.out == conversation("rblcheck.local", "451 listed??250 injected?")
            assert r.err == b"rblcheck: 127.0.0.2 pid x: 451 listed??250 injected? why=listed list=bl.test\n"

    def test_rhostcheck_dynamic_host(self):
        """rhostcheck -g quotes a generic TCPREMOTEHOST clean in its reply and log."""
        from conftest import run_prog

        env = {"TCPREMOTEIP": "192.0.2.7", "TCPREMOTEHOST": "dsl" + BAD + ".isp.example"}
        r = run_prog(["rhostcheck", "-g", "echo", "ran"], env, SAID)
        text = ("451 bad reverse DNS: dsl%s.isp.example looks dynamic, please use your provider's"
                " relay (#4.7.1)" % SHOWN)
        assert r.out == conversation("rhostcheck.local", text)
        assert r.err == ('rhostcheck: 192.0.2.7 pid x: %s host="dsl%s.isp.example" why=dynamic'
                         " match=keyword:dsl\n" % (text, SHOWN)).encode()

    def test_messages(self, tmp_path):
        """A store path or a TCPREMOTEIP from the environment reaches a message clean."""
        from conftest import run_prog

        env = {"TCPREMOTEIP": "192.0.2.7", "QTOOLS_GREYLIST_STORE": "/no" + BAD}
        r = run_prog(["greylist", str(tmp_path), "echo", "ran"], env)
        assert r.out == b"ran\n"
        assert r.err.startswith(("greylist: warning: unable to open /no%s: no such file or directory\n"
                                 % SHOWN).encode())
        assert_log_clean(r)
        r = run_prog(["rblcheck", "echo", "ran"], {"TCPREMOTEIP": "1.2.3.4" + BAD})
        assert (r.rc, r.err) == (100, ("rblcheck: fatal: invalid $TCPREMOTEIP: 1.2.3.4%s\n" % SHOWN).encode())

    def test_early_talker_text(self):
        """What an early talker said is logged clean, NUL and all."""
        from conftest import run_prog

        r = run_prog(["tarpit", "-d", "1", "echo", "ran"], {"TCPREMOTEIP": "192.0.2.7"},
                     b"EHLO x\0\r\n250 injected\xff\r\n")
        assert r.out == b"554 SMTP protocol violation (#5.5.1)\r\n"
        assert r.err == (b'tarpit: 192.0.2.7 pid x: 554 SMTP protocol violation (#5.5.1) why=pregreet'
                         b' text="EHLO x???250 injected???"\n')


def test_leave_flushes_and_exits_with_the_code():
    """leave() ends the process at once with its code, buffered output written first."""
    code = "import sys; from qtools import core; sys.stdout.write('kept'); sys.stderr.write('too'); core.leave(7)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert (done.returncode, done.stdout, done.stderr) == (7, b"kept", b"too")


def test_running_as_program_only_for_a_qtools_program(monkeypatch):
    """A caller of main() (a test, a script) is never ended by the proxy's fast exit."""
    assert not core.running_as_program()
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/mfcheck", "true"])
    assert core.running_as_program()
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/python3"])
    assert not core.running_as_program()
