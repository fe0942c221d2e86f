# SPDX-License-Identifier: ISC
"""Tests for qtools-adaptive: what counts, the window, blocks, the state, the cdb, Redis."""

import json
import os
import subprocess
import time

import pytest

from conftest import REPO, VENV_BIN, base_env, run_prog
from qtools import adaptive, cdb, core, logread
from qtools.adaptstore import DirState
from qtools.attempts import Rules, Tracker, ban_time, classify, decide, quick

NOW = 1796029480.0
BAD_RCPT = "553 sorry, this recipient is not in my validrcptto list (#5.7.1)"


def stamp(when):
    """Return the multilog TAI64N stamp of a Unix time."""
    seconds = int(when)
    return "@%016x%08x" % (seconds + logread.TAI64_EPOCH, int((when - seconds) * 1e9))


def line(prog, ip, verdict, fields=(), when=NOW):
    return "%s %s\n" % (stamp(when), core.log_line(prog, ip, verdict, fields))


def message(ip, action="deliver", when=NOW, **extra):
    """qtools-queue's per-message line (the fixed format of its man page)."""
    fields = [("from", "a@example.org"), ("rcpts", 1), ("size", 900), ("spam", "no"),
              ("score", "1.0"), ("required", "5.0"), ("tests", "NONE")]
    fields += list(extra.items()) + [("ms", 40), ("rcpt", "joe@example.com")]
    return line("qtools-queue", ip, action, fields, when)


def refused(ip, when=NOW, rcpt="nobody@example.com"):
    return line("validrcptto", ip, BAD_RCPT, (("rcpt", rcpt), ("why", "notfound")), when)


def burst(ip, good, bad, when=NOW):
    """good messages and bad recipients, one second apart, bad ones first."""
    lines = [refused(ip, when + n) for n in range(bad)]
    return lines + [message(ip, when=when + bad + n) for n in range(good)]


def record(text):
    return logread.parse(text)


# --- What counts --------------------------------------------------------------------

@pytest.mark.parametrize("text, kind", [
    (message("192.0.2.7"), "good"),
    (message("192.0.2.7", "tag", spam="yes"), "good"),
    (message("192.0.2.7", "unscanned", why="spamd"), "good"),
    (message("192.0.2.7", "reject", spam="yes"), "bad"),
    (message("192.0.2.7", "quarantine", spam="yes"), "bad"),
    (message("192.0.2.7", "drop", spam="yes"), "bad"),
    (message("192.0.2.7", "reject", virus="Eicar-Signature"), "bad"),
    (message("192.0.2.7", "deliver", virus="Eicar-Signature"), "bad"),
    (message("192.0.2.7", "tempfail"), None),
    (message("192.0.2.7", "error"), None),
    (message("192.0.2.7", "release"), None),
    (refused("192.0.2.7"), "bad"),
    (line("validrcptto", "192.0.2.7", "421 too many invalid addresses, goodbye (#4.3.0)",
          (("rcpt", "x@y"), ("why", "limit"), ("count", 10))), "bad"),
    (line("validrcptto", "192.0.2.7", "451 unable to read controls (#4.3.0)",
          (("rcpt", "x@y"), ("why", "failure"))), None),
    (line("validrcptto", "192.0.2.7", "553 go away", (("rcpt", "x@y"), ("why", "override"))), None),
    (line("validrcptto", "192.0.2.7", "pass", (("rcpt", "x@y"), ("why", "found"))), None),
    (line("validrcptto", "192.0.2.7", "skip", (("why", "relayclient"),)), "exempt"),
    (line("rhostcheck", "192.0.2.7", "pass", (("why", "relayclient"),)), "exempt"),
    (line("rblcheck", "192.0.2.7", "pass", (("why", "antilisted"), ("list", "wl"))), "exempt"),
    (line("greylist", "192.0.2.7", "skip", (("why", "whitelisted"),)), "exempt"),
    (line("throttle", "192.0.2.7", "skip", (("why", "relayclient"),)), "exempt"),
    (line("rblcheck", "192.0.2.7", "pass", (("score", -2), ("hits", "wl.example"),
                                            ("trust", "rblcheck:wl.example"))), "exempt"),
    (line("mfcheck", "192.0.2.7", "skip", (("why", "relayclient"),)), "exempt"),
    (line("rblcheck", "192.0.2.7", "451 listed", (("why", "listed"), ("list", "bl"))), None),
    (line("greylist", "192.0.2.7", "451 greylisted, try again in 300 seconds (#4.7.1)",
          (("why", "new"),)), None),
])
def test_classify(text, kind):
    assert classify(record(text), Rules()) == kind
    # the reading without a parse agrees
    tail = text.split(": ", 2)[2]
    assert quick(record(text).prog, tail, Rules()) == kind


