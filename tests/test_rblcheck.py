# SPDX-License-Identifier: ISC
"""Tests for `qtools.rblcheck`, side by side with rblsmtpd where they overlap."""

import os
import random
import shutil
import subprocess
import sys
import time

import pytest

from conftest import read_maildir, run_prog, sink_cmd, smtp_from, make_client as client, fake_resolver as fake
from qtools import core, rblcheck, resolver
from qtools.resolver import Answer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dnsserver import DNSServer  # noqa: E402

SESSION = b"helo x\r\nmail from:<a@b>\r\nrcpt to:<c@d>\r\ndata\r\nquit\r\n"


def sources(*argv):
    """Return the Sources of rblsmtpd-style options, with -b/-c taking effect in order."""
    bounce = failclosed = False
    out = []
    for option in argv:
        letter, value = option[1], option[2:]
        if letter in "bB":
            bounce = letter == "b"
        elif letter in "cC":
            failclosed = letter == "c"
        else:
            out.append(rblcheck.Source(letter, value, bounce, failclosed))
    return out


TXT = Answer([b"Listed by bl.test"])
FAIL = Answer(error="timeout")
IP7 = "7.2.0.192"
TABLE = {
    (IP7 + ".bl.test", "TXT"): TXT,
    (IP7 + ".bl2.test", "TXT"): Answer([b"second list"]),
    (IP7 + ".empty.test", "TXT"): Answer([b""]),
    (IP7 + ".ctl.test", "TXT"): Answer([b"a\tb\r\n", b"c\xe9" + b"x" * 300]),
    (IP7 + ".al.test", "A"): Answer(["127.0.0.2"]),
    (IP7 + ".fail.test", "TXT"): FAIL,
    (IP7 + ".fail.test", "A"): FAIL,
    (IP7 + ".w2.test", "A"): Answer(["127.0.0.2"]),
    (IP7 + ".w10.test", "A"): Answer(["127.0.0.10"]),
    (IP7 + ".dnswl.test", "A"): Answer(["127.0.10.2"]),
    ("mail.spam.example.dbl.test", "A"): Answer(["127.0.1.2"]),
}


class TestParseList:
    """Tests for `resolver.parse_list`, postscreen's list syntax."""

    @pytest.mark.parametrize(
        ("spec", "base", "codes", "weight"),
        [
            ("bl.test", "bl.test", None, 1),
            ("bl.test*3", "bl.test", None, 3),
            ("wl.test*-2", "wl.test", None, -2),
            ("bl.test=127.0.0.2", "bl.test", [{127}, {0}, {0}, {2}], 1),
            ("bl.test=127.0.0.[2..4]*2", "bl.test", [{127}, {0}, {0}, {2, 3, 4}], 2),
            ("bl.test=127.0.[0;2..3].[1;9]", "bl.test", [{127}, {0}, {0, 2, 3}, {1, 9}], 1),
        ],
    )
    def test_valid(self, spec, base, codes, weight):
        """A base, an optional filter of the four octets and an optional weight."""
        assert resolver.parse_list(spec) == (base, codes, weight)

    @pytest.mark.parametrize(
        "spec", ["", "=127.0.0.2", "bl.test=127.0.0", "bl.test=127.0.0.[4..2]", "bl.test*x", "bl..test",
                 "bl.test=127.0.0.256"],
    )
    def test_invalid(self, spec):
        """Anything else is a ValueError (a usage error in main)."""
        with pytest.raises(ValueError):
            resolver.parse_list(spec)


