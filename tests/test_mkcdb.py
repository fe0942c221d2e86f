# SPDX-License-Identifier: ISC
"""Tests for `qtools-mkcdb` and `qtools.rules`: formats, tcprules parity, atomic builds."""

import os
import re
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import BASE_PATH, REPO, VENV_BIN, run_prog
from qtools import cdb, mkcdb, netlist, rules, validrcptto

TCPRULES = "/usr/bin/tcprules"


def reference(text, tmp_path):
    """Run Debian's tcprules on text; return (exit code, cdb bytes or None)."""
    if not os.path.exists(TCPRULES):
        pytest.fail("tcprules is not installed: run make test, which installs ucspi-tcp")
    target = str(tmp_path / "ref.cdb")
    if os.path.exists(target):
        os.unlink(target)
    done = subprocess.run([TCPRULES, target, target + ".tmp"], input=text, capture_output=True)
    if done.returncode:
        return done.returncode, None
    with open(target, "rb") as f:
        return 0, f.read()


def ours(text, tmp_path, args=(), env=None):
    """Run qtools-mkcdb like tcprules on text; return (exit code, cdb bytes or None, stderr)."""
    target = str(tmp_path / "ours.cdb")
    if os.path.exists(target):
        os.unlink(target)
    done = run_prog(["qtools-mkcdb"] + list(args) + [target, target + ".tmp"], env, text)
    if done.rc:
        return done.rc, None, done.err
    with open(target, "rb") as f:
        return 0, f.read(), done.err


# The record qtools-mkcdb -a ends every list with: it built the cdb.
MARK = [(validrcptto.MARKER, b"")]


def collect(parser, text):
    """Run a parser on text; return (records, [(line number, problem, fatal)])."""
    problems = []
    found = list(parser(text.split(b"\n"), lambda *p: problems.append(p)))
    return found, problems


# A corpus of tcprules inputs: every form and quirk of ucspi-tcp 0.88's language.
CORPUS = {
    "qmail relay": b'127.:allow,RELAYCLIENT=""\n192.168.1.:allow,RELAYCLIENT=""\n:allow\n',
    "every address form": (
        b"1.2.3.4:deny\n10.0.:allow\n=mx.example.com:allow\n=.example.com:deny\n"
        b"=:allow\njoe@1.2.3.4:allow\njoe@=h.example:deny\n:allow\n"
    ),
    "variables and quotes": (
        b"1.2.3.4:allow,A=\"x\",B='y z',C=/a\"b/,D=\"\",E==v=,=\"noname\"\n"
        b'2.3.4.5:deny,RBLSMTPD="-go away"\n'
    ),
    "ranges": (
        b"1.2.3.4-6:allow\n10.2-3.:deny\n1.2.3.250-300:allow\n1.2.3.9-2:allow\n"
        b"1.2.3.4-:allow\n1.2.3.04-05:allow\n-3:allow\n1.2-3:allow\n1.2-3.4-5:allow\n"
        b"18446744073709551617-2:allow\n"
    ),
    "ranges are not expanded with = or @": b"=a-b.example:allow\nx-y@1.2.3.4:deny\n",
    "comments, blanks, lines without colon": (
        b"# comment\n\n   \n\t\nno colon here\n  # indented:allow\n#x:deny\n1.2.3.4:allow\n"
    ),
    "trailing blanks trimmed, inner kept": b"1.2.3.4   \t:allow \t \n5.6.7.8:deny,X=\"a \" \t\n",
    "last line without LF": b"1.2.3.4:allow\n5.6.7.8:deny",
    "duplicates kept in order": b"1.2.3.4-6:deny\n1.2.3.4:allow\n1.2.3.4:allow,X=\"2\"\n",
    "UTF-8 BOM and high bytes": b"\xef\xbb\xbf1.2.3.4:allow\n=h\xe9.example:deny,T=\"\xff\"\n",
    "empty input": b"",
    "only comments": b"# nothing\n",
    "error: CR at the end": b"1.2.3.4:allow\r\n",
    "error: space after colon": b"1.2.3.4: allow\n",
    "error: capital Allow": b"1.2.3.4:Allow\n",
    "error: allowed": b"1.2.3.4:allowed\n",
    "error: trailing comma": b"1.2.3.4:allow,\n",
    "error: missing =": b"1.2.3.4:allow,X\n",
    "error: nothing after =": b"1.2.3.4:allow,X=\n",
    "error: unterminated value": b'1.2.3.4:allow,X="abc\n',
    "error: text after the quote": b'1.2.3.4:allow,X="a"b\n',
    "error: non-numeric range": b"1.2.3.x-5:allow\n",
    "error: word range": b"foo-bar:allow\n",
    "error on a later line": b"1.2.3.4:allow\n5.6.7.8:allow\n9.9.9.9:permit\n",
}


