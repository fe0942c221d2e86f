# SPDX-License-Identifier: ISC
"""Tests for qtools-report: counting, the text and JSON outputs, the HTML page in Chromium, the real chain."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO, VENV_BIN, base_env, run_prog, smtp_from
from qtools import core, logread, report, reportstats, reporttext

DAY = 1795993200  # 2026-11-29 23:00:00 UTC


def stamped(when, text):
    """Return text behind the TAI64N stamp multilog would give it at Unix time when."""
    return "%s %s\n" % (reportstats.stamp_of(when), text)


def line(when, prog, ip, verdict, fields=(), pid=None):
    text = core.log_line(prog, ip, verdict, fields)
    if pid is not None:
        text = text.replace(" pid %d: " % os.getpid(), " pid %d: " % pid, 1)
    return stamped(when, text) if when is not None else text + "\n"


def queue_line(when, action, score=None, virus=None, ip="192.0.2.7", rcpts=1, why=None):
    """A qtools-queue line as /work's fixed format has it, written by core.log_line."""
    fields = [("from", ""), ("rcpts", rcpts), ("size", 1000), ("spam", "yes" if (score or 0) >= 5 else "no")]
    if score is not None:
        fields += [("score", score), ("required", "5.0")]
    fields += [("tests", "BAYES_00,HTML_MESSAGE")]
    if virus:
        fields.append(("virus", virus))
    fields.append(("ms", 42))
    if why:
        fields.append(("why", why))
    return line(when, "qtools-queue", ip, action, fields, pid=77)


def count(lines, start=None, end=None, **thresholds):
    stats = reportstats.Stats(start, end)
    stats.feed(lines)
    return stats.as_dict(10, thresholds)


def refusals(data):
    return {(r["prog"], r["code"], r["reason"]): r["count"] for r in data["refusals"]}


# --- Counting hand-made lines ---------------------------------------------------------


def hand_made():
    t = DAY
    return [
        stamped(t, "tcpserver: status: 1/40"),
        stamped(t, "tcpserver: pid 101 from 192.0.2.7"),
        stamped(t, "tcpserver: ok 101 mx:192.0.2.25:25 :192.0.2.7::4000"),
        line(t + 1, "rblcheck", "192.0.2.7", "451 Listed by bl.example, see http://x/?ip=192.0.2.7",
             (("why", "listed"), ("list", "bl.example")), pid=101),
        stamped(t + 2, "tcpserver: end 101 status 0"),
        stamped(t + 10, "tcpserver: ok 102 mx:192.0.2.25:25 :198.51.100.9::4000"),
        line(t + 10, "greylist", "198.51.100.9", "451 greylisted, try again in 300 seconds (#4.7.1)",
             (("key", "198.51.100.0/24"), ("state", "new")), pid=102),
        stamped(t + 700, "tcpserver: ok 103 mx:192.0.2.25:25 :198.51.100.9::4001"),
        line(t + 700, "greylist", "198.51.100.9", "pass", (("key", "198.51.100.0/24"), ("state", "pass"),
                                                           ("age", 690)), pid=103),
        line(t + 701, "validrcptto", "198.51.100.9", "553 sorry, this recipient is not in my validrcptto "
             "list (#5.7.1)", (("rcpt", "Nobody@Example.COM"), ("why", "notfound")), pid=103),
        line(t + 702, "tarpit", "198.51.100.9", "delay", (("rcpt", 5), ("seconds", 5)), pid=103),
        queue_line(t + 3600, "deliver", -1.2),
        queue_line(t + 3601, "tag", 7.3),
        queue_line(t + 3602, "quarantine", 12.0),
        queue_line(t + 3603, "reject", virus="Eicar-Signature"),
        line(t + 3604, "validrcptto", "198.51.100.9", "end", (("why", "eof"), ("status", 0)), pid=103),
        stamped(t + 3700, "tcpserver: ok 104 mx:192.0.2.25:25 :203.0.113.5::4000"),
        line(t + 3700, "greylist", "203.0.113.5", "451 greylisted, try again in 300 seconds (#4.7.1)",
             (("key", "203.0.113.0/24"), ("state", "new")), pid=104),
        # Programs written after this one: counted by prog and why, no change needed.
        stamped(t + 3701, "tcpserver: ok 105 mx:192.0.2.25:25 :203.0.113.6::4000"),
        line(t + 3701, "throttle", "203.0.113.6", "421 too many connections, slow down (#4.7.0)",
             (("why", "rate"),), pid=105),
        stamped(t + 3702, "tcpserver: ok 106 mx:192.0.2.25:25 :203.0.113.7::4000"),
        line(t + 3702, "mfcheck", "203.0.113.7", "553 sender domain has no MX (#5.1.8)",
             (("why", "nxdomain"), ("from", "a@b.invalid")), pid=106),
        line(t + 3703, "rblcheck", "203.0.113.8", "dryrun", (("reply", "451 Listed"), ("why", "listed"),
                                                             ("list", "bl2.example")), pid=107),
        stamped(t + 3704, "greylist: warning: unable to create /x/y: permission denied"),
        stamped(t + 3705, "this is not a decision line"),
    ]


