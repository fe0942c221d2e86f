# SPDX-License-Identifier: ISC
"""Tests for `qtools.redisstore`: the timers on Redis, failures, greylist runs, two MX hosts."""

import multiprocessing
import re
import subprocess
import sys
import time

import pytest
import test_store
from conftest import base_env, mask_pids, read_maildir, run_prog, sink_cmd
from helpers_redis import RedisServer
from test_greylist import SESSION, refusal, send

from qtools import greylist, resp, store
from qtools.redisstore import PREFIX, RedisStore, describe_url
from qtools.store import State, StoreError, Timers

T0 = test_store.T0
DELAY, WINDOW, LIFE = test_store.DELAY, test_store.WINDOW, test_store.LIFE


@pytest.fixture
def greystore(redis):
    """Factory: greystore(**timers) -> a RedisStore on an empty database."""
    return lambda **timers: RedisStore(redis.url, Timers(**timers) if timers else Timers())


class TestTimers(test_store.TestTimers):
    """The timer tests of the directory store, run against Redis."""


class TestPasses(test_store.TestPasses):
    """The pass count tests of the directory store, run against Redis."""

    def test_fields(self, greystore, redis):
        """The count is two fields of the key's hash, set by the one script."""
        s = greystore()
        s.allow("k", T0)
        s.check("k", T0 + 1, 3)
        got = raw(redis, "HMGET", PREFIX + "k", "passes", "counted")
        when = b"%r" % float(T0 + 1)
        assert got == b"*2\r\n$1\r\n1\r\n$%d\r\n%s\r\n" % (len(when), when)

    def test_malformed_count(self, greystore, redis):
        """A count that is not one is the store's failure, not ours."""
        s = greystore()
        s.allow("k", T0)
        raw(redis, "HSET", PREFIX + "k", "passes", "2000000", "counted", "1")
        with pytest.raises(StoreError, match="malformed reply"):
            s.check("k", T0 + 1, 3)
        with pytest.raises(StoreError, match="malformed reply"):
            s.peek("k", T0 + 1)


def raw(redis, *words):
    return redis.command(*(w.encode() if isinstance(w, str) else w for w in words))