class TestTcprulesParity:
    """qtools-mkcdb cdb tmp behaves like tcprules: same bytes, same exit codes."""

    @pytest.mark.parametrize("name", sorted(CORPUS))
    def test_corpus(self, tmp_path, name):
        """Each input gives tcprules' exit code and, on success, its exact file."""
        text = CORPUS[name]
        rc, data, err = ours(text, tmp_path)
        assert (rc, data) == reference(text, tmp_path)
        assert (rc == 100) == name.startswith("error")

    @pytest.mark.parametrize("writer", ["pure", "fast"])
    def test_random_inputs(self, tmp_path, writer):
        """Two hundred random rule files give tcprules' exit codes and bytes."""
        rnd = random.Random(88 + len(writer))
        atoms = [b"1.2.3.4", b"10.", b"1-3", b"x-", b"=", b"=.a", b"@", b":", b"allow",
                 b"deny", b",", b"=", b'"', b"'", b"X", b" ", b"\t", b"\r", b"#", b"\n", b"7"]

        def good():
            address = rnd.choice([b"1.2.3.4", b"10.", b"1.2.3.1-4", b"=.x.y", b"", b"a@1.2.3.4"])
            text = address + b":" + rnd.choice([b"allow", b"deny"])
            for _ in range(rnd.randrange(3)):
                quote = rnd.choice([b'"', b"'", b"/", b"="])
                text += b",V=" + quote + rnd.choice([b"", b"v", b"a b"]) + quote
            return text + rnd.choice([b"", b" ", b"\t "])

        for _ in range(200):
            lines = [
                good() if rnd.random() < 0.85 else b"".join(rnd.choices(atoms, k=rnd.randrange(8)))
                for _ in range(rnd.randrange(6))
            ]
            text = b"\n".join(lines) + rnd.choice([b"", b"\n"])
            rc, data, _ = ours(text, tmp_path, env={"QTOOLS_CDB_WRITER": writer})
            assert (rc, data) == reference(text, tmp_path), text

    def test_usage(self):
        """One argument is a usage error, exit 100, as with tcprules."""
        done = run_prog(["qtools-mkcdb", "only.cdb"])
        assert done.rc == 100
        assert done.err.endswith(b"qtools-mkcdb: usage: qtools-mkcdb [ -t | -a | -n ] { cdb tmp < text"
                                 b" | -c [ text ... ] | -s [ -v ] { text cdb ... | dir }"
                                 b" | -q key cdb | -d cdb }\n")

    def test_io_errors_exit_111(self, tmp_path):
        """An uncreatable tmp and an impossible rename exit 111, as with tcprules."""
        missing = str(tmp_path / "no" / "x.tmp")
        done = run_prog(["qtools-mkcdb", str(tmp_path / "x.cdb"), missing], stdin=b":allow\n")
        assert done.rc == 111
        assert done.err == b"qtools-mkcdb: fatal: unable to create %s: no such file or directory\n" % (
            missing.encode()
        )
        (tmp_path / "d.cdb").mkdir()
        done = run_prog(["qtools-mkcdb", str(tmp_path / "d.cdb"), str(tmp_path / "d.tmp")], stdin=b"")
        assert done.rc == 111 and b"unable to move" in done.err
        for argv in ([TCPRULES, str(tmp_path / "x.cdb"), missing],
                     [TCPRULES, str(tmp_path / "d.cdb"), str(tmp_path / "d.tmp")]):
            assert subprocess.run(argv, input=b"", capture_output=True).returncode == 111


@pytest.mark.e2e
class TestTcpserver:
    """tcpserver -x reads what qtools-mkcdb wrote."""

    def test_rules_apply(self, tmp_path, tcpserver):
        """The variables of the matching rule reach the program; deny drops."""
        rules_cdb = str(tmp_path / "tcp.cdb")
        text = (
            b'127.0.0.2:allow,RELAYCLIENT="",GREETING="hello there"\n'
            b"127.0.0.3:deny\n"
            b"127.0.0.4-5:allow,GREETING='range'\n"
            b':allow,GREETING="default"\n'
        )
        assert run_prog(["qtools-mkcdb", rules_cdb, rules_cdb + ".tmp"], stdin=text).rc == 0
        program = ["sh", "-c", 'echo "${GREETING-unset} ${RELAYCLIENT-norelay}"']
        server = tcpserver(program, options=("-H", "-x", rules_cdb))

        def talk(source):
            with socket.create_connection((server.host, server.port), 10, (source, 0)) as s:
                s.settimeout(10)
                data = b""
                while True:
                    chunk = s.recv(100)
                    if not chunk:
                        return data
                    data += chunk

        assert talk("127.0.0.2") == b"hello there \n"
        assert talk("127.0.0.3") == b""
        assert talk("127.0.0.5") == b"range norelay\n"
        assert talk("127.0.0.9") == b"default norelay\n"
        assert "deny" in server.log()