class TestDecide:
    """Tests for `decide`: rblsmtpd's rules, then the additions."""

    @pytest.mark.parametrize(
        ("argv", "expected"),
        [
            (["-rbl.test"], (451, "Listed by bl.test")),
            (["-b", "-rbl.test"], (553, "Listed by bl.test")),
            (["-rnone.test"], None),
            (["-rempty.test"], None),
            (["-ral.test"], None),
            (["-rctl.test"], (451, "a?b??c?" + "x" * 193)),
            (["-rbl.test", "-rbl2.test"], (451, "Listed by bl.test")),
            (["-rbl2.test", "-rbl.test"], (451, "second list")),
            (["-rbl.test", "-b", "-rbl2.test"], (451, "Listed by bl.test")),
            (["-rnone.test", "-b", "-rbl2.test"], (553, "second list")),
            (["-aal.test", "-rbl.test"], None),
            (["-rbl.test", "-aal.test"], (451, "Listed by bl.test")),
            (["-anone.test", "-rbl.test"], (451, "Listed by bl.test")),
            (["-rfail.test"], None),
            (["-c", "-rfail.test"], (451, "temporary RBL lookup error")),
            (["-rfail.test", "-c"], None),
            (["-b", "-rfail.test", "-rbl.test"], (451, "Listed by bl.test")),
            (["-afail.test", "-rbl.test"], None),
            (["-c", "-afail.test", "-rbl.test"], (451, "Listed by bl.test")),
            (["-lw2.test"], (451, "your address 192.0.2.7 is listed by w2.test (#4.7.1)")),
            (["-b", "-lw2.test"], (553, "your address 192.0.2.7 is listed by w2.test (#5.7.1)")),
            (["-lw2.test=127.0.0.[3..9]"], None),
            (["-lw2.test=127.0.0.[2..9]*2", "-lw10.test=127.0.0.[2..9]*2"],
             (451, "your address 192.0.2.7 is listed by w2.test (#4.7.1)")),
            (["-lw2.test*2", "-ldnswl.test=127.0.[0..255].[2..3]*-2"], None),
            (["-lw2.test", "-lnone.test"], (451, "your address 192.0.2.7 is listed by w2.test (#4.7.1)")),
            (["-lfail.test", "-lw2.test"], (451, "your address 192.0.2.7 is listed by w2.test (#4.7.1)")),
            (["-c", "-lfail.test", "-lw2.test"], (451, "temporary RBL lookup error")),
            (["-b", "-lfail.test", "-lw2.test"],
             (451, "your address 192.0.2.7 is listed by w2.test (#4.7.1)")),
            (["-aal.test", "-lw2.test"], None),
            (["-ldnswl.test=127.0.[0..255].[2..3]*-2"], None),
            (["-ddbl.test=127.0.1.[2..99]"],
             (451, "your host name mail.spam.example is listed by dbl.test (#4.7.1)")),
            (["-ddbl.test=127.0.1.255"], None),
        ],
    )
    def test_sources_in_argv_order(self, argv, expected):
        """The first -r/-a source to decide wins; -l/-d weights add up to the threshold."""
        verdict = rblcheck.decide(client(host="mail.spam.example"), sources(*argv), fake(TABLE))
        if expected is None:
            assert verdict.action == "pass"
        else:
            assert (verdict.action, verdict.code, verdict.text) == ("refuse",) + expected

    @pytest.mark.parametrize(
        ("threshold", "action"), [(1, "refuse"), (3, "refuse"), (4, "pass"), (-1, "refuse")]
    )
    def test_threshold(self, threshold, action):
        """A score at or above the threshold refuses."""
        lists = sources("-lw2.test*2", "-lw10.test*1", "-lnone.test*5")
        assert rblcheck.decide(client(), lists, fake(TABLE), threshold).action == action

    def test_allow_weights_alone_never_refuse(self):
        """Only lists with a positive weight can refuse, whatever the threshold."""
        lists = sources("-ldnswl.test=127.0.[0..255].[2..3]*-2")
        assert rblcheck.decide(client(), lists, fake(TABLE), threshold=-5).action == "pass"

    @pytest.mark.parametrize(
        ("ov", "relay", "expected"),
        [
            (core.Override("skip"), False, core.Verdict("skip", why=(("why", "override"),))),
            (core.Override("refuse", "go away"), False, core.Verdict("refuse", 451, "go away", (("why", "override"),))),
            (core.Override("refuse", "no", True), False, core.Verdict("refuse", 553, "no", (("why", "override"),))),
            (core.Override("refuse", "x"), True, core.Verdict("pass", why=(("why", "relayclient"),))),
        ],
    )
    def test_no_query_when_decided_without_dns(self, ov, relay, expected):
        """RELAYCLIENT and $RBLSMTPD decide before any question is asked."""
        resolve = fake(TABLE)
        assert rblcheck.decide(client(relay=relay), sources("-rbl.test"), resolve, ov=ov) == expected
        assert resolve.asked == []

    def test_one_batch_of_questions(self):
        """Every list is asked in one call, so the lists are asked in parallel."""
        calls = []

        def resolve(questions):
            calls.append(list(questions))
            return [Answer()] * len(questions)

        rblcheck.decide(client(host="a.b.example"), sources("-rbl.test", "-aal.test", "-lw.test", "-ddbl.test"), resolve)
        assert calls == [
            [
                (IP7 + ".bl.test", "TXT"),
                (IP7 + ".al.test", "A"),
                (IP7 + ".w.test", "A"),
                ("a.b.example.dbl.test", "A"),
                ("b.example.dbl.test", "A"),
            ]
        ]

    @pytest.mark.parametrize(
        ("ip", "name"),
        [
            ("2001:db8::1", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"),
            ("::ffff:192.0.2.7", IP7 + ".bl.test"),
        ],
    )
    def test_ipv6_by_nibbles(self, ip, name):
        """IPv6 clients are asked by nibbles, v4-mapped ones as IPv4."""
        resolve = fake({(name, "TXT"): TXT})
        verdict = rblcheck.decide(client(ip), sources("-rbl.test"), resolve)
        assert resolve.asked == [(name, "TXT")] and verdict.text == "Listed by bl.test"

    @pytest.mark.parametrize("host", [None, "localhost", "odd\\001.example"])
    def test_no_rhsbl_question_without_a_usable_name(self, host):
        """-d asks nothing when TCPREMOTEHOST is unset, a single label or escaped."""
        resolve = fake(TABLE)
        assert rblcheck.decide(client(host=host), sources("-ddbl.test"), resolve).action == "pass"
        assert resolve.asked == []

    def test_failures_are_reported(self):
        """A failed list is named in the verdict so main can warn about it."""
        verdict = rblcheck.decide(client(), sources("-rfail.test"), fake(TABLE))
        assert ("dnsfail", "fail.test:timeout") in verdict.why


def mkcdb(tmp_path, name, text):
    """Build a network list cdb with qtools-mkcdb -n; return its path."""
    path = str(tmp_path / name)
    result = run_prog(["qtools-mkcdb", "-n", path, path + ".tmp"], stdin=text.encode())
    assert result.rc == 0, result.err
    return path


class TestLocalLists:
    """Tests for the allow and deny cdbs."""

    @pytest.mark.parametrize(
        ("ip", "host", "action", "text"),
        [
            ("192.0.2.7", None, "pass", ""),
            ("192.0.2.9", None, "refuse", "your address 192.0.2.9 is in my deny list (#4.7.1)"),
            ("198.51.100.1", None, "refuse", "spam source"),
            ("203.0.113.1", "x.bad.example", "refuse", "your address 203.0.113.1 is in my deny list (#4.7.1)"),
            ("203.0.113.1", None, "pass", ""),
        ],
    )
    def test_allow_before_deny(self, tmp_path, ip, host, action, text):
        """An allow hit passes without DNS; a deny hit refuses with the line's text or ours."""
        from qtools import cdb

        allow = cdb.Reader(mkcdb(tmp_path, "allow.cdb", "192.0.2.7\n"))
        deny = cdb.Reader(mkcdb(tmp_path, "deny.cdb", "192.0.2.0/24\n198.51.100.0/24 spam source\n=.bad.example\n"))
        resolve = fake({})
        verdict = rblcheck.decide(client(ip, host), [], resolve, allow=allow, deny=deny)
        assert (verdict.action, verdict.text) == (action, text)
        assert resolve.asked == []


class TestMain:
    """Tests for `main`: usage, exit codes and the environment."""

    @pytest.mark.parametrize(
        "argv",
        [[], ["-r", "bl.test"], ["-z", "x"], ["-t"], ["-t", "x", "prog"], ["-T", "0", "prog"],
         ["-l", "bl.test=1.2", "prog"], ["-s", "x", "prog"]],
    )
    def test_usage(self, argv, capfd):
        """A bad command line exits 100 with the usage line."""
        assert rblcheck.main(argv, {"TCPREMOTEIP": "127.0.0.2"}) == 100
        assert "rblcheck: usage: rblcheck [ -b | -B ]" in capfd.readouterr().err

    @pytest.mark.parametrize(
        ("name", "value"), [("RBLCHECK_THRESHOLD", "x"), ("RBLCHECK_TIMEOUT", "0"), ("RBLCHECK_TIMEOUT", "y")]
    )
    def test_invalid_variables_exit_100(self, name, value, capfd):
        """A tcp.smtp variable that is not a number is named in the message."""
        assert rblcheck.main(["-r", "bl.test", "true"], {"TCPREMOTEIP": "127.0.0.2", name: value}) == 100
        assert capfd.readouterr().err == "rblcheck: fatal: invalid $%s: %s\n" % (name, value)

    def test_rhsbl_asks_the_names_nearest_the_root(self):
        """A long host name is asked by its five shortest parents, the registered domain among them."""
        resolve = fake({})
        rblcheck.decide(client(host="a.b.c.d.e.f.example.com"), sources("-ddbl.test"), resolve)
        assert [q[0] for q in resolve.asked] == [
            "c.d.e.f.example.com.dbl.test", "d.e.f.example.com.dbl.test", "e.f.example.com.dbl.test",
            "f.example.com.dbl.test", "example.com.dbl.test",
        ]

    def test_missing_TCPREMOTEIP_exits_100(self, capfd):
        """Without TCPREMOTEIP there is no client to check."""
        assert rblcheck.main(["-r", "bl.test", "true"], {}) == 100
        assert capfd.readouterr().err == "rblcheck: fatal: TCPREMOTEIP not set\n"

    def test_invalid_S_is_a_usage_error(self, capfd):
        """-S with something that is not ip[:port] exits 100 with the usage line."""
        assert rblcheck.main(["-S", "nohost", "-r", "bl.test", "true"], {"TCPREMOTEIP": "127.0.0.2"}) == 100
        assert "rblcheck: invalid value for -S: invalid server address nohost" in capfd.readouterr().err

    def test_invalid_QTOOLS_RESOLVER_exits_100_when_a_query_is_needed(self, capfd):
        """A bad $QTOOLS_RESOLVER is a permanent misconfiguration for a client that needs DNS."""
        environ = {"TCPREMOTEIP": "127.0.0.2", "QTOOLS_RESOLVER": "nohost"}
        assert rblcheck.main(["-r", "bl.test", "true"], environ) == 100
        assert capfd.readouterr().err == "rblcheck: fatal: invalid resolver: invalid server address nohost\n"

    def test_invalid_QTOOLS_RESOLVER_is_not_read_without_a_query(self):
        """A client that needs no DNS is handed on whatever $QTOOLS_RESOLVER holds."""
        r = run_prog(["rblcheck", "-r", "bl.test", "echo", "ran"],
                     {"TCPREMOTEIP": "127.0.0.2", "QTOOLS_RESOLVER": "nohost", "RBLSMTPD": ""})
        assert (r.rc, r.out) == (0, b"ran\n")


@pytest.fixture(scope="module")
def dns():
    """A table-driven DNS server for the transcript tests."""
    records = {
        "2.0.0.127.bl.test": [("TXT", '"Listed by bl.test: see http://bl.test/?127.0.0.2"')],
        "4.0.0.127.al.test": [("A", "127.0.0.2")],
        "5.0.0.127.w.test": [("A", "127.0.0.3")],
    }
    with DNSServer(records, {"fail.test": "servfail", "dead.test": "silent"}) as server:
        yield server


def env_for(dns, ip, **extra):
    env = {"TCPREMOTEIP": ip, "QTOOLS_RESOLVER": dns.address}
    env.update(extra)
    return env


class TestTranscripts:
    """The installed rblcheck with a hand-made environment and scripted stdin."""

    def test_listed_ip_gets_451_at_rcpt_and_prog_is_not_run(self, dns):
        """The list's TXT text is the reply to RCPT and DATA; the log line is rblsmtpd's."""
        r = run_prog(["rblcheck", "-r", "bl.test", "echo", "ran"], env_for(dns, "127.0.0.2"), SESSION)
        assert r.rc == 0
        assert r.out == (
            b"220 rblcheck.local\r\n250 rblcheck.local\r\n250 rblcheck.local\r\n"
            b"451 Listed by bl.test: see http://bl.test/?127.0.0.2\r\n"
            b"451 Listed by bl.test: see http://bl.test/?127.0.0.2\r\n221 rblcheck.local\r\n"
        )
        assert r.err.startswith(b"rblcheck: 127.0.0.2 pid x: 451 Listed by bl.test: see http://bl.test/?127.0.0.2 ")

    def test_unlisted_ip_runs_prog_with_stdin_untouched(self, dns):
        """An unlisted client reaches prog, which sees every byte of stdin."""
        r = run_prog(["rblcheck", "-r", "bl.test", "cat"], env_for(dns, "127.0.0.9"), SESSION)
        assert (r.rc, r.out) == (0, SESSION)
        assert r.err == b"rblcheck: 127.0.0.9 pid x: pass\n"

    def test_mark_mode_sets_QTOOLS_SUSPECT(self, dns):
        """-m hands on with the list named in $QTOOLS_SUSPECT instead of refusing."""
        r = run_prog(["rblcheck", "-m", "-r", "bl.test", "sh", "-c", "echo $QTOOLS_SUSPECT"],
                     env_for(dns, "127.0.0.2", QTOOLS_SUSPECT="rhostcheck:dynamic"))
        assert r.out == b"rhostcheck:dynamic rblcheck:bl.test\n"
        assert r.err.startswith(b"rblcheck: 127.0.0.2 pid x: mark ")

    def test_RBLCHECK_MARK_per_client(self, dns):
        """RBLCHECK_MARK=1 from tcp.smtp turns on mark mode for that client."""
        r = run_prog(["rblcheck", "-l", "w.test", "sh", "-c", "echo $QTOOLS_SUSPECT"],
                     env_for(dns, "127.0.0.5", RBLCHECK_MARK="1"))
        assert r.out == b"rblcheck:w.test\n"

    @pytest.mark.parametrize(
        ("argv", "ip", "trusted"),
        [
            (["-a", "al.test"], "127.0.0.4", b"rblcheck:al.test"),
            (["-l", "w.test*-1", "-w", "-1"], "127.0.0.5", b"rblcheck:w.test"),
            (["-l", "w.test*-1"], "127.0.0.5", b""),
            (["-l", "w.test*-1", "-w", "-2"], "127.0.0.5", b""),
            (["-m", "-r", "bl.test", "-w", "5"], "127.0.0.2", b""),
        ],
    )
    def test_trust(self, dns, argv, ip, trusted):
        """An allow-list hit, or a score at or below -w, sets $QTOOLS_TRUSTED; a mark never does."""
        r = run_prog(["rblcheck"] + argv + ["sh", "-c", "echo $QTOOLS_TRUSTED"], env_for(dns, ip))
        assert r.out == trusted + b"\n"
        assert (b" trust=" + trusted in r.err) == bool(trusted)

    def test_dry_run_only_logs(self, dns):
        """-n runs prog and logs what the reply would have been."""
        r = run_prog(["rblcheck", "-n", "-r", "bl.test", "echo", "ran"], env_for(dns, "127.0.0.2"))
        assert r.out == b"ran\n"
        assert r.err.startswith(
            b'rblcheck: 127.0.0.2 pid x: dryrun reply="451 Listed by bl.test: see http://bl.test/?127.0.0.2" '
        )

    def test_dns_timeout_fails_open_with_a_warning(self, dns):
        """A silent server costs the -T deadline, then prog runs and a warning is logged."""
        start = time.monotonic()
        r = run_prog(["rblcheck", "-T", "0.5", "-r", "x.dead.test", "echo", "ran"], env_for(dns, "127.0.0.2"))
        assert time.monotonic() - start < 8
        assert r.out == b"ran\n"
        assert b"rblcheck: warning: unable to look up 127.0.0.2 in x.dead.test: timeout\n" in r.err

    def test_dripping_tcp_fallback_is_cut_at_the_deadline(self):
        """-T covers the TCP fallback: a server dripping its answer holds rblcheck -T 2 about 2 s."""
        with DNSServer(behaviour={"drip.test": "drip"}) as drip:
            start = time.monotonic()
            r = run_prog(["rblcheck", "-T", "2", "-r", "drip.test", "echo", "ran"],
                         env_for(drip, "127.0.0.2"))
            took = time.monotonic() - start
        assert r.out == b"ran\n"
        assert b"rblcheck: warning: unable to look up 127.0.0.2 in drip.test: timeout\n" in r.err
        assert took < 2 + 1.5

    def test_servfail_with_c_is_451_never_5xx(self, dns):
        """-c turns a server failure into rblsmtpd's 451, even with -b."""
        r = run_prog(["rblcheck", "-b", "-c", "-r", "fail.test", "echo", "ran"], env_for(dns, "127.0.0.2"),
                     b"rcpt to:<x@y>\r\n")
        assert b"451 temporary RBL lookup error\r\n" in r.out

    def test_unreadable_allow_list_fails_open(self, dns, tmp_path):
        """A missing cdb is a warning; -c before it makes it a 451."""
        missing = str(tmp_path / "none.cdb")
        r = run_prog(["rblcheck", "-A", missing, "echo", "ran"], env_for(dns, "127.0.0.9"))
        assert r.out == b"ran\n" and b"rblcheck: warning: unable to open " in r.err
        r = run_prog(["rblcheck", "-c", "-A", missing, "echo", "ran"], env_for(dns, "127.0.0.9"), b"rcpt x\r\n")
        assert b"451 temporary local list error (#4.3.0)\r\n" in r.out

    @pytest.mark.parametrize(
        "env",
        [{"RBLSMTPD": ""}, {"RELAYCLIENT": ""}, {"QTOOLS_RBLCHECK": ""}],
    )
    def test_no_dnspython_when_no_query_is_sent(self, dns, env):
        """$RBLSMTPD, RELAYCLIENT or $QTOOLS_RBLCHECK deciding means dnspython is never imported."""
        before = len(dns.questions)
        r = run_prog(["rblcheck", "-r", "bl.test", "echo", "ran"],
                     env_for(dns, "127.0.0.2", PYTHONPROFILEIMPORTTIME="1", **env))
        assert r.out == b"ran\n"
        assert b"dns.message" not in r.err and len(dns.questions) == before

    @pytest.mark.parametrize(
        ("options", "reply"),
        [
            (["-D", "DENY"], b"451 your address 127.0.0.9 is in my deny list (#4.7.1)"),
            (["-b", "-D", "DENY"], b"553 your address 127.0.0.9 is in my deny list (#5.7.1)"),
            (["-D", "DENY", "-b"], b"451 your address 127.0.0.9 is in my deny list (#4.7.1)"),
        ],
    )
    def test_deny_list_follows_b_before_it(self, dns, tmp_path, options, reply):
        """A -D hit refuses without DNS, permanently when -b came before -D."""
        deny = mkcdb(tmp_path, "deny.cdb", "127.0.0.0/24\n")
        argv = ["rblcheck"] + [deny if o == "DENY" else o for o in options] + ["echo", "ran"]
        r = run_prog(argv, env_for(dns, "127.0.0.9"), b"rcpt to:<x@y>\r\n")
        assert r.out.splitlines()[1] == reply

    def test_deny_list_line_text_is_the_reply(self, dns, tmp_path):
        """The text after the network on its line is the reply."""
        deny = mkcdb(tmp_path, "deny.cdb", "127.0.1.0/24 go away\n")
        r = run_prog(["rblcheck", "-D", deny, "echo", "ran"], env_for(dns, "127.0.1.9"), b"rcpt to:<x@y>\r\n")
        assert r.out.splitlines()[1] == b"451 go away"

    def test_allow_list_hit_sends_no_query(self, dns, tmp_path):
        """A client in the -A cdb is passed without asking DNS or loading dnspython."""
        allow = mkcdb(tmp_path, "allow.cdb", "127.0.0.0/24\n")
        before = len(dns.questions)
        r = run_prog(["rblcheck", "-A", allow, "-r", "bl.test", "echo", "ran"],
                     env_for(dns, "127.0.0.2", PYTHONPROFILEIMPORTTIME="1"))
        assert r.out == b"ran\n"
        assert b"dns.message" not in r.err and len(dns.questions) == before


# --- Side by side with Debian's rblsmtpd ----------------------------------------

BL_ZONE = (
    "ip4set",
    ":127.0.0.2:Listed by bl.test: see http://bl.test/?$\n"
    "127.0.0.2\n127.0.0.4\n"
    "127.0.0.3 :127.0.0.3:" + "x" * 150 + " " + "y" * 80 + "\n",
)
ZONES = {
    "bl.test": BL_ZONE,
    "bl2.test": ("ip4set", ":127.0.0.2:Second list says no\n127.0.0.2\n127.0.0.6\n"),
    "al.test": ("ip4set", ":127.0.0.2:\n127.0.0.4\n"),
}


@pytest.fixture(scope="module")
def dns53(tmp_path_factory):
    """rbldnsd on a random 127.53.x.y port 53, the only port rblsmtpd can ask."""
    if shutil.which("rbldnsd") is None or shutil.which("rblsmtpd") is None:
        pytest.fail("rbldnsd and rblsmtpd are needed: run make test, which installs them")
    directory = tmp_path_factory.mktemp("rbldnsd53")
    os.chmod(str(directory), 0o755)
    args = []
    for n, (zone, (dataset, text)) in enumerate(sorted(ZONES.items())):
        path = directory / ("zone%d" % n)
        path.write_text(text)
        os.chmod(str(path), 0o644)
        args.append("%s:%s:%s" % (zone, dataset, path.name))
    for _ in range(10):
        ip = "127.53.%d.%d" % (random.randint(1, 254), random.randint(1, 254))
        process = subprocess.Popen(
            ["rbldnsd", "-n", "-q", "-c", "0", "-u", "nobody", "-w", str(directory), "-b", ip + "/53"] + args,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        ok = resolver.lookup([("2.0.0.127.bl.test", "A")], [(ip, 53)], 3)[0].records
        if ok:
            break
        process.kill()
        process.wait()
    else:
        pytest.fail("rbldnsd did not start on port 53")
    yield ip
    process.kill()
    process.wait()


def both(dns53, options, ip, stdin=SESSION, **env):
    """Run rblsmtpd and rblcheck alike; return both results with names made equal."""
    results = []
    for prog in ("/usr/bin/rblsmtpd", "rblcheck"):
        environ = {"TCPREMOTEIP": ip, "DNSCACHEIP": dns53, "QTOOLS_HOSTNAME": "rblsmtpd.local"}
        environ.update(env)
        r = run_prog([prog] + options + ["echo", "ran"], environ, stdin, timeout=60)
        log = r.err.replace(b"/usr/bin/rblsmtpd", b"rblsmtpd").replace(b"rblcheck:", b"rblsmtpd:")
        # rblcheck adds key=value fields and warnings; rblsmtpd's head must be there.
        results.append((r.rc, r.out, [line for line in log.splitlines() if b"warning" not in line]))
    return results


SIDE_BY_SIDE = [
    (["-r", "bl.test"], "127.0.0.2", {}),
    (["-b", "-r", "bl.test"], "127.0.0.2", {}),
    (["-r", "bl.test"], "127.0.0.9", {}),
    (["-r", "bl.test"], "127.0.0.3", {}),
    (["-a", "al.test", "-r", "bl.test"], "127.0.0.4", {}),
    (["-r", "bl.test", "-a", "al.test"], "127.0.0.4", {}),
    (["-r", "bl2.test", "-r", "bl.test"], "127.0.0.2", {}),
    (["-r", "bl.test", "-b", "-r", "bl2.test"], "127.0.0.6", {}),
    (["-b", "-r", "bl.test", "-B", "-r", "bl2.test"], "127.0.0.6", {}),
    (["-t", "0", "-r", "bl.test"], "127.0.0.2", {}),
    (["-r", "bl.test"], "127.0.0.2", {"RBLSMTPD": ""}),
    (["-r", "bl.test"], "127.0.0.9", {"RBLSMTPD": "go away"}),
    (["-r", "bl.test"], "127.0.0.9", {"RBLSMTPD": "-go away\tfor good\r\n\xe9"}),
    (["-r", "bl.test"], "127.0.0.9", {"RBLSMTPD": "-"}),
    (["-a", "al.test"], "127.0.0.9", {}),
    (["-r", "al.test"], "127.0.0.4", {}),
    (["-b", "-t", "0", "-r", "bl2.test"], "127.0.0.6", {}),
]


FAILURES = [
    (["-c", "-r", "nosuch.test"], True),
    (["-b", "-r", "nosuch.test", "-r", "bl.test"], True),
    (["-a", "nosuch.test", "-r", "bl.test"], False),
    (["-c", "-a", "nosuch.test", "-r", "bl.test"], True),
]


@pytest.fixture(scope="module")
def failure_runs(dns53):
    """Run the failure cases at once: rblsmtpd spends about 11 s on each."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(FAILURES)) as pool:
        futures = {" ".join(o): pool.submit(both, dns53, o, "127.0.0.2") for o, _ in FAILURES}
    return {key: future.result() for key, future in futures.items()}


class TestSideBySide:
    """rblcheck in rblsmtpd's place gives the same replies, exit codes and log heads."""

    @pytest.mark.parametrize(("options", "ip", "env"), SIDE_BY_SIDE)
    def test_same_replies(self, dns53, options, ip, env):
        """The same zones, options, environment and stdin give the same conversation."""
        theirs, ours = both(dns53, options, ip, **env)
        assert ours[:2] == theirs[:2]
        assert len(ours[2]) == 1 and len(theirs[2]) <= 1
        if theirs[2]:  # a refusal: rblsmtpd's line, then our key=value fields
            assert ours[2][0].startswith(theirs[2][0] + b" ")
        else:  # rblsmtpd says nothing when it runs prog; we log one line
            assert ours[2][0].split(b" why=")[0] in (
                b"rblsmtpd: %s pid x: pass" % ip.encode(), b"rblsmtpd: %s pid x: skip" % ip.encode()
            )

    @pytest.mark.parametrize(("options", "refused"), FAILURES)
    def test_same_replies_after_a_server_failure(self, failure_runs, options, refused):
        """rbldnsd refuses a zone it does not serve: both fail the same way, never with 5xx."""
        theirs, ours = failure_runs[" ".join(options)]
        assert ours[:2] == theirs[:2]
        if refused:
            assert b"\r\n451 " in ours[1] and ours[2][0].startswith(theirs[2][0] + b" ")
        else:
            assert ours[1] == b"ran\n" and theirs[2] == []


# --- End to end: tcpserver, rbldnsd, the sink ----------------------------------

E2E_ZONES = {
    "bl.test": ("ip4set", ":127.0.0.2:Listed by bl.test: see http://bl.test/?$\n127.0.0.2\n127.0.0.4\n"),
    "al.test": ("ip4set", ":127.0.0.2:\n127.0.0.4\n"),
    "w1.test": ("ip4set", ":127.0.0.2:\n127.0.0.5\n127.0.0.6\n127.0.0.7 :127.0.0.9:\n"),
    "w2.test": ("ip4set", ":127.0.0.3:\n127.0.0.6\n"),
}
CHAIN = ["rblcheck", "-a", "al.test", "-r", "bl.test", "-l", "w1.test=127.0.0.[2..3]*2", "-l", "w2.test", "-s", "3"]


def send(server, source):
    """Send one message from source; return the reply to RCPT (code, text)."""
    with smtp_from(server.host, server.port, source) as s:
        s.ehlo("client.example")
        s.mail("a@example.org")
        code, text = s.rcpt("b@example.com")
        if code == 250:
            s.data(b"Subject: t\r\n\r\nhello\r\n")
        return code, text.decode()


@pytest.mark.e2e
class TestEndToEnd:
    """Real tcpserver and rbldnsd; clients from different 127.x.y.z addresses."""

    @pytest.mark.parametrize(
        ("source", "code", "text", "delivered"),
        [
            ("127.0.0.2", 451, "Listed by bl.test: see http://bl.test/?127.0.0.2", 0),
            ("127.0.0.9", 250, None, 1),
            ("127.0.0.4", 250, None, 1),
            ("127.0.0.5", 250, None, 1),
            ("127.0.0.6", 451, "your address 127.0.0.6 is listed by w1.test, w2.test (#4.7.1)", 0),
            ("127.0.0.7", 250, None, 1),
        ],
    )
    def test_listed_unlisted_antilisted_weighted(self, tcpserver, rbldnsd, tmp_path, source, code, text, delivered):
        """Listed refuses at RCPT, anti-listed and below-threshold clients get through."""
        dns = rbldnsd(E2E_ZONES)
        maildir = tmp_path / "mail"
        maildir.mkdir()
        server = tcpserver(CHAIN + sink_cmd(maildir), env={"QTOOLS_RESOLVER": dns}, options=("-H",))
        got = send(server, source)
        assert got[0] == code and (text is None or got[1] == text)
        assert len(read_maildir(maildir)) == delivered
        if code != 250:
            assert "rblcheck: %s pid " % source in server.log()

    @pytest.mark.parametrize(
        ("behaviour", "options", "code"),
        [("silent", [], 250), ("servfail", [], 250), ("silent", ["-c"], 451), ("servfail", ["-b", "-c"], 451)],
    )
    def test_dns_failure(self, tcpserver, tmp_path, behaviour, options, code):
        """A dead or failing server never gives a 5xx: accept and warn, or 451 with -c."""
        maildir = tmp_path / "mail"
        maildir.mkdir()
        with DNSServer(behaviour={"test": behaviour}) as dns:
            chain = ["rblcheck", "-T", "1"] + options + ["-r", "bl.test"] + sink_cmd(maildir)
            server = tcpserver(chain, env={"QTOOLS_RESOLVER": dns.address}, options=("-H",))
            start = time.monotonic()
            got = send(server, "127.0.0.2")
            assert time.monotonic() - start < 15
        assert got[0] == code
        assert "rblcheck: warning: unable to look up 127.0.0.2 in bl.test" in server.log()

    def test_rbldnsd_ipv6_zone_by_nibbles(self, rbldnsd):
        """An IPv6 client's nibble name is what rbldnsd's ip6trie answers."""
        dns = rbldnsd({"bl6.test": ("ip6trie", ":127.0.0.2:v6 listed\n2001:db8::/64\n")})
        resolve = resolver.make({"QTOOLS_RESOLVER": dns}, 3)
        verdict = rblcheck.decide(client("2001:db8::25"), sources("-rbl6.test"), resolve)
        assert (verdict.code, verdict.text) == (451, "v6 listed")
        assert rblcheck.decide(client("2001:db8:1::25"), sources("-rbl6.test"), resolve).action == "pass"

    def test_marks_of_a_chain_reach_the_end(self, tcpserver, rbldnsd, tmp_path):
        """rhostcheck -m and rblcheck -m in one chain both leave their mark for the last program."""
        dns = rbldnsd(E2E_ZONES)
        maildir = tmp_path / "mail"
        maildir.mkdir()
        chain = ["rhostcheck", "-m", "rblcheck", "-m", "-r", "bl.test"] + sink_cmd(maildir)
        server = tcpserver(chain, env={"QTOOLS_RESOLVER": dns}, options=("-H",))
        assert send(server, "127.0.0.2")[0] == 250
        (message,) = read_maildir(maildir)
        assert b"X-Sink-Env: QTOOLS_SUSPECT=rhostcheck:nordns rblcheck:bl.test\r\n" in message
        log = server.log()
        assert "rhostcheck: 127.0.0.2 pid " in log and "rblcheck: 127.0.0.2 pid " in log

    @pytest.mark.parametrize(
        ("source", "code"), [("127.0.0.8", 451), ("127.0.0.9", 250), ("127.0.0.10", 250)]
    )
    def test_rhsbl_on_TCPREMOTEHOST(self, tcpserver, rbldnsd, tmp_path, source, code):
        """-d asks rbldnsd's dnset about the client's name and its parents; codes filter the answer."""
        dns = rbldnsd({"dbl.test": ("dnset", ".spam.example :127.0.1.2:\n.tricky.example :127.0.1.255:\n")})
        maildir = tmp_path / "mail"
        maildir.mkdir()
        rules = (
            '127.0.0.8:allow,TCPREMOTEHOST="mail.spam.example"\n'
            '127.0.0.9:allow,TCPREMOTEHOST="mail.ham.example"\n'
            '127.0.0.10:allow,TCPREMOTEHOST="mx.tricky.example"\n'
        )
        chain = ["rblcheck", "-d", "dbl.test=127.0.1.[2..99]"] + sink_cmd(maildir)
        server = tcpserver(chain, env={"QTOOLS_RESOLVER": dns}, rules_text=rules, options=("-H",))
        got = send(server, source)
        assert got[0] == code
        if code == 451:
            assert got[1] == "your host name mail.spam.example is listed by dbl.test (#4.7.1)"
