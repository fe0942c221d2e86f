# SPDX-License-Identifier: ISC
"""Tests for `qtools.greylist`: decide, the program's transcript, real tcpserver sessions."""

import concurrent.futures
import os
import re
import sys
import time

import cdblib
import pytest
from conftest import read_maildir, run_prog, sink_cmd, smtp_from, make_client as client

from qtools import core, greylist
from qtools.address import read
from qtools.cdb import Reader
from qtools.store import DirStore, State, StoreError, Timers

T0 = 1795305600 + 3 * 3600
DEFER = "greylisted, try again in %d seconds (#4.7.1)"


def config(**changes):
    c = greylist.Config()
    for name, value in changes.items():
        setattr(c, name, value)
    return c


def allowlist(tmp_path, entries):
    """Build a network/host list cdb the way qtools-mkcdb -n lays it out."""
    path = str(tmp_path / "allow.cdb")
    bits = {4: set(), 6: set()}
    with open(path, "wb") as f:
        writer = cdblib.Writer(f)
        for key in entries:
            writer.put(key.encode(), b"")
            if "/" in key:
                bits[6 if ":" in key else 4].add(int(key.split("/")[1]))
        for family, found in bits.items():
            if found:
                text = ",".join(str(b) for b in sorted(found, reverse=True))
                writer.put(b"\0bits%d" % family, text.encode())
        writer.finalize()
    return Reader(path)


class FailingStore:
    """A store whose every change fails, like a full or read-only disk."""

    def check(self, key, now, most=0):
        raise StoreError("unable to create /var/qmail/greylist/grey: read-only file system")


