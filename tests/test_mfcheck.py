# SPDX-License-Identifier: ISC
"""Tests for `qtools.mfcheck` and its parts: HELO tests, pattern lists, the sender domain's DNS."""

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import fake_resolver, make_client, read_maildir, run_prog, sink_cmd
from dnsserver import DNSServer
from qtools.address import read
from qtools import core, helocheck, mailcheck, mfcheck, patterns, proxy, senderdns
from qtools.resolver import Answer

CLIENT = make_client("192.0.2.7")
OWN = ({"mx.example.net"}, {core.parse_ip("198.51.100.1")[1]})
ALL_HELO = set(helocheck.TESTS)


class TestHelo:
    """Tests for `helocheck.check`."""

    @pytest.mark.parametrize(
        ("helo", "expected"),
        [
            ("mail.example.org", None),
            ("Mail.Example.ORG.", None),
            ("[192.0.2.7]", None),
            ("[192.0.2.8]", ("literal", "[192.0.2.8]")),
            ("192.0.2.8", ("literal", "192.0.2.8")),
            ("192.0.2.7", ("fqdn", "192.0.2.7")),
            ("[IPv6:2001:db8::1]", ("literal", "[ipv6:2001:db8::1]")),
            ("localhost", ("fqdn", "localhost")),
            ("desktop-7x", ("fqdn", "desktop-7x")),
            ("a..example", ("fqdn", "a..example")),
            ("-bad.example", ("fqdn", "-bad.example")),
            ("under_score.example", ("fqdn", "under_score.example")),
            ("", ("fqdn", "")),
            ("mx.example.net", ("self", "mx.example.net")),
            ("[198.51.100.1]", ("self", "[198.51.100.1]")),
            ("dsl-1-2-3.pool.example", ("pattern", ".pool.example")),
            ("spammer.example", ("pattern", "spammer.example")),
            ("host123.rx.example", ("pattern", "/^host[0-9]+\\.")),
        ],
    )
    def test_table(self, helo, expected):
        """Each HELO test catches its kind of name; a literal of the client's own address passes."""
        listed = patterns.parse([".pool.example", "spammer.example", "/^host[0-9]+\\."], "x", "t")
        assert helocheck.check(helo, CLIENT, ALL_HELO, OWN[0], OWN[1], listed) == expected

    def test_switched_off(self):
        """A test left out of the list does not run."""
        assert helocheck.check("localhost", CLIENT, {"literal", "self"}) is None
        assert helocheck.check("[192.0.2.8]", CLIENT, {"fqdn"}) is None


class TestPatterns:
    """Tests for `patterns`: badmailfrom's entries and qregex-style expressions."""

    LIST = patterns.parse(["# comment", "", "Joe@Example.COM", "@spam.example", ".bulk.example",
                           "/^[0-9]+@", "  bad@x.example  "], "bad.txt", "mfcheck")

    @pytest.mark.parametrize(
        ("address", "expected"),
        [
            ("joe@example.com", "joe@example.com"),
            ("ann@example.com", None),
            ("any@spam.example", "@spam.example"),
            ("any@sub.spam.example", None),
            ("x@a.bulk.example", ".bulk.example"),
            ("12345@example.org", "/^[0-9]+@"),
            ("bad@x.example", "bad@x.example"),
            ("", None),
        ],
    )
    def test_sender(self, address, expected):
        """Exact addresses, @domain, .suffix and /regex entries match as documented."""
        assert self.LIST.sender(address) == expected

    def test_bad_regex_warns_and_is_skipped(self, capfd):
        """A broken expression names file:line and the rest of the list still works."""
        patterns.parse(["/(["], "bad.txt", "mfcheck")
        assert capfd.readouterr().err.startswith("mfcheck: warning: bad.txt:1: bad regular expression: ")

    def test_missing_file_is_empty(self, tmp_path, capfd):
        """An unreadable list warns and refuses nobody."""
        assert not patterns.load(str(tmp_path / "none"), "mfcheck")
        assert "mfcheck: warning: unable to read " in capfd.readouterr().err


def config(**values):
    result = mfcheck.Config()
    result.own_names, result.own_ips = OWN
    for name, value in values.items():
        setattr(result, name, value)
    return result


MX = {("example.org", "MX"): Answer([(10, "mx.example.org")])}
A_ONLY = {("aonly.example", "A"): Answer(["192.0.2.50"])}
NULL = {("null.example", "MX"): Answer([(0, "")]), ("null.example", "A"): Answer(["192.0.2.9"])}
FAILS = {("broken.example", "MX"): Answer(error="SERVFAIL from 127.0.0.1")}
HALF = {("half.example", "AAAA"): Answer(error="timeout")}
TABLE = {**MX, **A_ONLY, **NULL, **FAILS, **HALF}


def verdict(sender, helo="mail.example.org", table=TABLE, **values):
    return mfcheck.decide(sender, helo, CLIENT, config(**values), fake_resolver(table))


def why(v):
    return dict(v.why).get("why")