class TestParseTcprules:
    """`rules.tcprules` turns a line into records, or reports it."""

    @pytest.mark.parametrize(
        "line, records",
        [
            (b"1.2.3.4:deny", [(b"1.2.3.4", b"D\0")]),
            (b'127.:allow,RELAYCLIENT=""', [(b"127.", b"+RELAYCLIENT=\0")]),
            (b"x:deny,A='1',B=/2/", [(b"x", b"D\0+A=1\0+B=2\0")]),
            (b"1.2.3.7-9:allow", [(b"1.2.3.7", b""), (b"1.2.3.8", b""), (b"1.2.3.9", b"")]),
            (b"#1.2.3.4:deny", []),
            (b"no colon", []),
        ],
    )
    def test_records(self, line, records):
        """Each line gives its records and no problem."""
        assert collect(rules.tcprules, line) == (records, [])

    @pytest.mark.parametrize(
        "line, problem",
        [
            (b"1.2.3.4: allow", "expected allow or deny right after the colon"),
            (b"1.2.3.4:allow,X", "expected = after the variable name"),
            (b"1.2.3.4:allow X=1", "expected a comma before each variable"),
            (b"1.2.3.4:allow,X=", "expected a quoted value after ="),
            (b"1.2.3.4:allow,X='a", "no closing ' after the value"),
            (b"a.b-c:allow", "a range must be two numbers: b-c"),
        ],
    )
    def test_problems(self, line, problem):
        """Each bad line is reported, fatally, with what is wrong."""
        assert collect(rules.tcprules, line) == ([], [(1, problem, True)])


class TestParseAddresses:
    """`rules.addresses` reads a validrcptto list."""

    @pytest.mark.parametrize(
        "line, records",
        [
            (b"Joe@Example.COM", [(b"joe@example.com", b"")]),
            (b"  @example.net  ", [(b"@example.net", b"")]),
            (b"-spam@example.com", [(b"spam@example.com", b"-")]),
            (b"-trap@example.com\tno such  user ", [(b"trap@example.com", b"-no such  user")]),
            (b"-@old.example", [(b"@old.example", b"-")]),
            (b"list-default@example.com", [(b"list-default@example.com", b"")]),
            (b"# a comment", []),
        ],
    )
    def test_records(self, line, records):
        """Each line gives its key, case folded, and its value, then its domain's marker."""
        markers = [(k.partition(b"@")[2], b"") for k, _ in records]
        assert collect(rules.addresses, line) == (records + markers + MARK, [])

    def test_domain_markers(self):
        """Every domain of the list gets one bare key, in order of first mention, then the mark."""
        found, _ = collect(rules.addresses, b"a@x.example\n-b@y.example\n@x.example\n@Z.example")
        assert [k for k, _ in found if b"@" not in k] == [b"x.example", b"y.example", b"z.example",
                                                          validrcptto.MARKER]

    @pytest.mark.parametrize(
        "line, problem",
        [
            (b"nobody", "expected one @ in user@domain or @domain"),
            (b"a@b@c", "expected one @ in user@domain or @domain"),
            (b"joe@", "invalid domain "),
            (b"joe@exa..mple", "invalid domain exa..mple"),
            (b"j\x7fe@example.com", "the local part is not printable ASCII"),
            (b"joe@example.com hi", "text after an accepted address (only a -address takes one)"),
        ],
    )
    def test_problems(self, line, problem):
        """Each bad line is reported with what is wrong."""
        assert collect(rules.addresses, line) == (MARK, [(1, problem, True)])

    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.text("aZ9.-_@#!~ \t\xe9", max_size=14), max_size=4))
    def test_fast_path_agrees(self, texts):
        """Bare-address lines (one regex match) give what the full parse of the line gives."""
        lines = [t.encode("utf-8") for t in texts]
        fast = collect(rules.addresses, b"\n".join(lines))
        full = collect(rules.addresses, b"\n".join(b" " + line for line in lines))
        assert fast == full

    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.text("aZ9.-_@#!~ \t\r\n\xe9", max_size=14), max_size=6),
           st.booleans())
    def test_whole_list_path_agrees(self, texts, final_lf):
        """The whole-text path, when it takes a list, gives what the per-line parse gives."""
        data = b"\n".join(t.encode("utf-8") for t in texts) + b"\n" * final_lf
        plain = rules.plain_addresses(data)
        if plain is not None:
            assert (list(plain), []) == collect(rules.addresses, b"\n".join(mkcdb.lines_of(data)))

    @pytest.mark.parametrize(
        "data, taken",
        [
            (b"a@x.example\nB@Y.example\n@z.example", True),
            (b"a@x.example\na@x.example\n", False),
            (b"a@x.example\n\nb@x.example\n", False),
            (b"a@x.example\n-b@x.example\n", False),
            (b"a@b@x.example\nc.example\n", False),
            (b"a@x..example\n", False),
            (b"a@x.example \n", False),
            (b"a@x.example\r\nb@x.example\r\n@z.example\r", True),
            (b"a@x.example\r\na@x.example\n", False),
            (b"a@x.example\rb@x.example\n", False),
            (b"a@x.example\r\r\n", False),
        ],
    )
    def test_whole_list_path_taken(self, data, taken):
        """Bare distinct addresses take the whole-text path; anything else the per-line one."""
        assert (rules.plain_addresses(data) is not None) == taken

    def test_crlf_list_reads_as_the_lf_one(self):
        """A list written on Windows gives the records of the same list with LF ends."""
        crlf = b"Joe@X.example\r\n@y.example\r\nann@x.example\r\n"
        records = list(rules.plain_addresses(crlf))
        assert records == list(rules.plain_addresses(crlf.replace(b"\r", b"")))
        assert (records, []) == collect(rules.addresses, b"\n".join(mkcdb.lines_of(crlf)))
        assert records == [(b"joe@x.example", b""), (b"@y.example", b""), (b"ann@x.example", b""),
                           (b"x.example", b""), (b"y.example", b"")] + MARK

    def test_duplicates(self):
        """A repeated key is reported, not fatally, and the first line wins."""
        found, problems = collect(rules.addresses, b"a@x.example\nA@X.example\n-a@x.example")
        assert found == [(b"a@x.example", b""), (b"x.example", b"")] + MARK
        assert problems == [
            (2, "a@x.example repeats line 1", False),
            (3, "a@x.example contradicts, and loses to, line 1", False),
        ]