class TestDecide:
    """Tests for `greylist.decide`."""

    @pytest.mark.parametrize(
        "environ, kwargs, expected",
        [
            ({}, {"relay": True}, core.Verdict("skip", why=(("why", "relayclient"),))),
            ({"WHITELISTED": ""}, {}, core.Verdict("skip", why=(("why", "whitelisted"),))),
            (
                {"QTOOLS_TRUSTED": "rblcheck:dnswl.test", "QTOOLS_GREYLIST": "go away"},
                {},
                core.Verdict("skip", why=(("why", "trusted"), ("trust", "rblcheck:dnswl.test"))),
            ),
            ({"QTOOLS_GREYLIST": ""}, {}, core.Verdict("skip", why=(("why", "override"),))),
            (
                {"QTOOLS_GREYLIST": "go away"},
                {},
                core.Verdict("refuse", 451, "go away", (("why", "override"),)),
            ),
            (
                {"QTOOLS_GREYLIST": "-go away"},
                {},
                core.Verdict("refuse", 553, "go away", (("why", "override"),)),
            ),
        ],
    )
    def test_skips_and_override(self, tmp_path, environ, kwargs, expected):
        """RELAYCLIENT, WHITELISTED, the trust mark and the override variable come before the store."""
        s = DirStore(str(tmp_path))
        assert greylist.decide(client(**kwargs), environ, config(), s, T0) == expected
        assert os.listdir(str(tmp_path)) == []

    def test_new_network_deferred(self, tmp_path):
        """A first connection is deferred with the delay in the text."""
        s = DirStore(str(tmp_path))
        verdict = greylist.decide(client(), {}, config(), s, T0)
        assert verdict == core.Verdict(
            "refuse", 451, DEFER % 300, (("key", "192.0.2.0/24"), ("state", "new"))
        )

    @pytest.mark.parametrize(
        "offset, action, text, state",
        [
            (1, "refuse", DEFER % 299, "wait"),
            (299, "refuse", DEFER % 1, "wait"),
            (299.5, "refuse", DEFER % 1, "wait"),
            (300, "pass", "", "pass"),
            (86399, "pass", "", "pass"),
            (86400, "refuse", DEFER % 300, "new"),
        ],
    )
    def test_retry(self, tmp_path, offset, action, text, state):
        """A retry is deferred until the delay is over, within the window."""
        s = DirStore(str(tmp_path))
        greylist.decide(client(), {}, config(), s, T0)
        verdict = greylist.decide(client("192.0.2.200"), {}, config(), s, T0 + offset)
        assert (verdict.action, verdict.text, dict(verdict.why)["state"]) == (action, text, state)

    @pytest.mark.parametrize(
        "first, second, kwargs, same",
        [
            ("192.0.2.7", "192.0.2.99", {}, True),
            ("192.0.2.7", "192.0.3.7", {}, False),
            ("192.0.2.7", "::ffff:192.0.2.8", {}, True),
            ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", {}, True),
            ("2001:db8:1:2::1", "2001:db8:1:3::1", {}, False),
            ("192.0.2.7", "192.0.2.8", {"v4": 32, "v6": 128}, False),
            ("2001:db8::1", "2001:db8::2", {"v4": 32, "v6": 128}, False),
            ("192.0.2.7", "192.0.3.7", {"v4": 16}, True),
            ("2001:db8:1:2::1", "2001:db8:1:3::1", {"v6": 48}, True),
        ],
    )
    def test_network_grouping(self, tmp_path, first, second, kwargs, same):
        """Clients of one /24 (v4) or /64 (v6) share a key unless told otherwise."""
        s = DirStore(str(tmp_path))
        c = config(**kwargs)
        greylist.decide(client(first), {}, c, s, T0)
        greylist.decide(client(first), {}, c, s, T0 + 300)
        verdict = greylist.decide(client(second), {}, c, s, T0 + 301)
        assert (verdict.action == "pass") is same

    def test_exact_ip_key(self, tmp_path):
        """The exact-IP key names the address alone."""
        s = DirStore(str(tmp_path))
        verdict = greylist.decide(client("2001:db8::1"), {}, config(v4=32, v6=128), s, T0)
        assert dict(verdict.why)["key"] == "2001:db8::1/128"

    @pytest.mark.parametrize(
        "marks, selective, action",
        [
            (None, True, "skip"),
            ("", True, "skip"),
            ("rhostcheck:nordns", True, "refuse"),
            ("rblcheck:bl.example rhostcheck:dynamic", True, "refuse"),
            (None, False, "refuse"),
        ],
    )
    def test_selective(self, tmp_path, marks, selective, action):
        """Selective mode greylists only clients an earlier program marked."""
        environ = {} if marks is None else {"QTOOLS_SUSPECT": marks}
        s = DirStore(str(tmp_path))
        verdict = greylist.decide(client(), environ, config(selective=selective), s, T0)
        assert verdict.action == action

    def test_marks_logged(self, tmp_path):
        """The marks that made a client suspect are in the log fields."""
        environ = {"QTOOLS_SUSPECT": "rhostcheck:nordns rblcheck:bl.example"}
        verdict = greylist.decide(client(), environ, config(selective=True), DirStore(str(tmp_path)), T0)
        assert dict(verdict.why)["marks"] == "rhostcheck:nordns,rblcheck:bl.example"

    @pytest.mark.parametrize(
        "ip, host, entry",
        [
            ("192.0.2.7", None, "192.0.2.0/24"),
            ("198.51.100.1", None, "198.51.100.1/32"),
            ("2001:db8:5::1", None, "2001:db8::/32"),
            ("203.0.113.5", "mx1.pool.example.com", "=.pool.example.com"),
            ("203.0.113.5", "mail.example.net", "=mail.example.net"),
            ("203.0.113.5", "mail.example.org", None),
            ("203.0.113.5", "evilpool.example.com", None),
            ("198.51.100.2", None, None),
        ],
    )
    def test_allowlist(self, tmp_path, ip, host, entry):
        """Networks and host names of the allow-list skip greylisting."""
        cdb = allowlist(
            tmp_path,
            ["192.0.2.0/24", "198.51.100.1/32", "2001:db8::/32", "=.pool.example.com",
             "=mail.example.net"],
        )
        root = tmp_path / "store"
        root.mkdir()
        verdict = greylist.decide(client(ip, host), {}, config(), DirStore(str(root)), T0, cdb)
        if entry is None:
            assert verdict.action == "refuse"
        else:
            assert verdict == core.Verdict("skip", why=(("why", "allowlist"), ("entry", entry)))
            assert os.listdir(str(root)) == []

    @pytest.mark.parametrize(
        "fail_closed, expected",
        [
            (False, "pass"),
            (True, "refuse"),
        ],
    )
    def test_store_failure(self, fail_closed, expected):
        """An unusable store hands the connection on, or defers with -f; never 5xx."""
        verdict = greylist.decide(client(), {}, config(fail_closed=fail_closed), FailingStore(), T0)
        assert verdict.action == expected
        assert verdict.code in (None, 451)
        assert dict(verdict.why)["error"].endswith("read-only file system")

    @pytest.mark.parametrize("fail_closed, expected", [(False, "pass"), (True, "refuse")])
    def test_allowlist_failure(self, tmp_path, fail_closed, expected):
        """An unreadable allow-list is our own failure: fail open, or 451 with -f."""
        error = greylist.open_allowlist(str(tmp_path / "missing.cdb"))
        assert isinstance(error, StoreError)
        c = config(fail_closed=fail_closed)
        verdict = greylist.decide(client(), {}, c, DirStore(str(tmp_path)), T0, error)
        assert verdict.action == expected
        assert "no such file or directory" in dict(verdict.why)["error"]

    def test_learn_mode_records_but_passes(self, tmp_path):
        """Learn mode keeps the state as usual and hands every connection on."""
        s = DirStore(str(tmp_path))
        verdict = greylist.decide(client(), {}, config(learn=True), s, T0)
        assert verdict.action == "pass"
        assert dict(verdict.why)["learn"] == "defer"
        assert greylist.decide(client(), {}, config(), s, T0 + 300).action == "pass"

    def test_trust_after_passes(self, tmp_path):
        """-c 2: the second pass counted (an hour after the first) trusts; deferrals never do."""
        s, c = DirStore(str(tmp_path)), config(trust=2)
        first = greylist.decide(client(), {}, c, s, T0)
        assert first.action == "refuse" and "trust" not in dict(first.why)
        verdict = greylist.decide(client(), {}, c, s, T0 + 300)
        assert verdict == core.Verdict("pass", why=(("key", "192.0.2.0/24"), ("state", "pass"),
                                                    ("age", 300), ("passes", 1)))
        assert dict(greylist.decide(client(), {}, c, s, T0 + 600).why)["passes"] == 1
        verdict = greylist.decide(client("192.0.2.99"), {}, c, s, T0 + 300 + 3600)
        assert verdict.why[-2:] == (("passes", 2), ("trust", "greylist:passed"))
        # Counted without -c, shown without it: nothing is said of passes.
        assert "passes" not in dict(greylist.decide(client(), {}, config(), s, T0 + 9000).why)

    def test_learn_mode_never_trusts(self, tmp_path):
        """A deferral let through by -n is not a pass."""
        s, c = DirStore(str(tmp_path)), config(trust=1, learn=True)
        verdict = greylist.decide(client(), {}, c, s, T0)
        assert verdict.action == "pass" and "trust" not in dict(verdict.why)
        assert dict(greylist.decide(client(), {}, c, s, T0 + 300).why)["trust"] == "greylist:passed"

    def test_verdict_rounds_up(self):
        """The time left is rounded up, never to zero."""
        v = greylist.verdict_of(State("wait", T0, left=0.2), [], config(), T0 + 1)
        assert v.text == DEFER % 1