def test_classify_counts_accepted_recipients_and_list_refusals_when_asked():
    rules = Rules(recipients=True, refusals=True)
    accepted = line("validrcptto", "192.0.2.7", "pass", (("rcpt", "x@y"), ("why", "found")))
    listed = line("rblcheck", "192.0.2.7", "451 listed", (("why", "listed"), ("list", "bl")))
    ours = line("rblcheck", "192.0.2.7", "451 blocked", (("why", "deny"), ("key", "x")))
    assert [classify(record(t), rules) for t in (accepted, listed, ours)] == ["good", "bad", None]


@pytest.mark.parametrize("attempts, bad, blocked", [
    (11, 6, True), (11, 5, False), (10, 10, False), (12, 6, False), (100, 51, True)])
def test_decide_is_the_guides_rule(attempts, bad, blocked):
    assert decide(attempts, bad, Rules()) is blocked


def test_ban_time_doubles_and_is_capped():
    rules = Rules(bantime=4 * 3600, maxtime=86400)
    assert [ban_time(n, rules) for n in range(5)] == [14400, 28800, 57600, 86400, 86400]
    assert ban_time(10 ** 6, Rules()) == 7 * 86400


def test_tracker_window_slides():
    tracker = Tracker(Rules())
    for n in range(5):
        tracker.add("k", NOW + n, True)
    assert tracker.add("k", NOW + 3599, False) == (6, 5)
    assert tracker.add("k", NOW + 3700, False) == (2, 0)  # the first minute is out
    tracker.prune(NOW + 7400)
    assert tracker.windows == {}


def test_tracker_memory_grows_with_clients_not_lines():
    tracker = Tracker(Rules())
    for n in range(20000):
        tracker.add("192.0.2.%d" % (n % 10), NOW + n, n % 3 == 0)
    assert len(tracker.windows) == 10
    assert max(len(e[2]) for e in tracker.windows.values()) <= 61


# --- A run over lines, with an injected clock ------------------------------------------

def run_lines(tmp_path, lines, now, rules=None, allow=None):
    state = DirState(str(tmp_path / "state"), rules or Rules())
    state.lock()
    state.load()
    run = adaptive.Run(rules or Rules(), state, allow, now)
    for text in lines:
        run.line(text)
    state.save(run.tracker.dump(), now)
    state.close()
    return state


@pytest.mark.parametrize("good, bad, blocked", [(5, 6, True), (6, 5, False), (0, 10, False)])
def test_run_blocks_as_the_rule_says(tmp_path, good, bad, blocked):
    state = run_lines(tmp_path, burst("192.0.2.7", good, bad), NOW + 60)
    assert ("192.0.2.7" in state.current(NOW + 60)) is blocked