class TestParseNetworks:
    """`rules.networks` reads an allow/deny list in the key format of netlist."""

    @pytest.mark.parametrize(
        "entry, key",
        [
            (b"192.0.2.7", b"192.0.2.7/32"),
            (b"192.0.2.0/24", b"192.0.2.0/24"),
            (b"0.0.0.0/0", b"0.0.0.0/0"),
            (b"10.", b"10.0.0.0/8"),
            (b"172.16.", b"172.16.0.0/16"),
            (b"2001:DB8::1", b"2001:db8::1/128"),
            (b"2001:db8:0::/48", b"2001:db8::/48"),
            (b"::ffff:192.0.2.0/120", b"192.0.2.0/24"),
            (b"::ffff:192.0.2.1", b"192.0.2.1/32"),
            (b"=MX.Example.com.", b"=mx.example.com"),
            (b"mx.example.com", b"=mx.example.com"),
            (b"=.example.com", b"=.example.com"),
            (b".example.com", b"=.example.com"),
        ],
    )
    def test_keys(self, entry, key):
        """Each entry gives its canonical key."""
        assert rules.network_key(entry)[0] == key

    @pytest.mark.parametrize(
        "entry, problem",
        [
            (b"192.0.2.7/24", "192.0.2.7/24 has bits set beyond /24: the network is 192.0.2.0/24"),
            (b"192.0.2.0/33", "invalid prefix length /33"),
            (b"192.0.2.0/x", "invalid prefix length /x"),
            (b"1.2.3.400", "invalid address, network or host name 1.2.3.400"),
            (b"1.2.3.4-6", "invalid address, network or host name 1.2.3.4-6"),
            (b"=", "invalid host name ="),
            (b"=bad..name", "invalid host name =bad..name"),
        ],
    )
    def test_problems(self, entry, problem):
        """Each bad entry is refused with what is wrong."""
        with pytest.raises(ValueError) as caught:
            rules.network_key(entry)
        assert str(caught.value) == problem

    def test_values_duplicates_and_bits(self):
        """Values are the rest of the line; the bits keys list prefix lengths, longest first."""
        text = b"10.0.0.0/8 big\n192.0.2.0/24\tsmall  net \n192.0.2.9\n2001:db8::/32\n10. again"
        found, problems = collect(rules.networks, text)
        assert found == [
            (b"10.0.0.0/8", b"big"),
            (b"192.0.2.0/24", b"small  net"),
            (b"192.0.2.9/32", b""),
            (b"2001:db8::/32", b""),
            (b"\0bits4", b"32,24,8"),
            (b"\0bits6", b"32"),
        ]
        assert problems == [(5, "10.0.0.0/8 repeats line 1, which wins", False)]


def build(tmp_path, text, args=(), name="list"):
    """Write text to a file, build name.cdb from it with args; return (Result, cdb path)."""
    source = tmp_path / name
    source.write_bytes(text)
    target = str(tmp_path / (name + ".cdb"))
    with open(str(source), "rb") as stdin:
        done = subprocess.run(
            [os.path.join(VENV_BIN, "qtools-mkcdb")] + list(args) + [target, target + ".tmp"],
            stdin=stdin, capture_output=True, env={"PATH": BASE_PATH}, timeout=60,
        )
    return done, target