class TestParse:
    """Tests for `greylist.parse`."""

    def test_defaults(self):
        """Defaults: 300 s delay (below qmail's first retry), 1 day window, 36 days."""
        c, command, rest = greylist.parse(["/g", "qmail-smtpd"])
        t = c.timers
        assert (t.delay, t.window, t.lifetime) == (300, 86400, 36 * 86400)
        assert (c.v4, c.v6, command, rest) == (24, 64, None, ["/g", "qmail-smtpd"])

    def test_options(self):
        """Every option sets what it says."""
        c, _, _ = greylist.parse(
            "-nsf -m 60 -w 3600 -l 100 -4 28 -6 56 -a a.cdb -t 5 /g x".split())
        assert (c.learn, c.selective, c.fail_closed) == (True, True, True)
        assert (c.timers.delay, c.timers.window, c.timers.lifetime) == (60, 3600, 100)
        assert (c.v4, c.v6, c.allow, c.timeout) == (28, 56, "a.cdb", 5)
        assert greylist.parse(["-i", "/g", "x"])[0].v6 == 128
        assert (greylist.parse(["/g", "x"])[0].trust, greylist.parse(["-c", "5", "/g", "x"])[0].trust) == (0, 5)

    @pytest.mark.parametrize(
        "argv, environ, exempt",
        [
            (["/g", "x"], {}, ["postmaster@", "abuse@"]),
            (["-e", "hostmaster@", "-e", "@example.net", "/g", "x"], {},
             ["hostmaster@", "@example.net"]),
            (["-e", "", "/g", "x"], {}, []),
            (["-e", "hostmaster@", "/g", "x"], {"MFCHECK_EXEMPT": "postmaster@ a@b.example"},
             ["postmaster@", "a@b.example"]),
            (["/g", "x"], {"MFCHECK_EXEMPT": ""}, []),
        ],
    )
    def test_exemption_list(self, argv, environ, exempt):
        """-e as mfcheck's, and $MFCHECK_EXEMPT over it: one list for both programs."""
        assert greylist.parse(argv, environ)[0].exempt == exempt

    @pytest.mark.parametrize(
        "argv",
        [[], ["/g"], ["-m", "x", "/g", "p"], ["-4", "33", "/g", "p"], ["-m", "600", "-w", "600", "/g", "p"],
         ["-P", "-q", "/g"], ["-z", "/g", "p"], ["-c", "x", "/g", "p"], ["-c", "1001", "/g", "p"]],
    )
    def test_usage(self, argv):
        """A command line that does not fit raises Usage."""
        with pytest.raises(core.Usage):
            greylist.parse(argv)

    @pytest.mark.parametrize(
        "text, key",
        [
            ("192.0.2.7", "192.0.2.0/24"),
            ("192.0.2.0/24", "192.0.2.0/24"),
            ("192.0.2.7/32", "192.0.2.7/32"),
            ("::ffff:192.0.2.7", "192.0.2.0/24"),
            ("2001:db8::7", "2001:db8::/64"),
        ],
    )
    def test_key_of_argument(self, text, key):
        """Command-line addresses name the same key a connection would use."""
        assert greylist.key_of_argument(text, config()) == key


# --- transcripts: the real program ------------------------------------------------

SESSION = b"HELO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nQUIT\r\n"


def refusal(text):
    return (
        b"220 greylist.local\r\n250 greylist.local\r\n250 greylist.local\r\n"
        + text + b"\r\n" + text + b"\r\n221 greylist.local\r\n"
    )


class TestStoreOpening:
    """The store is opened, and its code loaded, only for a client it is asked about."""

    PROFILE = {"TCPREMOTEIP": "192.0.2.7", "PYTHONPROFILEIMPORTTIME": "1"}

    def test_skipped_client_loads_no_store(self):
        """RELAYCLIENT passes without loading qtools.store, even with a wrong store."""
        run = run_prog(["greylist", "nosuch://store", "true"], env=dict(self.PROFILE, RELAYCLIENT=""))
        assert run.rc == 0, run
        assert "qtools.store" not in run.err.decode() and "qtools.greylist" in run.err.decode()

    def test_judged_client_meets_a_wrong_store(self):
        """A client the store is asked about finds a wrong store: a usage error, exit 100."""
        run = run_prog(["greylist", "nosuch://store", "true"], env={"TCPREMOTEIP": "192.0.2.7"})
        assert run.rc == 100, run
        assert b"greylist: fatal: unknown store: nosuch://store" in run.err