def test_block_ends_after_four_hours_and_a_repeat_lasts_twice_as_long(tmp_path):
    state = run_lines(tmp_path, burst("192.0.2.7", 5, 6), NOW + 60)
    block = state.current(NOW + 60)["192.0.2.7"]
    assert block["until"] == NOW + 10 + 4 * 3600  # from the 11th attempt
    assert "192.0.2.7" in state.current(NOW + 4 * 3600)
    later = NOW + 4 * 3600 + 60
    state = run_lines(tmp_path, [], later)
    assert state.current(later) == {}
    again = NOW + 5 * 3600
    state = run_lines(tmp_path, burst("192.0.2.7", 5, 6, again), again + 60)
    assert state.current(again + 60)["192.0.2.7"]["until"] == again + 10 + 8 * 3600


def test_old_lines_make_no_block_that_has_already_ended(tmp_path):
    state = run_lines(tmp_path, burst("192.0.2.7", 0, 20), NOW + 5 * 3600)
    assert state.current(NOW + 5 * 3600) == {}


def test_relay_clients_and_trusted_ones_are_never_blocked_and_a_block_is_lifted(tmp_path, capfd):
    trusted = line("rhostcheck", "192.0.2.8", "pass", (("why", "relayclient"),), NOW - 5)
    state = run_lines(tmp_path, [trusted] + burst("192.0.2.8", 0, 30), NOW + 60)
    assert state.current(NOW + 60) == {}
    state = run_lines(tmp_path, burst("192.0.2.9", 5, 6), NOW + 60)
    assert "192.0.2.9" in state.current(NOW + 60)
    later = line("greylist", "192.0.2.9", "skip", (("why", "whitelisted"),), NOW + 30)
    state = run_lines(tmp_path, [later], NOW + 60)
    assert state.current(NOW + 60) == {}
    assert "qtools-adaptive: 192.0.2.9 pid %d: lift why=trusted\n" % os.getpid() in capfd.readouterr().err


def test_allow_list_is_never_blocked(tmp_path):
    allow = tmp_path / "allow.cdb"
    assert run_prog(["qtools-mkcdb", "-n", str(allow), str(allow) + ".tmp"],
                    stdin=b"192.0.2.0/24 partner\n").rc == 0
    with cdb.Reader(str(allow)) as reader:
        lines = burst("192.0.2.7", 0, 30) + burst("198.51.100.7", 0, 30)
        state = run_lines(tmp_path, lines, NOW + 60, allow=reader)
    assert list(state.current(NOW + 60)) == ["198.51.100.7"]


def test_ipv6_counts_per_address_and_per_64(tmp_path):
    lines = []
    for n in range(6):  # six addresses of one /64, two attempts each, all bad
        lines += burst("2001:db8:1:2::%x" % (n + 1), 0, 2, NOW + 2 * n)
    lines += burst("2001:db8:9::1", 11, 0)  # another network, all good
    state = run_lines(tmp_path, lines, NOW + 60)
    assert list(state.current(NOW + 60)) == ["2001:db8:1:2::/64"]


def test_v4_mapped_addresses_are_the_v4_client(tmp_path):
    lines = burst("::ffff:192.0.2.7", 0, 6) + burst("192.0.2.7", 5, 0, NOW + 6)
    assert list(run_lines(tmp_path, lines, NOW + 60).current(NOW + 60)) == ["192.0.2.7"]


def test_reply_names_the_reason_and_the_end():
    block = {"until": NOW + 4 * 3600, "attempts": 11, "bad": 6}
    assert adaptive.reply("192.0.2.7", block, Rules()) == (
        "your address 192.0.2.7 is blocked until 2026-11-30 13:04:40 UTC: 6 of its 11 attempts"
        " in 60 minutes were invalid recipients, spam or viruses (#4.7.1)")
    text = adaptive.reply("2001:db8::/64", block, Rules(), permanent=True)
    assert text.startswith("your network 2001:db8::/64 is") and text.endswith("(#5.7.1)")
    assert len(text) <= 200


# --- The program -------------------------------------------------------------------------