class TestLists:
    """Address and network lists round-trip through build, dump and lookup."""

    ADDRESSES = b"joe@example.com\n@example.net\n-spam@example.com no such user\n-@old.example\n"
    NETWORKS = b"192.0.2.0/24 listed here\n10.\n2001:db8::/32\n=mx.example.com\n=.spam.example x\n"

    def test_addresses(self, tmp_path):
        """An address list builds, dumps back to itself and answers as validrcptto reads it."""
        done, target = build(tmp_path, self.ADDRESSES, ["-a"])
        assert (done.returncode, done.stderr) == (0, b"")
        assert run_prog(["qtools-mkcdb", "-a", "-d", target]).out == self.ADDRESSES
        with cdb.Reader(target) as reader:
            assert reader.get(b"spam@example.com") == b"-no such user"
            assert reader.get(b"@example.net") == b""
        query = run_prog(["qtools-mkcdb", "-a", "-q", "Someone@EXAMPLE.NET", target])
        assert (query.rc, query.out) == (0, b"@example.net\n")
        assert run_prog(["qtools-mkcdb", "-a", "-q", "x@example.com", target]).rc == 100
        query = run_prog(["qtools-mkcdb", "-a", "-q", "x@example.org", target])
        assert (query.rc, query.out) == (0, b"# accepted: unlisted\n")

    @pytest.mark.parametrize(
        "address, action",
        [
            (b"joe@example.com", "pass"),
            (b"JOE@Example.Com", "pass"),
            (b"jim@example.com", "refuse"),
            (b"spam@example.com", "refuse"),
            (b"anyone@example.net", "pass"),
            (b"anyone@old.example", "refuse"),
            (b"someone@elsewhere.example", "pass"),
        ],
    )
    def test_validrcptto_reads_it(self, tmp_path, address, action):
        """validrcptto decides on the built list as the jms1 patch would."""
        from qtools import validrcptto

        done, target = build(tmp_path, self.ADDRESSES, ["-a"])
        assert done.returncode == 0
        with cdb.Reader(target) as reader:
            assert validrcptto.decide(address, reader).action == action

    def test_networks(self, tmp_path):
        """A network list builds, dumps back to itself and answers as netlist looks up."""
        done, target = build(tmp_path, self.NETWORKS, ["-n"])
        assert (done.returncode, done.stderr) == (0, b"")
        dumped = run_prog(["qtools-mkcdb", "-n", "-d", target]).out
        assert dumped == self.NETWORKS.replace(b"10.\n", b"10.0.0.0/8\n")
        with cdb.Reader(target) as reader:
            assert netlist.lookup(reader, packed=bytes([192, 0, 2, 200])) == (
                b"192.0.2.0/24", b"listed here")
            assert netlist.lookup(reader, host="a.b.spam.example") == (b"=.spam.example", b"x")
            assert netlist.lookup(reader, packed=bytes([192, 0, 3, 1])) is None
        for key, line in [("10.1.2.3", b"10.0.0.0/8\n"), ("2001:db8:1::9", b"2001:db8::/32\n"),
                          ("MX.example.com", b"=mx.example.com\n"),
                          ("192.0.2.0/24", b"192.0.2.0/24 listed here\n")]:
            assert run_prog(["qtools-mkcdb", "-n", "-q", key, target]).out == line

    @pytest.mark.parametrize("flag, text", [("-a", ADDRESSES), ("-n", NETWORKS)])
    def test_dump_rebuilds_the_same_file(self, tmp_path, flag, text):
        """Building from a dump gives the same bytes back."""
        done, target = build(tmp_path, text + text.upper(), [flag])
        dumped = run_prog(["qtools-mkcdb", flag, "-d", target]).out
        again, copy = build(tmp_path, dumped, [flag], name="copy")
        assert (again.returncode, again.stderr) == (0, b"")
        assert open(copy, "rb").read() == open(target, "rb").read()

    def test_writers_agree(self, tmp_path):
        """QTOOLS_CDB_WRITER=pure and =fast build the same file."""
        text = b"".join(b"user%d@example.com\n" % n for n in range(5000))
        files = []
        for writer in ("pure", "fast"):
            target = str(tmp_path / ("%s.cdb" % writer))
            done = run_prog(["qtools-mkcdb", "-a", target, target + ".tmp"],
                            {"QTOOLS_CDB_WRITER": writer}, text)
            assert done.rc == 0
            files.append(open(target, "rb").read())
        assert files[0] == files[1]

    def test_invalid_writer(self):
        """An unknown QTOOLS_CDB_WRITER is a permanent error."""
        done = run_prog(["qtools-mkcdb", "a", "b"], {"QTOOLS_CDB_WRITER": "turbo"})
        assert (done.rc, done.err) == (100, b"qtools-mkcdb: fatal: invalid $QTOOLS_CDB_WRITER: turbo\n")