class TestTranscript:
    """Tests that run bin/greylist with a hand-made environment."""

    def test_first_deferred_retry_passes(self, tmp_path):
        """--- greylist defers a new network at RCPT, then hands its retry on."""
        env = {"TCPREMOTEIP": "192.0.2.7"}
        argv = ["greylist", "-m", "1", str(tmp_path), "echo", "handed on"]
        first = run_prog(argv, env, SESSION)
        assert first.rc == 0
        assert first.out == refusal(b"451 greylisted, try again in 1 seconds (#4.7.1)")
        assert first.err == (
            b"greylist: 192.0.2.7 pid x: 451 greylisted, try again in 1 seconds (#4.7.1)"
            b" key=192.0.2.0/24 state=new\n"
        )
        time.sleep(1.1)
        second = run_prog(argv, {"TCPREMOTEIP": "192.0.2.99"}, SESSION)
        assert (second.rc, second.out) == (0, b"handed on\n")
        assert re.fullmatch(
            rb"greylist: 192.0.2.99 pid x: pass key=192.0.2.0/24 state=pass age=1\n", second.err)
        third = run_prog(argv, {"TCPREMOTEIP": "192.0.2.1"})
        assert third.err == b"greylist: 192.0.2.1 pid x: pass key=192.0.2.0/24 state=known\n"

    def test_passes_trust(self, tmp_path):
        """--- greylist -c 2 sets the trust mark for the next program at a network's second pass."""
        # The network's first pass, counted two hours ago.
        now = time.time()
        seed = DirStore(str(tmp_path))
        seed.check("192.0.2.0/24", now - 7200)
        assert seed.check("192.0.2.0/24", now - 6000, 2).passes == 1
        show = ["sh", "-c", 'echo "trust=$QTOOLS_TRUSTED"']
        argv = ["greylist", "-c", "2", str(tmp_path)] + show
        result = run_prog(argv, {"TCPREMOTEIP": "192.0.2.7"}, SESSION)
        assert (result.rc, result.out) == (0, b"trust=greylist:passed\n")
        assert result.err == (b"greylist: 192.0.2.7 pid x: pass key=192.0.2.0/24 state=known"
                              b" passes=2 trust=greylist:passed\n")
        assert b"passes=2" in run_prog(["greylist", "-q", str(tmp_path), "192.0.2.7"]).out
        # Another network's first pass is not enough; its deferral never trusts.
        argv = ["greylist", "-m", "0", "-c", "2", str(tmp_path)] + show
        result = run_prog(argv, {"TCPREMOTEIP": "198.51.100.7"}, SESSION)
        assert result.out.startswith(b"220 ") and b"trust=" not in result.err
        result = run_prog(argv, {"TCPREMOTEIP": "198.51.100.7"}, SESSION)
        assert result.out == b"trust=\n"
        assert re.fullmatch(rb"greylist: 198\.51\.100\.7 pid x: pass key=198\.51\.100\.0/24"
                            rb" state=pass age=\d+ passes=1\n", result.err)

    def test_null_sender_deferred_at_data(self, tmp_path):
        """--- a bounce (MAIL FROM:<>) hears the deferral at DATA, not at RCPT."""
        session = b"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nQUIT\r\n"
        result = run_prog(["greylist", str(tmp_path), "echo"], {"TCPREMOTEIP": "192.0.2.7"}, session)
        assert result.out == (
            b"220 greylist.local\r\n250 greylist.local\r\n250 greylist.local\r\n"
            b"250 greylist.local\r\n451 greylisted, try again in 300 seconds (#4.7.1)\r\n"
            b"221 greylist.local\r\n"
        )

    def test_relayclient_skips(self, tmp_path):
        """--- RELAYCLIENT steps aside and leaves no state."""
        env = {"TCPREMOTEIP": "192.0.2.7", "RELAYCLIENT": ""}
        result = run_prog(["greylist", str(tmp_path), "echo", "ok"], env)
        assert (result.rc, result.out) == (0, b"ok\n")
        assert result.err == b"greylist: 192.0.2.7 pid x: skip why=relayclient\n"
        assert os.listdir(str(tmp_path)) == []

    def test_v6_client(self, tmp_path):
        """--- an IPv6 client is keyed by its /64."""
        result = run_prog(["greylist", str(tmp_path), "echo"], {"TCPREMOTEIP": "2001:db8:0:1::25"}, SESSION)
        assert b"key=2001:db8:0:1::/64 state=new" in result.err

    def test_missing_store_fails_open(self, tmp_path):
        """--- a missing store directory is warned about and the mail goes on."""
        env = {"TCPREMOTEIP": "192.0.2.7"}
        result = run_prog(["greylist", str(tmp_path / "none"), "echo", "ok"], env)
        assert (result.rc, result.out) == (0, b"ok\n")
        lines = result.err.decode().splitlines()
        assert lines[0] == "greylist: warning: unable to open %s/none: no such file or directory" % tmp_path
        assert lines[1].startswith("greylist: 192.0.2.7 pid x: pass why=failure error=")

    @pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"),
                        reason="needs root and setpriv to run as another account")
    def test_unwritable_store_fails_open(self):
        """--- a store the connection's account cannot write is warned about; mail goes on."""
        import tempfile

        # Under /tmp itself: pytest's own directories are closed to others.
        tmp_path = tempfile.mkdtemp(prefix="greylist-ro-")
        os.chmod(tmp_path, 0o755)
        argv = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "greylist"),
                str(tmp_path), "echo", "ok"]
        result = run_prog(argv, {"TCPREMOTEIP": "192.0.2.7"})
        assert (result.rc, result.out) == (0, b"ok\n")
        os.rmdir(tmp_path)
        assert result.err.splitlines()[0] == (
            b"greylist: warning: unable to create %s/grey: permission denied" % tmp_path.encode())

    def test_missing_store_fail_closed(self, tmp_path):
        """--- with -f a broken store defers (451), never refuses for good."""
        env = {"TCPREMOTEIP": "192.0.2.7"}
        result = run_prog(["greylist", "-f", str(tmp_path / "none"), "echo", "ok"], env, SESSION)
        assert result.rc == 0
        assert b"451 temporary greylist failure, try again later (#4.3.0)\r\n" in result.out
        assert b"ok" not in result.out

    def test_allowlist_from_mkcdb(self, tmp_path):
        """--- an allow list built by qtools-mkcdb -n lets networks and host suffixes through."""
        cdb = str(tmp_path / "allow.cdb")
        built = run_prog(["qtools-mkcdb", "-n", cdb, cdb + ".tmp"],
                         stdin=b"192.0.2.0/24\n.pool.example.com\n2001:db8::/32\n")
        assert built.rc == 0, built
        store = tmp_path / "state"
        store.mkdir()
        argv = ["greylist", "-a", cdb, str(store), "echo", "ok"]
        cases = [
            ({"TCPREMOTEIP": "192.0.2.9"}, b"skip why=allowlist entry=192.0.2.0/24"),
            ({"TCPREMOTEIP": "2001:db8:7::1"}, b"skip why=allowlist entry=2001:db8::/32"),
            ({"TCPREMOTEIP": "198.51.100.1", "TCPREMOTEHOST": "MX1.Pool.Example.COM"},
             b'skip why=allowlist entry="=.pool.example.com"'),
            ({"TCPREMOTEIP": "198.51.100.1", "TCPREMOTEHOST": "mx1.other.example"},
             b"451 greylisted, try again in 300 seconds"),
        ]
        for env, logged in cases:
            result = run_prog(argv, env, SESSION)
            assert logged in result.err, (env, result)

    def test_no_tcpremoteip(self, tmp_path):
        """--- without TCPREMOTEIP greylist exits 100."""
        result = run_prog(["greylist", str(tmp_path), "echo"])
        assert (result.rc, result.err) == (100, b"greylist: fatal: TCPREMOTEIP not set\n")

    def test_usage(self, tmp_path):
        """--- a missing program is a usage error, exit 100."""
        result = run_prog(["greylist", str(tmp_path)])
        assert result.rc == 100
        assert result.err.startswith(b"greylist: usage: greylist [ -nsfiT ]")

    def test_cannot_run_next(self, tmp_path):
        """--- a next program that cannot be run is a temporary failure, exit 111."""
        env = {"TCPREMOTEIP": "192.0.2.7", "RELAYCLIENT": ""}
        result = run_prog(["greylist", str(tmp_path), "/nonexistent/prog"], env)
        assert result.rc == 111
        assert b"greylist: fatal: unable to run /nonexistent/prog: no such file" in result.err

    def test_cli(self, tmp_path):
        """--- -A allows a network now, -q shows it, -D takes it back, -P purges."""
        root = str(tmp_path)
        allowed = run_prog(["greylist", "-A", root, "192.0.2.7", "2001:db8::1"])
        assert allowed.rc == 0
        lines = allowed.out.decode().splitlines()
        assert re.fullmatch(r"192\.0\.2\.0/24 known last=\S+Z", lines[0])
        assert re.fullmatch(r"2001:db8::/64 known last=\S+Z", lines[1])
        shown = run_prog(["greylist", "-q", root])
        assert sorted(shown.out.decode().split("\n")[:-1]) == sorted(lines)
        one = run_prog(["greylist", "-q", root, "198.51.100.1"])
        assert one.out == b"198.51.100.0/24 new left=300\n"
        denied = run_prog(["greylist", "-D", root, "192.0.2.0/24"])
        assert re.fullmatch(rb"192\.0\.2\.0/24 wait first=\S+Z left=300\n", denied.out)
        passes = run_prog(["greylist", root, "echo", "ok"], {"TCPREMOTEIP": "2001:db8::99"})
        assert passes.out == b"ok\n"
        purged = run_prog(["greylist", "-P", root])
        assert (purged.rc, purged.out, purged.err) == (0, b"", b"")
        bad = run_prog(["greylist", "-q", root, "not-an-ip"])
        assert bad.rc == 100 and b"invalid address: not-an-ip" in bad.err

    def test_purge_removes_dead_state(self, tmp_path):
        """--- -P removes a dead generation, quietly, and keeps the live one."""
        root = str(tmp_path)
        run_prog(["greylist", "-A", root, "192.0.2.7"])
        dead = tmp_path / "grey" / "1000000000" / "ab"
        dead.mkdir(parents=True)
        (dead / "198.51.100.0%2F24").write_text("")
        purged = run_prog(["greylist", "-P", root])
        assert (purged.rc, purged.out, purged.err) == (0, b"", b"")
        assert not (tmp_path / "grey" / "1000000000").exists()
        assert run_prog(["greylist", "-q", root]).out.startswith(b"192.0.2.0/24 known ")
        missing = run_prog(["greylist", "-P", str(tmp_path / "none")])
        assert missing.rc == 111 and b"unable to open" in missing.err

    def test_cli_store_error(self, tmp_path):
        """--- a command on an unusable store is a temporary failure."""
        for letter in "ADq":
            result = run_prog(["greylist", "-" + letter, str(tmp_path / "none"), "192.0.2.7"])
            assert (result.rc, result.out) == (111, b""), letter
            assert result.err == b"greylist: fatal: unable to open %s/none: no such file or directory\n" % (
                os.fsencode(tmp_path))
        listed = run_prog(["greylist", "-q", str(tmp_path / "none")])
        assert (listed.rc, listed.out) == (111, b"")
        assert listed.err.startswith(b"greylist: fatal: unable to open ")

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user")
    def test_cli_unreadable_store(self, tmp_path):
        """--- -q on a store its user cannot read says so, in the skarnet grammar, exit 111."""
        os.chmod(str(tmp_path), 0o755)
        root = tmp_path / "state"
        root.mkdir(mode=0o755)
        run_prog(["greylist", "-A", str(root), "192.0.2.7"])
        os.chmod(str(root / "pass"), 0o700)  # root's, and not for nobody
        for argv in (["-q", "state"], ["-q", "state", "192.0.2.7"]):
            rc, out, err = as_nobody(str(tmp_path), greylist.main, argv)
            assert (rc, out) == (111, b""), err
            assert err == b"greylist: fatal: unable to open state/pass: permission denied\n"


