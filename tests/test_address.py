# SPDX-License-Identifier: ISC
"""Tests for `qtools.address`, command lines read as qmail-smtpd acts on them.

The expected readings come from notqmail's sources (commit a7012e4f,
2024-12-26), which keep qmail 1.03's behaviour:

commands.c
  29  if (cmd.len > 0) if (cmd.s[cmd.len - 1] == '\\r') --cmd.len;  one CR
  31  cmd.s[cmd.len] = 0;        the line is a C string: a NUL ends it
  33  i = str_chr(cmd.s,' ');    the verb ends at the first space (or NUL)
  35  while (*arg == ' ') ++arg; the argument starts after the spaces
  38  case_equals(c[i].text,cmd.s)   verbs compared without regard to case
qmail-smtpd.c, addrparse()
  147-149  the address starts after the first "<", ends at ">"
  150-155  without "<": after the first ":", spaces skipped, ends at " "
  158      a source route "@...:" is skipped up to its first ":"
  163-176  a backslash takes the next byte, double quotes toggle quoting,
           the terminator only counts outside quotes; a NUL ends the loop
  180-190  user@[d.d.d.d] that ipme_is() knows becomes user@ + localiphost
           (control/localiphost, else control/me: control_rldef, line 104)
  192      addr.len (the NUL counted) over 900: syntax error (555)
ip.c ip_scanbracket(): "[" four runs of digits with dots "]", nothing after.
"""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtools import address

