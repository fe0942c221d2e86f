# SPDX-License-Identifier: ISC
"""Tests for `qtools.rhostcheck`."""

import os
import random
import sys
import time

import pytest

from conftest import read_maildir, run_prog, sink_cmd, smtp_from, make_client as client, fake_resolver as fake
from qtools import cdb, core, rhostcheck
from qtools.resolver import Answer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dnsserver import DNSServer  # noqa: E402

SESSION = b"helo x\r\nmail from:<a@b>\r\nrcpt to:<c@d>\r\nquit\r\n"


def mkcdb(tmp_path, text):
    path = str(tmp_path / "exceptions.cdb")
    result = run_prog(["qtools-mkcdb", "-n", path, path + ".tmp"], stdin=text.encode())
    assert result.rc == 0, result.err
    return path


class TestDynamic:
    """Tests for `dynamic`, the generic-name detector."""

    @pytest.mark.parametrize(
        ("host", "ip", "expected"),
        [
            ("c-73-15-24-87.hsd1.example.net", "73.15.24.87", "dashed"),
            ("host_73_15_24_87.example.net", "73.15.24.87", "dashed"),
            ("73.15.24.87.example.net", "73.15.24.87", "dotted"),
            ("87.24.15.73.static.example.net", "73.15.24.87", "reversed"),
            ("87-24-15-73.example.net", "73.15.24.87", "reversed"),
            ("host-001-002-003-004.example.com", "1.2.3.4", "padded"),
            ("h004003002001.example.com", "1.2.3.4", "padded"),
            ("p4a0f1b2c.dip0.example.de", "74.15.27.44", "hex"),
            ("x2c1b0f4a.example.de", "74.15.27.44", "hex"),
            ("ip1234605778.example.com", "73.150.150.210", "integer"),
            ("20010db8000000000000000000000025.example", "2001:db8::25", "hex"),
            ("adsl-pool.example.com", "192.0.2.1", "keyword:adsl"),
            ("x.dsl.isp.example", "192.0.2.1", "keyword:dsl"),
            ("ppp123.isp.example", "192.0.2.1", "keyword:ppp"),
            ("mail.example.com", "1.2.3.4", None),
            ("mx11.2.3.45.example", "1.2.3.4", None),
            ("mx1.2.3.4.example", "11.2.3.4", None),
            ("mail.dsl.example", "192.0.2.1", None),
            ("mail.pool.example.com", "192.0.2.1", "keyword:pool"),
            ("smtp-dynamo.example.com", "192.0.2.1", None),
            ("mx.example.com", "2001:db8::25", None),
        ],
    )
    def test_default_encodings_and_keywords(self, host, ip, expected):
        """The client's address in a usual encoding, or a keyword before the domain, is generic."""
        assert rhostcheck.dynamic(host, core.parse_ip(ip)[1]) == expected

    @pytest.mark.parametrize(
        ("host", "keywords", "encodings", "expected"),
        [
            ("c-73-15-24-87.dsl.example.net", [], ["reversed"], None),
            ("c-73-15-24-87.dsl.example.net", ["dsl"], [], "keyword:dsl"),
            ("c-73-15-24-87.dsl.example.net", ["mta"], ["dashed"], "dashed"),
            ("mta-1.example.net", ["mta"], [], "keyword:mta"),
        ],
    )
    def test_configurable(self, host, keywords, encodings, expected):
        """Keyword and encoding lists replace the defaults; empty lists turn a test off."""
        packed = core.parse_ip("73.15.24.87")[1]
        assert rhostcheck.dynamic(host, packed, keywords, encodings) == expected