class TestDecide:
    """Tests for `mfcheck.decide` with an injected resolver."""

    @pytest.mark.parametrize(
        ("sender", "action", "code", "reason"),
        [
            ("joe@example.org", "pass", None, None),
            ("joe@aonly.example", "pass", None, None),
            ("joe@null.example", "refuse", 550, "nullmx"),
            ("joe@nowhere.example", "refuse", 553, "nodomain"),
            ("joe@broken.example", "refuse", 451, "dnsfail"),
            ("joe@half.example", "refuse", 451, "dnsfail"),
            ("joe", "refuse", 553, "nodomain"),
            ("joe@localhost", "refuse", 553, "nodomain"),
            ("joe@[192.0.2.1]", "pass", None, None),
            ("", "pass", None, None),
        ],
    )
    def test_sender_domain(self, sender, action, code, reason):
        """MX, or A/AAAA without MX; null MX, NXDOMAIN 5xx; DNS failure 451; <> always allowed."""
        got = verdict(sender)
        assert (got.action, got.code, why(got)) == (action, code, reason)

    def test_questions_in_one_batch(self):
        """MX, A, AAAA, every RHSBL name and the SPF record are asked at once."""
        resolve = fake_resolver(TABLE)
        mfcheck.decide("a@x.example.org", "mail.example.org", CLIENT,
                       config(lists=[("rhs.test", None, 1)], spf=1), resolve)
        assert resolve.asked[:7] == [
            ("x.example.org", "MX"), ("x.example.org", "A"), ("x.example.org", "AAAA"),
            ("x.example.org.rhs.test", "A"), ("example.org.rhs.test", "A"),
            ("x.example.org", "TXT")]

    def test_spf_reuses_the_batch(self):
        """SPF's mx mechanism takes the MX answer of the first batch: it is asked once."""
        table = {("m.example", "MX"): Answer([(10, "mx.m.example")]),
                 ("m.example", "TXT"): Answer([b"v=spf1 mx -all"]),
                 ("mx.m.example", "A"): Answer(["192.0.2.7"])}
        resolve = fake_resolver(table)
        got = mfcheck.decide("a@m.example", "mail.example.org", CLIENT, config(spf=3), resolve)
        assert dict(got.why)["spf"] == "pass"
        assert resolve.asked.count(("m.example", "MX")) == 1

    def test_helo_refusal(self):
        """A bad HELO refuses the MAIL with the HELO's reply."""
        got = verdict("joe@example.org", helo="[10.0.0.1]")
        assert got.reply == "550 sorry, your HELO is an address that is not yours (#5.7.1)"
        assert why(got) == "heloliteral"

    def test_badmailfrom(self):
        """A listed sender is a 553 and no DNS question is asked."""
        resolve = fake_resolver(TABLE)
        got = mfcheck.decide("joe@example.org", "mail.example.org", CLIENT,
                             config(patterns=patterns.parse(["@example.org"], "f", "t")), resolve)
        assert got.reply == mfcheck.BADMAILFROM
        assert dict(got.why)["entry"] == "@example.org" and resolve.asked == []

    def test_permanent_beats_temporary(self):
        """A 5xx from one test wins over a 451 from another."""
        got = verdict("joe@broken.example", helo="localhost")
        assert (got.code, why(got)) == (550, "helofqdn")

    def test_marks_instead(self):
        """Tests told to mark give a mark verdict with their tags."""
        got = verdict("joe@nowhere.example", helo="localhost", mark={"helo", "dns"})
        assert got.action == "mark"
        assert dict(got.why)["tags"] == "mfcheck:helo,mfcheck:dns"

    def test_whitelisted_skips_soft_tests(self):
        """WHITELISTED skips HELO, DNS and SPF, not the admin's own pattern list."""
        resolve = fake_resolver(TABLE)
        cfg = config(patterns=patterns.parse(["bad@x.example"], "f", "t"), spf=6)
        assert mfcheck.decide("joe@nowhere.example", "localhost", CLIENT, cfg, resolve,
                              whitelisted=True).action == "pass"
        assert mfcheck.decide("bad@x.example", "localhost", CLIENT, cfg, resolve,
                              whitelisted=True).reply == mfcheck.BADMAILFROM
        assert resolve.asked == []

    @pytest.mark.parametrize(
        ("answers", "threshold", "action"),
        [
            ({("example.org.rhs.test", "A"): Answer(["127.0.0.2"])}, 1, "refuse"),
            ({("sub.example.org.rhs.test", "A"): Answer(["127.0.0.2"])}, 1, "refuse"),
            ({("example.org.rhs.test", "A"): Answer(["127.0.0.2"])}, 2, "pass"),
            ({("example.org.rhs.test", "A"): Answer(["127.0.0.9"])}, 1, "pass"),
            ({("example.org.rhs.test", "A"): Answer(error="timeout")}, 1, "pass"),
        ],
    )
    def test_rhsbl(self, answers, threshold, action):
        """The domain and its parents are looked up; return codes, weights and the score count."""
        table = {**TABLE, ("sub.example.org", "MX"): Answer([(5, "mx.example.org")]), **answers}
        got = mfcheck.decide("a@sub.example.org", "mail.example.org", CLIENT,
                             config(lists=[("rhs.test", [{127}, {0}, {0}, {2}], 1)],
                                    threshold=threshold),
                             fake_resolver(table))
        assert got.action == action
        if action == "refuse":
            assert got.reply == ("553 sorry, your envelope sender domain sub.example.org is "
                                 "listed by rhs.test (#5.7.1)")

    def test_client_words_are_cleaned_in_replies(self):
        """A control character in the sender's domain never reaches the reply raw."""
        name = "a\rb.example"
        table = {(name, "MX"): Answer([(10, "mx.example.org")]),
                 (name + ".rhs.test", "A"): Answer(["127.0.0.2"]),
                 (name, "TXT"): Answer([b"v=spf1 -all"])}
        for values in ({"lists": [("rhs.test", None, 1)]}, {"spf": 3}):
            got = mfcheck.decide("x@" + name, "mail.example.org", CLIENT, config(**values),
                                 fake_resolver(table))
            assert got.action == "refuse" and "a?b.example" in got.text and "\r" not in got.text

    SPF = {("spf.example", "MX"): Answer([(10, "mx.example.org")]),
           ("spf.example", "TXT"): Answer([b"v=spf1 ip4:192.0.2.7 -all exp=e.spf.example"]),
           ("e.spf.example", "TXT"): Answer([b"%{i} is not ours"]),
           ("soft.example", "MX"): Answer([(10, "mx.example.org")]),
           ("soft.example", "TXT"): Answer([b"v=spf1 ~all"]),
           ("temp.example", "MX"): Answer([(10, "mx.example.org")]),
           ("temp.example", "TXT"): Answer(error="timeout"),
           ("helo.example", "TXT"): Answer([b"v=spf1 -all"])}

    @pytest.mark.parametrize(
        ("sender", "client", "level", "reply"),
        [
            ("a@spf.example", "192.0.2.7", 6, None),
            ("a@spf.example", "192.0.2.8", 2, None),
            ("a@spf.example", "192.0.2.8", 3, "550 192.0.2.8 is not ours (#5.7.23)"),
            ("a@soft.example", "192.0.2.8", 3, None),
            ("a@soft.example", "192.0.2.8", 4,
             "550 sorry, SPF says softfail for soft.example from 192.0.2.8 (#5.7.23)"),
            ("a@temp.example", "192.0.2.8", 1, None),
            ("a@temp.example", "192.0.2.8", 2,
             "451 temporary SPF error for temp.example, try again later (#4.7.24)"),
            ("a@example.org", "192.0.2.8", 5, None),
            ("a@example.org", "192.0.2.8", 6,
             "550 sorry, SPF says none for example.org from 192.0.2.8 (#5.7.23)"),
            ("", "192.0.2.8", 3, "550 sorry, SPF says fail for helo.example from 192.0.2.8 (#5.7.23)"),
        ],
    )
    def test_spf_levels(self, sender, client, level, reply):
        """SPFBEHAVIOR's levels: 1 logs, 2 defers temperror, 3 fail, 4 softfail, 6 all but pass."""
        table = {**TABLE, **self.SPF}
        got = mfcheck.decide(sender, "helo.example", make_client(client), config(spf=level),
                             fake_resolver(table))
        assert (got.reply if got.action == "refuse" else None) == reply
        assert "spf" in dict(got.why)