class TestBadInput:
    """A bad line names file:line, exits 100 and keeps the old cdb."""

    @pytest.mark.parametrize(
        "args, text, message",
        [
            ([], b"1.2.3.4:allow\n1.2.3.5: deny\n",
             "line 2: expected allow or deny right after the colon: 1.2.3.5: deny"),
            (["-a"], b"ok@example.com\nnot an address\n",
             "line 2: expected one @ in user@domain or @domain: not an address"),
            (["-n"], b"# nets\n\n192.0.2.1/24\n",
             "line 3: 192.0.2.1/24 has bits set beyond /24: the network is 192.0.2.0/24: 192.0.2.1/24"),
        ],
    )
    def test_old_cdb_kept(self, tmp_path, args, text, message):
        """The message names the file and line; the old cdb and only it remains."""
        (tmp_path / "list.cdb").write_bytes(b"old")
        done, target = build(tmp_path, text, args)
        source = str(tmp_path / "list")
        assert done.returncode == 100
        assert done.stderr == b"qtools-mkcdb: fatal: unable to parse %s %s\n" % (
            source.encode(), message.encode())
        assert (tmp_path / "list.cdb").read_bytes() == b"old"
        assert sorted(os.listdir(str(tmp_path))) == ["list", "list.cdb"]

    def test_piped_input_is_standard_input(self, tmp_path):
        """Input from a pipe is called standard input."""
        done = run_prog(["qtools-mkcdb", str(tmp_path / "x.cdb"), str(tmp_path / "x.tmp")],
                        stdin=b"x:Deny\n")
        assert done.err == (b"qtools-mkcdb: fatal: unable to parse standard input line 1:"
                            b" expected allow or deny right after the colon: x:Deny\n")

    @pytest.mark.parametrize("writer", ["pure", "fast"])
    def test_sigkill_keeps_old_cdb(self, tmp_path, writer):
        """A build killed with SIGKILL while writing leaves the old cdb whole and usable."""
        target = str(tmp_path / "big.cdb")
        assert run_prog(["qtools-mkcdb", "-a", target, target + ".tmp"], stdin=b"old@example.com\n").rc == 0
        before = open(target, "rb").read()
        text = b"".join(b"user%d@example.com\n" % n for n in range(1000000))
        process = subprocess.Popen(
            [os.path.join(VENV_BIN, "qtools-mkcdb"), "-a", target, target + ".tmp"],
            stdin=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={"PATH": BASE_PATH, "QTOOLS_CDB_WRITER": writer},
        )
        process.stdin.write(text)
        process.stdin.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if os.path.exists(target + ".tmp") and os.path.getsize(target + ".tmp") > 100000:
                break
            time.sleep(0.002)
        assert process.poll() is None, "the build finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        assert process.wait(30) == -signal.SIGKILL
        assert open(target, "rb").read() == before
        with cdb.Reader(target) as reader:
            assert reader.get(b"old@example.com") == b""
        # the lock died with the process: the next build goes through
        assert run_prog(["qtools-mkcdb", "-a", target, target + ".tmp"], stdin=b"new@example.com\n").rc == 0


