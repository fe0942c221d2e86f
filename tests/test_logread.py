# SPDX-License-Identifier: ISC
"""Tests for `qtools.logread`: TAI64N, decision lines, multilog directories."""

import json
import os
import shutil
import subprocess

import pytest

from qtools import core, logread


def test_tai64n_decodes_as_tai64nlocal_does():
    # tai64nlocal under TZ=UTC prints 2026-11-30 09:04:40.333999500.
    assert logread.tai64n("@400000006b0d3c3213e86d8c") == pytest.approx(1796029480.3339995)


@pytest.mark.parametrize("stamp", ["@400000006b0d3c3213e86d8", "@400000006b0d3c3213e86d8cc",
                                   "400000006b0d3c3213e86d8cc", "@400000006b0d3c32zze86d8c",
                                   "@400000006b0d3c32ffffffff"])
def test_tai64n_refuses_malformed_stamps(stamp):
    assert logread.tai64n(stamp) is None


def test_parse_reads_what_log_line_writes():
    line = core.log_line("validrcptto", "192.0.2.7",
                         "553 sorry, this recipient is not in my validrcptto list (#5.7.1)",
                         (("rcpt", "a b@example.com"), ("why", 'say "x"=y'), ("empty", "")))
    record = logread.parse(line)
    assert (record.prog, record.ip, record.pid) == ("validrcptto", "192.0.2.7", os.getpid())
    assert record.verdict == "553 sorry, this recipient is not in my validrcptto list (#5.7.1)"
    assert record.code == 553
    assert record.fields == {"rcpt": "a b@example.com", "why": 'say "x"=y', "empty": ""}
    assert record.time is None


def test_parse_keeps_an_equals_sign_of_the_verdict_in_the_verdict():
    line = "@400000006b0d3c3213e86d8c rblcheck: 192.0.2.7 pid 12: 451 see http://x/?ip=1 a list=bl.example"
    record = logread.parse(line)
    assert record.verdict == "451 see http://x/?ip=1 a"
    assert record.fields == {"list": "bl.example"}
    assert record.time == pytest.approx(1796029480.3339995)


@pytest.mark.parametrize("line", ["", "hello world", "@4000 greylist: 1.2.3.4 pid 1: pass",
                                  "tcpserver: status: 1/40", "greylist: warning: cannot read x"])
def test_parse_ignores_what_is_not_a_decision_line(line):
    assert logread.parse(line) is None


def test_parse_a_verdict_without_fields():
    record = logread.parse("greylist: ::1 pid 3: pass")
    assert (record.ip, record.verdict, record.fields, record.code) == ("::1", "pass", {}, None)


def restarted(state):
    """The Follower a new run makes: the positions the last run kept, through JSON."""
    return logread.Follower(json.loads(state.read_text()) if state.exists() else None)


def saved(follower, state):
    state.write_text(json.dumps(follower.positions))


def _write(path, text):
    with open(path, "a") as handle:
        handle.write(text)


def test_follower_reads_each_line_once_across_rotation_and_restart(tmp_path):
    logdir = tmp_path / "log"
    logdir.mkdir()
    state = tmp_path / "state"
    current = logdir / "current"
    _write(current, "one\ntwo\npart")
    follower = restarted(state)
    assert list(follower.lines(str(logdir))) == ["one\n", "two\n"]
    saved(follower, state)
    # multilog's rotation: current is renamed to an archive, a new one begins.
    _write(current, "ial\nthree\n")
    os.rename(current, logdir / "@400000006b0d3c3213e86d8c.s")
    _write(current, "four\n")
    follower = restarted(state)
    assert list(follower.lines(str(logdir))) == ["partial\n", "three\n", "four\n"]
    saved(follower, state)
    assert list(restarted(state).lines(str(logdir))) == []


def test_follower_after_its_file_was_removed_reads_the_newer_archives(tmp_path):
    logdir = tmp_path / "log"
    logdir.mkdir()
    state = tmp_path / "state"
    _write(logdir / "current", "old\n")
    follower = restarted(state)
    assert list(follower.lines(str(logdir))) == ["old\n"]
    saved(follower, state)
    os.remove(logdir / "current")
    _write(logdir / "@400000006b0d3c3213e86d8c.s", "newer\n")
    _write(logdir / "current", "newest\n")
    assert list(restarted(state).lines(str(logdir))) == ["newer\n", "newest\n"]


@pytest.mark.e2e
@pytest.mark.skipif(not shutil.which("multilog"), reason="needs multilog (Debian daemontools)")
def test_follower_against_a_real_multilog_rotating_under_it(tmp_path):
    logdir = tmp_path / "log"
    logdir.mkdir()
    state = tmp_path / "state"
    multilog = subprocess.Popen(["multilog", "t", "s4096", "n100", str(logdir)],
                                stdin=subprocess.PIPE)
    seen = []
    total = 2000
    for number in range(total):
        line = core.log_line("greylist", "192.0.2.%d" % (number % 250), "pass", (("n", number),))
        multilog.stdin.write(line.encode() + b"\n")
        if number % 150 == 0:
            multilog.stdin.flush()
            follower = restarted(state)
            seen += [logread.parse(text) for text in follower.lines(str(logdir))]
            saved(follower, state)
    multilog.stdin.close()
    assert multilog.wait(timeout=30) == 0
    follower = restarted(state)
    seen += [logread.parse(text) for text in follower.lines(str(logdir))]
    assert len([n for n in os.listdir(logdir) if n.startswith("@")]) > 5  # it did rotate
    assert [int(record.fields["n"]) for record in seen] == list(range(total))
    assert all(record.time for record in seen)


@pytest.mark.parametrize("rest", ["pass", "pass key=1.2.3.0/24 state=known age=3", "451 a=b c d=e",
                                  "451 x  y=1", "k=v", "a 1=2 b=c", "a=b=c", "t A=1 b=2", "x = y=",
                                  "see ?ip=1 list=bl.example", "q _a=1 b=2"])
def test_the_quick_reading_of_a_line_without_quotes_is_the_regular_one(rest):
    # A quoted field sends the same line through the regular reading.
    verdict, fields = logread.split_fields(rest)
    quoted_verdict, quoted_fields = logread.split_fields(rest + ' z="1 2"')
    assert quoted_fields.pop("z") == "1 2"
    assert (verdict, fields) == (quoted_verdict, quoted_fields)