class TestCommands:
    """Tests for peek, allow, deny, forget, items, purge and the expiry of keys."""

    def test_peek_changes_nothing(self, greystore, redis):
        """peek of an unknown key reports new and writes nothing."""
        s = greystore()
        assert s.peek("k", T0) == State("new", T0, left=DELAY)
        assert raw(redis, "DBSIZE") == b":0\r\n"

    def test_peek_does_not_promote(self, greystore):
        """peek after the delay says pass but leaves the key unproven."""
        s = greystore()
        s.check("k", T0)
        assert s.peek("k", T0 + DELAY) == State("pass", T0, last=T0 + DELAY)
        assert s.peek("k", T0 + WINDOW).status == "new"
        assert s.peek("k", T0 + 10) == State("wait", T0, left=DELAY - 10)

    def test_allow_deny_forget(self, greystore):
        """allow passes a key at once, deny greylists it anew, forget drops it."""
        s = greystore()
        s.allow("k", T0)
        assert s.check("k", T0 + 1) == State("known", last=T0 + 1)
        assert s.passed("k", T0 + 2)
        s.deny("k", T0 + 3)
        assert not s.passed("k", T0 + 4)
        assert s.check("k", T0 + 5) == State("wait", T0 + 3, left=DELAY - 2)
        s.forget("k", T0 + 6)
        assert s.peek("k", T0 + 7).status == "new"

    def test_passed_changes_nothing_for_unproven(self, greystore, redis):
        """passed of an unknown or waiting key is False and writes nothing."""
        s = greystore()
        assert not s.passed("k", T0)
        assert raw(redis, "DBSIZE") == b":0\r\n"
        s.check("k", T0)
        assert not s.passed("k", T0 + DELAY)
        assert s.peek("k", T0 + 1) == State("wait", T0, left=DELAY - 1)

    def test_items(self, greystore):
        """items lists live keys once, passed keys first, and never dead ones."""
        s = greystore()
        s.check("grey", T0)
        s.allow("white", T0)
        s.check("dead", T0 - WINDOW)
        s.check("net sender@example.org rcpt@example.net", T0)
        listed = list(s.items(T0 + 10))
        assert listed[0] == ("white", State("known", last=T0))
        assert sorted(listed[1:]) == [
            ("grey", State("wait", T0, left=DELAY - 10)),
            ("net sender@example.org rcpt@example.net", State("wait", T0, left=DELAY - 10)),
        ]

    def test_unusual_keys(self, greystore):
        """Keys with spaces, braces, UTF-8 and bytes that are not UTF-8 round-trip."""
        s = greystore(delay=0)
        keys = ["{a} b", "ü@example.org x", "bad\udcff byte", "x" * 2000]
        for key in keys:
            s.check(key, T0)
        assert sorted(k for k, _ in s.items(T0)) == sorted(keys)
        assert [s.check(key, T0).status for key in keys] == ["pass"] * 4

    def test_ttl_is_window_then_lifetime(self, greystore, redis):
        """Redis expires an unproven key after the window and a passed one after the lifetime."""
        s = greystore()
        name = PREFIX + "k"
        s.check("k", T0)
        assert 0 < int(raw(redis, "PTTL", name)[1:]) <= WINDOW * 1000
        s.check("k", T0 + DELAY)
        assert WINDOW * 1000 < int(raw(redis, "PTTL", name)[1:]) <= LIFE * 1000
        s.deny("k", T0 + DELAY)
        assert 0 < int(raw(redis, "PTTL", name)[1:]) <= WINDOW * 1000

    def test_expiry_forgets(self, redis):
        """A key whose window has run out in real time is gone from Redis."""
        s = RedisStore(redis.url, Timers(delay=0, window=1, lifetime=1))
        s.check("k", time.time())
        time.sleep(1.3)
        assert raw(redis, "EXISTS", PREFIX + "k") == b":0\r\n"

    def test_purge_leaves_live_state(self, greystore):
        """purge has nothing to remove: Redis expires keys alone."""
        s = greystore()
        s.allow("k", T0)
        assert s.purge(T0 + 2 * LIFE) == 0
        assert s.passed("k", T0 + 1)

    def test_unix_socket(self, tmp_path):
        """A unix:// URL reaches a redis-server on a socket."""
        local = RedisServer(tmp_path, unix=True)
        try:
            s = RedisStore(local.url)
            assert [s.check("k", T0).status, s.check("k", T0 + DELAY).status] == ["new", "pass"]
        finally:
            local.stop()

    def test_database_in_url(self, redis):
        """/db in the URL keeps the state in that database, and db 0 sees none of it."""
        s = RedisStore(redis.url[:-1] + "3")
        s.check("k", T0)
        assert raw(redis, "DBSIZE") == b":0\r\n"
        assert resp.Client(redis.url[:-1] + "3", 2.0).command("EXISTS", PREFIX + "k") == 1
        assert [k for k, _ in s.items(T0)] == ["k"]

    def test_one_command_a_decision(self, redis):
        """A decision sends Redis one command, so one reply timeout bounds it."""
        monitor = redis.connect()
        monitor.sendall(b"*1\r\n$7\r\nMONITOR\r\n")
        assert monitor.recv(100) == b"+OK\r\n"
        s = RedisStore(redis.url)
        s.check("k", T0)
        s.close()
        raw(redis, "PING")  # the end mark
        seen = b""
        while b'"PING"' not in seen:
            seen += monitor.recv(65536)
        monitor.close()
        commands = re.findall(rb'\] "(\w+)"', seen)
        assert commands == [b"EVAL", b"HMGET", b"DEL", b"HSET", b"PEXPIRE", b"PING"]
        assert seen.count(b"127.0.0.1:") == 2  # EVAL and PING; the rest ran in Lua

    def test_open_store(self, redis):
        """open_store sends redis:// and unix:// URLs to the Redis store."""
        opened = store.open_store(redis.url, Timers())
        assert isinstance(opened, RedisStore)
        assert isinstance(store.open_store("unix:///run/redis.sock?db=1", Timers()), RedisStore)


