# SPDX-License-Identifier: ISC
"""Tests for `qtools.received`: the proxy tells qmail-smtpd's message that the client used TLS."""

import shutil
import socket
import ssl
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_client, read_maildir, run_prog, sink_cmd
from qtools import core, proxy, received


def session(helo=b"mx.client.example", host="mx.client.example", **environ):
    client = make_client("192.0.2.7", host=host)
    s = proxy.Session(client, dict(environ))
    s.helo = helo
    return s


class TestLine:
    """Tests for `tls_line` and `date`."""

    def test_date_as_qmail_writes_it(self):
        assert received.date(0) == "1 Jan 1970 00:00:00 -0000"
        assert received.date(1796035152) == "30 Nov 2026 10:39:12 -0000"

    def test_line(self):
        """The hop from the client to the proxy, folded, with QTOOLS_HOSTNAME as by."""
        line = received.tls_line(session(QTOOLS_HOSTNAME="mx.example.com"), 1796035152)
        assert line == (b"Received: from mx.client.example (HELO mx.client.example) ([192.0.2.7])\r\n"
                        b"  by mx.example.com (qtools) with ESMTPS; 30 Nov 2026 10:39:12 -0000\r\n")

    def test_outside_text_is_cleaned(self):
        """A HELO or a name from outside never breaks the header: one cleaning function."""
        line = received.tls_line(session(helo=b"x\r\nBcc: a@b\xff", host=None, TCPLOCALHOST="mx"), 0)
        assert line.count(b"\r\n") == 2 and b"\r\nBcc" not in line
        assert line.startswith(b"Received: from unknown (HELO x??Bcc: a@b?) ([192.0.2.7])\r\n  by mx ")

    def test_no_helo(self):
        line = received.tls_line(session(helo=None), 0)
        assert line.startswith(b"Received: from mx.client.example ([192.0.2.7])\r\n  by localhost ")


class TestField:
    """Tests for `field`, the one builder of the header fields the proxy writes."""

    def test_short_field_on_one_line(self):
        assert received.field("X-Test", "a  b", "", "c") == b"X-Test: a b c\r\n"

    def test_parts_fold_where_they_meet(self):
        """A part that does not fit starts the next line, indented by two spaces."""
        got = received.field("X-Test", "a" * 60, "b" * 20, "c" * 10)
        assert got == b"X-Test: " + b"a" * 60 + b"\r\n  " + b"b" * 20 + b" " + b"c" * 10 + b"\r\n"

    def test_long_part_folds_at_its_own_spaces(self):
        """Inside a part the fold adds no space: unfolding gives the part back."""
        text = " ".join(["word%02d" % n for n in range(40)])
        got = received.field("X-Test", text)
        assert got[:-2].replace(b"\r\n", b"") == b"X-Test: " + text.encode()
        assert all(len(line) <= received.LINE for line in got.split(b"\r\n"))

    def test_part_is_cut(self):
        """One part is at most PART characters: a field line stays under 998."""
        got = received.field("X-Test", "x" * 5000)
        assert got == b"X-Test: " + b"x" * received.PART + b"\r\n"

    @pytest.mark.parametrize("name", ["", "X Test", "X:Test", "X-\xe9", "X\r\nBcc", "x" * 77])
    def test_bad_name(self, name):
        """Field names are ours: a bad one is a programming error."""
        with pytest.raises(ValueError):
            received.field(name, "a")

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.text(max_size=300), max_size=6))
    def test_any_text_gives_one_well_formed_field(self, parts):
        """Whatever the parts, one field: printable ASCII lines of at most 998, folded, CR LF."""
        got = received.field("X-Test", *parts)
        assert got.endswith(b"\r\n") and got.startswith(b"X-Test:")
        lines = got[:-2].split(b"\r\n")
        for i, line in enumerate(lines):
            assert len(line) <= 998 and all(32 <= b < 127 for b in line)
            if i:
                assert line[:1] == b" " and line.strip()  # a fold, never an empty line
        words = [w for p in parts for w in core.clean(p, received.PART).split()]
        assert got.replace(b"\r\n", b"")[len(b"X-Test:"):].split() == [w.encode() for w in words]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate and key made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed: run make test, which installs it")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def reply(f):
    lines = [f.readline()]
    while lines[-1][3:4] == b"-":
        lines.append(f.readline())
    return b"".join(lines)


@pytest.mark.e2e
def test_message_over_tls_carries_the_line(tcpserver, tmp_path, certificate):
    """Under tcpserver, a message sent after STARTTLS reaches qmail-smtpd's place with the line."""
    cert, key = certificate
    rcpt = str(tmp_path / "validrcptto.cdb")
    assert run_prog(["qtools-mkcdb", "-a", rcpt, rcpt + ".tmp"], stdin=b"ok@example.com\n").rc == 0
    maildir = tmp_path / "mail"
    maildir.mkdir()
    env = {"VALIDRCPTTO_CDB": rcpt, "QTOOLS_TLS_CERT": cert, "QTOOLS_TLS_KEY": key,
           "QTOOLS_HOSTNAME": "mx.example.com"}
    server = tcpserver(["validrcptto"] + sink_cmd(maildir), env=env)
    for secure in (True, False):
        raw = socket.create_connection((server.host, server.port), timeout=30)
        f = raw.makefile("rb")
        assert reply(f).startswith(b"220 ")
        raw.sendall(b"EHLO me\r\n")
        assert b"STARTTLS" in reply(f)
        conn = raw
        if secure:
            raw.sendall(b"STARTTLS\r\n")
            assert reply(f).startswith(b"220 ")
            conn = ssl.create_default_context(cafile=cert).wrap_socket(raw, server_hostname="localhost")
            f = conn.makefile("rb")
            conn.sendall(b"EHLO client.example\r\n")
            assert reply(f).startswith(b"250")
        conn.sendall(b"MAIL FROM:<a@b>\r\nRCPT TO:<ok@example.com>\r\nDATA\r\n")
        assert [reply(f)[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        conn.sendall(b"Subject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        assert reply(f)[:3] == b"250" and reply(f)[:3] == b"221"
        conn.close()
    over_tls, plain = read_maildir(maildir)
    head = b"Received: from unknown (HELO client.example) ([127.0.0.1])\r\n  by mx.example.com (qtools) with ESMTPS; "
    assert head in over_tls and over_tls.index(head) < over_tls.index(b"Subject: t")
    assert b"ESMTPS" not in plain and b"Received: from unknown (HELO" not in plain