class TestModes:
    """Check, stale rebuild, query and dump."""

    def test_check_reports_every_bad_line(self, tmp_path):
        """-c names every bad line, writes nothing and exits 100."""
        (tmp_path / "r").write_bytes(b"1.2.3.4:allow\nx: deny\n5.6.7.8:allow\ny:Allow\n")
        done = run_prog(["qtools-mkcdb", "-c", str(tmp_path / "r")])
        name = str(tmp_path / "r").encode()
        assert done.rc == 100 and done.out == b""
        assert done.err == (
            b"qtools-mkcdb: warning: unable to parse %s line 2: expected allow or deny right after"
            b" the colon: x: deny\n"
            b"qtools-mkcdb: warning: unable to parse %s line 4: expected allow or deny right after"
            b" the colon: y:Allow\n"
            b"qtools-mkcdb: fatal: 2 bad lines\n" % (name, name)
        )
        assert os.listdir(str(tmp_path)) == ["r"]

    def test_check_counts_records(self, tmp_path):
        """-c on good input prints the number of records and exits 0."""
        done = run_prog(["qtools-mkcdb", "-c"], stdin=b"1.2.3.1-3:allow\n:deny\n")
        assert (done.rc, done.out, done.err) == (0, b"standard input: 4 records\n", b"")

    def test_stale_pairs(self, tmp_path):
        """-s builds a missing cdb, skips an unchanged one and rebuilds a changed one."""
        source, target = tmp_path / "tcp.smtp", str(tmp_path / "tcp.smtp.cdb")
        source.write_bytes(b"1.2.3.4:deny\n")
        argv = ["qtools-mkcdb", "-s", "-v", str(source), target]
        first = run_prog(argv)
        assert first.rc == 0 and b"info: rebuilt" in first.err
        inode = os.stat(target).st_ino
        again = run_prog(argv)  # nothing to do, nothing said
        assert (again.rc, again.out, again.err) == (0, b"", b"")
        assert os.stat(target).st_ino == inode
        source.write_bytes(b"1.2.3.4:allow\n")
        os.utime(str(source), ns=(1, 1))  # even an older text counts as a change
        assert run_prog(argv).rc == 0 and os.stat(target).st_ino != inode
        assert open(target, "rb").read() == reference(b"1.2.3.4:allow\n", tmp_path)[1]

    def test_stale_directory(self, tmp_path):
        """-s dir builds name.cdb for each text, reports a bad one and keeps its old cdb."""
        lists = tmp_path / "lists"
        lists.mkdir()
        (lists / "good").write_bytes(b"192.0.2.0/24\n")
        (lists / "bad").write_bytes(b"192.0.2.1/24\n")
        (lists / "bad.cdb").write_bytes(b"old")
        (lists / ".hidden").write_bytes(b"junk junk\n")
        (lists / "backup~").write_bytes(b"junk junk\n")
        done = run_prog(["qtools-mkcdb", "-n", "-s", str(lists)])
        assert done.rc == 100
        assert done.err.startswith(b"qtools-mkcdb: warning: unable to parse %s line 1: " % (
            str(lists / "bad").encode()))
        assert done.err.endswith(b"(%s kept as it was)\n" % str(lists / "bad.cdb").encode())
        assert (lists / "bad.cdb").read_bytes() == b"old"
        assert sorted(os.listdir(str(lists))) == [".hidden", "backup~", "bad", "bad.cdb", "good", "good.cdb"]
        with cdb.Reader(str(lists / "good.cdb")) as reader:
            assert reader.get(b"192.0.2.0/24") == b""

    @pytest.mark.parametrize(
        "argv",
        [["-c", "-d", "x"], ["-s"], ["-s", "a", "b", "c"], ["-q", "k"], ["-d"], ["-x", "a", "b"]],
    )
    def test_usage_errors(self, argv):
        """Conflicting modes and wrong argument counts exit 100 with the usage line."""
        done = run_prog(["qtools-mkcdb"] + argv)
        assert done.rc == 100 and b"qtools-mkcdb: usage: " in done.err

    def test_query_tcprules(self, tmp_path):
        """-q prints every rule of the key, the one tcpserver uses first."""
        target = str(tmp_path / "r.cdb")
        text = b"1.2.3.4:allow,X='a\"b',Y=/1/\n1.2.3.4:deny\n5.5.5.5:allow,Q=|say \"hi\" 'o'|\n"
        assert run_prog(["qtools-mkcdb", target, target + ".tmp"], stdin=text).rc == 0
        done = run_prog(["qtools-mkcdb", "-q", "1.2.3.4", target])
        assert (done.rc, done.out) == (0, b'1.2.3.4:allow,X=\'a"b\',Y="1"\n1.2.3.4:deny\n')
        dumped = run_prog(["qtools-mkcdb", "-d", target]).out
        rebuilt = run_prog(["qtools-mkcdb", target, target + ".tmp"], stdin=dumped)
        assert rebuilt.rc == 0 and run_prog(["qtools-mkcdb", "-d", target]).out == dumped

    def test_dump_crafted(self, tmp_path):
        """-d on a cdb whose lengths lie stops at once with exit 111, memory bounded."""
        import resource

        target = tmp_path / "x.cdb"
        target.write_bytes((0xFFFFFFF0).to_bytes(4, "little") + bytes(2044))

        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

        done = subprocess.run([os.path.join(VENV_BIN, "qtools-mkcdb"), "-d", str(target)],
                              capture_output=True, timeout=20, preexec_fn=limit)
        assert (done.returncode, done.stdout) == (111, b"")
        assert done.stderr == b"qtools-mkcdb: fatal: unable to read %s: not a cdb file (the records" \
            b" end at 4294967280, past the end of the file)\n" % os.fsencode(target)

    def test_query_unreadable(self, tmp_path):
        """-q on a missing cdb exits 111."""
        done = run_prog(["qtools-mkcdb", "-q", "k", str(tmp_path / "none.cdb")])
        assert done.rc == 111 and b"fatal: unable to read" in done.err


