# SPDX-License-Identifier: ISC
"""Tests for qtools.dnswire: queries and replies in wire format, checked against dnspython."""

import dns.message
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtools import dnswire


def reply_to(query_wire, records=(), rcode=0, tc=False):
    """Return dnspython's reply to query_wire with records [(name, type, value)] in the answer."""
    query = dns.message.from_wire(query_wire)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if tc:
        response.flags |= 0x0200
    for name, rdtype, value in records:
        response.answer.append(dns.rrset.from_text_list(name + ".", 60, "IN", rdtype, [value]))
    return response.to_wire()


class TestEncode:
    """Tests for `encode_name` and `make_query`."""

    @pytest.mark.parametrize(
        ("name", "wire"),
        [
            ("a.bc", b"\x01a\x02bc\x00"),
            ("a.bc.", b"\x01a\x02bc\x00"),
            ("", b"\x00"),
            ("x" * 63 + ".t", b"\x3f" + b"x" * 63 + b"\x01t\x00"),
        ],
    )
    def test_names(self, name, wire):
        """Labels are length-prefixed and the root ends the name."""
        assert dnswire.encode_name(name) == wire

    @pytest.mark.parametrize("name", ["a..b", ".a", "x" * 64 + ".t", "caf\xe9.t", ".".join(["abc"] * 70)])
    def test_bad_names(self, name):
        """Empty, over-long and non-ASCII labels and over-long names are refused."""
        with pytest.raises(ValueError):
            dnswire.encode_name(name)

    @pytest.mark.parametrize("rdtype", ["A", "AAAA", "TXT", "PTR", "MX"])
    def test_query_is_what_dnspython_reads(self, rdtype):
        """dnspython reads our query as one question of the type asked, recursion desired."""
        message = dns.message.from_wire(dnswire.make_query("2.0.0.127.bl.test", rdtype, 4711))
        assert message.id == 4711 and message.flags & 0x0100
        (question,) = message.question
        assert question.name.to_text() == "2.0.0.127.bl.test."
        assert dns.rdatatype.to_text(question.rdtype) == rdtype

    def test_unknown_type(self):
        """A type the resolver does not know is an error before anything is sent."""
        with pytest.raises(ValueError):
            dnswire.make_query("a.test", "SRV", 1)


class TestParse:
    """Tests for `parse_reply` on replies dnspython writes (with name compression)."""

    @pytest.mark.parametrize(
        ("name", "rdtype", "records", "values"),
        [
            ("2.0.0.127.bl.test", "A", [("2.0.0.127.bl.test", "A", "127.0.0.2")], ["127.0.0.2"]),
            ("h.test", "AAAA", [("h.test", "AAAA", "2001:db8::7")], ["2001:db8::7"]),
            ("2.0.0.127.bl.test", "TXT", [("2.0.0.127.bl.test", "TXT", '"part one" "; two"')],
             [b"part one; two"]),
            ("7.0.0.127.in-addr.arpa", "PTR", [("7.0.0.127.in-addr.arpa", "PTR", "Mail.Example.COM.")],
             ["mail.example.com"]),
            ("7.0.0.127.in-addr.arpa", "PTR", [("7.0.0.127.in-addr.arpa", "PTR", "a\\032b\\.c.test.")],
             ["a\\032b\\.c.test"]),
            ("w.test", "A", [("w.test", "CNAME", "t.test."), ("t.test", "A", "192.0.2.1")], ["192.0.2.1"]),
            ("m.test", "MX", [("m.test", "MX", "10 Mx.M.test."), ("m.test", "MX", "20 mx2.test.")],
             [(10, "mx.m.test"), (20, "mx2.test")]),
            ("n.test", "MX", [("n.test", "MX", "0 .")], [(0, "")]),
            ("w.test", "A", [("w.test", "TXT", '"other type"')], []),
            ("W.Test", "A", [("w.test", "A", "192.0.2.9")], ["192.0.2.9"]),
        ],
    )
    def test_values(self, name, rdtype, records, values):
        """The answer's records of the asked type come back as plain values."""
        query = dnswire.make_query(name, rdtype, 99)
        assert dnswire.parse_reply(reply_to(query, records), query) == (0, False, values)

    @pytest.mark.parametrize(("rcode", "text"), [(3, "NXDOMAIN"), (2, "SERVFAIL"), (5, "REFUSED"), (9, "9")])
    def test_rcodes(self, rcode, text):
        """The reply code is returned, and named as dnspython names it."""
        query = dnswire.make_query("x.test", "A", 7)
        assert dnswire.parse_reply(reply_to(query, rcode=rcode), query)[0] == rcode
        assert dnswire.rcode_text(rcode) == text

    def test_truncated(self):
        """The TC bit is reported, so the resolver asks again over TCP."""
        query = dnswire.make_query("x.test", "A", 7)
        assert dnswire.parse_reply(reply_to(query, tc=True), query) == (0, True, [])

    @pytest.mark.parametrize(
        ("what", "mangle"),
        [
            ("short", lambda r, q: r[:11]),
            ("other id", lambda r, q: bytes([r[0] ^ 1]) + r[1:]),
            ("the query echoed", lambda r, q: q),
            ("no question", lambda r, q: r[:4] + b"\0\0" + r[6:12]),
            ("other question", lambda r, q: r.replace(b"\x01x\x04test", b"\x01y\x04test")),
            ("other type", lambda r, q: r[:21] + b"\x10" + r[22:]),
            ("cut record", lambda r, q: r[:-2]),
            ("pointer loop", lambda r, q: r[:24] + b"\xc0\x18" + r[26:]),
            ("bad A length", lambda r, q: r[:-6] + b"\x00\x03" + r[-4:-1]),
        ],
    )
    def test_malformed(self, what, mangle):
        """A reply that is not a well-formed answer to our question is a FormError."""
        query = dnswire.make_query("x.test", "A", 7)
        good = reply_to(query, [("x.test", "A", "192.0.2.1")])
        assert dnswire.parse_reply(good, query) == (0, False, ["192.0.2.1"])
        with pytest.raises(dnswire.FormError):
            dnswire.parse_reply(mangle(good, query), query)

    @settings(max_examples=300, deadline=None)
    @given(rest=st.binary(max_size=200), counts=st.binary(min_size=4, max_size=4))
    def test_random_bytes_never_raise_anything_else(self, rest, counts):
        """Whatever follows a matching header and question, the result is values or FormError."""
        query = dnswire.make_query("x.test", "TXT", 7)
        data = b"\x00\x07\x81\x80\x00\x01" + counts + b"\x00\x00" + query[12:] + rest
        try:
            rcode, _, values = dnswire.parse_reply(data, query)
        except dnswire.FormError:
            return
        assert rcode == 0 and all(isinstance(v, bytes) for v in values)