class TestFailures:
    """Tests for a Redis that is down, slow or refuses us: StoreError, bounded in time."""

    def test_down(self, redis):
        """A stopped server is a StoreError naming the URL and the system error."""
        s = RedisStore(redis.url)
        redis.stop()
        with pytest.raises(StoreError) as error:
            s.check("k", T0)
        assert str(error.value) == "unable to use %s: connection refused" % redis.url

    def test_one_timeout_per_process(self):
        """A server that accepts and never answers costs one timeout; later calls fail at once."""
        import socket

        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            url = "redis://127.0.0.1:%d/0?socket_timeout=0.5" % silent.getsockname()[1]
            s = RedisStore(url)
            start = time.monotonic()
            with pytest.raises(StoreError) as error:
                s.check("k", T0)
            assert 0.4 < time.monotonic() - start < 5
            assert str(error.value).endswith(": timed out")
            start = time.monotonic()
            for method in (s.check, s.passed, s.peek, s.allow):
                with pytest.raises(StoreError):
                    method("k", T0)
            assert time.monotonic() - start < 0.4

    def test_paused_server(self, redis):
        """A server paused past the timeout is a failure, not a wait."""
        s = RedisStore(redis.url + "?socket_timeout=0.5")
        s.check("warm", T0)  # connected before the pause
        assert raw(redis, "CLIENT", "PAUSE", "3000", "ALL") == b"+OK\r\n"
        start = time.monotonic()
        try:
            with pytest.raises(StoreError, match="timed out"):
                s.check("k", T0)
            assert time.monotonic() - start < 2.5
        finally:
            raw(redis, "CLIENT", "UNPAUSE")

    def test_password_never_shown(self, redis):
        """A wrong password is reported without the password."""
        assert raw(redis, "CONFIG", "SET", "requirepass", "other") == b"+OK\r\n"
        s = RedisStore("redis://:secret@127.0.0.1:%d/0" % redis.port)
        try:
            with pytest.raises(StoreError) as error:
                s.check("k", T0)
        finally:
            redis.stop()  # the next test gets a server without a password
        assert str(error.value) == (
            "unable to use redis://127.0.0.1:%d/0:"
            " invalid username-password pair or user is disabled" % redis.port)

    def test_read_only_replica(self, redis, tmp_path):
        """A replica refuses the script's writes: a StoreError, as when Redis is down."""
        replica = RedisServer(tmp_path)
        try:
            assert raw(replica, "REPLICAOF", "127.0.0.1", str(redis.port)) == b"+OK\r\n"
            with pytest.raises(StoreError) as error:
                RedisStore(replica.url).check("k", T0)
            assert str(error.value) == (
                "unable to use %s: you can't write against a read only replica" % replica.url)
        finally:
            replica.stop()

    @pytest.mark.parametrize(
        "url, shown",
        [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://user:pw@10.0.0.1:6379/2?socket_timeout=1", "redis://10.0.0.1:6379/2"),
            ("unix://:pw@/run/redis.sock?db=1", "unix:///run/redis.sock"),
            ("rediss://h/0", "rediss://h/0"),
            # an @ or a / left unescaped in a password: parse_url splits at
            # the last @, and so must the name shown
            ("redis://:pa@ss@h/0", "redis://h/0"),
            ("unix://:x@y@/s", "unix:///s"),
            ("redis://:pa/ss@h:99999/0", "redis://h:99999/0"),
            # a ? before the last @: in the password or the options
            ("redis://:se?cret@h:6379/0", "redis://..."),
            ("redis://:se?cr@et@h/0", "redis://..."),
            ("redis://h/0?password=se@cret", "redis://..."),
            ("unix://:se?cret@/run/redis.sock", "unix://..."),
        ],
    )
    def test_describe_url(self, url, shown):
        """Messages show the URL without its password or options."""
        assert describe_url(url) == shown

    @pytest.mark.parametrize(
        "url, message",
        [
            ("redis://127.0.0.1:notaport/0", "invalid store redis://127.0.0.1:notaport/0: bad port"),
            ("redis://127.0.0.1:6379/0?socket_timeout=x",
             "invalid store redis://127.0.0.1:6379/0: bad value for socket_timeout"),
            ("redis://127.0.0.1:6379/0?timeout=1",
             "invalid store redis://127.0.0.1:6379/0: unknown option timeout"),
            ("redis://:pa/ss@127.0.0.1:99999/0", "invalid store redis://127.0.0.1:99999/0:"
             " an @ after a / or ?: write / ? @ in a password as %2F %3F %40"),
            ("redis://:se?cret@127.0.0.1:6379/0", "invalid store redis://...:"
             " an @ after a / or ?: write / ? @ in a password as %2F %3F %40"),
        ],
    )
    def test_bad_url(self, url, message):
        """A URL that cannot be parsed or used is a StoreError at first use, not a crash."""
        s = RedisStore(url)
        with pytest.raises(StoreError) as error:
            s.check("k", T0)
        assert str(error.value) == message


