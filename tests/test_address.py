# SPDX-License-Identifier: ISC
"""Tests for `qtools.address`, envelope addresses read as qmail-smtpd reads them."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qtools import address


class TestParsePath:
    """Tests for `parse_path`."""

    @pytest.mark.parametrize(
        "line, expected",
        [
            (b"RCPT TO:<joe@example.com>", b"joe@example.com"),
            (b"rcpt to: <Joe@Example.COM>", b"Joe@Example.COM"),
            (b"MAIL FROM:<>", b""),
            (b"MAIL FROM:<> SIZE=100", b""),
            (b"MAIL FROM:<a@b> BODY=8BITMIME", b"a@b"),
            (b"RCPT TO:joe@example.com", b"joe@example.com"),
            (b"RCPT TO: joe@example.com NOTIFY=NEVER", b"joe@example.com"),
            (b"RCPT TO:<@relay.one,@relay.two:joe@example.com>", b"joe@example.com"),
            (b"RCPT TO:<@no-colon>", b""),
            (b'RCPT TO:<"joe smith"@example.com>', b"joe smith@example.com"),
            (b'RCPT TO:<"a>b"@example.com>', b"a>b@example.com"),
            (b'RCPT TO:<"a@b"@example.com>', b"a@b@example.com"),
            (b"RCPT TO:<a\\>b@example.com>", b"a>b@example.com"),
            (b"RCPT TO:<joe@example.com", b"joe@example.com"),
            (b"RCPT", b""),
            (b"RCPT TO:<postmaster>", b"postmaster"),
        ],
    )
    def test_table(self, line, expected):
        """parse_path gives the address qmail-smtpd's addrparse would."""
        assert address.parse_path(line) == expected

    def test_too_long(self):
        """An address over 900 bytes is a syntax error, as in qmail-smtpd."""
        assert address.parse_path(b"RCPT TO:<" + b"a" * 901 + b">") is None
        assert address.parse_path(b"RCPT TO:<" + b"a" * 900 + b">") == b"a" * 900

    @given(st.binary(max_size=200))
    def test_any_bytes(self, data):
        """Any line gives bytes or None, never an exception, and never more than it was given."""
        result = address.parse_path(b"RCPT " + data)
        assert result is None or (isinstance(result, bytes) and len(result) <= len(data))


class TestChecks:
    """Tests for `fold`, `split`, `is_probe` and `is_postmaster`."""

    @pytest.mark.parametrize(
        "addr, probe",
        [
            (b"joe@example.com", False),
            (b"joe%other.org@example.com", True),
            (b"other.org!joe@example.com", True),
            (b"a@b@example.com", True),
            (b"joe-list-default@example.com", False),
        ],
    )
    def test_is_probe(self, addr, probe):
        """Percent hacks, bang paths and a second @ are relay probes."""
        assert address.is_probe(addr) is probe

    @pytest.mark.parametrize(
        "addr, yes",
        [
            (b"postmaster", True),
            (b"PostMaster@Example.COM", True),
            (b"postmaster@a@b", False),
            (b"postmasters@example.com", False),
        ],
    )
    def test_is_postmaster(self, addr, yes):
        """Postmaster is recognised bare or at any domain, in any case."""
        assert address.is_postmaster(addr) is yes

    def test_split_and_fold(self):
        """split cuts at the last @; fold lowercases."""
        assert address.split(b"a@b@c") == (b"a@b", b"c")
        assert address.split(b"local") == (b"local", b"")
        assert address.fold(b"Joe@EXAMPLE.com") == b"joe@example.com"