PTR7 = ("7.2.0.192.in-addr.arpa", "PTR")
TABLE = {
    PTR7: Answer(["mail.example.com"]),
    ("mail.example.com", "A"): Answer(["192.0.2.9", "192.0.2.7"]),
    ("8.2.0.192.in-addr.arpa", "PTR"): Answer(["liar.example.com", "also.example.com"]),
    ("liar.example.com", "A"): Answer(["10.9.9.9"]),
    ("9.2.0.192.in-addr.arpa", "PTR"): Answer(error="SERVFAIL from 127.0.0.1"),
    ("1.2.0.192.in-addr.arpa", "PTR"): Answer(["broken.example.com"]),
    ("broken.example.com", "A"): Answer(error="timeout"),
    ("2.2.0.192.in-addr.arpa", "PTR"): Answer(["192-0-2-2.dyn.example.net"]),
    ("192-0-2-2.dyn.example.net", "A"): Answer(["192.0.2.2"]),
    ("5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "PTR"): Answer(["v6.example.com"]),
    ("v6.example.com", "AAAA"): Answer(["2001:db8:0:0::25"]),
}
NORDNS = "bad reverse DNS: %s has no forward-confirmed name (#4.7.25)"


class TestDecide:
    """Tests for `decide`."""

    @pytest.mark.parametrize(
        ("host", "generic", "bounce", "expected"),
        [
            (None, False, False, (451, NORDNS % "192.0.2.7")),
            (None, False, True, (553, "bad reverse DNS: 192.0.2.7 has no forward-confirmed name (#5.7.25)")),
            ("mail.example.com", True, False, None),
            ("192-0-2-7.dyn.example.net", False, False, None),
            ("192-0-2-7.dyn.example.net", True, False,
             (451, "bad reverse DNS: 192-0-2-7.dyn.example.net looks dynamic, please use your provider's relay (#4.7.1)")),
        ],
    )
    def test_classic_mode(self, host, generic, bounce, expected):
        """Without own lookups TCPREMOTEHOST decides: unset refuses, generic refuses with -g."""
        resolve = fake(TABLE)
        verdict = rhostcheck.decide(client(host=host), None, generic=generic, bounce=bounce)
        if expected is None:
            assert verdict.action == "pass"
        else:
            assert (verdict.action, verdict.code, verdict.text) == ("refuse",) + expected
        assert resolve.asked == []

    @pytest.mark.parametrize(
        ("ip", "failclosed", "action", "host", "why"),
        [
            ("192.0.2.7", False, "pass", "mail.example.com", None),
            ("192.0.2.8", False, "refuse", None, "nordns"),
            ("192.0.2.6", False, "refuse", None, "nordns"),
            ("192.0.2.9", False, "pass", None, "tempfail"),
            ("192.0.2.9", True, "refuse", None, "tempfail"),
            ("192.0.2.1", False, "pass", None, "tempfail"),
            ("192.0.2.2", False, "pass", "192-0-2-2.dyn.example.net", None),
            ("2001:db8::25", False, "pass", "v6.example.com", None),
            ("2001:db8::26", False, "refuse", None, "nordns"),
        ],
    )
    def test_own_lookups(self, ip, failclosed, action, host, why):
        """PTR, then A or AAAA of the names: the client's address must be among them."""
        verdict = rhostcheck.decide(client(ip, host="ignored.example"), fake(TABLE), failclosed=failclosed)
        fields = dict(verdict.why)
        assert verdict.action == action and fields.get("host") == host and fields.get("why") == why
        if why == "tempfail" and failclosed:
            assert (verdict.code, verdict.text) == (451, "temporary reverse DNS lookup error (#4.4.3)")

    def test_own_lookups_ask_ptr_then_forward(self):
        """The questions are the PTR, then the forward lookups of every name at once."""
        resolve = fake(TABLE)
        rhostcheck.decide(client("192.0.2.8"), resolve)
        assert resolve.asked == [
            ("8.2.0.192.in-addr.arpa", "PTR"), ("liar.example.com", "A"), ("also.example.com", "A")
        ]

    @pytest.mark.parametrize(
        ("ov", "relay", "action", "code"),
        [
            (core.Override("skip"), False, "skip", None),
            (core.Override("refuse", "no rDNS"), False, "refuse", 451),
            (core.Override("refuse", "no rDNS", True), False, "refuse", 553),
            (core.Override("refuse", "no rDNS", True), True, "pass", None),
        ],
    )
    def test_override_and_relay(self, ov, relay, action, code):
        """RELAYCLIENT and $RHOSTCHECK decide before anything is looked up."""
        resolve = fake(TABLE)
        verdict = rhostcheck.decide(client(relay=relay), resolve, ov=ov)
        assert (verdict.action, verdict.code) == (action, code) and resolve.asked == []

    @pytest.mark.parametrize(
        ("ip", "host", "action"),
        [
            ("192.0.2.7", None, "pass"),
            ("198.51.100.7", None, "refuse"),
            ("198.51.100.7", "dsl-1.trusted.example", "pass"),
            ("198.51.100.7", "dsl-1.other.example", "refuse"),
        ],
    )
    def test_exceptions(self, tmp_path, ip, host, action):
        """Networks and host suffixes in the exceptions cdb pass."""
        reader = cdb.Reader(mkcdb(tmp_path, "192.0.2.0/24\n=.trusted.example\n"))
        verdict = rhostcheck.decide(client(ip, host), None, generic=True, exceptions=reader)
        assert verdict.action == action


class TestMain:
    """Tests for `main`."""

    @pytest.mark.parametrize(
        "argv",
        [[], ["-h"], ["-z", "p"], ["-e", "dotted,nope", "p"], ["-T", "x", "p"], ["-t", "-1", "p"], ["-S", "x", "p"]],
    )
    def test_usage(self, argv, capfd):
        """A bad command line exits 100 with the usage line."""
        assert rhostcheck.main(argv, {"TCPREMOTEIP": "192.0.2.7"}) == 100
        assert "rhostcheck: usage: rhostcheck [ -b | -B ]" in capfd.readouterr().err


@pytest.fixture(scope="module")
def dns():
    records = {
        "2.0.0.127.in-addr.arpa": [("PTR", "good.example.")],
        "good.example": [("A", "127.0.0.2")],
        "3.0.0.127.in-addr.arpa": [("PTR", "liar.example.")],
        "liar.example": [("A", "10.9.9.9")],
        "5.0.0.127.in-addr.arpa": [("PTR", "127-0-0-5.dsl.example.")],
        "127-0-0-5.dsl.example": [("A", "127.0.0.5")],
    }
    with DNSServer(records, {"6.0.0.127.in-addr.arpa": "silent"}) as server:
        yield server


class TestTranscripts:
    """The installed rhostcheck with a hand-made environment and scripted stdin."""

    def test_no_name_gets_451_at_rcpt(self):
        """Without TCPREMOTEHOST the client hears the refusal at RCPT; prog is not run."""
        r = run_prog(["rhostcheck", "echo", "ran"], {"TCPREMOTEIP": "192.0.2.7"}, SESSION)
        assert r.rc == 0
        assert r.out == (
            b"220 rhostcheck.local\r\n250 rhostcheck.local\r\n250 rhostcheck.local\r\n"
            b"451 bad reverse DNS: 192.0.2.7 has no forward-confirmed name (#4.7.25)\r\n"
            b"221 rhostcheck.local\r\n"
        )
        assert r.err == (
            b"rhostcheck: 192.0.2.7 pid x: 451 bad reverse DNS: 192.0.2.7 has no"
            b" forward-confirmed name (#4.7.25) why=nordns\n"
        )

    def test_named_client_reaches_prog_with_stdin_untouched(self):
        """A client with a name is handed on; prog sees every byte."""
        r = run_prog(["rhostcheck", "cat"], {"TCPREMOTEIP": "192.0.2.7", "TCPREMOTEHOST": "mx.example.com"}, SESSION)
        assert (r.rc, r.out) == (0, SESSION)

    @pytest.mark.parametrize(
        ("env", "out"),
        [
            ({}, b"rhostcheck:nordns\n"),
            ({"TCPREMOTEHOST": "192-0-2-7.pool.example.net"}, b"rhostcheck:dynamic\n"),
        ],
    )
    def test_mark_mode(self, env, out):
        """RHOSTCHECK_MARK=1 hands suspects on with a tag in $QTOOLS_SUSPECT."""
        environ = {"TCPREMOTEIP": "192.0.2.7", "RHOSTCHECK_MARK": "1", "RHOSTCHECK_GENERIC": "1"}
        environ.update(env)
        r = run_prog(["rhostcheck", "sh", "-c", "echo $QTOOLS_SUSPECT"], environ)
        assert r.out == out

    @pytest.mark.parametrize(
        ("env", "out"),
        [
            ({"RHOSTCHECK_KEYWORDS": "mta", "RHOSTCHECK_ENCODINGS": ""}, b"rhostcheck:dynamic\n"),
            ({"RHOSTCHECK_KEYWORDS": "dsl", "RHOSTCHECK_ENCODINGS": ""}, b"\n"),
            ({"RHOSTCHECK_KEYWORDS": "", "RHOSTCHECK_ENCODINGS": "dashed"}, b"\n"),
            ({"RHOSTCHECK_KEYWORDS": "", "RHOSTCHECK_ENCODINGS": "dotted"}, b"rhostcheck:dynamic\n"),
            ({"RHOSTCHECK_GENERIC": "0"}, b"\n"),
        ],
    )
    def test_generic_settings_per_client(self, env, out):
        """Keywords, encodings and the generic test itself can be set per client in tcp.smtp."""
        environ = {"TCPREMOTEIP": "192.0.2.7", "TCPREMOTEHOST": "mta.192.0.2.7.example.net"}
        environ.update(env)
        r = run_prog(["rhostcheck", "-g", "-m", "sh", "-c", "echo $QTOOLS_SUSPECT"], environ)
        assert r.out == out

    def test_RHOSTCHECK_text_refuses_permanently(self):
        """$QTOOLS_RHOSTCHECK follows the $RBLSMTPD pattern: a leading - means 553."""
        r = run_prog(["rhostcheck", "echo", "ran"],
                     {"TCPREMOTEIP": "192.0.2.7", "TCPREMOTEHOST": "mx.example", "QTOOLS_RHOSTCHECK": "-go away"},
                     b"rcpt to:<x@y>\r\n")
        assert r.out.splitlines()[1] == b"553 go away"

    def test_QTOOLS_RHOSTCHECK_is_read_before_RHOSTCHECK(self):
        """With both set, $QTOOLS_RHOSTCHECK decides."""
        env = {"TCPREMOTEIP": "192.0.2.7", "QTOOLS_RHOSTCHECK": "", "RHOSTCHECK": "no"}
        assert run_prog(["rhostcheck", "echo", "ran"], env).out == b"ran\n"

    def test_RHOSTCHECK_empty_skips(self):
        """An empty $RHOSTCHECK from tcp.smtp lets the client through without a name."""
        r = run_prog(["rhostcheck", "echo", "ran"], {"TCPREMOTEIP": "192.0.2.7", "RHOSTCHECK": ""})
        assert r.out == b"ran\n"

    @pytest.mark.parametrize(
        ("ip", "out"),
        [("127.0.0.2", b"ran good.example\n"), ("127.0.0.3", None), ("127.0.0.4", None),
         ("127.0.0.5", b"ran 127-0-0-5.dsl.example\n")],
    )
    def test_own_lookups_export_the_confirmed_name(self, dns, ip, out):
        """-h looks the name up itself and hands on a forward-confirmed TCPREMOTEHOST."""
        r = run_prog(["rhostcheck", "-h", "-S", dns.address, "sh", "-c", "echo ran $TCPREMOTEHOST"],
                     {"TCPREMOTEIP": ip, "TCPREMOTEHOST": "spoofed.example"}, b"rcpt to:<x@y>\r\n")
        if out is None:
            assert b"451 bad reverse DNS: %s has no" % ip.encode() in r.out
        else:
            assert r.out == out

    def test_dns_timeout_fails_open_with_a_warning(self, dns):
        """A PTR that never comes costs the -T deadline, then prog runs."""
        r = run_prog(["rhostcheck", "-h", "-T", "0.5", "-S", dns.address, "echo", "ran"],
                     {"TCPREMOTEIP": "127.0.0.6"})
        assert r.out == b"ran\n"
        assert b"rhostcheck: warning: unable to confirm the name of 127.0.0.6: timeout\n" in r.err

    @pytest.mark.parametrize("behaviour", [1.9, "drip"])
    def test_ptr_and_a_share_one_deadline(self, behaviour):
        """-T is for the PTR and the A lookups together, the TCP fallback included."""
        records = {"8.0.0.127.in-addr.arpa": [("PTR", "slow.example.")],
                   "slow.example": [("A", "127.0.0.8")]}
        with DNSServer(records, {"in-addr.arpa": 1.9, "slow.example": behaviour}) as slow:
            start = time.monotonic()
            r = run_prog(["rhostcheck", "-h", "-c", "-T", "2", "-S", slow.address, "echo", "ran"],
                         {"TCPREMOTEIP": "127.0.0.8"}, b"rcpt to:<x@y>\r\n")
            took = time.monotonic() - start
        assert b"451 temporary reverse DNS lookup error (#4.4.3)\r\n" in r.out
        assert b"rhostcheck: warning: unable to confirm the name of 127.0.0.8: timeout\n" in r.err
        assert took < 2 + 1.5  # each lookup with its own limit: 3.8 s and more

    def test_dns_timeout_with_c_is_451(self, dns):
        """-c makes a failed lookup a 451, never a 5xx, even with -b."""
        r = run_prog(["rhostcheck", "-b", "-c", "-h", "-T", "0.5", "-S", dns.address, "echo", "ran"],
                     {"TCPREMOTEIP": "127.0.0.6"}, b"rcpt to:<x@y>\r\n")
        assert b"451 temporary reverse DNS lookup error (#4.4.3)\r\n" in r.out

    @pytest.mark.parametrize(
        ("ip", "out", "err"),
        [("127.0.0.4", b"553 bad reverse DNS: 127.0.0.4 has no forward-confirmed name (#5.7.25)\r\n",
          b"why=nordns"),
         ("127.0.0.3", b"553 bad reverse DNS: 127.0.0.3 has no forward-confirmed name (#5.7.25)\r\n",
          b"why=nordns"),
         ("127.0.0.6", b"ran\n", b"warning: unable to confirm the name of 127.0.0.6: timeout"),
         ("127.0.0.2", b"ran good.example\n", b"pass host=good.example")],
    )
    def test_b_without_a_name_looks_it_up_before_a_553(self, dns, ip, out, err):
        """tcpserver -p leaves no name when its lookup failed too: -b asks again, 553 only for no name."""
        r = run_prog(["rhostcheck", "-b", "-T", "0.5", "-S", dns.address,
                      "sh", "-c", "echo ran $TCPREMOTEHOST"],
                     {"TCPREMOTEIP": ip}, b"rcpt to:<x@y>\r\nquit\r\n")
        assert out in r.out and err in r.err, r
        assert b"\r\n5" not in r.out or b"why=nordns" in r.err

    def test_b_with_a_name_or_in_mark_mode_asks_nothing(self, dns):
        """A name from tcpserver, or -m, needs no lookup of our own."""
        asked = len(dns.questions)
        for env, argv in [({"TCPREMOTEHOST": "mx.example"}, ["-b"]), ({}, ["-b", "-m"])]:
            r = run_prog(["rhostcheck"] + argv + ["-S", dns.address, "echo", "ran"],
                         dict({"TCPREMOTEIP": "127.0.0.4"}, **env))
            assert r.out == b"ran\n"
        assert len(dns.questions) == asked


def send(server, source):
    """Send one message from source; return the reply code to RCPT."""
    with smtp_from(server.host, server.port, source) as s:
        s.ehlo("client.example")
        s.mail("a@example.org")
        code, _ = s.rcpt("b@example.com")
        if code == 250:
            s.data(b"Subject: t\r\n\r\nhello\r\n")
        return code


@pytest.fixture(scope="module")
def dns53(dns):
    """The same records on a random 127.53.x.y port 53, where tcpserver -p asks."""
    for _ in range(10):
        host = "127.53.%d.%d" % (random.randint(1, 254), random.randint(1, 254))
        try:
            server = DNSServer(dns.records, dns.behaviour, host=host, port=53)
        except OSError:
            continue
        break
    else:
        pytest.fail("no free 127.53.x.y:53")
    with server:
        yield server


@pytest.mark.e2e
class TestEndToEnd:
    """Real tcpserver; clients from different 127.x.y.z addresses."""

    @pytest.mark.parametrize(
        ("source", "code"),
        [("127.0.0.2", 250), ("127.0.0.3", 451), ("127.0.0.4", 451), ("127.0.0.5", 451)],
    )
    def test_classic_mode_behind_tcpserver_p(self, tcpserver, dns53, tmp_path, source, code):
        """tcpserver -p confirms the name; rhostcheck -g refuses no name, a liar and a generic name."""
        maildir = tmp_path / "mail"
        maildir.mkdir()
        server = tcpserver(["rhostcheck", "-g"] + sink_cmd(maildir),
                           env={"DNSCACHEIP": dns53.host}, options=("-p",))
        assert send(server, source) == code
        assert len(read_maildir(maildir)) == (code == 250)

    @pytest.mark.parametrize(
        ("source", "code", "suspect"),
        [("127.0.0.2", 250, None), ("127.0.0.3", 250, "rhostcheck:nordns"), ("127.0.0.5", 250, "rhostcheck:dynamic"),
         ("127.0.0.7", 250, None)],
    )
    def test_own_lookups_behind_tcpserver_H_mark_mode(self, tcpserver, dns, tmp_path, source, code, suspect):
        """With tcpserver -H, rhostcheck -h -g -m marks suspects and everyone is delivered."""
        maildir = tmp_path / "mail"
        maildir.mkdir()
        rules = "127.0.0.7:allow,RHOSTCHECK=\"\"\n:allow\n"
        server = tcpserver(["rhostcheck", "-h", "-g", "-m", "-S", dns.address] + sink_cmd(maildir),
                           rules_text=rules, options=("-H",))
        assert send(server, source) == code
        (message,) = read_maildir(maildir)
        if suspect:
            assert b"X-Sink-Env: QTOOLS_SUSPECT=" + suspect.encode() + b"\r\n" in message
        else:
            assert b"QTOOLS_SUSPECT" not in message
        if source == "127.0.0.2":  # the name rhostcheck confirmed is handed on
            assert b"X-Sink-Env: TCPREMOTEHOST=good.example\r\n" in message
