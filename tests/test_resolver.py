# SPDX-License-Identifier: ISC
"""Tests for `qtools.resolver`."""

import os
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtools import resolver
from qtools.resolver import Answer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dnsserver import DNSServer  # noqa: E402

RECORDS = {
    "2.0.0.127.bl.test": [("TXT", '"part one; " "part two"'), ("TXT", '"SECOND"'), ("A", "127.0.0.2")],
    "empty.bl.test": [("A", "127.0.0.9")],
    "7.0.0.127.in-addr.arpa": [("PTR", "Mail.Example.COM.")],
    "mail.example.com": [("A", "127.0.0.7"), ("AAAA", "2001:db8::7")],
}
BEHAVIOUR = {
    "fail.test": "servfail",
    "refused.test": "refused",
    "dead.test": "silent",
    "garbage.test": "garbage",
    "big.test": "truncate",
    "wrongid.test": "wrongid",
    "slow.test": 0.4,
}


@pytest.fixture(scope="module")
def server():
    with DNSServer(dict(RECORDS, **{"a.big.test": [("A", "127.0.0.5")]}), BEHAVIOUR) as s:
        yield s


class TestServers:
    """Tests for `servers` and `parse_servers`."""

    @pytest.mark.parametrize(
        ("environ", "expected"),
        [
            ({"QTOOLS_RESOLVER": "127.0.0.1:5353"}, [("127.0.0.1", 5353)]),
            (
                {"QTOOLS_RESOLVER": "127.0.0.2, [::1]:54,::1", "DNSCACHEIP": "127.9.9.9"},
                [("127.0.0.2", 53), ("::1", 54), ("::1", 53)],
            ),
            ({"DNSCACHEIP": "127.0.0.3"}, [("127.0.0.3", 53)]),
            ({"QTOOLS_RESOLVER": "[0:0::1]:5353"}, [("::1", 5353)]),
            ({"DNSCACHEIP": "127.0.0.3 127.0.0.4"}, [("127.0.0.3", 53), ("127.0.0.4", 53)]),
            ({"QTOOLS_RESOLVER": " ", "DNSCACHEIP": "127.0.0.3"}, [("127.0.0.3", 53)]),
        ],
    )
    def test_variables(self, environ, expected):
        """$QTOOLS_RESOLVER wins over $DNSCACHEIP, which always means port 53."""
        assert resolver.servers(environ, "/nonexistent") == expected

    def test_resolv_conf(self, tmp_path):
        """Without variables the nameserver lines of resolv.conf are used, bad ones skipped."""
        conf = tmp_path / "resolv.conf"
        conf.write_text("# x\nsearch example\nnameserver 127.0.0.8\nnameserver bogus\nnameserver ::1\n")
        assert resolver.servers({}, str(conf)) == [("127.0.0.8", 53), ("::1", 53)]

    def test_no_resolv_conf(self):
        """Without any configuration 127.0.0.1 is asked, as djb's resolver does."""
        assert resolver.servers({}, "/nonexistent") == [("127.0.0.1", 53)]

    @pytest.mark.parametrize("text", ["127.0.0.1:x", "nohost", "127.0.0.1:0", "[::1]:70000"])
    def test_invalid(self, text):
        """Something that is not ip[:port] is a ValueError."""
        with pytest.raises(ValueError):
            resolver.parse_servers(text)


class TestLookup:
    """Tests for `lookup` against a real server on a loopback port."""

    @pytest.mark.parametrize(
        ("question", "expected"),
        [
            (("2.0.0.127.bl.test", "TXT"), Answer([b"SECOND", b"part one; part two"])),
            (("2.0.0.127.bl.test", "A"), Answer(["127.0.0.2"])),
            (("empty.bl.test", "TXT"), Answer([])),
            (("3.0.0.127.bl.test", "TXT"), Answer([])),
            (("7.0.0.127.in-addr.arpa", "PTR"), Answer(["mail.example.com"])),
            (("mail.example.com", "AAAA"), Answer(["2001:db8::7"])),
            (("a.big.test", "A"), Answer(["127.0.0.5"])),
            (("a.slow.test", "A"), Answer([])),
        ],
    )
    def test_answers(self, server, question, expected):
        """Records come back as plain values; NXDOMAIN and no data are empty."""
        (answer,) = resolver.lookup([question], [("127.0.0.1", server.port)], 5)
        assert (sorted(answer.records), answer.error) == (expected.records, expected.error)

    @pytest.mark.parametrize(
        ("name", "error"),
        [
            ("x.fail.test", "SERVFAIL from 127.0.0.1"),
            ("x.refused.test", "REFUSED from 127.0.0.1"),
            ("x.dead.test", "timeout"),
            ("x.wrongid.test", "timeout"),
        ],
    )
    def test_failures(self, server, name, error):
        """A failing or silent server gives an Answer with error set."""
        assert resolver.lookup([(name, "A")], [("127.0.0.1", server.port)], 0.5) == [
            Answer(error=error)
        ]

    def test_garbage(self, server):
        """A malformed reply is a failure, not an empty answer."""
        (answer,) = resolver.lookup([("x.garbage.test", "A")], [("127.0.0.1", server.port)], 2)
        assert answer.records == [] and answer.error.startswith("malformed reply")

    def test_bad_name(self, server):
        """A name that cannot be sent fails alone; the others are answered."""
        answers = resolver.lookup(
            [("a..b", "A"), ("2.0.0.127.bl.test", "A")], [("127.0.0.1", server.port)], 2
        )
        assert answers[0].error.startswith("bad name") and answers[1] == Answer(["127.0.0.2"])

    def test_parallel_with_one_deadline(self, server):
        """Slow and silent questions together cost one deadline, not their sum."""
        questions = [("%d.slow.test" % i, "A") for i in range(5)] + [("x.dead.test", "A")]
        start = time.monotonic()
        answers = resolver.lookup(questions, [("127.0.0.1", server.port)], 1.5)
        took = time.monotonic() - start
        assert answers[:5] == [Answer([])] * 5 and answers[5] == Answer(error="timeout")
        assert took < 5 * 0.4  # sequential slow answers alone would take 2 s

    def test_late_answer_to_a_first_attempt_counts(self):
        """An answer slower than the retry interval is taken even after the question was sent again."""
        with DNSServer({"x.late.test": [("A", "127.0.0.3")]}, {"late.test": 0.7}) as late:
            start = time.monotonic()
            answers = resolver.lookup([("x.late.test", "A")], [("127.0.0.1", late.port)], 1.5)
            took = time.monotonic() - start
        assert answers == [Answer(["127.0.0.3"])]
        assert took < 1.2  # the second attempt's answer would come at 0.5 + 0.7 s at best
        assert late.questions.count(("x.late.test", "A")) == 2

    def test_next_server_after_failure(self, server):
        """A SERVFAIL from the first server sends the question to the next one."""
        with DNSServer(behaviour={"test": "servfail"}) as bad:
            answers = resolver.lookup(
                [("2.0.0.127.bl.test", "A")],
                [("127.0.0.1", bad.port), ("127.0.0.1", server.port)],
                3,
            )
        assert answers == [Answer(["127.0.0.2"])]

    def test_next_server_after_silence(self, server):
        """A silent first server is left for the next one within the deadline."""
        with DNSServer(behaviour={"test": "silent"}) as dead:
            answers = resolver.lookup(
                [("2.0.0.127.bl.test", "A")],
                [("127.0.0.1", dead.port), ("127.0.0.1", server.port)],
                3,
            )
        assert answers == [Answer(["127.0.0.2"])]

    def test_make_uses_the_environment(self, server):
        """make() binds $QTOOLS_RESOLVER and the timeout."""
        resolve = resolver.make({"QTOOLS_RESOLVER": server.address}, 2)
        assert resolve([("2.0.0.127.bl.test", "A")]) == [Answer(["127.0.0.2"])]



