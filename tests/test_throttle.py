# SPDX-License-Identifier: ISC
"""throttle: decide() with an injected store and clock, the stores, transcripts, tcpserver."""

import concurrent.futures
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import base_env, make_client, read_maildir, run_prog, sink_cmd, VENV_BIN
from qtools.address import read
from qtools import core, throttle
from qtools.throttlestore import Admission, DirStore, StoreError

T0 = 1_700_000_040.0  # the start of a 60-second window
TOO_MANY = throttle.TOO_MANY


def config(**kwargs):
    c = throttle.Config()
    for name, value in kwargs.items():
        setattr(c, name, value)
    return c


class FakeStore:
    """A store that answers admit with a given Admission and records the calls."""

    def __init__(self, answer=None, error=None):
        self.answer = answer or Admission("ok", 1, 1, 1.0)
        self.error = error
        self.calls = []

    def admit(self, *args):
        self.calls.append(args)
        if self.error:
            raise StoreError(self.error)
        return self.answer

    def count(self, net, kind, limit, window, now):
        self.calls.append((net, kind, limit, window, now))
        if self.error:
            raise StoreError(self.error)
        return self.answer.rate


# --- decide -------------------------------------------------------------------


class TestDecide:
    @pytest.mark.parametrize(
        "environ, kwargs, why",
        [
            ({"RELAYCLIENT": ""}, {}, "relayclient"),
            ({"WHITELISTED": ""}, {}, "whitelisted"),
            ({"QTOOLS_TRUSTED": "rblcheck:dnswl.test", "QTOOLS_THROTTLE": "no"}, {}, "trusted"),
            ({"QTOOLS_THROTTLE": ""}, {}, "override"),
            ({}, {"maxip": 0}, "nolimits"),
        ],
    )
    def test_exemptions_never_ask_the_store(self, environ, kwargs, why):
        """RELAYCLIENT, WHITELISTED, the trust mark, an empty $QTOOLS_THROTTLE and no limits step aside."""
        store = FakeStore()
        c = config(**dict({"maxip": 5}, **kwargs))
        relay = "RELAYCLIENT" in environ
        verdict = throttle.decide(make_client(relay=relay), environ, c, store, T0)
        assert verdict.action == "skip" and verdict.why[0] == ("why", why)
        assert verdict.why[1:] == ((("trust", "rblcheck:dnswl.test"),) if why == "trusted" else ())
        assert store.calls == []

    @pytest.mark.parametrize("text, code", [("slow down", 451), ("-go away", 553)])
    def test_override_refuses(self, text, code):
        verdict = throttle.decide(make_client(), {"QTOOLS_THROTTLE": text}, config(maxip=5),
                                  FakeStore(), T0)
        assert (verdict.action, verdict.code) == ("refuse", code)

    def test_pass_asks_with_the_limits_and_the_network(self):
        store = FakeStore(Admission("ok", 2, 3, 7.0))
        c = config(maxip=5, maxnet=10, connrate=60)
        verdict = throttle.decide(make_client("192.0.2.7"), {}, c, store, T0)
        assert store.calls == [("192.0.2.7", "192.0.2.0/24", 5, 10, 60, 60, T0)]
        assert verdict == core.Verdict("pass", why=(
            ("net", "192.0.2.0/24"), ("ipconn", 2), ("netconn", 3), ("connrate", 7.0)))

    def test_v6_network_is_a_64(self):
        store = FakeStore()
        throttle.decide(make_client("2001:db8:1:2:3::4"), {}, config(maxnet=1), store, T0)
        assert store.calls[0][:2] == ("2001:db8:1:2:3::4", "2001:db8:1:2::/64")

    @pytest.mark.parametrize(
        "answer, why",
        [
            (Admission("ip", 5, 0), (("why", "maxconnip"), ("limit", 5), ("seen", 5))),
            (Admission("net", 1, 9), (("why", "maxconnnet"), ("limit", 9), ("seen", 9))),
            (Admission("rate", 1, 1, 60.0),
             (("why", "connrate"), ("limit", 60), ("seen", 60.0))),
        ],
    )
    def test_over_a_limit_is_421(self, answer, why):
        c = config(maxip=5, maxnet=9, connrate=60)
        verdict = throttle.decide(make_client(), {}, c, FakeStore(answer), T0)
        assert verdict.reply == TOO_MANY
        assert verdict.why[:3] == why

    @pytest.mark.parametrize("fail_closed, action, code", [(False, "pass", None),
                                                           (True, "refuse", 451)])
    def test_own_failure_is_never_5xx(self, fail_closed, action, code):
        verdict = throttle.decide(make_client(), {}, config(maxip=1, fail_closed=fail_closed),
                                  FakeStore(error="unable to lock x: i/o error"), T0)
        assert (verdict.action, verdict.code) == (action, code)
        assert dict(verdict.why)["why"] == "failure"

    def test_allowlist(self, tmp_path):
        cdb = str(tmp_path / "allow.cdb")
        assert run_prog(["qtools-mkcdb", "-n", cdb, cdb + ".tmp"], stdin=b"192.0.2.0/24\n").rc == 0
        from qtools.greylist import open_allowlist

        allow, store = open_allowlist(cdb), FakeStore()
        verdict = throttle.decide(make_client("192.0.2.9"), {}, config(maxip=1), store, T0, allow)
        assert verdict.why == (("why", "allowlist"), ("entry", "192.0.2.0/24"))
        verdict = throttle.decide(make_client("198.51.100.1"), {}, config(maxip=1), store, T0,
                                  allow)
        assert verdict.action == "pass" and len(store.calls) == 1
        missing = open_allowlist(str(tmp_path / "missing.cdb"))
        verdict = throttle.decide(make_client(), {}, config(maxip=1), store, T0, missing)
        assert (verdict.action, dict(verdict.why)["why"]) == ("pass", "failure")