def session(environ=None, helo=b"mail.example.org"):
    s = proxy.Session(CLIENT, dict(environ or {}), logger=lambda *args: session.logs.append(args))
    s.helo = helo
    return s


def checker(table=TABLE, **values):
    return mailcheck.MailCheck(config(**dict({"protocol": set()}, **values)), lambda: fake_resolver(table))


def mail(check, s, line, reply=b"250 ok\r\n"):
    """Pass MAIL through check and hand it the backend's reply, as the proxy does."""
    got = check.command(s, b"mail", read(line))
    if got is None:
        check.reply(s, b"mail", [reply])
    return got


class TestFilter:
    """Tests for the proxy filter `mailcheck.MailCheck`."""

    def setup_method(self):
        session.logs = []

    def test_refusal_waits_for_rcpt_and_spares_postmaster(self):
        """A refused sender still reaches postmaster@ and abuse@; others hear the 553."""
        check, s = checker(), session()
        assert mail(check, s, b"MAIL FROM:<a@nowhere.example>") is None
        assert check.command(s, b"rcpt", read(b"RCPT TO:<joe@example.net>")) == (mfcheck.NO_DOMAIN + "\r\n").encode()
        assert check.command(s, b"rcpt", read(b"RCPT TO:<Postmaster@example.net>")) is None
        assert check.command(s, b"rcpt", read(b"RCPT TO:<abuse@other.example>")) is None
        assert [log[2] for log in session.logs] == [mfcheck.NO_DOMAIN, "pass", "pass"]
        assert session.logs[0][3] == (("from", "a@nowhere.example"), ("helo", "mail.example.org"), ("why", "nodomain"))

    def test_without_exemptions_refuses_at_mail(self):
        """With an empty exemption list the MAIL itself is refused."""
        check = checker(exempt=[])
        assert check.command(session(), b"mail", read(b"MAIL FROM:<a@nowhere.example>")) == (mfcheck.NO_DOMAIN + "\r\n").encode()

    def test_rset_forgets(self):
        """After RSET the next transaction starts clean."""
        check, s = checker(), session()
        mail(check, s, b"MAIL FROM:<a@nowhere.example>")
        check.command(s, b"rset", read(b"RSET"))
        assert check.command(s, b"rcpt", read(b"RCPT TO:<joe@example.net>")) is None

    def test_caps(self):
        """The cap per message, then the cap per connection, answer 452."""
        check, s = checker(max_rcpt=2, max_rcpt_conn=3), session()
        mail(check, s, b"MAIL FROM:<a@example.org>")
        got = [check.command(s, b"rcpt", read(b"RCPT TO:<r%d@example.net>" % n)) for n in range(3)]
        assert got == [None, None, b"452 too many recipients (#4.5.3)\r\n"]
        mail(check, s, b"MAIL FROM:<a@example.org>")
        got = [check.command(s, b"rcpt", read(b"RCPT TO:<s%d@example.net>" % n)) for n in range(2)]
        assert got == [None, b"452 too many recipients (#4.5.3)\r\n"]
        assert session.logs[-1][3] == (("rcpt", "s1@example.net"), ("why", "maxrcptconn"), ("count", 3))

    def test_a_mail_the_backend_refuses_keeps_the_refusal_and_the_count(self):
        """qmail-smtpd answers 555 to a MAIL it cannot read and keeps the transaction: so does mfcheck."""
        check, s = checker(max_rcpt=2), session()
        mail(check, s, b"MAIL FROM:<a@nowhere.example>")
        assert check.command(s, b"rcpt", read(b"RCPT TO:<postmaster@example.net>")) is None
        mail(check, s, b"MAIL FROM:<" + b"a" * 950 + b"@example.org>", b"555 syntax error (#5.5.4)\r\n")
        assert check.command(s, b"rcpt", read(b"RCPT TO:<joe@example.net>")) == (mfcheck.NO_DOMAIN + "\r\n").encode()
        assert check.command(s, b"rcpt", read(b"RCPT TO:<abuse@example.net>")) is None
        assert check.command(s, b"rcpt", read(b"RCPT TO:<postmaster@other.example>")) == b"452 too many recipients (#4.5.3)\r\n"

    def test_a_mail_a_later_filter_refuses_changes_nothing(self):
        """A MAIL refused by a filter after mfcheck never reaches qmail-smtpd: the transaction before stands."""
        check, s = checker(), session()
        mail(check, s, b"MAIL FROM:<a@nowhere.example>")
        assert check.command(s, b"mail", read(b"MAIL FROM:<b@example.org>")) is None  # no reply comes
        assert check.command(s, b"rcpt", read(b"RCPT TO:<joe@example.net>")) == (mfcheck.NO_DOMAIN + "\r\n").encode()

    def test_authenticated_steps_aside(self):
        """After SMTP AUTH nothing is checked."""
        check, s = checker(max_rcpt=1), session()
        s.authenticated = True
        assert check.command(s, b"mail", read(b"MAIL FROM:<a@nowhere.example>")) is None
        assert check.command(s, b"rcpt", read(b"RCPT TO:<x@y.example>")) is None
        assert check.command(s, b"rcpt", read(b"RCPT TO:<z@y.example>")) is None
        assert session.logs == []

    def test_mark_sets_suspect_for_later_filters(self):
        """A marking test adds its tag to the session's $QTOOLS_SUSPECT."""
        check, s = checker(mark={"dns"}), session({"QTOOLS_SUSPECT": "rblcheck:x"})
        assert check.command(s, b"mail", read(b"MAIL FROM:<a@nowhere.example>")) is None
        assert s.environ["QTOOLS_SUSPECT"] == "rblcheck:x mfcheck:dns"
        assert session.logs[0][2] == "mark"

    @pytest.mark.parametrize(
        ("steps", "expected"),
        [
            ("<greet >ehlo <ehlo >mail", []),
            (">ehlo <greet >mail", [("pipelining", "greeting")]),
            ("<greet >ehlo >mail", [("pipelining", "ehlo")]),
            ("<greet >helo <helo >noop >helo >mail", [("pipelining", "helo")]),
            ("<greet >get", [("nonsmtp", "get")]),
            ("<greet >connect >ehlo >post", [("nonsmtp", "connect")]),
            ("<greet >ehlo <ehlo >mail| >rcpt|", [("barelf", "mail")]),
            (">ehlo| <greet >mail|", [("pipelining", "greeting"), ("barelf", "ehlo")]),
            ("<greet >get|", [("nonsmtp", "get"), ("barelf", "get")]),
        ],
    )
    def test_protocol(self, steps, expected):
        """A command before the greeting's or HELO's reply arrived, a non-SMTP verb, a bare LF; once each.

        ">verb" is a command from the client ("|" after it: ended by a bare
        LF), "<verb" the backend's reply to it arriving ("<greet" the greeting).
        """
        watch, found = helocheck.Protocol(helocheck.PROTOCOL_TESTS), []
        for step in steps.split():
            verb = b"" if step == "<greet" else step[1:].rstrip("|").encode()
            if step[0] == "<":
                watch.reply(verb)
            else:
                found += watch.command(verb, step.endswith("|"))
        assert found == expected

    def test_barelf_switched_off(self):
        """A test not named is not run."""
        watch = helocheck.Protocol({"pipelining", "nonsmtp"})
        watch.reply(b"")
        assert watch.command(b"helo", barelf=True) == []

    @pytest.mark.parametrize(("refuse", "expected"), [(set(), None), ({"barelf"}, b"421")])
    def test_barelf_filter(self, refuse, expected):
        """The filter reads the proxy's Command: a bare LF marks, or refuses with 421 when told to."""
        check, s = checker(protocol={"barelf"}, protocol_refuse=refuse), session()
        got = check.command(s, b"noop", read(b"NOOP", barelf=True))
        assert (got or b"")[:3] == (expected or b"")
        assert check.command(s, b"noop", read(b"NOOP", barelf=True)) is None  # once a connection
        if expected is None:
            assert s.environ["QTOOLS_SUSPECT"] == "mfcheck:barelf"
            assert session.logs[0][2:] == ("mark", (("why", "barelf"), ("detail", "noop")))
        else:
            assert session.logs[0][2] == mfcheck.PROTOCOL
        assert check.command(session(), b"noop", read(b"NOOP")) is None

    def test_no_helo_is_an_empty_name(self):
        """A client that never said HELO fails the fqdn test."""
        check, s = checker(), session(helo=None)
        check.command(s, b"mail", read(b"MAIL FROM:<a@example.org>"))
        assert session.logs[0][2] == mfcheck.HELO_REFUSED["fqdn"]

    SPF_TABLE = {**TABLE, ("example.org", "TXT"): Answer([b"v=spf1 ip4:192.0.2.0/24 -all"]),
                 ("strict.example", "MX"): Answer([(10, "mx.example.org")]),
                 ("strict.example", "TXT"): Answer([b"v=spf1 -all"])}

    def test_received_spf(self):
        """With SPF on, the result is told in a Received-SPF field for the message."""
        check, s = checker(self.SPF_TABLE, spf=1, receiver="mx.example.net"), session()
        assert check.command(s, b"mail", read(b"MAIL FROM:<a@example.org>")) is None
        assert s.adding == [b"Received-SPF: pass (mx.example.net: domain of a@example.org designates\r\n"
                            b" 192.0.2.7 as permitted sender) receiver=mx.example.net; client-ip=192.0.2.7;\r\n"
                            b"  envelope-from=\"a@example.org\"; helo=mail.example.org; identity=mailfrom;\r\n"]

    @pytest.mark.parametrize(
        ("values", "sender", "expected"),
        [
            ({"spf": 0}, b"a@example.org", None),  # SPF off: no result, no field
            ({"spf": 1}, b"a@strict.example", b"fail"),  # level 1 only tells
            ({"spf": 3}, b"a@strict.example", b"fail"),  # refused, but postmaster@ still gets it
            ({"spf": 3, "exempt": []}, b"a@strict.example", None),  # refused at MAIL: no message
            ({"spf": 1}, b"a@nowhere.example", b"none"),  # asked with the MX: told to postmaster@
            ({"spf": 1, "patterns": patterns.parse(["@strict.example"], "f", "t")},
             b"a@strict.example", None),  # refused by a pattern first: SPF never asked
            ({"spf": 1}, b"", b"none"),  # <>: the HELO name's result
        ],
    )
    def test_received_spf_when_computed(self, values, sender, expected):
        """A field for every SPF result computed, when the MAIL goes on."""
        check, s = checker(self.SPF_TABLE, **values), session()
        check.command(s, b"mail", read(b"MAIL FROM:<%s>" % sender))
        got = [field.split(b" ")[1] for field in s.adding]
        assert got == ([expected] if expected else [])
        assert all(field.startswith(b"Received-SPF: ") for field in s.adding)

    def test_backend_refusal_clears(self):
        """A MAIL the backend refuses leaves nothing owed."""
        check, s = checker(), session()
        check.command(s, b"mail", read(b"MAIL FROM:<a@nowhere.example>"))
        check.reply(s, b"mail", [b"553 no\r\n"])
        assert check.pending is None