def _hammer(url, key, now, queue):
    s = RedisStore(url)
    queue.put([s.check(key, now).status for _ in range(20)])


class TestConcurrency:
    """Tests for many processes (many MX hosts) on one key at once."""

    def test_one_new_per_key(self, redis):
        """Of 8 processes checking one key 20 times each, exactly one check says new."""
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        workers = [ctx.Process(target=_hammer, args=(redis.url, "k", T0, queue)) for _ in range(8)]
        for w in workers:
            w.start()
        results = [queue.get(timeout=30) for _ in workers]
        for w in workers:
            w.join(30)
        statuses = [s for r in results for s in r]
        assert statuses.count("new") == 1
        assert statuses.count("wait") == 159

    def test_one_first_pass(self, redis):
        """Of 8 processes retrying after the delay, one sees pass and the rest known."""
        RedisStore(redis.url).check("k", T0)
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        workers = [ctx.Process(target=_hammer, args=(redis.url, "k", T0 + DELAY, queue))
                   for _ in range(8)]
        for w in workers:
            w.start()
        statuses = [s for _ in workers for s in queue.get(timeout=30)]
        for w in workers:
            w.join(30)
        assert statuses.count("pass") == 1 and statuses.count("known") == 159


# --- the program with a Redis store ---------------------------------------------