def as_nobody(cwd, main, argv):
    """Run main(argv, {}) in a child process as uid 65534 in cwd; return (rc, stdout, stderr)."""
    pipes = [os.pipe(), os.pipe()]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            os.dup2(pipes[0][1], 1)
            os.dup2(pipes[1][1], 2)
            os.chdir(cwd)  # names relative to it: the test's own directories are root's
            os.setgid(65534)
            os.setuid(65534)
            sys.stdout = open(1, "w", closefd=False)
            code = main(argv, {})
            sys.stdout.flush()
        finally:
            os._exit(code)
    chunks = []
    for reading, writing in pipes:
        os.close(writing)
        with open(reading, "rb") as f:
            chunks.append(f.read())
    _, status = os.waitpid(pid, 0)
    return (os.waitstatus_to_exitcode(status),) + tuple(chunks)


# --- end to end: tcpserver, the chain, the sink ------------------------------------


def send(server, source, sender="a@example.org"):
    """Try one message from source; return None if accepted, else the refusal."""
    import smtplib

    s = smtp_from(server.host, server.port, source)
    try:
        s.ehlo("client.example")
        s.sendmail(sender, ["b@example.net"], "Subject: hello\r\n\r\nfrom %s\r\n" % source)
        return None
    except smtplib.SMTPRecipientsRefused as error:
        return error.recipients["b@example.net"]
    except smtplib.SMTPDataError as error:
        return (error.smtp_code, error.smtp_error)
    finally:
        try:
            s.quit()
        except smtplib.SMTPServerDisconnected:
            pass