class TestSenderDNS:
    """Tests for `senderdns`."""

    @pytest.mark.parametrize(
        ("mx", "a", "aaaa", "expected"),
        [
            (Answer([(10, "mx.example")]), Answer(), Answer(), None),
            (Answer([(0, "")]), Answer(["192.0.2.1"]), Answer(), "nullmx"),
            (Answer(), Answer(), Answer(["2001:db8::1"]), None),
            (Answer(), Answer(), Answer(), "nodomain"),
            (Answer(error="x"), Answer(["192.0.2.1"]), Answer(), "dnsfail"),
            (Answer(), Answer(error="x"), Answer(), "dnsfail"),
        ],
    )
    def test_mx_why(self, mx, a, aaaa, expected):
        """RFC 5321 section 5.1 and RFC 7505, with a failure never read as absence."""
        assert senderdns.mx_why(mx, a, aaaa) == expected


# --- the installed program ---------------------------------------------------

RECORDS = {
    "example.org": [("MX", "10 mx.example.org.")],
    "aonly.example": [("A", "192.0.2.50")],
    "null.example": [("MX", "0 .")],
    "spf.example": [("MX", "10 mx.example.org."), ("TXT", '"v=spf1 ip4:192.0.2.0/24 -all"')],
}
BEHAVIOUR = {"broken.example": "servfail", "slow.example": "silent"}