def test_every_refusal_is_counted_by_program_code_and_reason():
    data = count(hand_made())
    assert refusals(data) == {
        ("rblcheck", 451, "bl.example"): 1, ("greylist", 451, "greylisted"): 2,
        ("validrcptto", 553, "notfound"): 1, ("throttle", 421, "rate"): 1,
        ("mfcheck", 553, "nxdomain"): 1, ("qtools-queue", 554, "virus"): 1,
    }
    assert data["refused"] == 7
    assert data["refused_by_prog"]["greylist"] == 2
    assert data["dryruns"] == [{"prog": "rblcheck", "reason": "bl2.example", "count": 1}]
    assert data["problems"] == [{"prog": "greylist", "kind": "warning", "count": 1,
                                 "text": "unable to create /x/y: permission denied"}]


def test_connections_come_from_tcpserver_and_are_guessed_without_it():
    lines = hand_made()
    assert count(lines)["connections"] == 6
    assert count(lines)["connections_from"] == "tcpserver"
    without = [text for text in lines if " tcpserver: " not in text]
    # Connections 101 to 107, each seen by its (ip, pid); the queue's lines are not connections.
    assert count(without)["connections"] == 7
    assert count(without)["connections_from"] == "decision lines"


def test_greylist_deferrals_passes_and_the_delay_they_waited():
    grey = count(hand_made())["greylist"]
    assert (grey["deferrals"], grey["deferred"], grey["passed_later"], grey["pass_rate"]) == (2, 2, 1, 50.0)
    assert grey["median_delay"] == 690
    assert grey["delays"]["10-30 min"] == 1 and sum(grey["delays"].values()) == 1


def test_content_filter_actions_scores_viruses_and_thresholds():
    queue = count(hand_made(), quarantine=10.0)["queue"]
    assert queue["actions"] == {"deliver": 1, "tag": 1, "quarantine": 1, "reject": 1}
    assert queue["scores"] == {"-2": 1, "7": 1, "12": 1}
    assert queue["viruses"] == {"Eicar-Signature": 1}
    assert queue["thresholds"] == {"tag": 5.0, "quarantine": 10.0, "reject": None}
    assert queue["recipients"] == 3
    data = count(hand_made())
    assert (data["accepted"], data["delivered"]) == (3, 2)


def test_top_networks_recipients_tarpit_and_the_hours():
    data = count(hand_made())
    assert data["top_networks"][0] == ("203.0.113.0/24", 3)
    assert ("198.51.100.0/24", 2) in data["top_networks"]
    assert data["top_recipients"] == [("nobody@example.com", 1)]
    assert data["tarpit"] == {"delays": 1, "seconds": 5}
    hours = {h["hour"]: h for h in data["hours"]}
    assert sorted(hours) == [DAY, DAY + 3600]
    assert hours[DAY]["connections"] == 3 and hours[DAY]["refused"] == {"rblcheck": 1, "greylist": 1,
                                                                         "validrcptto": 1}
    assert hours[DAY + 3600]["accepted"] == 3


def test_the_time_range_keeps_only_the_lines_inside_it():
    data = count(hand_made(), start=DAY + 3600, end=DAY + 3701)
    assert data["connections"] == 1
    assert refusals(data) == {("greylist", 451, "greylisted"): 1, ("qtools-queue", 554, "virus"): 1}