class TestWholeDeadline:
    """Tests for the time limit over a whole lookup: TCP fallback and later lookups included."""

    def test_dripping_tcp_answer(self):
        """A server dripping its TCP answer a byte at a time is cut off at the deadline."""
        with DNSServer({"x.drip.test": [("A", "127.0.0.2")]}, {"drip.test": "drip"}) as drip:
            start = time.monotonic()
            answers = resolver.lookup([("x.drip.test", "A"), ("2.x.drip.test", "A")],
                                      [("127.0.0.1", drip.port)], 2)
            took = time.monotonic() - start
        assert answers == [Answer(error="timeout")] * 2
        assert took < 2 + 1.5

    def test_quick_drip_is_answered(self):
        """An answer that arrives a byte at a time within the deadline is taken."""
        with DNSServer({"x.drip.test": [("A", "127.0.0.2")]}, {"drip.test": "drip"}, drip=0.001) as s:
            assert resolver.lookup([("x.drip.test", "A")], [("127.0.0.1", s.port)], 5) == [
                Answer(["127.0.0.2"])]

    def test_later_lookups_get_what_is_left(self):
        """The lookups of one resolve function share its deadline, the first starts it."""
        with DNSServer({"x.slow.test": [("A", "127.0.0.2")]}, {"slow.test": 1.0}) as slow:
            resolve = resolver.make({"QTOOLS_RESOLVER": slow.address}, 1.5)
            start = time.monotonic()
            assert resolve([("x.slow.test", "A")]) == [Answer(["127.0.0.2"])]
            assert resolve([("x.slow.test", "A")]) == [Answer(error="timeout")]
            assert resolve([("x.slow.test", "A")]) == [Answer(error="timeout")]
            assert time.monotonic() - start < 1.5 + 0.5

def test_dnspython_is_never_imported():
    """Choosing servers and sending a query load neither dnspython nor the socket module."""
    code = (
        "import sys; from qtools import resolver; "
        "resolver.make({'QTOOLS_RESOLVER': '127.0.0.1:9'}, 0.2)([('x.test', 'A')]); "
        "print(any(m in ('dns', 'socket') or m.startswith('dns.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    assert out == b"False\n"


@pytest.fixture(scope="module")
def hostile():
    """A server that sends back our query id followed by whatever the test put in replies."""
    replies = {}
    with DNSServer(behaviour={"test": lambda query: query[:2] + replies["next"]}) as server:
        yield server, replies


class TestHostileReplies:
    """Whatever a server sends back, lookup returns an Answer and never raises."""

    @settings(max_examples=int(os.environ.get("QTOOLS_FUZZ_EXAMPLES", "150")), deadline=None)
    @given(
        flags=st.binary(min_size=2, max_size=2),
        counts=st.binary(min_size=8, max_size=8),
        rest=st.binary(max_size=300),
    )
    def test_random_bytes(self, hostile, flags, counts, rest):
        """A reply with our id and random contents is an answer or a failure, nothing else."""
        server, replies = hostile
        replies["next"] = flags + counts + rest
        (answer,) = resolver.lookup([("x.test", "TXT")], [("127.0.0.1", server.port)], 1)
        assert isinstance(answer, Answer)
        assert answer.error is None or answer.records == []

    def test_echoed_query_is_not_an_answer(self):
        """The query itself sent back (no QR bit) does not count as a reply."""
        with DNSServer(behaviour={"test": lambda query: query}) as echo:
            (answer,) = resolver.lookup([("x.test", "A")], [("127.0.0.1", echo.port)], 1)
        assert answer.error is not None