ME = b"mx.example"
# make fuzz scales the hypothesis tests: a hundredth of its session count.
EXAMPLES = max(100, int(os.environ.get("QTOOLS_FUZZ_SESSIONS") or 0) // 100)


def me():
    return ME


# (line without its line ending, verb, argument, path): path is what
# qmail-smtpd puts in the envelope, None for its 555, and "-" when the
# verb takes no address.
HOSTILE = [
    # NUL in the verb: the verb is what comes before it.
    (b"RCPT\0 TO:<nobody@example.test>", b"rcpt", b"", b""),
    (b"MAIL\0 FROM:<a@b.example>", b"mail", b"", b""),
    (b"RC\0PT TO:<a@b>", b"rc", b"", "-"),
    (b"\0RCPT TO:<a@b>", b"", b"", "-"),
    (b"DATA\0", b"data", b"", "-"),
    (b"STARTTLS\0 now", b"starttls", b"", "-"),
    # NUL in the argument and in the address.
    (b"RCPT TO:<nobody@example.test\0.unlisted.org>", b"rcpt", b"TO:<nobody@example.test",
     b"nobody@example.test"),
    (b"RCPT \0TO:<a@b>", b"rcpt", b"", b""),
    (b"RCPT TO:\0<a@b>", b"rcpt", b"TO:", b""),
    (b"MAIL FROM:<a\0@b>", b"mail", b"FROM:<a", b"a"),
    (b'RCPT TO:<"a\0b"@c>', b"rcpt", b'TO:<"a', b"a"),
    (b"RCPT TO:<a\\\0b@c>", b"rcpt", b"TO:<a\\", b"a"),
    # Case, spaces, tabs, CR.
    (b"rCpT tO:<A@B>", b"rcpt", b"tO:<A@B>", b"A@B"),
    (b"RCPT    TO:<a@b>", b"rcpt", b"TO:<a@b>", b"a@b"),
    (b"RCPT\tTO:<a@b>", b"rcpt\tto:<a@b>", b"", "-"),
    (b" RCPT TO:<a@b>", b"", b"RCPT TO:<a@b>", "-"),
    (b"RCPT TO:<a@b>\r", b"rcpt", b"TO:<a@b>\r", b"a@b"),
    (b"RCPT TO:a@b\r", b"rcpt", b"TO:a@b\r", b"a@b\r"),
    # Without angle brackets (the partner should go read RFC 821).
    (b"RCPT TO:joe@example.com", b"rcpt", b"TO:joe@example.com", b"joe@example.com"),
    (b"RCPT TO: joe@example.com NOTIFY=NEVER", b"rcpt", b"TO: joe@example.com NOTIFY=NEVER",
     b"joe@example.com"),
    (b"MAIL FROM", b"mail", b"FROM", b""),
    (b"RCPT", b"rcpt", b"", b""),
    (b"RCPT x<a@b>", b"rcpt", b"x<a@b>", b"a@b"),
    (b"RCPT TO:<a@b", b"rcpt", b"TO:<a@b", b"a@b"),
    (b"RCPT TO:<a@b> <c@d>", b"rcpt", b"TO:<a@b> <c@d>", b"a@b"),
    (b"MAIL FROM:<> SIZE=100", b"mail", b"FROM:<> SIZE=100", b""),
    # Quoted and escaped local parts.
    (b'RCPT TO:<"joe smith"@example.com>', b"rcpt", b'TO:<"joe smith"@example.com>',
     b"joe smith@example.com"),
    (b'RCPT TO:<"a>b"@example.com>', b"rcpt", b'TO:<"a>b"@example.com>', b"a>b@example.com"),
    (b'RCPT TO:<"a@b"@example.com>', b"rcpt", b'TO:<"a@b"@example.com>', b"a@b@example.com"),
    (b"RCPT TO:<a\\>b@example.com>", b"rcpt", b"TO:<a\\>b@example.com>", b"a>b@example.com"),
    (b'RCPT TO:<a\\"b@example.com>', b"rcpt", b'TO:<a\\"b@example.com>', b'a"b@example.com'),
    (b"RCPT TO:<a\\\\@example.com>", b"rcpt", b"TO:<a\\\\@example.com>", b"a\\@example.com"),
    (b'RCPT TO:<"unclosed@example.com>x', b"rcpt", b'TO:<"unclosed@example.com>x',
     b"unclosed@example.com>x"),
    (b"RCPT TO:a\\ b@c d", b"rcpt", b"TO:a\\ b@c d", b"a b@c"),
    (b"RCPT TO:<a@b\\>", b"rcpt", b"TO:<a@b\\>", b"a@b>"),
    # Source routes.
    (b"RCPT TO:<@relay.one,@relay.two:joe@example.com>", b"rcpt",
     b"TO:<@relay.one,@relay.two:joe@example.com>", b"joe@example.com"),
    (b"RCPT TO:<@no-colon>", b"rcpt", b"TO:<@no-colon>", b""),
    (b"RCPT TO:<@a:@b:c@d>", b"rcpt", b"TO:<@a:@b:c@d>", b"@b:c@d"),
    (b"RCPT TO:@a:joe@example.com", b"rcpt", b"TO:@a:joe@example.com", b"joe@example.com"),
    (b'RCPT TO:<@"a:b">', b"rcpt", b'TO:<@"a:b">', b'b>'),
    # Address literals: any [d.d.d.d] qmail-smtpd reads whole is taken as its own.
    (b"RCPT TO:<nobody@[127.0.0.1]>", b"rcpt", b"TO:<nobody@[127.0.0.1]>", b"nobody@" + ME),
    (b"RCPT TO:<Nobody@[192.0.2.1]>", b"rcpt", b"TO:<Nobody@[192.0.2.1]>", b"Nobody@" + ME),
    (b"RCPT TO:<a@[127.0.0.257]>", b"rcpt", b"TO:<a@[127.0.0.257]>", b"a@" + ME),
    (b"RCPT TO:<a@[0000127.0.0.1]>", b"rcpt", b"TO:<a@[0000127.0.0.1]>", b"a@" + ME),
    (b'RCPT TO:<"a@[1.2.3.4]"@[1.2.3.4]>', b"rcpt", b'TO:<"a@[1.2.3.4]"@[1.2.3.4]>',
     b"a@[1.2.3.4]@" + ME),
    (b"RCPT TO:<a@\\[1.2.3.4]>", b"rcpt", b"TO:<a@\\[1.2.3.4]>", b"a@" + ME),
    (b"RCPT TO:nobody@[127.0.0.1]", b"rcpt", b"TO:nobody@[127.0.0.1]", b"nobody@" + ME),
    (b"RCPT TO:<a@[127.0.0.1]x>", b"rcpt", b"TO:<a@[127.0.0.1]x>", b"a@[127.0.0.1]x"),
    (b"RCPT TO:<a@[127.0.0]>", b"rcpt", b"TO:<a@[127.0.0]>", b"a@[127.0.0]"),
    (b"RCPT TO:<a@[IPv6:::1]>", b"rcpt", b"TO:<a@[IPv6:::1]>", b"a@[IPv6:::1]"),
    (b"RCPT TO:<a@[1.2.3.4] >", b"rcpt", b"TO:<a@[1.2.3.4] >", b"a@[1.2.3.4] "),
    (b"RCPT TO:<a@[.1.2.3]>", b"rcpt", b"TO:<a@[.1.2.3]>", b"a@[.1.2.3]"),
    (b"RCPT TO:<a@[+1.2.3.4]>", b"rcpt", b"TO:<a@[+1.2.3.4]>", b"a@[+1.2.3.4]"),
    (b"RCPT TO:<[1.2.3.4]>", b"rcpt", b"TO:<[1.2.3.4]>", b"[1.2.3.4]"),
    # The 900-byte limit, the NUL counted: 899 bytes pass.
    (b"RCPT TO:<" + b"a" * 899 + b">", b"rcpt", b"TO:<" + b"a" * 899 + b">", b"a" * 899),
    (b"RCPT TO:<" + b"a" * 900 + b">", b"rcpt", b"TO:<" + b"a" * 900 + b">", None),
    (b"RCPT TO:<" + b"a" * 888 + b"@[1.2.3.4]>", b"rcpt", b"TO:<" + b"a" * 888 + b"@[1.2.3.4]>",
     b"a" * 888 + b"@" + ME),
    (b"RCPT TO:<" + b"a" * 889 + b"@[1.2.3.4]>", b"rcpt", b"TO:<" + b"a" * 889 + b"@[1.2.3.4]>",
     None),
    (b"RCPT TO:<" + b'"' * 2000 + b"a>", b"rcpt", b"TO:<" + b'"' * 2000 + b"a>", b"a"),
    # Other verbs keep their argument, no address.
    (b"HELO  box\0evil", b"helo", b"box", "-"),
    (b"EHLO", b"ehlo", b"", "-"),
    (b"", b"", b"", "-"),
]


class TestRead:
    """Tests for `read`, the one reading of a client line."""

    @pytest.mark.parametrize("line, verb, arg, path", HOSTILE,
                             ids=[repr(row[0][:40]) for row in HOSTILE])
    def test_hostile_lines(self, line, verb, arg, path):
        """Each hostile line reads as qmail-smtpd acts on it (sources in the module text)."""
        command = address.read(line, me)
        assert (command.verb, command.arg) == (verb, arg)
        if path == "-":
            assert command.path is None and command.verb not in address.PATH_VERBS
        else:
            assert command.path == path
        assert command.line == line and not command.literal

    def test_literal_without_local_name(self):
        """Without control/localiphost or control/me, a literal is marked, not guessed."""
        command = address.read(b"RCPT TO:<a@[127.0.0.1]>", lambda: None)
        assert command.literal and command.path == b"a@[127.0.0.1]"
        assert not address.read(b"RCPT TO:<a@example.com>", lambda: None).literal

    def test_local_name_read_only_for_literals(self):
        """The control files are read only when a line has a literal."""
        def refuse():
            raise AssertionError("read")

        assert address.read(b"RCPT TO:<a@example.com>", refuse).path == b"a@example.com"

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(st.binary(max_size=300))
    def test_any_bytes(self, data):
        """Any line reads without an exception, and nothing past a NUL ever counts."""
        command = address.read(b"RCPT " + data, me)
        assert command.path is None or isinstance(command.path, bytes)
        cut = address.read((b"RCPT " + data).split(b"\0")[0] + b"\0" + data, me)
        assert (cut.verb, cut.arg, cut.path) == (command.verb, command.arg, command.path)

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(st.lists(st.sampled_from([b"a", b"@", b"<", b">", b'"', b"\\", b":", b" ", b"[",
                                     b"]", b"1.2.3.4", b".", b",", b"\0", b"x.example"]),
                    max_size=30))
    def test_same_as_addrparse(self, parts):
        """The address is the one a byte-by-byte transcription of addrparse() gives."""
        arg = b"".join(parts)
        assert address.read(b"RCPT " + arg, me).path == addrparse_c(arg)


def addrparse_c(arg):
    """qmail-smtpd's addrparse() written out pointer by pointer, as the oracle."""
    s = arg.split(b"\0")[0] + b"\0"
    i, terminator = 0, b">"
    lt = s.find(b"<")
    if lt >= 0:
        i = lt + 1
    else:
        terminator = b" "
        colon = s.find(b":")
        i = colon + 1 if colon >= 0 else len(s) - 1
        while s[i : i + 1] == b" ":
            i += 1
    if s[i : i + 1] == b"@":
        while s[i : i + 1] != b"\0":
            i += 1
            if s[i - 1 : i] == b":":
                break
    addr, esc, quoted = b"", False, False
    while s[i : i + 1] != b"\0":
        ch = s[i : i + 1]
        i += 1
        if esc:
            addr += ch
            esc = False
            continue
        if not quoted and ch == terminator:
            break
        if ch == b"\\":
            esc = True
        elif ch == b'"':
            quoted = not quoted
        else:
            addr += ch
    at = addr.rfind(b"@")
    if at >= 0:
        rest = addr[at + 1 :]
        import re

        if re.fullmatch(rb"\[[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+\]", rest):
            addr = addr[: at + 1] + ME
    return None if len(addr) + 1 > 900 else addr


class TestLocaliphost:
    """Tests for `localiphost`, qmail's control_rldef(localiphost, me)."""

    def test_files(self, tmp_path):
        """localiphost first, then me, first line without trailing blanks; None without both."""
        control = tmp_path / "control"
        control.mkdir()
        environ = {"QMAILHOME": str(tmp_path)}
        assert address.localiphost(environ) is None
        (control / "me").write_bytes(b"mx.example \t\nsecond\n")
        assert address.localiphost(environ) == b"mx.example"
        (control / "localiphost").write_bytes(b"local.example\n")
        assert address.localiphost(environ) == b"local.example"

    def test_unreadable(self, tmp_path):
        """A control file that cannot be read gives None (qmail-smtpd would stop with 421)."""
        (tmp_path / "control").mkdir()
        (tmp_path / "control" / "localiphost").mkdir()  # reading it fails: EISDIR
        assert address.localiphost({"QMAILHOME": str(tmp_path)}) is None


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