def adaptive_cmd(args, stdin=b"", env=None, faketime=None):
    argv = [os.path.join(VENV_BIN, "qtools-adaptive")] + [str(a) for a in args]
    if faketime:
        argv = ["faketime", "-f", faketime] + argv
    done = subprocess.run(argv, input=stdin, env=base_env(env), capture_output=True, timeout=60)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def fresh(good, bad, ip="192.0.2.7"):
    return "".join(burst(ip, good, bad, time.time() - 120)).encode()


def test_usage_errors(tmp_path):
    for args in ([], ["state"], ["-w", "0", "s", "c"], ["-p", "100", "s", "c"], ["-x", "s", "c"],
                 ["-q", "192.0.2.7", "-l", "s", "c"], ["-l", "s", "c", "logdir"]):
        code, out, err = adaptive_cmd(args)
        assert code == 100 and "qtools-adaptive: usage: qtools-adaptive [ -B ]" in err, args
    code, _, err = adaptive_cmd(["ftp://x", tmp_path / "c.cdb"])
    assert (code, err) == (100, "qtools-adaptive: fatal: unknown state: ftp://x\n")
    code, _, err = adaptive_cmd(["-u", "nonsense", tmp_path / "s", tmp_path / "c.cdb"])
    assert code == 100 and "invalid address: nonsense" in err