@pytest.mark.e2e
class TestEndToEnd:
    """Tests with the real tcpserver, greylist and the demo sink."""

    def test_defer_retry_neighbour(self, tmp_path, tcpserver):
        """First deferred with the right text; the retry and a /24 neighbour get through."""
        store, mail = tmp_path / "state", tmp_path / "mail"
        store.mkdir()
        mail.mkdir()
        server = tcpserver(["greylist", "-m", "3", str(store)] + sink_cmd(mail))
        assert send(server, "127.0.1.2") == (451, b"greylisted, try again in 3 seconds (#4.7.1)")
        assert send(server, "127.0.1.2")[0] == 451
        assert read_maildir(mail) == []
        time.sleep(3.5)
        assert send(server, "127.0.1.2") is None
        assert send(server, "127.0.1.77") is None
        assert send(server, "127.0.2.2")[0] == 451
        messages = read_maildir(mail)
        assert len(messages) == 2
        assert b"from 127.0.1.2" in messages[0] and b"from 127.0.1.77" in messages[1]
        log = server.log()
        assert "greylist: 127.0.1.2 pid " in log and "state=pass" in log
        assert "state=known" in log and "Traceback" not in log

    def test_trusted_after_passes_not_tarpitted(self, tmp_path, tcpserver):
        """greylist -c 2: a network at its second pass is trusted and tarpit lets it be; one at its first is tarpitted."""
        import smtplib

        store, mail = tmp_path / "state", tmp_path / "mail"
        store.mkdir()
        mail.mkdir()
        now = time.time()
        seed = DirStore(str(store))
        seed.check("127.0.1.0/24", now - 7500)
        assert seed.check("127.0.1.0/24", now - 7200, 2).passes == 1  # counted two hours ago
        seed.check("127.0.2.0/24", now - 900)
        assert seed.check("127.0.2.0/24", now - 600, 2).passes == 1  # ten minutes ago: no second yet
        server = tcpserver(["greylist", "-c", "2", str(store), "tarpit"] + sink_cmd(mail),
                           env={"TARPITCOUNT": "1", "TARPITDELAY": "2"})
        took = {}
        for source in ("127.0.1.2", "127.0.2.2"):
            s = smtp_from(server.host, server.port, source)
            s.ehlo("client.example")
            s.mail("a@example.org")
            start = time.monotonic()
            assert s.rcpt("b@example.net")[0] == 250
            took[source] = time.monotonic() - start
            s.data(b"Subject: hello\r\n\r\nfrom %s\r\n" % source.encode())
            try:
                s.quit()
            except smtplib.SMTPServerDisconnected:
                pass
        assert took["127.0.1.2"] < 1.5 and took["127.0.2.2"] >= 1.95, took
        assert len(read_maildir(mail)) == 2
        log = server.log()
        assert ("greylist: 127.0.1.2 pid" in log
                and "key=127.0.1.0/24 state=known passes=2 trust=greylist:passed" in log)
        assert "key=127.0.2.0/24 state=known passes=1\n" in log
        assert "tarpit: 127.0.2.2 pid" in log and "tarpit: 127.0.1.2 pid" not in log
        assert "Traceback" not in log and "warning" not in log

    def test_bounce_deferred_at_data(self, tmp_path, tcpserver):
        """A bounce passes RCPT and is deferred at DATA."""
        store, mail = tmp_path / "state", tmp_path / "mail"
        store.mkdir()
        mail.mkdir()
        server = tcpserver(["greylist", str(store)] + sink_cmd(mail))
        assert send(server, "127.0.1.2", sender="") == (
            451, b"greylisted, try again in 300 seconds (#4.7.1)")

    def test_whitelisted_by_rules(self, tmp_path, tcpserver):
        """WHITELISTED from tcp.smtp skips greylisting, cqgreylist style."""
        store, mail = tmp_path / "state", tmp_path / "mail"
        store.mkdir()
        mail.mkdir()
        rules = "127.0.1.3:allow,WHITELISTED=\"\"\n:allow\n"
        server = tcpserver(["greylist", str(store)] + sink_cmd(mail), rules_text=rules)
        assert send(server, "127.0.1.3") is None
        assert send(server, "127.0.2.4")[0] == 451
        assert len(read_maildir(mail)) == 1

    def test_many_simultaneous_connections(self, tmp_path, tcpserver):
        """240 simultaneous connections from 12 networks: no error, one entry per network."""
        store, mail = tmp_path / "state", tmp_path / "mail"
        store.mkdir()
        mail.mkdir()
        sources = ["127.0.%d.%d" % (n % 12, 2 + n // 12) for n in range(240)]

        def decisions(server):
            # tcpserver's start-up probe comes from 127.0.0.1: not ours.
            lines = server.log().splitlines()
            return [line for line in lines if line.startswith("greylist: 127.0.")
                    and not line.startswith("greylist: 127.0.0.1 ")]

        def storm(delay):
            # The first storm lasts longer than a short delay on a slow
            # machine, so it runs with a long one; the second, on the same
            # store, with a short one that is over by then.
            server = tcpserver(
                ["greylist", "-m", delay, str(store)] + sink_cmd(mail),
                options=("-c", "400", "-b", "400"))

            def attempt(source):
                for _ in range(5):
                    try:
                        return send(server, source)
                    except OSError as error:  # the backlog overflowed: try again
                        last = error
                        time.sleep(0.5)
                return last

            with concurrent.futures.ThreadPoolExecutor(len(sources)) as pool:
                return server, list(pool.map(attempt, sources))

        def listing():
            lines = run_prog(["greylist", "-q", str(store)]).out.decode().splitlines()
            return sorted(tuple(line.split()[:2]) for line in lines)

        server, first = storm("600")
        assert [r for r in first if r is None or r[0] != 451] == []
        assert listing() == sorted(("127.0.%d.0/24" % n, "wait") for n in range(12))
        assert server.log().count("state=new") == 12
        assert len(decisions(server)) == 240
        first_log = server.log()
        time.sleep(1.5)
        server, second = storm("1")
        assert second == [None] * 240
        assert len(read_maildir(mail)) == 240
        assert listing() == sorted(("127.0.%d.0/24" % n, "known") for n in range(12))
        # Retries racing past the delay may each see "pass": all of them pass.
        assert server.log().count("state=pass") >= 12
        assert [line for line in decisions(server) if " pass " not in line] == []
        assert len(decisions(server)) == 240
        for log in (first_log, server.log()):
            assert "fatal" not in log and "warning" not in log and "Traceback" not in log


# --- triplet mode -----------------------------------------------------------------


class Session:
    """A stand-in for the proxy's session: the envelope so far and a log."""

    def __init__(self, mail_from=None, rcpts=()):
        self.mail_from = mail_from
        self.rcpts = list(rcpts)
        self.logged = []

    def log(self, verdict, fields=()):
        self.logged.append((verdict, dict(fields)))


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


class TestSender:
    """Tests for `greylist.sender_of` and `greylist.triplet_key`."""

    @pytest.mark.parametrize(
        "address, normal",
        [
            (b"Alice@Example.ORG", b"alice@example.org"),
            (b"alice+news@example.org", b"alice@example.org"),
            (b"+alice@example.org", b"+alice@example.org"),
            (b"prvs=1234abcdef=alice@example.org", b"alice@example.org"),
            (b"msprvs1=17ab=bounces-a@example.org", b"bounces-a@example.org"),
            (b"list-return-123-bob=example.net@lists.example.org",
             b"list-return-#-bob=example.net@lists.example.org"),
            (b"bounce-4711-0815@esp.example", b"bounce-#-#@esp.example"),
            (b"SRS0=HHH1=TT=orig.example=alice@fwd.example", b"srs=orig.example=alice@fwd.example"),
            (b"SRS0=xYz9=Ab=orig.example=alice@fwd.example", b"srs=orig.example=alice@fwd.example"),
            (b"SRS1=HHH=fwd1.example==HHH=TT=orig.example=bob@fwd2.example",
             b"srs=orig.example=bob@fwd2.example"),
            (b"srs0=broken@fwd.example", b"srs#=broken@fwd.example"),
            (b"postmaster", b"postmaster"),
            (b"", b""),
        ],
    )
    def test_sender_of(self, address, normal):
        """Tags that change per message are taken out of the sender."""
        assert greylist.sender_of(address) == normal

    def test_triplet_key(self):
        """The key is network, sender and folded recipient, space separated."""
        key = greylist.triplet_key("192.0.2.0/24", b"prvs=99=A@x.example", b"Bob@Y.example")
        assert key == "192.0.2.0/24 a@x.example bob@y.example"


class TestTriplets:
    """Tests for the `greylist.Triplets` proxy filter."""

    def make(self, tmp_path, **changes):
        clock = Clock()
        s = DirStore(str(tmp_path), Timers())
        return greylist.Triplets(config(triplet=True, **changes), s, "192.0.2.0/24", clock), clock

    def test_rcpt_deferred_then_passed(self, tmp_path):
        """Each new triplet is deferred at RCPT and passes after the delay."""
        f, clock = self.make(tmp_path)
        session = Session(b"a@example.org")
        reply = f.command(session, b"rcpt", read(b"RCPT TO:<b@example.net>"))
        assert reply == b"451 greylisted, try again in 300 seconds (#4.7.1)\r\n"
        clock.now += 299
        assert f.command(session, b"rcpt", read(b"RCPT TO:<b@example.net>")).startswith(b"451 ")
        clock.now += 1
        assert f.command(session, b"rcpt", read(b"RCPT TO:<b@example.net>")) is None
        assert [v for v, _ in session.logged][2] == "pass"
        assert session.logged[0][1]["key"] == "192.0.2.0/24 a@example.org b@example.net"

    def test_proven_triplet_passes_network(self, tmp_path):
        """Once one triplet passed, the network passes whole at connection time."""
        f, clock = self.make(tmp_path)
        session = Session(b"a@example.org")
        f.command(session, b"rcpt", read(b"RCPT TO:<b@example.net>"))
        clock.now += 300
        f.command(session, b"rcpt", read(b"RCPT TO:<b@example.net>"))
        verdict = greylist.decide(client("192.0.2.9"), {}, config(triplet=True), f.store, clock.now + 5)
        assert verdict == core.Verdict("pass", why=(("key", "192.0.2.0/24"), ("state", "known")))

    def test_trusted_network_never_reaches_the_proxy(self, tmp_path):
        """In triplet mode too the trust mark steps aside before the store, as WHITELISTED does."""
        environ = {"QTOOLS_TRUSTED": "rblcheck:dnswl.test"}
        verdict = greylist.decide(client(), environ, config(triplet=True), DirStore(str(tmp_path)), T0)
        assert verdict == core.Verdict("skip", why=(("why", "trusted"), ("trust", "rblcheck:dnswl.test")))
        assert os.listdir(str(tmp_path)) == []

    def test_triplet_passes_count_for_the_network(self, tmp_path):
        """-T -c 2: the proven triplet counts one pass of the network, a connection an hour later the second."""
        f, clock = self.make(tmp_path, trust=2)
        session = Session(b"a@example.org")
        f.command(session, b"rcpt", read(b"RCPT TO:<b@example.net>"))
        clock.now += 300
        assert f.command(session, b"rcpt", read(b"RCPT TO:<b@example.net>")) is None
        c = config(triplet=True, trust=2)
        verdict = greylist.decide(client("192.0.2.9"), {}, c, f.store, clock.now + 5)
        assert verdict == core.Verdict("pass", why=(("key", "192.0.2.0/24"), ("state", "known"),
                                                    ("passes", 1)))
        verdict = greylist.decide(client("192.0.2.9"), {}, c, f.store, clock.now + 3600)
        assert verdict.why[-2:] == (("passes", 2), ("trust", "greylist:passed"))

    def test_unproven_network_goes_to_proxy(self, tmp_path):
        """A network that has not passed is handed to the filter, and nothing is written."""
        verdict = greylist.decide(client(), {}, config(triplet=True), DirStore(str(tmp_path)), T0)
        assert verdict == core.Verdict("proxy", why=(("key", "192.0.2.0/24"),))
        assert os.listdir(str(tmp_path)) == []

    def test_other_recipient_is_new(self, tmp_path):
        """A different recipient is a different triplet."""
        f, clock = self.make(tmp_path)
        session = Session(b"a@example.org")
        f.command(session, b"rcpt", read(b"RCPT TO:<b@example.net>"))
        clock.now += 10
        assert f.command(session, b"rcpt", read(b"RCPT TO:<c@example.net>")).startswith(
            b"451 greylisted, try again in 300 ")

    def test_verp_sender_same_triplet(self, tmp_path):
        """The next message of a VERP list finds the triplet of the first."""
        f, clock = self.make(tmp_path)
        f.command(Session(b"list-return-1-b=example.net@l.example"), b"rcpt", read(b"RCPT TO:<b@example.net>"))
        clock.now += 400
        assert f.command(Session(b"list-return-2-b=example.net@l.example"), b"rcpt",
                         read(b"RCPT TO:<b@example.net>")) is None

    @pytest.mark.parametrize(
        "rcpt, exempt, entry",
        [
            (b"Postmaster@Example.NET", None, "postmaster@"),
            (b"abuse@example.net", None, "abuse@"),
            (b"postmaster", None, "postmaster@"),
            (b"b@example.net", ["@example.net"], "@example.net"),
            (b"b@example.net", ["b@example.net"], "b@example.net"),
            (b"b@example.net", None, None),
            (b"postmaster@example.net", [], None),
            (b"abuse@example.net", ["postmaster@"], None),
        ],
    )
    def test_exempt_recipient_never_deferred(self, tmp_path, rcpt, exempt, entry):
        """A recipient on the exemption list passes at once and nothing is stored for it."""
        f, _ = self.make(tmp_path, **({} if exempt is None else {"exempt": exempt}))
        session = Session(b"a@example.org")
        got = f.command(session, b"rcpt", read(b"RCPT TO:<%s>" % rcpt))
        if entry is None:
            assert got.startswith(b"451 greylisted")
            return
        assert got is None
        assert session.logged == [("pass", {"rcpt": rcpt.decode(), "why": "exempt", "entry": entry})]
        assert os.listdir(str(tmp_path)) == []

    def test_exempt_recipient_of_a_bounce(self, tmp_path):
        """A bounce to postmaster and another recipient is judged on the other one only."""
        f, clock = self.make(tmp_path)
        session = Session(b"", [b"postmaster@example.net"])
        assert f.command(session, b"data", read(b"DATA")) is None
        session = Session(b"", [b"postmaster@example.net", b"b@example.net"])
        assert f.command(session, b"data", read(b"DATA")).startswith(b"451 greylisted")
        clock.now += 300
        assert f.command(session, b"data", read(b"DATA")) is None

    @pytest.mark.parametrize(
        "verb, line, mail_from",
        [
            (b"rcpt", b"RCPT TO:<b@example.net>", None),
            (b"rcpt", b"RCPT TO:<b@example.net>", b""),
            (b"mail", b"MAIL FROM:<a@example.org>", None),
            (b"helo", b"HELO x", None),
            (b"data", b"DATA", b"a@example.org"),
        ],
    )
    def test_commands_left_alone(self, tmp_path, verb, line, mail_from):
        """Only RCPT with a sender, and DATA of a bounce, are judged."""
        f, _ = self.make(tmp_path)
        session = Session(mail_from, [b"b@example.net"])
        assert f.command(session, verb, read(line)) is None
        assert session.logged == []

    def test_bounce_deferred_at_data(self, tmp_path):
        """A bounce is judged at DATA for all recipients; the longest wait is said."""
        f, clock = self.make(tmp_path)
        f.command(Session(b""), b"data", read(b"DATA"))  # no recipients: nothing to judge
        session = Session(b"", [b"b@example.net"])
        f.command(session, b"data", read(b"DATA"))
        clock.now += 100
        session = Session(b"", [b"b@example.net", b"c@example.net"])
        assert f.command(session, b"data", read(b"DATA")) == (
            b"451 greylisted, try again in 300 seconds (#4.7.1)\r\n")
        clock.now += 200
        assert f.command(session, b"data", read(b"DATA")) == (
            b"451 greylisted, try again in 100 seconds (#4.7.1)\r\n")
        clock.now += 100
        assert f.command(session, b"data", read(b"DATA")) is None

    def test_learn_mode(self, tmp_path):
        """In learn mode a new triplet is recorded and passed."""
        f, _ = self.make(tmp_path, learn=True)
        session = Session(b"a@example.org")
        assert f.command(session, b"rcpt", read(b"RCPT TO:<b@example.net>")) is None
        assert session.logged[0] == ("pass", {
            "key": "192.0.2.0/24 a@example.org b@example.net", "state": "new",
            "learn": "defer", "left": 300})

    @pytest.mark.parametrize("fail_closed, reply", [(False, None), (True, b"451 temporary")])
    def test_store_failure(self, fail_closed, reply):
        """A broken store passes the recipient, or defers it with -f."""
        f = greylist.Triplets(config(fail_closed=fail_closed), FailingStore(), "192.0.2.0/24")
        got = f.command(Session(b"a@example.org"), b"rcpt", read(b"RCPT TO:<b@example.net>"))
        assert (got if got is None else got[:13]) == reply


class TestTripletTranscript:
    """Triplet mode run as a program, stacked with validrcptto in one proxy."""

    def test_behind_validrcptto(self, tmp_path):
        """--- an invalid recipient is refused by validrcptto and never stored; a valid one is deferred."""
        cdb = str(tmp_path / "valid.cdb")
        assert run_prog(["qtools-mkcdb", "-a", cdb, cdb + ".tmp"], stdin=b"b@example.net\n").rc == 0
        store, mail = tmp_path / "state", tmp_path / "mail"
        store.mkdir()
        mail.mkdir()
        session = (b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<nobody@example.net>\r\n"
                   b"RCPT TO:<B@example.net>\r\nQUIT\r\n")
        env = {"TCPREMOTEIP": "192.0.2.7", "VALIDRCPTTO_CDB": cdb}
        result = run_prog(["validrcptto", "greylist", "-T", str(store)] + sink_cmd(mail), env, session)
        assert result.rc == 0
        replies = result.out.split(b"\r\n")
        assert replies[-4].startswith(b"553 ")
        assert replies[-3] == b"451 greylisted, try again in 300 seconds (#4.7.1)"
        listing = run_prog(["greylist", "-q", str(store)]).out
        assert re.fullmatch(rb"192\.0\.2\.0/24 a@example\.org b@example\.net wait first=\S+ left=300\n",
                            listing), listing
        assert result.err.count(b" pid x: end ") == 1


    def test_postmaster_never_deferred(self, tmp_path):
        """greylist -T passes postmaster@ at once, logs why, and defers the other recipient."""
        store, mail = tmp_path / "state", tmp_path / "mail"
        store.mkdir()
        mail.mkdir()
        session = (b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<PostMaster@example.net>\r\n"
                   b"RCPT TO:<b@example.net>\r\nQUIT\r\n")
        env = {"TCPREMOTEIP": "192.0.2.7"}
        result = run_prog(["greylist", "-T", str(store)] + sink_cmd(mail), env, session)
        assert result.rc == 0
        replies = result.out.split(b"\r\n")
        assert replies[-4].startswith(b"250 ")
        assert replies[-3] == b"451 greylisted, try again in 300 seconds (#4.7.1)"
        assert (b"greylist: 192.0.2.7 pid x: pass rcpt=PostMaster@example.net why=exempt"
                b" entry=postmaster@\n") in result.err
        listing = run_prog(["greylist", "-q", str(store)]).out
        assert b"postmaster" not in listing.lower() and b"b@example.net wait" in listing
        # $MFCHECK_EXEMPT, set per client in tcp.smtp, is mfcheck's list and greylist's.
        result = run_prog(["greylist", "-T", str(store)] + sink_cmd(mail),
                          dict(env, MFCHECK_EXEMPT="@example.net"), session)
        assert b"451 " not in result.out
        assert b"why=exempt entry=@example.net" in result.err


@pytest.mark.e2e
class TestTripletEndToEnd:
    """Triplet mode through the real proxy under tcpserver."""

    def test_defer_retry_and_network_pass(self, tmp_path, tcpserver):
        """A new triplet is deferred at RCPT, its retry delivered, then the network passes."""
        store, mail = tmp_path / "state", tmp_path / "mail"
        store.mkdir()
        mail.mkdir()
        server = tcpserver(["greylist", "-T", "-m", "3", str(store)] + sink_cmd(mail))
        assert send(server, "127.0.1.2") == (451, b"greylisted, try again in 3 seconds (#4.7.1)")
        assert send(server, "127.0.1.2", sender="other@example.org")[0] == 451
        time.sleep(3.5)
        assert send(server, "127.0.1.3") is None
        assert send(server, "127.0.1.4", sender="other@example.org") is None
        assert len(read_maildir(mail)) == 2
        log = server.log()
        assert 'key="127.0.1.0/24 a@example.org b@example.net" state=pass' in log
        assert "greylist: 127.0.1.4 pid" in log and "key=127.0.1.0/24 state=known" in log
        assert "Traceback" not in log and "fatal" not in log