class TestTranscript:
    """Tests that run bin/greylist on a Redis store."""

    def test_first_deferred_retry_passes(self, redis):
        """--- a new network is deferred, its retry after the delay handed on."""
        argv = ["greylist", "-m", "1", redis.url, "echo", "handed on"]
        first = run_prog(argv, {"TCPREMOTEIP": "192.0.2.7"}, SESSION)
        assert first.out == refusal(b"451 greylisted, try again in 1 seconds (#4.7.1)")
        assert first.err == (
            b"greylist: 192.0.2.7 pid x: 451 greylisted, try again in 1 seconds (#4.7.1)"
            b" key=192.0.2.0/24 state=new\n")
        time.sleep(1.1)
        second = run_prog(argv, {"TCPREMOTEIP": "192.0.2.99"}, SESSION)
        assert (second.rc, second.out) == (0, b"handed on\n")
        assert re.fullmatch(
            rb"greylist: 192.0.2.99 pid x: pass key=192.0.2.0/24 state=pass age=\d+\n", second.err)

    def test_variable_selects_store(self, redis, tmp_path):
        """--- $QTOOLS_GREYLIST_STORE replaces dir for a connection, not for a command."""
        env = {"TCPREMOTEIP": "192.0.2.7", "QTOOLS_GREYLIST_STORE": redis.url}
        result = run_prog(["greylist", str(tmp_path), "echo"], env, SESSION)
        assert b"state=new" in result.err
        assert list(tmp_path.iterdir()) == []
        shown = run_prog(["greylist", "-q", redis.url], env)
        assert re.fullmatch(rb"192\.0\.2\.0/24 wait first=\S+Z left=\d+\n", shown.out)
        assert run_prog(["greylist", "-q", str(tmp_path)], env).out == b""

    def test_passes_trust(self, redis):
        """--- greylist -c 2 on Redis: a network counted an hour before is trusted at its next pass."""
        now = time.time()
        seed = RedisStore(redis.url)
        seed.check("192.0.2.0/24", now - 4000)
        assert seed.check("192.0.2.0/24", now - 3700, 2).passes == 1
        show = ["sh", "-c", 'echo "trust=$QTOOLS_TRUSTED"']
        result = run_prog(["greylist", "-c", "2", redis.url] + show, {"TCPREMOTEIP": "192.0.2.7"},
                          SESSION)
        assert (result.rc, result.out) == (0, b"trust=greylist:passed\n")
        assert result.err.endswith(b" state=known passes=2 trust=greylist:passed\n")
        shown = run_prog(["greylist", "-q", redis.url, "192.0.2.7"]).out
        assert re.fullmatch(rb"192\.0\.2\.0/24 known last=\S+Z passes=2\n", shown), shown

    def test_password_from_environment(self, redis):
        """--- a URL with the password in $QTOOLS_GREYLIST_STORE replaces one without it in argv."""
        assert raw(redis, "CONFIG", "SET", "requirepass", "pw") == b"+OK\r\n"
        try:
            argv = ["greylist", redis.url, "echo", "ok"]
            with_password = redis.url.replace("//", "//:pw@")
            env = {"TCPREMOTEIP": "192.0.2.7"}
            without = run_prog(argv, env, SESSION)
            assert without.out == b"ok\n" and b"why=failure" in without.err
            result = run_prog(argv, dict(env, QTOOLS_GREYLIST_STORE=with_password), SESSION)
            assert b"key=192.0.2.0/24 state=new" in result.err
            assert b"pw" not in without.err + result.err
        finally:
            redis.stop()

    def test_unescaped_password_never_logged(self, redis):
        """--- a password with a ? or / written as it is: refused, no part of it in the log."""
        for url in ("redis://:se?cret@127.0.0.1:%d/0", "redis://:se/cret@127.0.0.1:%d/0",
                    "redis://127.0.0.1:%d/0?password=se@cret"):
            url %= redis.port
            result = run_prog(["greylist", url, "echo", "ok"], {"TCPREMOTEIP": "192.0.2.7"}, SESSION)
            assert (result.rc, result.out) == (0, b"ok\n")
            assert b"an @ after a / or ?" in result.err
            for part in (b":se", b"=se", b"cret"):
                assert part not in result.err, (url, result.err)
            shown = run_prog(["greylist", "-q", url])
            assert shown.rc == 111 and b"cret" not in shown.err and b":se" not in shown.err

    def test_down_fails_open(self, redis):
        """--- a stopped Redis is warned about and the connection handed on."""
        redis.stop()
        result = run_prog(["greylist", redis.url, "echo", "ok"], {"TCPREMOTEIP": "192.0.2.7"})
        assert (result.rc, result.out) == (0, b"ok\n")
        assert result.err == (
            b"greylist: warning: unable to use %s: connection refused\n"
            b'greylist: 192.0.2.7 pid x: pass why=failure error="unable to use %s:'
            b' connection refused"\n' % (redis.url.encode(), redis.url.encode()))

    def test_down_fail_closed(self, redis):
        """--- with -f a stopped Redis means 451, never a 5xx."""
        redis.stop()
        result = run_prog(["greylist", "-f", redis.url, "echo", "ok"],
                          {"TCPREMOTEIP": "192.0.2.7"}, SESSION)
        assert result.out == refusal(b"451 temporary greylist failure, try again later (#4.3.0)")

    def test_relayclient_never_loads_redis(self, redis):
        """--- a client that needs no state neither loads the Redis client nor connects."""
        code = ("import sys; from qtools import core, greylist\n"
                "core.exec_program = lambda *args: None\n"
                "rc = greylist.main(['%s', 'true'], {'TCPREMOTEIP': '192.0.2.7', 'RELAYCLIENT': ''})\n"
                "print(rc, 'qtools.resp' in sys.modules)" % redis.url)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
        assert done.stdout == b"0 False\n"
        assert raw(redis, "DBSIZE") == b":0\r\n"

    def test_decision_loads_nothing_heavy(self, redis):
        """--- a decision on Redis stays in the connection paths' import budget (redis-py cost 100 ms)."""
        from test_imports import ALLOWED, HEAVY, PROFILE, imported

        bare = subprocess.run([sys.executable, "-c", "pass"], env=base_env(PROFILE),
                              capture_output=True, check=True)
        result = run_prog(["greylist", redis.url, "true"], dict(PROFILE, TCPREMOTEIP="192.0.2.7"))
        assert b"state=new" in result.err
        loaded = imported(result.err)
        over = sorted(m for m in loaded - imported(bare.stderr) - ALLOWED
                      if not m.startswith("qtools"))
        heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
        assert (over, heavy) == ([], []), result.err.decode("utf-8", "replace")
        assert "qtools.resp" in loaded

    def test_cli(self, redis):
        """--- -A, -q, -D and -P work on a Redis store."""
        allowed = run_prog(["greylist", "-A", redis.url, "192.0.2.7", "2001:db8::1"])
        assert allowed.rc == 0
        lines = allowed.out.decode().splitlines()
        assert re.fullmatch(r"192\.0\.2\.0/24 known last=\S+Z", lines[0])
        assert re.fullmatch(r"2001:db8::/64 known last=\S+Z", lines[1])
        shown = run_prog(["greylist", "-q", redis.url])
        assert sorted(shown.out.decode().splitlines()) == sorted(lines)
        denied = run_prog(["greylist", "-D", redis.url, "192.0.2.0/24"])
        assert re.fullmatch(rb"192\.0\.2\.0/24 wait first=\S+Z left=300\n", denied.out)
        purged = run_prog(["greylist", "-P", redis.url])
        assert (purged.rc, purged.out, purged.err) == (0, b"", b"")

    def test_move_from_directory(self, redis, tmp_path):
        """--- the man page's pipeline copies the passed networks of a directory to Redis."""
        run_prog(["greylist", "-A", str(tmp_path), "192.0.2.7", "2001:db8::1"])
        run_prog(["greylist", str(tmp_path), "true"], {"TCPREMOTEIP": "198.51.100.1"})
        script = ("greylist -q %s | awk '$2 == \"known\" { print $1 }' | xargs greylist -A %s"
                  % (tmp_path, redis.url))
        assert run_prog(["/bin/sh", "-c", script]).rc == 0
        shown = run_prog(["greylist", "-q", redis.url]).out.decode()
        assert sorted(line.split()[:2] for line in shown.splitlines()) == [
            ["192.0.2.0/24", "known"], ["2001:db8::/64", "known"]]

    def test_cli_down(self, redis):
        """--- a command on a stopped Redis is a temporary failure, and -P says so too."""
        redis.stop()
        for argv in (["-q", redis.url, "192.0.2.7"], ["-P", redis.url]):
            result = run_prog(["greylist"] + argv)
            assert (result.rc, result.err) == (
                111, b"greylist: fatal: unable to use %s: connection refused\n" % redis.url.encode())

    @pytest.mark.parametrize("stored", ["0x%x", "%d.0e0000x", "1e400"])
    def test_malformed_first_fails_open(self, redis, stored):
        """--- a value in Redis that is not one of our times is warned about; the client passes."""
        now = int(time.time())
        value = stored % now if "%" in stored else stored
        raw(redis, "HSET", PREFIX + "192.0.2.0/24", "first", value)
        result = run_prog(["greylist", redis.url, "echo", "ok"], {"TCPREMOTEIP": "192.0.2.7"}, SESSION)
        assert (result.rc, result.out) == (0, b"ok\n")
        lines = result.err.decode().splitlines()
        assert len(lines) == 2 and re.fullmatch(
            r"greylist: warning: unable to use %s: (malformed reply to EVAL: .*|.*attempt to perform"
            r" arithmetic.*)" % re.escape(redis.url), lines[0]), lines
        assert lines[1].startswith("greylist: 192.0.2.7 pid x: pass why=failure ")
        shown = run_prog(["greylist", "-q", redis.url, "192.0.2.7"])
        assert shown.rc == 111 and shown.err.startswith(
            b"greylist: fatal: unable to use %s: malformed reply to HMGET: " % redis.url.encode())

    @pytest.mark.parametrize("triplet", [False, True])
    def test_server_answering_ok_fails_open(self, triplet):
        """--- a server that answers +OK to everything, EVAL included, is warned about."""
        with OkServer() as fake:
            argv = ["greylist"] + (["-T"] if triplet else []) + [fake.url, "echo", "ok"]
            result = run_prog(argv, {"TCPREMOTEIP": "192.0.2.7"}, SESSION)
            assert (result.rc, result.out) == (0, b"ok\n")
            assert result.err.decode().splitlines() == [
                "greylist: warning: unable to use %s: malformed reply to EVAL: b'OK'" % fake.url,
                'greylist: 192.0.2.7 pid x: pass why=failure error="unable to use %s: malformed'
                " reply to EVAL: b'OK'\"" % fake.url]

    def test_error_text_is_cleaned(self):
        """--- a server's error text with NUL, control bytes and non-UTF-8 reaches the log clean."""
        with OkServer(b"-ERR evil\0\x1b[2J\xff\xfe text\r\n") as fake:
            result = run_prog(["greylist", fake.url, "echo", "ok"], {"TCPREMOTEIP": "192.0.2.7"}, SESSION)
            assert (result.rc, result.out) == (0, b"ok\n")
            assert result.err.decode().splitlines() == [
                "greylist: warning: unable to use %s: evil??[2J?? text" % fake.url,
                'greylist: 192.0.2.7 pid x: pass why=failure error="unable to use %s: evil??[2J??'
                ' text"' % fake.url]

    def test_decide_with_redis(self, greystore):
        """decide works on a Redis store as on a directory."""
        s = greystore()
        c = greylist.Config()
        packed = bytes([192, 0, 2, 7])
        from qtools import core

        client = core.Client("192.0.2.7", packed)
        assert greylist.decide(client, {}, c, s, T0).code == 451
        verdict = greylist.decide(client, {}, c, s, T0 + DELAY)
        assert verdict.action == "pass" and ("state", "pass") in verdict.why