def test_plain_lines_without_stamps_are_read_too():
    plain = [text[26:] if text[:1] == "@" else text for text in hand_made()]
    data = count(plain)
    assert data["refused"] == 7 and data["connections"] == 6
    assert data["first"] is None and [h["hour"] for h in data["hours"]] == []


def test_a_quoted_reason_and_a_refusal_without_why():
    lines = [line(DAY, "validrcptto", "192.0.2.1", "553 sorry (#5.7.1)", (("rcpt", "a b@x"), ("why", "not found"))),
             line(DAY, "rhostcheck", "192.0.2.1", "553 bad reverse DNS: 192.0.2.1 has no name (#5.7.25)"),
             line(DAY, "rblcheck", "192.0.2.1", "553 Your address is blocked", (("why", "override"),))]
    assert refusals(count(lines)) == {("validrcptto", 553, "not found"): 1, ("rhostcheck", 553, "bad"): 1,
                                      ("rblcheck", 553, "override"): 1}


def test_triplets_are_greylist_keys_too_and_a_local_injection_has_no_network():
    key = "192.0.2.0/24 a@example.org joe@example.com"
    lines = [line(DAY, "greylist", "192.0.2.1", "proxy", (("key", "192.0.2.0/24"),), pid=1),
             line(DAY, "greylist", "192.0.2.1", "451 greylisted, try again in 300 seconds (#4.7.1)",
                  (("key", key), ("state", "new")), pid=1),
             line(DAY + 400, "greylist", "192.0.2.1", "pass", (("key", key), ("state", "pass"), ("age", 400)), pid=2),
             queue_line(DAY + 401, "reject", 20.0, ip="-")]
    data = count(lines)
    assert (data["greylist"]["deferred"], data["greylist"]["passed_later"]) == (1, 1)
    assert data["greylist"]["delays"]["5-10 min"] == 1
    assert data["top_networks"] == [("192.0.2.0/24", 1)]
    assert refusals(data)[("qtools-queue", 554, "spam")] == 1


# --- Options, inputs and outputs -------------------------------------------------------