class TestOptions:
    def test_variables_override_options(self):
        c, query, rest = throttle.parse(["-c", "3", "-w", "10", "/s", "prog"])
        assert (c.maxip, c.window, query, rest) == (3, 10, False, ["/s", "prog"])
        throttle.configure(c, {"THROTTLE_MAXCONNIP": "7", "THROTTLE_MAXCONNNET": "20",
                               "THROTTLE_CONNRATE": "60", "THROTTLE_MSGRATE": "",
                               "THROTTLE_RCPTRATE": "100", "THROTTLE_WINDOW": "300"})
        assert (c.maxip, c.maxnet, c.connrate, c.msgrate, c.rcptrate, c.window) == (
            7, 20, 60, 0, 100, 300)

    @pytest.mark.parametrize("name, value", [("THROTTLE_MAXCONNIP", "x"),
                                             ("THROTTLE_MAXCONNIP", "5000"),
                                             ("THROTTLE_WINDOW", "0"),
                                             ("THROTTLE_MSGRATE", "-1")])
    def test_bad_variable_is_fatal(self, name, value):
        with pytest.raises(core.Die) as caught:
            throttle.configure(config(), {name: value})
        assert caught.value.code == 100

    @pytest.mark.parametrize("argv", [[], ["/s"], ["-q", "/s"], ["-c", "x", "/s", "p"],
                                      ["-w", "0", "/s", "p"], ["-c", "4097", "/s", "p"]])
    def test_usage(self, argv):
        with pytest.raises(core.Usage):
            throttle.parse(argv)


# --- the directory store ------------------------------------------------------------