def test_stdin_run_writes_a_cdb_that_rblcheck_refuses_with(tmp_path):
    block_cdb = tmp_path / "block.cdb"
    code, out, err = adaptive_cmd([tmp_path / "s", block_cdb], fresh(5, 6))
    assert code == 0 and "qtools-adaptive: 192.0.2.7 pid" in err and " block until=" in err
    env = {"TCPREMOTEIP": "192.0.2.7"}
    result = run_prog(["rblcheck", "-D", str(block_cdb), "true"], env=env,
                      stdin=b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nQUIT\r\n")
    assert b"451 your address 192.0.2.7 is blocked until " in result.out
    assert b"attempts in 60 minutes were invalid recipients, spam or viruses (#4.7.1)" in result.out
    result = run_prog(["rblcheck", "-D", str(block_cdb), "true"], env={"TCPREMOTEIP": "192.0.2.8"})
    assert result.rc == 0 and result.out == b""


def test_cdb_is_written_only_when_it_changes(tmp_path):
    block_cdb = tmp_path / "block.cdb"
    assert adaptive_cmd([tmp_path / "s", block_cdb], fresh(5, 6))[0] == 0
    before = os.stat(block_cdb)
    assert adaptive_cmd([tmp_path / "s", block_cdb], fresh(11, 0, "192.0.2.99"))[0] == 0
    after = os.stat(block_cdb)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_query_list_and_lift(tmp_path):
    state, block_cdb = tmp_path / "s", tmp_path / "block.cdb"
    assert adaptive_cmd([state, block_cdb], fresh(5, 6) + fresh(0, 12, "2001:db8::7"))[0] == 0
    code, out, _ = adaptive_cmd(["-q", "192.0.2.7", state, block_cdb])
    assert code == 0 and out.startswith("192.0.2.7: blocked until ")
    assert out.endswith("(6 of 11 attempts bad, offence 1)\n")
    code, out, _ = adaptive_cmd(["-q", "2001:db8::99", state, block_cdb])
    assert code == 0 and out.startswith("2001:db8::/64: blocked until ")
    result = run_prog(["rblcheck", "-D", str(block_cdb), "true"], env={"TCPREMOTEIP": "2001:db8::99"},
                      stdin=b"RCPT TO:<c@d>\r\nQUIT\r\n")
    assert b"451 your network 2001:db8::/64 is blocked until " in result.out
    assert adaptive_cmd(["-q", "192.0.2.8", state, block_cdb])[:2] == (100, "192.0.2.8: not blocked\n")
    code, out, _ = adaptive_cmd(["-l", state, block_cdb])
    assert [l.split(":")[0] for l in out.splitlines()] == ["192.0.2.7", "2001", "2001"]
    code, _, err = adaptive_cmd(["-u", "192.0.2.7", state, block_cdb])
    assert code == 0 and "lift why=admin" in err
    assert adaptive_cmd(["-q", "192.0.2.7", state, block_cdb])[0] == 100
    assert run_prog(["qtools-mkcdb", "-n", "-q", "192.0.2.7", str(block_cdb)]).rc == 100
    assert adaptive_cmd(["-u", "192.0.2.7", state, block_cdb])[:1] == (100,)
    # the counts went with the block: the next run does not block again
    assert adaptive_cmd([state, block_cdb], b"")[0] == 0
    assert adaptive_cmd(["-q", "192.0.2.7", state, block_cdb])[0] == 100


def test_block_ends_after_four_hours_under_faketime(tmp_path):
    state, block_cdb = tmp_path / "s", tmp_path / "block.cdb"
    assert adaptive_cmd([state, block_cdb], fresh(5, 6))[0] == 0
    assert run_prog(["qtools-mkcdb", "-n", "-q", "192.0.2.7", str(block_cdb)]).rc == 0
    assert adaptive_cmd([state, block_cdb], b"", faketime="+3h50m")[0] == 0
    assert run_prog(["qtools-mkcdb", "-n", "-q", "192.0.2.7", str(block_cdb)]).rc == 0
    assert adaptive_cmd([state, block_cdb], b"", faketime="+4h")[0] == 0
    assert run_prog(["qtools-mkcdb", "-n", "-q", "192.0.2.7", str(block_cdb)]).rc == 100


def test_processor_mode_copies_its_input(tmp_path):
    data = fresh(5, 6) + b"tcpserver: status: 1/40\npartial"
    code, out, _ = adaptive_cmd(["-P", tmp_path / "s", tmp_path / "b.cdb"], data)
    assert code == 0 and out.encode() == data


def test_unwritable_state_is_a_temporary_failure(tmp_path):
    (tmp_path / "file").write_text("")
    code, _, err = adaptive_cmd([tmp_path / "file" / "s", tmp_path / "b.cdb"], fresh(5, 6))
    assert code == 111 and err.startswith("qtools-adaptive: fatal: unable to lock ")
    code, _, err = adaptive_cmd(["-a", tmp_path / "missing.cdb", tmp_path / "s", tmp_path / "b.cdb"])
    assert code == 111 and "unable to open" in err


# --- Redis: several MX hosts block together -----------------------------------------------

def test_two_hosts_block_together_through_redis(tmp_path, redis):
    a_cdb, b_cdb = tmp_path / "a.cdb", tmp_path / "b.cdb"
    start = time.time() - 120
    host_a = "".join(burst("192.0.2.7", 0, 6, start)).encode()
    host_b = "".join(burst("192.0.2.7", 5, 0, start + 6)).encode()
    assert adaptive_cmd([redis.url, a_cdb], host_a)[0] == 0
    assert run_prog(["qtools-mkcdb", "-n", "-q", "192.0.2.7", str(a_cdb)]).rc == 100
    code, _, err = adaptive_cmd([redis.url, b_cdb], host_b)
    assert code == 0 and " block until=" in err and "attempts=11 bad=6 offence=1" in err
    assert run_prog(["qtools-mkcdb", "-n", "-q", "192.0.2.7", str(b_cdb)]).rc == 0
    # host a learns of the block at its next run, with nothing new to read
    assert adaptive_cmd([redis.url, a_cdb], b"")[0] == 0
    assert a_cdb.read_bytes() == b_cdb.read_bytes()
    code, out, _ = adaptive_cmd(["-l", redis.url, a_cdb])
    assert out.startswith("192.0.2.7: blocked until ") and out.endswith("offence 1)\n")
    # more bad lines while blocked make no second block
    code, _, err = adaptive_cmd([redis.url, a_cdb], "".join(burst("192.0.2.7", 0, 5)).encode())
    assert code == 0 and "block" not in err
    code, _, err = adaptive_cmd(["-u", "192.0.2.7", redis.url, b_cdb])
    assert code == 0 and "lift why=admin" in err
    assert run_prog(["qtools-mkcdb", "-n", "-q", "192.0.2.7", str(b_cdb)]).rc == 100
    assert adaptive_cmd(["-q", "192.0.2.7", redis.url, a_cdb])[0] == 100


def test_two_hosts_deciding_at_once_make_one_block(tmp_path, redis):
    lines = "".join(burst("192.0.2.7", 5, 6)).encode()
    runs = [subprocess.Popen([os.path.join(VENV_BIN, "qtools-adaptive"), redis.url,
                              str(tmp_path / ("%d.cdb" % n))], stdin=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=base_env()) for n in range(2)]
    errs = [run.communicate(lines, timeout=60)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert sum(err.count(b" block until=") for err in errs) == 1
    assert redis.command(b"GET", b"qtools:adaptive:h:192.0.2.7") == b"$1\r\n1\r\n"


def test_redis_down_is_a_temporary_failure(tmp_path):
    from conftest import free_port

    url = "redis://127.0.0.1:%d/0" % free_port()
    code, _, err = adaptive_cmd([url, tmp_path / "b.cdb"], fresh(5, 6))
    assert code == 111 and err.startswith("qtools-adaptive: fatal: unable to use redis://127.0.0.1:")
    assert not (tmp_path / "b.cdb").exists()


def test_unreadable_log_directory_is_a_temporary_failure(tmp_path):
    code, _, err = adaptive_cmd([tmp_path / "s", tmp_path / "b.cdb", tmp_path / "nowhere"])
    assert (code, err) == (111, "qtools-adaptive: fatal: unable to read %s: not a directory\n"
                           % (tmp_path / "nowhere"))
    if os.getuid() == 0:
        return  # root reads what it likes
    logdir = tmp_path / "log"
    logdir.mkdir()
    (logdir / "current").write_text("x\n")
    os.chmod(logdir / "current", 0)
    code, _, err = adaptive_cmd([tmp_path / "s", tmp_path / "b.cdb", logdir])
    assert code == 111 and "unable to read %s: permission denied" % logdir in err


def test_redis_keeps_each_hosts_positions_so_a_restart_reads_no_line_twice(tmp_path, redis):
    logdir = tmp_path / "log"
    logdir.mkdir()
    with open(logdir / "current", "w") as f:
        f.writelines(burst("192.0.2.7", 4, 3, time.time() - 120))
    assert adaptive_cmd([redis.url, tmp_path / "b.cdb", logdir])[0] == 0
    assert adaptive_cmd([redis.url, tmp_path / "b.cdb", logdir])[0] == 0
    fields = redis.command(b"HGETALL", b"qtools:adaptive:w:192.0.2.7").split(b"\r\n")
    values = [int(v) for v in fields[2::2][1::2]]
    assert sum(values) == 7 + 3  # attempts and bad, counted once
    os.rename(logdir / "current", logdir / ("%s.s" % stamp(time.time())))
    with open(logdir / "current", "w") as f:
        f.writelines(burst("192.0.2.7", 1, 0, time.time() - 60))
    assert adaptive_cmd([redis.url, tmp_path / "b.cdb", logdir])[0] == 0
    fields = redis.command(b"HGETALL", b"qtools:adaptive:w:192.0.2.7").split(b"\r\n")
    assert sum(int(v) for v in fields[2::2][1::2]) == 8 + 3


def test_lines_with_quoted_fields_are_read_whole(tmp_path):
    # a null sender is logged from=""; a recipient with a space in quotes
    # cannot pass for a why= of its own
    lines = [message("192.0.2.7", "reject", when=NOW + n, **{"from": ""}) for n in range(3)]
    lines += [line("validrcptto", "192.0.2.7", BAD_RCPT,
                   (("rcpt", "a why=override b"), ("why", "notfound")), NOW + 3 + n)
              for n in range(3)]
    assert all('"' in text for text in lines)
    lines += [message("192.0.2.7", when=NOW + 10 + n) for n in range(5)]
    state = run_lines(tmp_path, lines, NOW + 60)
    assert state.current(NOW + 60)["192.0.2.7"]["bad"] == 6


def test_permanent_texts_for_rblcheck_b(tmp_path):
    block_cdb = tmp_path / "block.cdb"
    assert adaptive_cmd(["-B", tmp_path / "s", block_cdb], fresh(5, 6))[0] == 0
    result = run_prog(["rblcheck", "-b", "-D", str(block_cdb), "true"],
                      env={"TCPREMOTEIP": "192.0.2.7"}, stdin=b"RCPT TO:<c@d>\r\nQUIT\r\n")
    assert b"553 your address 192.0.2.7 is blocked until " in result.out
    assert b"spam or viruses (#5.7.1)\r\n" in result.out


def test_local_injections_count_for_no_one(tmp_path):
    lines = [message("-", "reject", when=NOW + n, spam="yes") for n in range(20)]
    state = run_lines(tmp_path, lines, NOW + 60)
    assert state.current(NOW + 60) == {}
    with open(tmp_path / "state" / "state") as f:
        assert json.load(f)["windows"] == {}
    lines = [message("192.0.2.7", "reject", when=NOW + n, spam="yes") for n in range(2)]
    run_lines(tmp_path, lines, NOW + 60)
    with open(tmp_path / "state" / "state") as f:
        assert list(json.load(f)["windows"]) == ["192.0.2.7"]


def test_tracker_counts_an_older_line_in_its_own_bucket():
    rules = Rules()
    tracker = Tracker(rules)
    tracker.add("k", NOW + 600, False)
    tracker.add("k", NOW + 1200, False)
    assert tracker.add("k", NOW, True) == (3, 1)  # ten minutes older: in the window
    assert tracker.add("k", NOW - 3 * 3600, True) == (3, 1)  # hours older: not counted
    assert [b[0] for b in tracker.windows["k"][2]] == sorted(b[0] for b in tracker.windows["k"][2])
    assert len(tracker.windows["k"][2]) == 3
    # a newer line pushes the old bucket out, and its count with it
    assert tracker.add("k", NOW + 3600 + 120, False) == (3, 0)


def test_two_log_directories_read_one_after_the_other(tmp_path):
    # the second directory's lines are older than the first's last ones:
    # hours-old bad lines make no block now
    first, second = tmp_path / "one", tmp_path / "two"
    for directory in (first, second):
        directory.mkdir()
    start = time.time() - 3 * 3600
    with open(first / "current", "w") as f:
        f.writelines(burst("192.0.2.7", 5, 0, time.time() - 60))
    with open(second / "current", "w") as f:
        f.writelines(burst("192.0.2.7", 0, 6, start))
    code, _, err = adaptive_cmd([tmp_path / "s", tmp_path / "b.cdb", first, second])
    assert (code, err) == (0, "")


def test_the_trust_mark_rblcheck_logs_exempts_its_client(tmp_path):
    allow = tmp_path / "allow.cdb"
    assert run_prog(["qtools-mkcdb", "-n", str(allow), str(allow) + ".tmp"],
                    stdin=b"192.0.2.7 partner\n").rc == 0
    result = run_prog(["rblcheck", "-A", str(allow), "true"], env={"TCPREMOTEIP": "192.0.2.7"})
    assert result.rc == 0 and b" trust=" in result.err
    trusted = stamp(time.time() - 200).encode() + b" " + result.err.replace(b"pid x", b"pid 1")
    code, _, err = adaptive_cmd([tmp_path / "s", tmp_path / "b.cdb"], trusted + fresh(0, 20))
    assert (code, err) == (0, "")
    assert adaptive_cmd(["-q", "192.0.2.7", tmp_path / "s", tmp_path / "b.cdb"])[0] == 100