class TestQueryIsTheReadersAnswer:
    """-q answers what the program reading the cdb decides, asked the same question."""

    ADDRESSES = (b"joe@example.com\nlist-default@example.com\n-list-owner@example.com gone\n"
                 b"@catchall.org\n")
    RCPTS = [b"joe@example.com", b"JOE@example.com", b"list-foo@example.com",
             b"list-foo-bar@example.com", b"list-owner@example.com", b"list@example.com",
             b"postmaster@example.com", b"Postmaster", b"nobody@example.com",
             b"x@catchall.org", b"x@elsewhere.net", b"a%b@example.com"]

    def program_codes(self, tmp_path, path):
        """Return validrcptto's reply code to each of RCPTS, one session."""
        maildir = tmp_path / "mail"
        maildir.mkdir(exist_ok=True)
        session = b"HELO me\r\nMAIL FROM:<a@b.example>\r\n" + b"".join(
            b"RCPT TO:<%s>\r\n" % rcpt for rcpt in self.RCPTS) + b"QUIT\r\n"
        env = {"TCPREMOTEIP": "192.0.2.7", "VALIDRCPTTO_CDB": path, "VALIDRCPTTO_LIMIT": "0"}
        result = run_prog(["validrcptto", sys.executable, os.path.join(REPO, "examples", "smtpsink"),
                           str(maildir)], env, session)
        replies = [line[:3] for line in result.out.split(b"\r\n") if line[3:4] == b" "]
        return replies[3:-1]

    def query_codes(self, path):
        codes = []
        for rcpt in self.RCPTS:
            done = run_prog(["qtools-mkcdb", "-a", "-q", rcpt.decode(), path])
            assert done.rc in (0, 100), done
            codes.append(b"250" if done.rc == 0 else b"553")
        return codes

    def test_addresses_as_validrcptto_decides(self, tmp_path):
        """The -default walk, postmaster, refusals and unlisted domains: -q agrees with validrcptto."""
        target = str(tmp_path / "list.cdb")
        assert run_prog(["qtools-mkcdb", "-a", target, target + ".tmp"], stdin=self.ADDRESSES).rc == 0
        assert self.query_codes(target) == self.program_codes(tmp_path, target)
        assert self.query_codes(target).count(b"553") == 4
        found = run_prog(["qtools-mkcdb", "-a", "-q", "list-foo-bar@example.com", target])
        assert (found.rc, found.out) == (0, b"list-default@example.com\n")
        refused = run_prog(["qtools-mkcdb", "-a", "-q", "list-owner@example.com", target])
        assert (refused.rc, refused.out) == (100, b"-list-owner@example.com gone\n")
        postmaster = run_prog(["qtools-mkcdb", "-a", "-q", "postmaster@example.com", target])
        assert (postmaster.rc, postmaster.out) == (0, b"# accepted: postmaster\n")

    def test_a_cdb_built_by_cdbmake_is_answered_as_the_patch_reads_it(self, tmp_path):
        """A cdb without qtools-mkcdb's record: an address at an unlisted domain is refused by both."""
        target = str(tmp_path / "theirs.cdb")
        data = b"".join(b"+%d,%d:%s->%s\n" % (len(k), len(v), k, v) for k, v in [
            (b"joe@example.com", b""), (b"list-default@example.com", b""),
            (b"list-owner@example.com", b"-"), (b"@catchall.org", b"")]) + b"\n"
        subprocess.run(["cdbmake", target, target + ".tmp"], input=data, check=True)
        assert self.query_codes(target) == self.program_codes(tmp_path, target)
        assert run_prog(["qtools-mkcdb", "-a", "-q", "x@elsewhere.net", target]).rc == 100

    @pytest.mark.parametrize("query, line, ips", [
        ("198.51.100.0/25", b"198.51.100.0/24 partner\n", ["198.51.100.1", "198.51.100.127"]),
        ("198.51.100.128/26", b"198.51.100.0/24 partner\n", ["198.51.100.129"]),
        ("198.51.100.7", b"198.51.100.0/24 partner\n", ["198.51.100.7"]),
        ("198.51.100.0/23", b"", ["198.51.100.1", "198.51.101.1"]),
        ("203.0.113.9", b"203.0.113.9/32\n", ["203.0.113.9"]),
    ])
    def test_networks_as_rblcheck_allows(self, tmp_path, query, line, ips):
        """A network's answer is the entry every one of its addresses falls under in rblcheck -A."""
        target = str(tmp_path / "allow.cdb")
        text = b"198.51.100.0/24 partner\n203.0.113.9\n=.example.net\n"
        assert run_prog(["qtools-mkcdb", "-n", target, target + ".tmp"], stdin=text).rc == 0
        done = run_prog(["qtools-mkcdb", "-n", "-q", query, target])
        assert (done.rc, done.out) == ((0 if line else 100), line)
        for ip in ips:
            env = {"TCPREMOTEIP": ip, "QTOOLS_RESOLVER": "127.0.0.1:9"}
            run = run_prog(["rblcheck", "-T", "0.2", "-A", target, "-r", "x.invalid", "true"], env)
            key = line.split(b" ")[0].strip()
            assert bool(re.search(b"why=allow key=%s[ \n]" % re.escape(key), run.err)) == bool(line), run.err


def test_stale_rebuilds_a_list_without_the_mark_once(tmp_path):
    """-s -a rebuilds a cdb an earlier version built (no mark) even when its text did not change."""
    text, target = tmp_path / "validrcptto", tmp_path / "validrcptto.cdb"
    text.write_bytes(b"joe@example.com\n")
    assert run_prog(["qtools-mkcdb", "-s", "-a", str(text), str(target)]).rc == 0
    with cdb.Reader(str(target)) as reader:
        assert reader.get(validrcptto.MARKER) == b""
    with open(str(target), "wb") as f:  # what 0.1.0 wrote: the records without the mark
        writer = cdb.Writer(f)
        writer.add(b"joe@example.com")
        writer.add(b"example.com")
        writer.finish()
    stamp = os.stat(str(text)).st_mtime_ns
    os.utime(str(target), ns=(stamp, stamp))
    assert run_prog(["qtools-mkcdb", "-s", "-v", "-a", str(text), str(target)]).err.startswith(
        b"qtools-mkcdb: info: rebuilt")
    with cdb.Reader(str(target)) as reader:
        assert reader.get(validrcptto.MARKER) == b""
    assert run_prog(["qtools-mkcdb", "-s", "-v", "-a", str(text), str(target)]).err == b""