@pytest.fixture(scope="module")
def dns():
    with DNSServer(RECORDS, behaviour=BEHAVIOUR) as server:
        yield server


@pytest.fixture
def maildir(tmp_path):
    path = tmp_path / "mail"
    path.mkdir()
    return path


def codes(out):
    return [line[:3] for line in out.split(b"\r\n") if line[3:4] == b" "]


def without_sink_lines(message):
    """Return a stored message without the X-Sink-* lines the demo sink writes on top."""
    lines = message.split(b"\r\n")
    while lines and lines[0].startswith(b"X-Sink-"):
        lines.pop(0)
    return b"\r\n".join(lines)


def transcript(sender, rcpt=b"joe@example.net", helo=b"mail.example.org"):
    return (b"EHLO %s\r\nMAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\nSubject: t\r\n\r\nhi\r\n.\r\nQUIT\r\n"
            % (helo, sender, rcpt))


class TestProgram:
    """Transcripts of the installed mfcheck with the demo sink and the test DNS server."""

    def run(self, maildir, dns, stdin, env=None, options=()):
        # The transcripts are pipelined: the protocol tests have their own.
        env = dict({"TCPREMOTEIP": "192.0.2.7", "QTOOLS_RESOLVER": dns.address,
                    "MFCHECK_TIMEOUT": "1", "MFCHECK_PROTOCOL": ""}, **(env or {}))
        return run_prog(["mfcheck"] + list(options) + sink_cmd(maildir), env, stdin)

    @pytest.mark.parametrize(
        ("sender", "code"),
        [
            (b"a@example.org", b"250"),
            (b"a@aonly.example", b"250"),
            (b"a@null.example", b"550"),
            (b"a@nowhere.example", b"553"),
            (b"a@broken.example", b"451"),
            (b"a@slow.example", b"451"),
            (b"", b"250"),
        ],
    )
    def test_sender_domains(self, maildir, dns, sender, code):
        """MX, A only, null MX, NXDOMAIN, SERVFAIL and a timeout, through the real resolver."""
        result = self.run(maildir, dns, transcript(sender))
        assert codes(result.out)[2:4] == [b"250", code], result
        assert len(read_maildir(maildir)) == (code == b"250")
        decisions = [line for line in result.err.split(b"\n") if line.startswith(b"mfcheck: 192.0.2.7 pid x: ")]
        assert len(decisions) == 2 and decisions[1].startswith(b"mfcheck: 192.0.2.7 pid x: end "), result.err

    def test_log_line(self, maildir, dns):
        """One decision line per MAIL, in the core's key=value format."""
        result = self.run(maildir, dns, transcript(b"a@nowhere.example"))
        assert result.err.startswith(
            b"mfcheck: 192.0.2.7 pid x: 553 sorry, your envelope sender domain must exist (#5.1.8)"
            b" from=a@nowhere.example helo=mail.example.org why=nodomain\n")

    def test_postmaster_still_reached(self, maildir, dns):
        """A refused sender's message to postmaster@ goes through (RFC 5321 section 4.5.1)."""
        result = self.run(maildir, dns, transcript(b"a@nowhere.example", b"postmaster@example.net"))
        assert codes(result.out)[2:5] == [b"250", b"250", b"354"]
        assert b"pass rcpt=postmaster@example.net why=exempt entry=postmaster@" in result.err

    def test_spf_fail_refuses(self, maildir, dns):
        """SPFBEHAVIOR=3 refuses a client the sender's record does not allow."""
        result = self.run(maildir, dns, transcript(b"a@spf.example"),
                          {"TCPREMOTEIP": "198.51.100.7", "SPFBEHAVIOR": "3"})
        assert b"550 sorry, SPF says fail for spf.example from 198.51.100.7 (#5.7.23)\r\n" in result.out
        result = self.run(maildir, dns, transcript(b"a@spf.example"), {"SPFBEHAVIOR": "3"})
        assert codes(result.out)[3] == b"250" and b"spf=pass" in result.err

    @pytest.mark.parametrize(("level", "sender", "expected"),
                             [("1", b"a@spf.example", b"pass"), ("6", b"a@spf.example", b"pass"),
                              ("1", b"a@example.org", b"none"), ("0", b"a@spf.example", None)])
    def test_received_spf_heads_the_message(self, maildir, dns, level, sender, expected):
        """With SPF on, the stored message begins with the Received-SPF field of its result."""
        result = self.run(maildir, dns, transcript(sender),
                          {"SPFBEHAVIOR": level, "QTOOLS_HOSTNAME": "mx.example.net"})
        (message,) = read_maildir(maildir)
        head = without_sink_lines(message)
        if expected is None:
            assert head.startswith(b"Subject: t\r\n") and b"Received-SPF" not in message
        else:
            assert head.startswith(b"Received-SPF: %s (mx.example.net: domain of %s " % (expected, sender))
            assert head.count(b"Received-SPF") == 1 and b"identity=mailfrom;\r\nSubject: t\r\n" in head
        assert (b"spf=" in result.err) == (expected is not None)

    def test_helo_per_client(self, maildir, dns):
        """$MFCHECK_HELO chooses the HELO tests per client; an empty one runs none."""
        result = self.run(maildir, dns, transcript(b"a@example.org", helo=b"localhost"))
        assert codes(result.out)[3] == b"550"
        result = self.run(maildir, dns, transcript(b"a@example.org", helo=b"localhost"),
                          {"MFCHECK_HELO": ""})
        assert codes(result.out)[3] == b"250"

    def test_trusted_skips_soft_tests(self, maildir, dns):
        """A client rblcheck trusted ($QTOOLS_TRUSTED) is spared the DNS and HELO tests."""
        result = self.run(maildir, dns, transcript(b"a@nowhere.example", helo=b"localhost"),
                          {"QTOOLS_TRUSTED": "rblcheck:al.test"})
        assert codes(result.out)[3:5] == [b"250", b"354"]

    def test_own_name(self, maildir, dns):
        """A client that says our own name in HELO is refused."""
        result = self.run(maildir, dns, transcript(b"a@example.org", helo=b"MX.Example.NET"),
                          {"QTOOLS_HOSTNAME": "mx.example.net"})
        assert b"550 sorry, your HELO is my own name (#5.7.1)\r\n" in result.out

    def test_badmailfrom_file(self, maildir, dns, tmp_path):
        """-b names the sender list; its entries refuse with 553."""
        listed = tmp_path / "badmailfrom"
        listed.write_text("@example.org\n")
        result = self.run(maildir, dns, transcript(b"a@example.org"), options=["-b", str(listed)])
        assert b"553 sorry, your envelope sender is in my badmailfrom list (#5.7.1)\r\n" in result.out

    @pytest.mark.parametrize(("env", "code"), [({"QTOOLS_MFCHECK": "-no"}, b"553"),
                                               ({"QTOOLS_MFCHECK": "later"}, b"451"),
                                               ({"QTOOLS_MFCHECK": ""}, b"250"),
                                               ({"RELAYCLIENT": ""}, b"250")])
    def test_override_and_relayclient(self, maildir, dns, env, code):
        """$QTOOLS_MFCHECK refuses with its text or skips; RELAYCLIENT steps aside."""
        result = self.run(maildir, dns, transcript(b"a@nowhere.example"), env)
        assert codes(result.out)[3] == code

    def test_recipient_cap(self, maildir, dns):
        """-r caps recipients per message; the message goes to those accepted."""
        stdin = (b"EHLO mail.example.org\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<a@x.example>\r\n"
                 b"RCPT TO:<b@x.example>\r\nDATA\r\nSubject: t\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        result = self.run(maildir, dns, stdin, options=["-r", "1"])
        assert codes(result.out)[2:6] == [b"250", b"250", b"452", b"354"]
        (message,) = read_maildir(maildir)
        assert b"X-Sink-To: <a@x.example>" in message and b"b@x.example" not in message

    def test_pipelined_before_greeting_is_marked(self, maildir, dns):
        """A client that sends everything at once is marked by default, and still served."""
        result = self.run(maildir, dns, transcript(b"a@example.org"), {"MFCHECK_PROTOCOL": "pipelining"})
        assert b"mfcheck: 192.0.2.7 pid x: mark why=pipelining detail=greeting\n" in result.err
        assert codes(result.out)[3:5] == [b"250", b"354"]

    def test_pipelining_refused_when_told(self, maildir, dns):
        """With pipelining=refuse the client hears 421 and is disconnected."""
        result = self.run(maildir, dns, transcript(b"a@example.org"),
                          {"MFCHECK_PROTOCOL": "pipelining=refuse"})
        assert result.out.endswith(b"421 SMTP protocol violation, closing connection (#4.5.0)\r\n")
        assert read_maildir(maildir) == []

    @pytest.mark.parametrize(("spec", "delivered"), [("barelf", True), ("barelf=refuse", False),
                                                     ("pipelining,nonsmtp", True)])
    def test_bare_lf_command(self, maildir, dns, spec, delivered):
        """A command ended by a bare LF is marked (still served), or refused with 421; if the test runs."""
        stdin = transcript(b"a@example.org").replace(b"RCPT TO:<joe@example.net>\r\n",
                                                     b"RCPT TO:<joe@example.net>\n")
        result = self.run(maildir, dns, stdin, {"MFCHECK_PROTOCOL": spec})
        assert len(read_maildir(maildir)) == delivered, result
        if spec == "barelf":
            assert b"mfcheck: 192.0.2.7 pid x: mark why=barelf detail=rcpt\n" in result.err
            assert b"X-Sink-To: <joe@example.net>" in read_maildir(maildir)[0]
        elif not delivered:
            assert result.out.endswith(b"421 SMTP protocol violation, closing connection (#4.5.0)\r\n")
            assert b"421 SMTP protocol violation, closing connection (#4.5.0) why=barelf detail=rcpt" in result.err
        else:
            assert b"barelf" not in result.err

    @pytest.mark.parametrize(("spec", "expected"), [("nonsmtp", b"mark why=nonsmtp detail=get"),
                                                    ("nonsmtp=mark", b"mark why=nonsmtp detail=get"),
                                                    ("nonsmtp=refuse", b"421 SMTP protocol violation")])
    def test_non_smtp_command(self, maildir, dns, spec, expected):
        """An HTTP request is marked, or refused with 421."""
        result = self.run(maildir, dns, b"GET / HTTP/1.0\r\nQUIT\r\n",
                          {"MFCHECK_PROTOCOL": spec})
        assert expected in result.err

    @pytest.mark.parametrize(
        ("env", "err"),
        [
            ({"SPFBEHAVIOR": "9"}, b"mfcheck: fatal: invalid $SPFBEHAVIOR: 9\n"),
            ({"MFCHECK_MARK": "helo,bogus"}, b"mfcheck: fatal: invalid $MFCHECK_MARK: unknown test bogus\n"),
            ({"MFCHECK_PROTOCOL": "nonsmtp=drop"},
             b"mfcheck: fatal: invalid $MFCHECK_PROTOCOL: unknown test nonsmtp=drop\n"),
            ({"MFCHECK_RHSBL": "=x"}, b"mfcheck: fatal: invalid RHSBL list: =x\n"),
            ({"MFCHECK_MAXRCPT": "ten"}, b"mfcheck: fatal: invalid $MFCHECK_MAXRCPT: ten\n"),
            ({"MFCHECK_TIMEOUT": "0"}, b"mfcheck: fatal: invalid $MFCHECK_TIMEOUT: 0\n"),
            ({"QTOOLS_RESOLVER": "nonsense"},
             b"mfcheck: fatal: invalid resolver: invalid server address nonsense\n"),
        ],
    )
    def test_misconfiguration(self, maildir, dns, env, err):
        """Bad variables are permanent errors: exit 100, nothing said to the client."""
        result = self.run(maildir, dns, b"", env)
        assert (result.rc, result.out, result.err) == (100, b"", err)

    def test_bad_option_names_itself(self, maildir):
        """A bad option value names the option."""
        result = run_prog(["mfcheck", "-p", "7", "true"], {"TCPREMOTEIP": "192.0.2.7"})
        assert (result.rc, result.err) == (100, b"mfcheck: fatal: invalid -p: 7\n")

    def test_usage(self):
        """Without a program to run, mfcheck prints its usage."""
        result = run_prog(["mfcheck"], {"TCPREMOTEIP": "192.0.2.7"})
        assert result.rc == 100 and result.err == b"mfcheck: usage: %s\n" % mfcheck.USAGE.encode()


# --- end to end: tcpserver and swaks ----------------------------------------------

E2E_RECORDS = dict(RECORDS, **{
    "strict.example": [("MX", "10 mx.example.org."), ("TXT", '"v=spf1 ip4:192.0.2.0/24 -all"')],
    "1.0.0.127.wl.test": [("A", "127.0.10.2")],
    "loop.example": [("MX", "10 mx.example.org."), ("TXT", '"v=spf1 ip4:127.0.0.0/8 -all"')],
})


def swaks(server, sender, to="joe@example.net", helo="mail.example.org", *more):
    """Run swaks against server with this envelope sender and HELO; return its transcript."""
    argv = ["swaks", "--server", server.host, "--port", str(server.port), "--from", sender,
            "--to", to, "--helo", helo, "--timeout", "30"]
    done = subprocess.run(argv + list(more), capture_output=True, timeout=60)
    return done.stdout.decode("latin-1")


@pytest.mark.e2e
class TestEndToEnd:
    """mfcheck under the real tcpserver, asking the test DNS server, talked to by swaks."""

    @pytest.fixture
    def start(self, tcpserver, maildir):
        servers = []

        def start(env=None, rules_text=None, options=(), before=()):
            dns = DNSServer(E2E_RECORDS, behaviour=BEHAVIOUR)
            servers.append(dns)
            env = dict({"QTOOLS_RESOLVER": dns.address, "MFCHECK_TIMEOUT": "2"}, **(env or {}))
            return tcpserver(list(before) + ["mfcheck"] + list(options) + sink_cmd(maildir),
                             env=env, rules_text=rules_text)

        yield start
        for dns in servers:
            dns.close()

    def test_issue_example_is_refused(self, start, maildir):
        """HELO 1.2.3.4 with a sender at a domain that does not exist is no longer delivered."""
        server = start()
        out = swaks(server, "x@no-such-domain.invalid", helo="1.2.3.4")
        assert "<** 550 sorry, your HELO is an address that is not yours (#5.7.1)" in out, out
        assert read_maildir(maildir) == []
        out = swaks(server, "x@no-such-domain.invalid")
        assert "<** 553 sorry, your envelope sender domain must exist (#5.1.8)" in out, out
        assert ("mfcheck: 127.0.0.1 pid " in server.log()
                and "553 sorry, your envelope sender domain must exist (#5.1.8) "
                    "from=x@no-such-domain.invalid helo=mail.example.org why=nodomain" in server.log())

    def test_good_sender_delivered(self, start, maildir):
        """A sender whose domain has an MX, with a good HELO, is delivered."""
        server = start()
        out = swaks(server, "joe@example.org")
        assert "<-  250 " in out.split("DATA")[-1], out
        (message,) = read_maildir(maildir)
        assert b"X-Sink-To: <joe@example.net>" in message
        assert "why=pipelining" not in server.log()

    def test_swaks_pipelining_is_not_a_violation(self, start, maildir):
        """swaks --pipeline waits for the EHLO reply, then pipelines: no mark, no refusal."""
        server = start(env={"MFCHECK_PROTOCOL": "pipelining=refuse,nonsmtp=refuse"})
        out = swaks(server, "joe@example.org", "joe@example.net", "mail.example.org", "--pipeline")
        assert " 354 " in out and len(read_maildir(maildir)) == 1, out
        assert "pipelining" not in server.log().replace("250-PIPELINING", "")

    def test_postmaster_exempt(self, start, maildir):
        """The refused sender still reaches postmaster@."""
        server = start()
        out = swaks(server, "x@null.example", to="postmaster@example.net")
        assert " 354 " in out, out
        assert len(read_maildir(maildir)) == 1

    def test_spf_fail_with_level(self, start, maildir):
        """SPFBEHAVIOR=3 from tcp.smtp refuses a client the record does not allow."""
        server = start(rules_text='127.0.0.1:allow,SPFBEHAVIOR="3"\n:allow\n')
        out = swaks(server, "x@strict.example")
        assert "<** 550 sorry, SPF says fail for strict.example from 127.0.0.1 (#5.7.23)" in out, out
        assert "spf=fail why=spf" in server.log()

    def test_received_spf_with_swaks(self, start, maildir):
        """SPFBEHAVIOR=1 from tcp.smtp: each message swaks sends begins with its Received-SPF field."""
        server = start(rules_text='127.0.0.1:allow,SPFBEHAVIOR="1",QTOOLS_HOSTNAME="mx.example.net"\n')
        out = swaks(server, "x@loop.example")
        assert "<-  250 " in out.split("DATA")[-1], out
        out = swaks(server, "x@strict.example", "joe@example.net", "mail.example.org", "--pipeline")
        assert "<-  250 " in out.split("DATA")[-1], out
        first, second = [without_sink_lines(m) for m in read_maildir(maildir)]
        assert first.startswith(b"Received-SPF: pass (mx.example.net: domain of x@loop.example designates\r\n"
                                b" 127.0.0.1 as permitted sender) receiver=mx.example.net; client-ip=127.0.0.1;\r\n"
                                b'  envelope-from="x@loop.example"; helo=mail.example.org; identity=mailfrom;\r\n')
        assert second.startswith(b"Received-SPF: fail (mx.example.net: domain of x@strict.example does not")
        assert first.count(b"Received-SPF") == second.count(b"Received-SPF") == 1
        assert "spf=pass" in server.log() and "spf=fail" in server.log()

    def test_received_spf_over_tls(self, start, maildir, tmp_path):
        """Over STARTTLS: Received-SPF first, then the proxy's own Received line, then the message."""
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        server = start(env={"SPFBEHAVIOR": "1", "QTOOLS_HOSTNAME": "mx.example.net",
                            "QTOOLS_TLS_CERT": str(cert), "QTOOLS_TLS_KEY": str(key)})
        out = swaks(server, "x@loop.example", "joe@example.net", "mail.example.org", "--tls")
        assert "<~  250 " in out.split("DATA")[-1], out
        (message,) = read_maildir(maildir)
        head = without_sink_lines(message)
        assert head.startswith(b"Received-SPF: pass (mx.example.net: domain of x@loop.example designates")
        received = head.index(b"\r\nReceived: from unknown (HELO mail.example.org) ([127.0.0.1])\r\n"
                              b"  by mx.example.net (qtools) with ESMTPS; ")
        assert received < head.index(b"\r\nDate: ")

    def test_servfail_is_451(self, start, maildir):
        """A broken sender domain is deferred, never refused for good."""
        server = start()
        out = swaks(server, "x@broken.example")
        assert "<** 451 unable to look up your envelope sender domain" in out, out

    def test_recipient_cap_swaks(self, start, maildir):
        """At the per-message cap swaks hears 452 and the message goes to the others."""
        server = start(options=["-r", "2"])
        out = swaks(server, "joe@example.org", "a@example.net,b@example.net,c@example.net")
        assert "<** 452 too many recipients (#4.5.3)" in out, out
        (message,) = read_maildir(maildir)
        assert b"<a@example.net>" in message and b"<c@example.net>" not in message

    def test_trusted_by_rblcheck(self, start, maildir):
        """A client rblcheck -a lets through is trusted: mfcheck skips its HELO test, tarpit its delay."""
        chain = ["rblcheck", "-a", "wl.test"]
        server = start(before=chain, env={"TARPITCOUNT": "1", "TARPITDELAY": "20"},
                       options=["tarpit"])
        out = swaks(server, "joe@example.org", helo="localhost")
        assert " 354 " in out and len(read_maildir(maildir)) == 1, out
        log = server.log()
        assert "rblcheck: 127.0.0.1 pid " in log and "trust=rblcheck:wl.test" in log, log
        assert "tarpit:" not in log and "helofqdn" not in log, log
        server = start()
        out = swaks(server, "joe@example.org", helo="localhost")
        # tcpserver -l localhost makes "localhost" our own name too.
        assert "<** 550 sorry, your HELO is my own name (#5.7.1)" in out, out


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.one_of(st.none(), st.text(max_size=30)),
       st.sampled_from(["192.0.2.7", "2001:db8::7"]))
def test_any_sender_and_helo_get_a_clean_verdict(sender, helo, ip):
    """Whatever the client says, decide() gives a verdict; a reply is printable ASCII with one of our codes."""
    table = {**TABLE, (sender.lower().rpartition("@")[2], "TXT"): Answer(error="timeout")}
    got = mfcheck.decide(sender, helo, make_client(ip),
                         config(lists=[("rhs.test", None, 1)], spf=6), fake_resolver(table))
    assert got.action in ("pass", "mark", "refuse")
    if got.action == "refuse":
        assert all(" " <= c <= "~" for c in got.reply)
        assert got.code in (451, 550, 553)