# --- two MX hosts sharing one Redis -----------------------------------------------


@pytest.mark.e2e
class TestTwoMX:
    """Two tcpserver chains (two MX hosts) sharing one redis-server."""

    def test_deferred_on_a_accepted_on_b(self, redis, tcpserver, tmp_path):
        """Deferred on MX A, deferred on B before the delay, accepted on B after it, known on A."""
        mail_a, mail_b = tmp_path / "a", tmp_path / "b"
        mail_a.mkdir()
        mail_b.mkdir()
        a = tcpserver(["greylist", "-m", "5", redis.url] + sink_cmd(mail_a))
        b = tcpserver(["greylist", "-m", "5", redis.url] + sink_cmd(mail_b))
        assert send(a, "127.0.1.2") == (451, b"greylisted, try again in 5 seconds (#4.7.1)")
        code, text = send(b, "127.0.1.2")
        assert code == 451 and re.fullmatch(rb"greylisted, try again in [1-5] seconds \(#4.7.1\)", text)
        time.sleep(5.5)
        assert send(b, "127.0.1.3") is None
        assert send(a, "127.0.1.4") is None
        assert len(read_maildir(mail_a)) == len(read_maildir(mail_b)) == 1
        assert "state=new" in a.log() and "state=known" in a.log()
        assert "state=wait" in b.log() and "state=pass" in b.log()
        for log in (a.log(), b.log()):
            assert "warning" not in log and "Traceback" not in log

    def test_redis_stopped_mid_test(self, redis, tcpserver, tmp_path):
        """With Redis stopped, mail still flows on A with a warning; B with -f defers; a restart greylists again."""
        mail = tmp_path / "mail"
        mail.mkdir()
        a = tcpserver(["greylist", redis.url] + sink_cmd(mail))
        b = tcpserver(["greylist", "-f", redis.url] + sink_cmd(mail))
        assert send(a, "127.0.1.2")[0] == 451
        redis.stop()
        start = time.monotonic()
        assert send(a, "127.0.1.2") is None
        assert send(a, "127.0.2.2") is None
        assert time.monotonic() - start < 20
        assert send(b, "127.0.3.2") == (451, b"temporary greylist failure, try again later (#4.3.0)")
        warning = "greylist: warning: unable to use %s: connection refused" % redis.url
        for server, ip, action in ((a, "127.0.1.2", "pass"), (a, "127.0.2.2", "pass"),
                                   (b, "127.0.3.2", "451 temporary greylist failure")):
            log = mask_pids(server.log().encode()).decode()
            assert "greylist: %s pid x: %s" % (ip, action) in log
            # One warning a failed decision (tcpserver's start-up probe from
            # 127.0.0.1 may be decided late, and then fails too).
            assert log.count(warning) == log.count("why=failure") >= 1
        assert len(read_maildir(mail)) == 2
        redis.start()
        assert send(a, "127.0.4.2")[0] == 451
        assert "Traceback" not in a.log() + b.log()

    def test_triplets_shared(self, redis, tcpserver, tmp_path):
        """In triplet mode a triplet deferred on A is accepted on B, then its network passes on A."""
        mail = tmp_path / "mail"
        mail.mkdir()
        a = tcpserver(["greylist", "-T", "-m", "3", redis.url] + sink_cmd(mail))
        b = tcpserver(["greylist", "-T", "-m", "3", redis.url] + sink_cmd(mail))
        assert send(a, "127.0.1.2") == (451, b"greylisted, try again in 3 seconds (#4.7.1)")
        time.sleep(3.5)
        assert send(b, "127.0.1.3") is None
        assert send(a, "127.0.1.4", sender="other@example.org") is None
        assert 'key="127.0.1.0/24 a@example.org b@example.net" state=pass' in b.log()
        assert "key=127.0.1.0/24 state=known" in a.log()
        assert len(read_maildir(mail)) == 2


class OkServer:
    """A server on a loopback port that answers +OK (or reply) to every RESP command."""

    def __init__(self, reply=b"+OK\r\n"):
        self.reply = reply
        import socket
        import threading

        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.url = "redis://127.0.0.1:%d/0" % self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import threading

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        buffer = b""
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                while True:
                    size = _command_size(buffer)
                    if size is None:
                        break
                    buffer = buffer[size:]
                    conn.sendall(self.reply)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.listener.close()


def _command_size(buffer):
    """Return the length of the first complete RESP command in buffer, or None."""
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    count, at = int(buffer[1:end]), end + 2
    for _ in range(count):
        end = buffer.find(b"\r\n", at)
        if end < 0:
            return None
        at = end + 2 + int(buffer[at + 1 : end]) + 2
        if at > len(buffer):
            return None
    return at