def test_times_and_days_are_read_in_local_time(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        assert report.parse_time("2026-11-29") == DAY - 23 * 3600
        assert report.parse_time("2026-11-29", end=True) == DAY + 3600
        assert report.parse_time("2026-11-29T23:00") == DAY
        assert report.parse_time("2026-11-29 23:00:30") == DAY + 30
        assert report.day_range("yesterday", DAY + 7200) == (DAY - 23 * 3600, DAY + 3600)
        assert report.day_range("today", DAY + 7200) == (DAY + 3600, DAY + 3600 + 86400)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize("argv, json_, html, paths", [
    (["--json", "x"], True, None, ["x"]),
    (["-H", "--json", "y"], False, "--json", ["y"]),  # the argument of -H, however it looks
    (["-jH", "--json"], True, "--json", []),
    (["-Hpage", "--json", "z"], True, "page", ["z"]),
    (["x", "--json"], False, None, ["x", "--json"]),  # options end at the first name
])
def test_json_is_a_long_spelling_of_j(argv, json_, html, paths):
    options = report.parse(argv, DAY)
    assert (options.json, options.html, options.paths) == (json_, html, paths)


@pytest.mark.parametrize("argv, message", [
    (["-s", "yesterday"], b"qtools-report: invalid time: yesterday"),
    (["-d", "monday"], b"qtools-report: invalid day: monday"),
    (["-s", "2026-11-30", "-e", "2026-11-29"], b"qtools-report: the start (-s) must come before the end (-e)"),
    (["-t", "nan"], b"qtools-report: invalid score for -t: nan"),
    (["-n", "0"], b"qtools-report: invalid value for -n: 0"),
    (["-x"], b"qtools-report: illegal option -- x"),
])
def test_bad_options_are_usage_errors(argv, message):
    result = run_prog(["qtools-report"] + argv)
    assert result.rc == 100
    assert result.err.startswith(message) and b"\nqtools-report: usage: qtools-report [ -j ]" in result.err


def test_a_missing_file_is_a_temporary_failure(tmp_path):
    result = run_prog(["qtools-report", str(tmp_path / "nothere")])
    assert result.rc == 111
    assert result.err == b"qtools-report: fatal: unable to read %s: no such file or directory\n" % (
        str(tmp_path / "nothere").encode())


def test_an_unreadable_directory_and_an_unwritable_page(tmp_path):
    logdir = make_logdir(tmp_path / "log", hand_made())
    page = tmp_path / "no" / "report.html"
    result = run_prog(["qtools-report", "-H", str(page), str(logdir)])
    assert result.rc == 111 and result.out == b""
    assert result.err == b"qtools-report: fatal: unable to write %s: no such file or directory\n" % (
        str(page).encode())
    assert not os.path.exists(page.parent)
    broken = tmp_path / "broken"
    (broken / "current").mkdir(parents=True)
    result = run_prog(["qtools-report", str(broken)])
    assert (result.rc, result.out) == (111, b"")
    assert result.err == b"qtools-report: fatal: unable to read %s/current: is a directory\n" % str(broken).encode()


def make_logdir(path, lines):
    """A multilog directory: the lines split over two archives and current."""
    path.mkdir()
    thirds = len(lines) // 3
    for index, (name, part) in enumerate([("@%s.s" % reportstats.stamp_of(DAY + 1)[1:], lines[:thirds]),
                                          ("@%s.s" % reportstats.stamp_of(DAY + 3650)[1:], lines[thirds:2 * thirds]),
                                          ("current", lines[2 * thirds:])]):
        (path / name).write_text("".join(part))
    return path


def test_a_log_directory_and_a_file_given_together(tmp_path):
    logdir = make_logdir(tmp_path / "log", hand_made())
    extra = tmp_path / "queue.log"
    extra.write_text(queue_line(DAY + 3650, "deliver", 0.5))
    result = run_prog(["qtools-report", "--json", str(logdir), str(extra)], env={"TZ": "UTC"})
    assert result.rc == 0, result
    data = json.loads(result.out)
    assert data["queue"]["actions"]["deliver"] == 2
    assert data["refused"] == 7


def test_archives_closed_before_the_start_are_not_opened(tmp_path):
    logdir = make_logdir(tmp_path / "log", hand_made())
    first = sorted(os.listdir(logdir))[0]
    assert report.inputs([str(logdir)], DAY + 3600) == [str(logdir / name) for name in sorted(os.listdir(logdir))
                                                        if name != first]


def test_standard_input_and_the_text_summary(tmp_path):
    result = run_prog(["qtools-report", "-s", "2026-11-29", "-e", "2026-11-30"], env={"TZ": "UTC"},
                      stdin="".join(hand_made()).encode())
    assert result.rc == 0 and result.err == b""
    text = result.out.decode()
    assert text.startswith("qtools-report: 2026-11-29 00:00 to 2026-12-01 00:00\n")
    for title in ("Grand totals", "Refusals by program and reason", "Per hour", "Top client networks refused",
                  "Top recipients refused", "Greylist: how long", "Content filter: messages by action",
                  "Viruses by name", "Spam score distribution", "Warnings and errors"):
        assert "\n\n%s" % title in text
    assert re.search(r"\n  rblcheck +451  bl\.example +1 ", text)
    assert re.search(r"\n  2026-11-29 23:00 +3 +0 +3 ", text)
    assert re.search(r"\n  5 to 6 +0  <- tag\n  6 to 7 +0\n  7 to 8 +1\n", text)


def test_the_text_and_page_of_no_lines_at_all():
    from qtools import reporthtml

    text = reporttext.render(count([]))
    assert "qtools-report: lines without time stamps" in text and "(none)" in text
    page = reporthtml.render(count([]))
    assert page.count("<svg") == 5 and ">none</td>" in page


def test_a_progress_bar_only_on_a_terminal(tmp_path):
    import pty

    path = tmp_path / "log"
    path.write_text("".join(hand_made()) * 200)
    master, slave = pty.openpty()
    done = subprocess.run([os.path.join(VENV_BIN, "qtools-report"), "--json", str(path)], stderr=slave,
                          stdout=subprocess.PIPE, env=base_env(), timeout=30)
    os.close(slave)
    shown = os.read(master, 65536)
    os.close(master)
    assert done.returncode == 0 and b"] 100%" in shown and b"qtools-report: [####" in shown
    piped = run_prog(["qtools-report", "--json", str(path)])
    assert piped.rc == 0 and piped.err == b""


# --- The HTML page ---------------------------------------------------------------------


def sample_html(tmp_path):
    """Write the HTML report of bench/samplelog.py's lines; return its path."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import io
    import samplelog

    out = io.StringIO()
    samplelog.write(out, 600, DAY - 23 * 3600, seed=3)
    log = tmp_path / "sample.log"
    log.write_text(out.getvalue())
    page = tmp_path / "report.html"
    result = run_prog(["qtools-report", "-q", "10", "-r", "15", "-H", str(page), str(log)], env={"TZ": "UTC"})
    assert result.rc == 0, result
    return page


def test_the_page_stands_alone(tmp_path):
    html = sample_html(tmp_path).read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "<script" not in html and "@import" not in html and "url(" not in html
    # Nothing is fetched: no src, no stylesheet link; the only URLs are SVG's namespace.
    assert "src=" not in html and "<link" not in html
    assert set(re.findall(r"https?://[^\"' )<]+", html)) <= {"http://www.w3.org/2000/svg"}
    assert html.count("<svg") == 5
    for key in ("chart-hours", "chart-scores", "chart-greylist", "table-refusals", "table-hours"):
        assert 'id="%s"' % key in html


def test_text_from_the_log_is_escaped_in_the_page():
    from qtools import reporthtml

    lines = [line(DAY, "rblcheck", "192.0.2.1", "451 <b>x</b>", (("why", "listed"), ("list", "<script>x"),)),
             line(DAY, "<img>", "192.0.2.1", "451 no")]
    page = reporthtml.render(count(lines))
    assert "<script>x" not in page and "&lt;script&gt;x" in page


def chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: run make debs")
    return found


@pytest.mark.e2e
def test_the_page_in_headless_chromium(tmp_path):
    page = sample_html(tmp_path)
    profile = tmp_path / "profile"
    common = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
              "--user-data-dir=%s" % profile, "--enable-logging=stderr", "--v=0",
              # Nothing may leave the machine; the page needs nothing anyway.
              "--host-resolver-rules=MAP * ~NOTFOUND", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-default-browser-check"]

    def load(uri):
        done = subprocess.run(common + ["--dump-dom", uri], capture_output=True, timeout=120,
                              env=dict(os.environ, HOME=str(tmp_path)))
        assert done.returncode == 0, done.stderr[-2000:]
        console = [text for text in done.stderr.decode("utf-8", "replace").splitlines()
                   if "CONSOLE" in text or "Uncaught" in text or "Failed to load" in text]
        return done.stdout.decode(), console

    # The console is seen: a page that logs an error is caught.
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><script>console.error("boom")</script></body></html>')
    assert any('"boom"' in text for text in load(bad.as_uri())[1])
    dom, console = load(page.as_uri())
    assert console == []
    assert dom.count("<svg") == 5 and dom.count("<rect") > 50 and "Spam score distribution" in dom
    shot = tmp_path / "report.png"
    done = subprocess.run(common + ["--hide-scrollbars", "--window-size=1100,1400", "--screenshot=%s" % shot,
                                    page.as_uri()], capture_output=True, timeout=120,
                          env=dict(os.environ, HOME=str(tmp_path)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20000


# --- The real chain under tcpserver, logging through multilog --------------------------

CHAIN_ZONE = ("ip4set", ":127.0.0.2:Listed by bl.test, see http://bl.test/?$\n127.0.0.2\n")


class Chain:
    """tcpserver running rblcheck, greylist, validrcptto and tarpit before the sink, its log in multilog."""

    def __init__(self, tmp_path, dns):
        for tool in ("tcpserver", "multilog"):
            if shutil.which(tool) is None:
                pytest.fail("%s is not installed: run make debs" % tool)
        self.logdir = tmp_path / "log"
        self.logdir.mkdir()
        (tmp_path / "grey").mkdir()
        (tmp_path / "mail").mkdir()
        rcpt = str(tmp_path / "validrcptto.cdb")
        made = run_prog(["qtools-mkcdb", "-a", rcpt, rcpt + ".tmp"],
                        stdin=b"joe@example.com\npostmaster@example.com\n")
        assert made.rc == 0, made
        # s4096, multilog's smallest: the log rotates while the test runs.
        self.multilog = subprocess.Popen(["multilog", "t", "s4096", "n100", str(self.logdir)],
                                         stdin=subprocess.PIPE)
        env = base_env({"QTOOLS_RESOLVER": dns, "VALIDRCPTTO_CDB": rcpt, "DNSCACHEIP": "127.0.0.1",
                        "TARPITCOUNT": "2", "TARPITDELAY": "1"})
        argv = ["tcpserver", "-v", "-R", "-H", "-l", "localhost", "-1", "127.0.0.1", "0",
                "rblcheck", "-r", "bl.test", "greylist", "-4", "32", "-m", "1", str(tmp_path / "grey"),
                "validrcptto", "tarpit", sys.executable, os.path.join(REPO, "examples", "smtpsink"),
                str(tmp_path / "mail")]
        self.server = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=self.multilog.stdin,
                                       stdin=subprocess.DEVNULL)
        # tcpserver -1 prints the port once it listens: no probe connection, which would be counted.
        self.port = int(self.server.stdout.readline())

    def send(self, source, rcpts):
        """Send one message from source; return the codes of the RCPTs and of DATA (None when not reached)."""
        client = smtp_from("127.0.0.1", self.port, source)
        try:
            client.ehlo("client.example")
            client.mail("sender@example.org")
            codes = [client.rcpt(rcpt)[0] for rcpt in rcpts]
            data = client.data(b"Subject: report test\r\n\r\nhello\r\n")[0] if 250 in codes else None
            client.quit()
            return codes, data
        finally:
            client.close()

    def stop(self):
        """Stop tcpserver, let multilog write the last lines and exit."""
        if self.server.poll() is None:
            self.server.terminate()
            self.server.wait(10)
        self.multilog.stdin.close()
        self.multilog.wait(10)


@pytest.mark.e2e
def test_a_log_directory_written_by_the_real_chain(tmp_path, rbldnsd):
    chain = Chain(tmp_path, rbldnsd({"bl.test": CHAIN_ZONE}))
    try:
        listed = [chain.send("127.0.0.2", ["joe@example.com"]) for _ in range(12)]
        first = chain.send("127.0.0.1", ["joe@example.com"])
        other = chain.send("127.0.0.3", ["joe@example.com"])
        time.sleep(2.2)  # past greylist -m 1
        retry = chain.send("127.0.0.1", ["nobody@example.com", "joe@example.com", "postmaster@example.com"])
        time.sleep(0.5)
    finally:
        chain.stop()
    assert listed == [([451], None)] * 12
    assert first == ([451], None) and other == ([451], None)
    assert retry == ([553, 250, 250], 250)
    names = os.listdir(chain.logdir)
    assert any(name.startswith("@") and name.endswith(".s") for name in names), names  # it rotated
    # The content filter's line for the message that went through, and one it refused.
    queue = tmp_path / "queue.log"
    queue.write_text(queue_line(time.time(), "tag", 6.5, ip="127.0.0.1", rcpts=2)
                     + queue_line(time.time(), "reject", 3.0, virus="Eicar-Signature", ip="127.0.0.1"))
    result = run_prog(["qtools-report", "--json", "-d", "today", str(chain.logdir), str(queue)], timeout=60)
    assert result.rc == 0 and result.err == b"", result
    data = json.loads(result.out)
    assert data["connections"] == 15 and data["connections_from"] == "tcpserver"
    assert refusals(data) == {("rblcheck", 451, "bl.test"): 12, ("greylist", 451, "greylisted"): 2,
                              ("validrcptto", 553, "notfound"): 1, ("qtools-queue", 554, "virus"): 1}
    grey = data["greylist"]
    assert (grey["deferred"], grey["passed_later"], grey["pass_rate"]) == (2, 1, 50.0)
    assert grey["delays"]["< 1 min"] == 1 and 1 <= grey["median_delay"] <= 30
    assert data["tarpit"] == {"delays": 1, "seconds": 1}
    assert data["top_recipients"] == [["nobody@example.com", 1]]
    assert data["top_networks"] == [["127.0.0.0/24", 16]]
    assert data["accepted"] == 1 and data["queue"]["viruses"] == {"Eicar-Signature": 1}
    assert sum(h["connections"] for h in data["hours"]) == 15
    # The text and the page of the same directory.
    page = tmp_path / "chain.html"
    text = run_prog(["qtools-report", "-H", str(page), str(chain.logdir)], timeout=60)
    assert text.rc == 0 and re.search(rb"\n  rblcheck +451  bl\.test +12 ", text.out)
    assert page.read_text().count("<svg") == 5