def hold(root, ip="192.0.2.7", *limits):
    """Start a process that holds slots of ip in root; return it once it holds them."""
    argv = [os.path.join(VENV_BIN, "throttle")] + list(limits) + [str(root), "sh", "-c",
                                                                   "echo held; exec sleep 30"]
    process = subprocess.Popen(argv, env=base_env({"TCPREMOTEIP": ip}),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline() == b"held\n"
    return process


class TestDirStore:
    def test_windows_slide_with_the_clock(self, tmp_path):
        """60 a minute: the 61st is refused, half a window later half of the old count remains."""
        s = DirStore(str(tmp_path))
        for i in range(60):
            assert s.count("192.0.2.0/24", "conn", 60, 60, T0 + i * 0.5) == i
        assert s.count("192.0.2.0/24", "conn", 60, 60, T0 + 59) == 60  # refused, not counted
        # Next window, halfway: the previous 60 weigh 30.
        assert s.count("192.0.2.0/24", "conn", 60, 60, T0 + 90) == 30
        assert s.count("192.0.2.0/24", "conn", 60, 60, T0 + 90) == 31
        # Two windows later nothing is left.
        assert s.count("192.0.2.0/24", "conn", 60, 60, T0 + 180) == 0
        # Other kinds and networks have their own counts.
        assert s.count("192.0.2.0/24", "rcpt", 60, 60, T0 + 180) == 0
        assert s.count("198.51.100.0/24", "conn", 60, 60, T0 + 180) == 0

    def test_admit_counts_only_admitted_connections(self, tmp_path):
        s = DirStore(str(tmp_path))
        for _ in range(3):
            assert s.admit("192.0.2.7", "192.0.2.0/24", 0, 0, 3, 60, T0).status == "ok"
        got = s.admit("192.0.2.7", "192.0.2.0/24", 0, 0, 3, 60, T0)
        assert (got.status, got.rate) == ("rate", 3.0)
        assert s.query("192.0.2.7", "192.0.2.0/24", 60, T0)["conn"] == 3.0

    def test_a_full_group_forgets_its_oldest(self, tmp_path):
        """Networks that share a group of the table: the oldest window is overwritten."""
        from qtools import ratetable as throttlestore

        s = DirStore(str(tmp_path))
        group = throttlestore._group(b"10.0.0.0/24")
        same = [n for n in ("10.%d.%d.0/24" % (i // 256, i % 256) for i in range(200000))
                if throttlestore._group(n.encode()) == group][:throttlestore.GROUP + 1]
        for i, net in enumerate(same):
            s.count(net, "conn", 100, 60, T0 + i * 60)  # each in a later window
        last = T0 + len(same) * 60 - 60
        assert s.query("0.0.0.1", same[-1], 60, last)["conn"] == 1.0
        assert s.query("0.0.0.1", same[0], 60, last)["conn"] == 0.0

    def test_slots_are_held_by_other_processes(self, tmp_path):
        """A process holding the only slot makes the next one over the limit until it dies."""
        s = DirStore(str(tmp_path))
        holder = hold(tmp_path, "192.0.2.7", "-c", "1")
        try:
            assert s.admit("192.0.2.7", "192.0.2.0/24", 1, 0, 0, 60, T0).status == "ip"
            assert s.query("192.0.2.7", "192.0.2.0/24", 60, T0)["ip"] == [holder.pid]
            other = DirStore(str(tmp_path))
            assert other.admit("192.0.2.8", "192.0.2.0/24", 1, 0, 0, 60, T0).status == "ok"
            other.close()
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        assert s.admit("192.0.2.7", "192.0.2.0/24", 1, 0, 0, 60, T0).status == "ok"

    def test_net_limit_gives_the_ip_slot_back(self, tmp_path):
        holder = hold(tmp_path, "192.0.2.7", "-C", "1")
        try:
            s = DirStore(str(tmp_path))
            got = s.admit("192.0.2.8", "192.0.2.0/24", 1, 1, 0, 60, T0)
            assert got.status == "net"
            s.close()
            # The ip slot taken before the network was found full is free.
            assert run_prog(["throttle", "-q", str(tmp_path), "192.0.2.8"]).out.split()[2] == (
                b"ipconn=0")
        finally:
            holder.kill()
            holder.wait()

    @pytest.mark.parametrize("name", ["conn", "rate"])
    def test_symlink_and_hard_link_refused(self, tmp_path, name):
        """A file of the store that is a symlink or has a second name is not opened."""
        victim = tmp_path / "victim"
        victim.write_bytes(b"keep")
        store = tmp_path / "store"
        store.mkdir()
        (store / name).symlink_to(victim)
        s = DirStore(str(store))
        with pytest.raises(StoreError, match="unable to open"):
            s.admit("192.0.2.7", "192.0.2.0/24", 1, 0, 1, 60, T0)
        (store / name).unlink()
        os.link(str(victim), str(store / name))
        with pytest.raises(StoreError, match="not a plain file with one link"):
            s.admit("192.0.2.7", "192.0.2.0/24", 1, 0, 1, 60, T0)
        assert victim.read_bytes() == b"keep"

    @pytest.mark.parametrize("name", ["conn", "rate"])
    def test_a_fifo_in_the_store_does_not_hold_query(self, tmp_path, name):
        """throttle -q opens read-only: a FIFO the store's owner made is refused, not waited on."""
        os.mkfifo(str(tmp_path / name))
        done = run_prog(["throttle", "-q", str(tmp_path), "192.0.2.7"], timeout=10)
        assert done.rc == 111
        assert b"not a plain file with one link" in done.err

    def test_decision_time_does_not_grow_with_clients(self, tmp_path):
        """The table holds a fixed size: the file never grows past it."""
        from qtools import ratetable as throttlestore

        s = DirStore(str(tmp_path))
        for i in range(2000):
            s.count("10.%d.%d.0/24" % (i // 256, i % 256), "conn", 10, 60, T0)
        size = os.path.getsize(str(tmp_path / "rate"))
        assert size <= throttlestore.GROUPS * throttlestore.GROUP * throttlestore.RECORD


# --- the program ---------------------------------------------------------------------


SESSION = (b"HELO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
           b"RCPT TO:<c@example.com>\r\nRCPT TO:<d@example.com>\r\nQUIT\r\n")


class TestProgram:
    def test_421_and_hang_up_before_the_next_program(self, tmp_path):
        holder = hold(tmp_path, "192.0.2.7", "-c", "1")
        try:
            result = run_prog(["throttle", "-c", "1", str(tmp_path), "sh", "-c", "echo ran"],
                              env={"TCPREMOTEIP": "192.0.2.7"})
        finally:
            holder.kill()
            holder.wait()
        assert (result.rc, result.out) == (0, (TOO_MANY + "\r\n").encode())
        assert result.err == (
            b"throttle: 192.0.2.7 pid x: " + TOO_MANY.encode()
            + b" why=maxconnip limit=1 seen=1 net=192.0.2.0/24\n")

    def test_pass_log_line_and_hand_off(self, tmp_path):
        result = run_prog(["throttle", "-c", "2", "-C", "3", "-r", "10", str(tmp_path),
                           "sh", "-c", "echo ran"], env={"TCPREMOTEIP": "192.0.2.7"})
        assert (result.rc, result.out) == (0, b"ran\n")
        assert result.err == (b"throttle: 192.0.2.7 pid x: pass net=192.0.2.0/24 ipconn=1"
                              b" netconn=1 connrate=1\n")

    def test_query(self, tmp_path):
        run_prog(["throttle", "-r", "10", str(tmp_path), "true"], env={"TCPREMOTEIP": "192.0.2.7"})
        holder = hold(tmp_path, "192.0.2.8", "-c", "2", "-C", "2")
        try:
            result = run_prog(["throttle", "-q", str(tmp_path), "192.0.2.7", "::ffff:192.0.2.8"])
        finally:
            holder.kill()
            holder.wait()
        assert result.out.decode().splitlines() == [
            "192.0.2.7 net=192.0.2.0/24 ipconn=0 netconn=1 connrate=1.0 msgrate=0.0"
            " rcptrate=0.0 window=60",
            "192.0.2.8 net=192.0.2.0/24 ipconn=1 netconn=1 connrate=1.0 msgrate=0.0"
            " rcptrate=0.0 window=60"]
        bad = run_prog(["throttle", "-q", str(tmp_path), "nonsense"])
        assert bad.rc == 100 and b"invalid address: nonsense" in bad.err

    def test_network_prefixes(self, tmp_path):
        """-4 and -6 set what a network is, for the limits and for -q."""
        result = run_prog(["throttle", "-4", "16", "-6", "48", "-q", str(tmp_path),
                           "192.0.2.7", "2001:db8:1:2::9"])
        assert [line.split()[1] for line in result.out.decode().splitlines()] == [
            "net=192.0.0.0/16", "net=2001:db8:1::/48"]
        result = run_prog(["throttle", "-6", "48", "-C", "1", str(tmp_path), "true"],
                          env={"TCPREMOTEIP": "2001:db8:1:2::9"})
        assert result.err == b"throttle: 2001:db8:1:2::9 pid x: pass net=2001:db8:1::/48 netconn=1\n"

    def test_query_of_an_empty_store(self, tmp_path):
        result = run_prog(["throttle", "-q", str(tmp_path), "2001:db8::1"])
        assert result.rc == 0
        assert result.out.startswith(b"2001:db8::1 net=2001:db8::/64 ipconn=0 netconn=0 ")
        assert os.listdir(str(tmp_path)) == []
        missing = run_prog(["throttle", "-q", str(tmp_path / "missing"), "192.0.2.7"])
        assert (missing.rc, missing.out) == (111, b"")
        assert missing.err == b"throttle: fatal: unable to open %s: no such file or directory\n" % (
            str(tmp_path / "missing").encode())

    @pytest.mark.parametrize("flags, rc, out, warning", [
        ([], 0, b"ran\n", True),
        (["-f"], 0, b"220 ", True),
    ])
    def test_missing_store(self, tmp_path, flags, rc, out, warning):
        """Our own failure lets the client through with a warning, or 451 with -f; never 5xx."""
        result = run_prog(["throttle", "-c", "1"] + flags + [str(tmp_path / "missing"),
                          "sh", "-c", "echo ran"], env={"TCPREMOTEIP": "192.0.2.7"},
                          stdin=b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nQUIT\r\n")
        assert result.rc == rc and result.out.startswith(out)
        assert b"throttle: warning: unable to open " in result.err
        if flags:
            assert b"451 " + throttle.FAILED.encode() in result.out
            assert b"\r\n5" not in result.out

    def test_relayclient_passes_without_a_store(self, tmp_path):
        result = run_prog(["throttle", "-c", "1", str(tmp_path / "missing"), "true"],
                          env={"TCPREMOTEIP": "192.0.2.7", "RELAYCLIENT": ""})
        assert result.rc == 0
        assert result.err == b"throttle: 192.0.2.7 pid x: skip why=relayclient\n"

    def test_trusted_passes_without_a_store(self, tmp_path):
        result = run_prog(["throttle", "-c", "1", str(tmp_path / "missing"), "true"],
                          env={"TCPREMOTEIP": "192.0.2.7", "QTOOLS_TRUSTED": "greylist:passed"})
        assert result.rc == 0
        assert result.err == (b"throttle: 192.0.2.7 pid x: skip why=trusted"
                              b" trust=greylist:passed\n")

    def test_messages_and_recipients_counted_in_the_proxy(self, tmp_path):
        """Two recipients a window: the third RCPT gets 451, the rest of the session goes on."""
        store, mail = tmp_path / "s", tmp_path / "mail"
        store.mkdir()
        mail.mkdir()
        argv = ["throttle", "-R", "2", "-m", "1", str(store), "validrcptto"] + sink_cmd(mail)
        result = run_prog(argv, env={"TCPREMOTEIP": "192.0.2.7"}, stdin=SESSION)
        replies = [line[:3] for line in result.out.split(b"\r\n") if line]
        assert replies == [b"220", b"250", b"250", b"250", b"250", b"451", b"221"]
        assert (throttle.RCPTS + "\r\n").encode() in result.out
        assert (b"throttle: 192.0.2.7 pid x: " + throttle.RCPTS.encode()
                + b" why=rcptrate limit=2 seen=2 net=192.0.2.0/24 window=60\n") in result.err
        # The second session's MAIL is over one message a minute.
        result = run_prog(argv, env={"TCPREMOTEIP": "192.0.2.9"}, stdin=SESSION)
        assert (throttle.MAILS + "\r\n").encode() in result.out
        assert b"why=mailrate limit=1 seen=1" in result.err

    def test_authenticated_sessions_are_not_counted(self):
        class Session:
            authenticated, mail_from = True, b"a@b"

        limits = throttle.Limits(config(msgrate=1, rcptrate=1), FakeStore(error="x"), "n")
        assert limits.command(Session(), b"mail", read(b"MAIL FROM:<a@b>")) is None

    def test_trusted_sessions_are_not_counted(self):
        """The trust mark a later program of the chain set (rblcheck -a) spares the rate limits."""
        class Session:
            authenticated, mail_from = False, b"a@b"
            environ = {"QTOOLS_TRUSTED": "rblcheck:dnswl.test"}

        limits = throttle.Limits(config(msgrate=1, rcptrate=1), FakeStore(error="x"), "n")
        assert limits.command(Session(), b"mail", read(b"MAIL FROM:<a@b>")) is None
        assert limits.command(Session(), b"rcpt", read(b"RCPT TO:<c@d>")) is None

    @pytest.mark.parametrize("fail_closed, reply", [(False, None), (True, b"451 ")])
    def test_proxy_store_failure(self, fail_closed, reply):
        class Session:
            authenticated, mail_from = False, b"a@b"
            environ = {}
            logged = []

            def log(self, verdict, fields=()):
                self.logged.append(verdict)

        limits = throttle.Limits(config(rcptrate=1, fail_closed=fail_closed),
                                 FakeStore(error="unable to update x: i/o error"), "n")
        got = limits.command(Session(), b"rcpt", read(b"RCPT TO:<c@d>"))
        assert (got if got is None else got[:4]) == reply


# --- under the real tcpserver ------------------------------------------------------------


def greet(server, timeout=20):
    """Connect and return (socket, first reply line); the socket stays open."""
    s = socket.create_connection((server.host, server.port), timeout=timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(1024)
        if not chunk:
            break
        data += chunk
    return s, data


def idle(store, server=None, ip="127.0.0.1"):
    """Wait until nothing holds a slot of ip.

    With server, first wait for the decision on tcpserver's start-up probe,
    which comes from 127.0.0.1 too and would take a slot of its own.
    """
    deadline = time.monotonic() + 10
    while server is not None and "throttle: 127.0.0.1 pid" not in server.log():
        if time.monotonic() > deadline:
            pytest.fail("no decision on the start-up probe")
        time.sleep(0.05)
    while time.monotonic() < deadline:
        out = run_prog(["throttle", "-q", str(store), ip]).out
        if b" ipconn=0 netconn=0 " in out:
            return
        time.sleep(0.1)
    pytest.fail("slots still held: %r" % out)


def storm(server, count):
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: greet(server), range(count)))


def closed_after_421(s):
    s.settimeout(10)
    return s.recv(1024) == b""


def serve(tmp_path, tcpserver, limit, store=None):
    """Start tcpserver running throttle -c limit in front of the sink; return (server, store).

    Without a store (a Redis URL), a new directory.  Returns once the
    start-up probe's slot is free again.
    """
    if store is None:
        store = tmp_path / "s"
        store.mkdir()
    mail = tmp_path / "mail"
    mail.mkdir(exist_ok=True)
    server = tcpserver(["throttle", "-c", str(limit), str(store)] + sink_cmd(mail))
    idle(store, server)
    return server, store


class TestTcpserver:
    def test_thirty_parallel_connections_five_reach_the_sink(self, tmp_path, tcpserver):
        server, store = serve(tmp_path, tcpserver, 5)
        got = storm(server, 30)
        try:
            firsts = sorted(line[:4] for _, line in got)
            assert firsts == [b"220 "] * 5 + [b"421 "] * 25
            assert all(closed_after_421(s) for s, line in got if line.startswith(b"421"))
            # The five live ones hold their slots: a newcomer is refused.
            s, line = greet(server)
            s.close()
            assert line == (TOO_MANY + "\r\n").encode()
        finally:
            for s, _ in got:
                s.close()
        idle(store)
        # Their ends gave the slots back: five more come in.
        again = storm(server, 5)
        assert [line[:4] for _, line in again] == [b"220 "] * 5
        for s, _ in again:
            s.sendall(b"QUIT\r\n")
            s.close()
        log = server.log()
        assert log.count("why=maxconnip limit=5 seen=5") == 26
        assert "Traceback" not in log and "fatal" not in log

    def test_killed_connections_release_their_slots(self, tmp_path, tcpserver):
        server, store = serve(tmp_path, tcpserver, 3)
        got = storm(server, 3)
        assert greet(server)[1] == (TOO_MANY + "\r\n").encode()
        pids = [int(line.split(" pid ")[1].split(":")[0]) for line in server.log().splitlines()
                if line.startswith("throttle: 127.0.0.1 pid") and " pass " in line]
        for pid in pids[-3:]:
            os.kill(pid, signal.SIGKILL)
        for s, _ in got:
            s.close()
        idle(store)
        assert [line[:4] for _, line in storm(server, 3)] == [b"220 "] * 3

    def test_two_tcpservers_share_one_redis_limit(self, tmp_path, tcpserver, redis):
        one, two = (serve(tmp_path, tcpserver, 4, redis.url)[0] for _ in "12")
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            got = list(pool.map(lambda i: greet(one if i % 2 else two), range(20)))
        try:
            assert sorted(line[:4] for _, line in got) == [b"220 "] * 4 + [b"421 "] * 16
        finally:
            for s, _ in got:
                s.close()
        idle(redis.url)  # the watchers gave the slots back
        assert sorted(greet(server)[1][:4] for server in (one, two, one, two)) == [b"220 "] * 4

    def test_redis_slot_of_a_killed_connection(self, tmp_path, tcpserver, redis):
        server, _ = serve(tmp_path, tcpserver, 1, redis.url)
        s, line = greet(server)
        assert line.startswith(b"220 ")
        assert greet(server)[1] == (TOO_MANY + "\r\n").encode()
        pid = [int(x.split(" pid ")[1].split(":")[0]) for x in server.log().splitlines()
               if x.startswith("throttle: 127.0.0.1 pid") and " pass " in x][-1]
        os.kill(pid, signal.SIGKILL)
        s.close()
        idle(redis.url)
        assert greet(server)[1].startswith(b"220 ")


# --- the Redis store ---------------------------------------------------------------------


class TestRedisStore:
    def test_limits_rates_and_leases(self, redis):
        from qtools.throttleredis import RedisStore

        a, b = RedisStore(redis.url, lease=30), RedisStore(redis.url, lease=30)
        assert a.admit("192.0.2.7", "192.0.2.0/24", 1, 2, 0, 60, T0).status == "ok"
        assert b.admit("192.0.2.7", "192.0.2.0/24", 1, 2, 0, 60, T0).status == "ip"
        got = b.admit("192.0.2.8", "192.0.2.0/24", 1, 2, 0, 60, T0)
        assert (got.status, got.ip, got.net) == ("ok", 1, 2)
        c = RedisStore(redis.url, lease=30)
        assert c.admit("192.0.2.9", "192.0.2.0/24", 1, 2, 0, 60, T0).status == "net"
        # a's lease ends unrenewed; renewing b keeps its slot.
        b.renew(T0 + 20)
        assert c.admit("192.0.2.9", "192.0.2.0/24", 1, 2, 0, 60, T0 + 31).status == "ok"
        assert c.admit("192.0.2.10", "192.0.2.0/24", 1, 2, 0, 60, T0 + 31).status == "net"
        b.renew(T0 + 31, release=True)
        assert c.query("192.0.2.8", "192.0.2.0/24", 60, T0 + 32)["net"] == [c.token]

    def test_windows_slide_with_the_clock(self, redis):
        from qtools.throttleredis import RedisStore

        s = RedisStore(redis.url)
        for i in range(10):
            assert s.count("192.0.2.0/24", "rcpt", 10, 60, T0 + i) == i
        assert s.count("192.0.2.0/24", "rcpt", 10, 60, T0 + 30) == 10
        assert s.count("192.0.2.0/24", "rcpt", 10, 60, T0 + 90) == 5.0
        assert s.admit("192.0.2.7", "192.0.2.0/24", 0, 0, 1, 60, T0).status == "ok"
        assert s.admit("192.0.2.7", "192.0.2.0/24", 0, 0, 1, 60, T0).status == "rate"

    def test_redis_down_fails_open(self, tmp_path):
        from conftest import free_port

        url = "redis://127.0.0.1:%d/0" % free_port()
        result = run_prog(["throttle", "-c", "1", url, "sh", "-c", "echo ran"],
                          env={"TCPREMOTEIP": "192.0.2.7"})
        assert (result.rc, result.out) == (0, b"ran\n")
        assert b"throttle: warning: unable to use redis://127.0.0.1:" in result.err
        assert b"pass why=failure" in result.err


def test_import_budget(tmp_path):
    """Under its limits, throttle loads nothing outside the connection path's budget."""
    import sys

    from test_imports import ALLOWED, HEAVY, PROFILE, imported

    bare = subprocess.run([sys.executable, "-c", "pass"], env=base_env(PROFILE),
                          capture_output=True, check=True)
    argv = ["throttle", "-c", "5", "-C", "10", "-r", "60", str(tmp_path), "true"]
    run = run_prog(argv, env=dict(PROFILE, TCPREMOTEIP="192.0.2.7"))
    assert run.rc == 0, run
    loaded = imported(run.err)
    assert "qtools.throttlestore" in loaded
    over = sorted(m for m in loaded - imported(bare.stderr) - ALLOWED if not m.startswith("qtools"))
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert (over, heavy) == ([], [])


def test_redis_watcher_renews_while_the_connection_lives(redis):
    """The lease outlives its length while the pipe is open and is given back when it closes."""
    from qtools.throttleredis import RedisStore

    s = RedisStore(redis.url, lease=0.6)
    assert s.admit("192.0.2.7", "192.0.2.0/24", 1, 1, 0, 60, time.time()).status == "ok"
    s.keep()
    try:
        time.sleep(1.5)  # more than two leases: only renewals keep the slot
        found = s.query("192.0.2.7", "192.0.2.0/24", 60, time.time())
        assert (found["ip"], found["net"]) == ([s.token], [s.token])
    finally:
        os.close(s._pipe)  # the connection ends
    deadline = time.monotonic() + 5
    while s.query("192.0.2.7", "192.0.2.0/24", 60, time.time())["ip"]:
        assert time.monotonic() < deadline, "the watcher did not give the slot back"
        time.sleep(0.02)
    # Given back, not expired: the set is empty well before the lease ends.
    assert redis.command(b"ZCARD", b"qtools:throttle:ip:192.0.2.7") == b":0\r\n"


def test_recipient_rate_shared_by_two_tcpservers(tmp_path, tcpserver, redis):
    """Three recipients a minute for the network, counted on both MX hosts together."""
    import smtplib

    mail = tmp_path / "mail"
    mail.mkdir()
    argv = ["throttle", "-R", "3", redis.url] + sink_cmd(mail)
    servers = [tcpserver(argv), tcpserver(argv)]
    codes = []
    for i in range(5):
        server = servers[i % 2]
        with smtplib.SMTP(server.host, server.port, timeout=20) as client:
            client.ehlo("client.example")
            client.mail("a@example.org")
            codes.append(client.rcpt("b%d@example.com" % i))
    assert [code for code, _ in codes] == [250, 250, 250, 451, 451]
    assert codes[3][1] == throttle.RCPTS[4:].encode()


WORKER = """
import os, sys
from qtools.throttlestore import DirStore
s = DirStore(sys.argv[1])
while True:
    s.count("192.0.2.0/24", "rcpt", 10 ** 9, 3600, 1_700_000_000.0)
    os.write(1, b".")
"""


def test_rate_table_loses_no_update_when_writers_are_killed(tmp_path):
    """Writers SIGKILLed at random points: every counted update is there, none twice."""
    import random
    import sys

    rng = random.Random(18)
    counted = kills = 0
    for _ in range(12):
        workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)],
                                    stdout=subprocess.PIPE) for _ in range(3)]
        time.sleep(rng.uniform(0.2, 0.4))
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
            counted += len(worker.stdout.read())
            worker.wait()
            kills += 1
    assert counted > 100, "the workers did not run"
    found = DirStore(str(tmp_path)).query("192.0.2.7", "192.0.2.0/24", 3600, 1_700_000_000.0)
    # A writer killed after its pwrite but before it said so counts one more.
    assert counted <= found["rcpt"] <= counted + kills
