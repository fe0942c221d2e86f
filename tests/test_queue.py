# SPDX-License-Identifier: ISC
"""qtools-queue: decide() table, the spamd and clamd clients against fake servers, the program.

The tests against a real spamd and clamd are in e2e/test_content_filter.py.
"""

import os
import re
import stat
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_prog
from helpers_queue import (EICAR, FakeScanner, envelope, make_standin, queued, run_queue)
from qtools import clamd, queue, queuemsg, quarantine, spamc
from qtools.core import Override
from qtools.scansock import ScanError

R = "5.0"


def norm(line):
    """Mask the pid and the time spent in a decision line."""
    return re.sub(r"ms=\d+", "ms=N", re.sub(r"pid \d+", "pid x", line))


def spam(score, flag=None, tests=("T1", "T2")):
    flag = float(score) >= 5.0 if flag is None else flag
    return spamc.SpamResult(flag, score, R, tests)


def pol(**settings):
    base = dict(spamd=("unix", "/s"), clamd=("unix", "/c"))
    base.update(settings)
    return queue.Policy(**base)


THRESHOLDS = [(2.0, "quarantine"), (5.0, "drop"), (10.0, "reject")]
DOWN = ScanError("unreachable", "down")

# (label, policy settings, spam, virus, noreject, relay, override, expected action, why)
CASES = [
    ("clean", {}, spam("1.0"), None, False, False, None, "deliver", None),
    ("spam at required tags", {}, spam("5.0"), None, False, False, None, "tag", None),
    ("spam below quarantine line", {"thresholds": THRESHOLDS}, spam("6.9"), None, False, False, None,
     "tag", None),
    ("quarantine line reached", {"thresholds": THRESHOLDS, "quarantine": "/q"}, spam("7.0"), None,
     False, False, None, "quarantine", "spam"),
    ("delete line reached", {"thresholds": THRESHOLDS}, spam("10.0"), None, False, False, None, "drop", "spam"),
    ("reject line reached", {"thresholds": THRESHOLDS}, spam("15.0"), None, False, False, None,
     "reject", "spam"),
    ("reject line, loopback or NOREJECT: dropped", {"thresholds": THRESHOLDS}, spam("1002.7"), None,
     True, False, None, "drop", "spam"),
    ("reject only", {"thresholds": [(0.0, "reject")]}, spam("5.0"), None, False, False, None,
     "reject", "spam"),
    ("ham over the score is not refused", {"thresholds": [(0.0, "reject")]}, spam("6.0", flag=False),
     None, False, False, None, "deliver", None),
    ("virus refused by default", {}, spam("1.0"), "Eicar", False, False, None, "reject", "virus"),
    ("virus dropped for a backup MX", {}, None, "Eicar", True, False, None, "drop", "virus"),
    ("virus quarantined", {"virus": "quarantine"}, None, "Eicar", True, False, None, "quarantine", "virus"),
    ("virus dropped", {"virus": "drop"}, None, "Eicar", False, False, None, "drop", "virus"),
    ("spamd down: unscanned", {}, DOWN, None, False, False, None, "unscanned", "spamd:unreachable"),
    ("clamd down: unscanned", {}, spam("1.0"), ScanError("timeout", "t"), False, False, None,
     "unscanned", "clamd:timeout"),
    ("both down", {}, ScanError("protocol", "x"), ScanError("closed", "y"), False, False, None,
     "unscanned", "spamd:protocol,clamd:closed"),
    ("spamd down, option: 71", {"tempfail": True}, DOWN, None, False, False, None, "tempfail",
     "spamd:unreachable"),
    ("clamd down but spam over the reject line: a verdict", {"thresholds": THRESHOLDS, "tempfail": True},
     spam("20.0"), DOWN, False, False, None, "reject", "spam"),
    ("clamd size limit is no failure", {"tempfail": True}, spam("1.0"), ScanError("toobig", "big"),
     False, False, None, "deliver", None),
    ("too big for spamd", {}, None, None, False, False, None, "deliver", "size"),
    ("nothing asked", {"spamd": None, "clamd": None}, None, None, False, False, None, "deliver", None),
    ("RELAYCLIENT steps aside", {}, None, None, False, True, None, "deliver", "relayclient"),
    ("override empty", {}, None, None, False, False, Override("skip"), "deliver", "override"),
    ("override text: 71", {}, None, None, False, False, Override("refuse", "later"), "tempfail", "override"),
    ("override -text: refused", {}, None, None, True, False, Override("refuse", "no", True), "reject",
     "override"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_decide(case):
    label, settings, s, v, noreject, relay, ov, action, why = case
    d = queue.decide(pol(**settings), s, v, noreject, relay, ov)
    assert (d.action, d.why) == (action, why)


def test_decide_headers_and_texts():
    d = queue.decide(pol(thresholds=[(3.0, "reject")]), spam("8.1", tests=("GTUBE", "X")), None)
    assert d.text == "this message looks like spam (score 8.1, required 5.0) (#5.7.1)"
    assert d.headers == (b"X-Spam-Flag: YES\nX-Spam-Status: Yes, score=8.1 required=5.0 tests=GTUBE,X\n"
                         b"X-Spam-Level: ********\n")
    d = queue.decide(pol(), spam("-1.2", tests=()), None)
    assert d.headers == b"X-Spam-Status: No, score=-1.2 required=5.0 tests=none\n"
    d = queue.decide(pol(), None, "Win.Test.EICAR_HDB-1")
    assert d.text == "this message contains a virus: Win.Test.EICAR_HDB-1 (#5.7.1)"
    assert queue.decide(pol(), DOWN, None).headers == b""  # no score claimed


def test_long_test_lists_are_folded():
    tests = ["RULE_NUMBER_%02d" % n for n in range(20)]
    d = queue.decide(pol(), spam("3.0", tests=tests), None)
    lines = d.headers.split(b"\n")
    assert all(len(line) <= 78 for line in lines)
    assert all(line.startswith(b"\t") for line in lines[1:-2])
    unfolded = d.headers.replace(b"\n\t", b"").split(b"tests=")[1].split(b"\n")[0]
    assert unfolded == ",".join(tests).encode()


@pytest.mark.parametrize(("score", "band"), [("5.0", b"LOW"), ("7.9", b"LOW"), ("8.0", b"MEDIUM"),
                                             ("10.9", b"MEDIUM"), ("11.0", b"HIGH")])
def test_subject_bands(score, band):
    d = queue.decide(pol(subject="[SPAM]", delta=3.0), spam(score), None)
    assert d.prefix == b"[SPAM] " + band
    assert queue.decide(pol(subject="[SPAM]"), spam(score), None).prefix == b"[SPAM]"
    assert queue.decide(pol(subject="[SPAM]"), spam("1.0"), None).prefix is None


POLICY_ERRORS = [
    ({"QTOOLS_SPAM_REJECT": "x"}, "invalid $QTOOLS_SPAM_REJECT: x"),
    ({"QTOOLS_SPAM_REJECT": "nan"}, "invalid $QTOOLS_SPAM_REJECT: nan"),
    ({"QTOOLS_SPAM_DELETE": "10", "QTOOLS_SPAM_REJECT": "5"},
     "$QTOOLS_SPAM_REJECT must be above the score of drop"),
    ({"QTOOLS_SPAM_QUARANTINE": "3"}, "quarantine wanted but $QTOOLS_QUARANTINE is not set"),
    ({"QTOOLS_VIRUS": "bounce"}, "invalid $QTOOLS_VIRUS: bounce"),
    ({"QTOOLS_SPAMD": "host:99999"}, "invalid $QTOOLS_SPAMD: host:99999"),
    ({"QTOOLS_SCAN_TIMEOUT": "0"}, "invalid $QTOOLS_SCAN_TIMEOUT: 0"),
    ({"QTOOLS_REJECT_FD": "1"}, "invalid $QTOOLS_REJECT_FD: 1"),
]


@pytest.mark.parametrize(("environ", "message"), POLICY_ERRORS)
def test_policy_errors(environ, message):
    with pytest.raises(ValueError) as info:
        queue.policy(environ)
    assert str(info.value) == message


def test_policy_defaults_and_addresses():
    p = queue.policy({})
    assert (p.spamd, p.clamd, p.maxsize, p.virus, p.qmailqueue) == (
        ("tcp", "127.0.0.1", 783), None, 512000, "reject", "/var/qmail/bin/qmail-queue")
    p = queue.policy({"QTOOLS_SPAMD": "", "QTOOLS_CLAMD": "[::1]:3310", "QTOOLS_SPAM_QUARANTINE": "2",
                      "QTOOLS_SPAM_REJECT": "8", "QTOOLS_QUARANTINE": "/q"})
    assert (p.spamd, p.clamd, p.thresholds) == (None, ("tcp", "::1", 3310),
                                                [(2.0, "quarantine"), (8.0, "reject")])
    assert queue.policy({"QTOOLS_SPAMD": "/run/spamd.sock"}).spamd == ("unix", "/run/spamd.sock")


@pytest.mark.parametrize(("ip", "local"), [("-", True), ("127.0.0.1", True), ("127.9.9.9", False),
                                           ("::1", True), ("::ffff:127.0.0.1", True),
                                           ("192.0.2.7", False), ("2001:db8::1", False), ("junk", False)])
def test_local_client(ip, local):
    assert queue.local_client(ip) == local


ENVELOPES = [
    (b"Fa@b\0Tc@d\0\0", (b"a@b", [b"c@d"])),
    (b"F\0Tc@d\0Te@f\0\0", (b"", [b"c@d", b"e@f"])),
    (b"", 54), (b"Fa@b\0Tc@d\0", 54), (b"Fa@b", 54), (b"Fa@b\0Tc@", 54),
    (b"Xa@b\0\0", 91), (b"Fa@b\0Xc@d\0\0", 91),
    (b"F" + b"a" * 1003 + b"\0Tc@d\0\0", 11),
]


@pytest.mark.parametrize(("data", "expected"), ENVELOPES)
def test_parse_envelope(data, expected):
    if isinstance(expected, int):
        with pytest.raises(queuemsg.EnvelopeError) as info:
            queuemsg.parse_envelope(data)
        assert info.value.code == expected
    else:
        assert queuemsg.parse_envelope(data) == expected
        assert queuemsg.envelope(*expected) == data


@pytest.mark.parametrize(("message", "expected"), [
    (b"From: a\nSubject: hello\n\nbody\n", b"From: a\nSubject: [S] hello\n\nbody\n"),
    (b"subject:\thello\r\n\r\nbody\r\n", b"subject:\t[S] hello\r\n\r\nbody\r\n"),
    (b"From: a\n\nSubject: not a header\n", b"Subject: [S]\nFrom: a\n\nSubject: not a header\n"),
])
def test_compose_subject_prefix(tmp_path, message, expected):
    src, dst = queuemsg.tmpfile(str(tmp_path)), queuemsg.tmpfile(str(tmp_path))
    queuemsg.write_all(src, message)
    queuemsg.compose(dst, b"", src, len(message), b"[S]")
    assert os.pread(dst, 1000, 0) == expected
    assert os.listdir(str(tmp_path)) == []  # private: no name points to the spool


def test_xtext_keeps_every_byte():
    for address in (b"a@b", b"", b"we+ird=\x00\xff @x", bytes(range(256))):
        assert quarantine.unxtext(quarantine.xtext(address)) == address
    with pytest.raises(ValueError):
        quarantine.unxtext(b"a+4")


# --- the protocol clients against fake servers -----------------------------------

SPAMD_OK = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 11\r\nSpam: True ; 7.3 / 5.0\r\n\r\nGTUBE,OTHER"


@pytest.fixture
def spool(tmp_path):
    def make(data):
        fd = queuemsg.tmpfile(str(tmp_path))
        queuemsg.write_all(fd, data)
        return fd

    return make


@pytest.fixture
def fakes(tmp_path):
    made = []

    def make(behaviour, terminator=None):
        server = FakeScanner(tmp_path, behaviour, terminator)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


def test_spamd_request_and_answer(fakes, spool):
    server = fakes(SPAMD_OK)
    result = spamc.check(("unix", server.path), spool(b"Subject: x\n\nbody\n"), 17, 5, user="joe@example.com")
    assert (result.spam, result.score, result.required, result.tests) == (True, "7.3", "5.0", ("GTUBE", "OTHER"))
    assert server.requests == [b"SYMBOLS SPAMC/1.5\r\nContent-length: 17\r\nUser: joe@example.com\r\n\r\n"
                               b"Subject: x\n\nbody\n"]


@pytest.mark.parametrize(("numbers", "expected"), [(b"7.3 / 5.0", ("7.3", "5.0")), (b"-2.1 / 5", ("-2.1", "5")),
                                                   (b"1002.7/5.0", ("1002.7", "5.0"))])
def test_spamd_scores_as_spamd_wrote_them(numbers, expected):
    result = spamc.parse(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; " + numbers + b"\r\n\r\n")
    assert (result.score, result.required) == expected


def test_quarantine_verdict_cannot_break_the_block():
    block = quarantine.block(b"a@b", [b"c@d"], "virus virus=Evil\nX-Qtools-Envelope-To: e@f", "192.0.2.7")
    assert block.count(b"\n") == 5 and block.count(b"X-Qtools-Envelope-To") == 2  # one in the first line


def test_spamd_user_with_control_characters_is_left_out():
    assert b"User" not in spamc.request("SYMBOLS", 3, "a\tb@c")
    assert b"User" not in spamc.request("SYMBOLS", 3, None)


BAD_ANSWERS = [
    (spamc, b"garbage", "protocol"),
    (spamc, b"", "closed"),
    (spamc, b"SPAMD/1.0 76 Bad header line: x\r\n", "error"),
    (spamc, b"SPAMD/1.1 0 EX_OK\r\nSpam: Maybe ; 1 / 5\r\n\r\n", "protocol"),
    (spamc, b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; x / 5\r\n\r\n", "protocol"),
    (spamc, b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; inf / 5.0\r\n\r\n", "protocol"),
    (spamc, b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1_0.0 / 5.0\r\n\r\n", "protocol"),
    (spamc, b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1.0. / 5.0\r\n\r\n", "protocol"),
    (spamc, b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; -nan / 5.0\r\n\r\n", "protocol"),
    (spamc, b"SPAMD/1.1 0 EX_OK\r\nContent-length: 9\r\nSpam: True ; 9 / 5\r\n\r\nGTUBE", "protocol"),
    (spamc, b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n", "protocol"),
    (clamd, b"INSTREAM size limit exceeded. ERROR\0", "toobig"),
    (clamd, b"stream: Can't allocate memory ERROR\0", "error"),
    (clamd, b"\xffjunk", "protocol"),
    (clamd, b"", "closed"),
]


@pytest.mark.parametrize(("module", "answer", "kind"), BAD_ANSWERS)
def test_bad_answers(module, answer, kind):
    with pytest.raises(ScanError) as info:
        module.parse(answer)
    assert info.value.kind == kind


@pytest.mark.parametrize("scanner", ["spamd", "clamd"])
@pytest.mark.parametrize(("behaviour", "kind"), [("hung", "timeout"), ("closed", "closed"),
                                                 ("garbage", "protocol")])
def test_misbehaving_servers(fakes, spool, scanner, behaviour, kind):
    server = fakes(behaviour, terminator=b"\0\0\0\0" if scanner == "clamd" else None)
    ask = spamc.check if scanner == "spamd" else clamd.scan
    start = time.monotonic()
    with pytest.raises(ScanError) as info:
        ask(("unix", server.path), spool(b"x\n"), 2, 0.5)
    assert info.value.kind == kind
    assert time.monotonic() - start < 3


def test_spamd_unreachable(tmp_path, spool):
    with pytest.raises(ScanError) as info:
        spamc.check(("unix", str(tmp_path / "none")), spool(b"x"), 1, 1)
    assert info.value.kind == "unreachable"


def test_one_deadline_for_the_whole_exchange(fakes, spool):
    """A server trickling its answer is cut at the time limit, not at each read."""
    server = fakes(b"SPAMD/1.1 0 EX_OK\r\n")
    ticks = iter(range(100))
    with pytest.raises(ScanError) as info:
        spamc.check(("unix", server.path), spool(b"x"), 1, 3, clock=lambda: next(ticks))
    assert info.value.kind == "timeout"


def test_clamd_chunks_and_answer(fakes, spool):
    server = fakes(b"stream: Test.EICAR.NDB.UNOFFICIAL FOUND\0", terminator=b"\0\0\0\0")
    data = b"a" * 70000
    assert clamd.scan(("unix", server.path), spool(data), len(data), 5) == "Test.EICAR.NDB.UNOFFICIAL"
    request = server.requests[0]
    assert request.startswith(b"zINSTREAM\0" + (65536).to_bytes(4, "big"))
    assert request == (b"zINSTREAM\0" + (65536).to_bytes(4, "big") + data[:65536]
                       + (4464).to_bytes(4, "big") + data[65536:] + b"\0\0\0\0")


@pytest.mark.parametrize(("answer", "result"), [
    (b"stream: OK\0", None),
    (b"stream: Eicar-Test-Signature FOUND\0", "Eicar-Test-Signature"),
])
def test_clamd_answers(answer, result):
    assert clamd.parse(answer) == result


# --- the program, with the stand-in qmail-queue and fake scanners ----------------

MESSAGE = b"From: a@example.org\nSubject: hello\n\nbody\n"
ONE = envelope(b"a@example.org", b"joe@example.com")


@pytest.fixture
def standin(tmp_path):
    path, out = make_standin(tmp_path)
    return {"QTOOLS_QMAILQUEUE": path, "STANDIN_DIR": out, "QTOOLS_SPAMD": "", "QMAILQUEUE": "/loop"}, out


def test_delivered_with_spam_headers_on_top(tmp_path, standin, fakes):
    env, out = standin
    server = fakes(SPAMD_OK)
    run = run_queue(tmp_path, MESSAGE, ONE, dict(env, QTOOLS_SPAMD=server.path))
    assert run.rc == 0, run
    [(message, env_bytes)] = queued(out)
    assert message == (b"X-Spam-Flag: YES\nX-Spam-Status: Yes, score=7.3 required=5.0 tests=GTUBE,OTHER\n"
                       b"X-Spam-Level: *******\n" + MESSAGE)
    assert env_bytes == ONE
    assert norm(run.log()) == ("qtools-queue: 192.0.2.7 pid x: tag from=a@example.org rcpts=1 size=41"
                               " spam=yes score=7.3 required=5.0 tests=GTUBE,OTHER ms=N rcpt=joe@example.com")
    environ = open([os.path.join(out, n) for n in os.listdir(out) if n.endswith(".environ")][0]).read()
    assert "QMAILQUEUE=" not in environ.replace("QTOOLS_QMAILQUEUE=", "")


@pytest.mark.parametrize("behaviour", ["hung", "closed", "garbage"])
def test_scanner_trouble_delivers_unscanned(tmp_path, standin, fakes, behaviour):
    env, out = standin
    server = fakes(behaviour)
    run = run_queue(tmp_path, MESSAGE, ONE, dict(env, QTOOLS_SPAMD=server.path, QTOOLS_SCAN_TIMEOUT="1"))
    assert run.rc == 0
    assert queued(out) == [(MESSAGE, ONE)]  # no header claiming a score
    assert b"qtools-queue: warning: spamd at %s: " % server.path.encode() in run.err
    assert " unscanned " in run.log() and " spam=failed " in run.log()


def test_scanner_trouble_with_tempfail_option(tmp_path, standin, fakes):
    env, out = standin
    server = fakes(b"nonsense")
    run = run_queue(tmp_path, MESSAGE, ONE, dict(env, QTOOLS_SPAMD=server.path, QTOOLS_QUEUE_TEMPFAIL="1"))
    assert (run.rc, queued(out)) == (71, [])
    assert " tempfail " in run.log() and "why=spamd:protocol" in run.log()
    run = run_queue(tmp_path, MESSAGE, ONE, dict(env, QTOOLS_SPAMD=server.path, QTOOLS_QUEUE_TEMPFAIL="1",
                                                 QTOOLS_REJECT_FD="6"), text_fd=6)
    assert (run.rc, run.fd_text) == (82, b"Ztemporary problem scanning this message, try again later (#4.3.0)")


def test_refused_over_the_line_31_or_text_on_the_descriptor(tmp_path, standin, fakes):
    env, out = standin
    server = fakes(SPAMD_OK)
    env = dict(env, QTOOLS_SPAMD=server.path, QTOOLS_SPAM_REJECT="2")
    run = run_queue(tmp_path, MESSAGE, ONE, env)
    assert (run.rc, queued(out)) == (31, [])
    assert " reject " in run.log() and "why=spam" in run.log()
    for fd in (6, 4):
        run = run_queue(tmp_path, MESSAGE, ONE, dict(env, QTOOLS_REJECT_FD=str(fd)), text_fd=fd)
        assert (run.rc, run.fd_text) == (82, b"Dthis message looks like spam (score 7.3, required 5.0) (#5.7.1)")
    run = run_queue(tmp_path, MESSAGE, ONE, dict(env, QTOOLS_REJECT_FD="9"))
    assert run.rc == 31 and b"unable to write to descriptor 9" in run.err
    for extra in ({"TCPREMOTEIP": "127.0.0.1"}, {"QTOOLS_QUEUE_NOREJECT": ""}):
        run = run_queue(tmp_path, MESSAGE, ONE, dict(env, **extra))
        assert (run.rc, queued(out)) == (0, [])
        assert " drop " in run.log()


def test_quarantine_list_release_delete(tmp_path, standin, fakes):
    env, out = standin
    server = fakes(SPAMD_OK)
    maildir = tmp_path / "quarantine"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    two = envelope(b"", b"joe@example.com", b"x+y=z@example.com")
    env = dict(env, QTOOLS_SPAMD=server.path, QTOOLS_SPAM_QUARANTINE="1", QTOOLS_QUARANTINE=str(maildir))
    for _ in range(2):
        run = run_queue(tmp_path, MESSAGE, two, env)
        assert (run.rc, queued(out)) == (0, [])
        assert " quarantine from=\"\" rcpts=2 " in run.log() and "why=spam" in run.log()
    names = sorted(os.listdir(maildir / "new"))
    assert len(names) == 2 and os.listdir(maildir / "tmp") == []
    held = maildir / "new" / names[0]
    assert stat.S_IMODE(os.stat(held).st_mode) == 0o600
    text = held.read_bytes()
    assert text.startswith(b"X-Qtools-Quarantined: 6 lines; spam spam=yes score=7.3")
    assert b"\nX-Qtools-Envelope-From: \nX-Qtools-Envelope-To: joe@example.com\n" in text
    assert b"X-Qtools-Envelope-To: x+2By+3Dz@example.com\n" in text
    assert text.endswith(b"X-Spam-Level: *******\n" + MESSAGE)
    admin = {"QTOOLS_QUARANTINE": str(maildir), "QTOOLS_QMAILQUEUE": env["QTOOLS_QMAILQUEUE"],
             "STANDIN_DIR": out, "QMAILQUEUE": "/loop"}
    listed = run_prog(["qtools-queue", "-l"], env=admin)
    assert listed.rc == 0
    lines = listed.out.decode().splitlines()
    assert [line.split()[0] for line in lines] == names
    assert 'from="" rcpts=2 to="joe@example.com,x+y=z@example.com" client=192.0.2.7' in lines[0]
    done = run_prog(["qtools-queue", "-r", names[0]], env=admin)
    assert done.rc == 0, done
    assert b"qtools-queue: 192.0.2.7 pid x: release from=\"\" rcpts=2 size=" in done.err
    [(message, env_bytes)] = queued(out)
    assert env_bytes == two and message.endswith(MESSAGE) and b"X-Qtools" not in message
    again = run_prog(["qtools-queue", "-r", str(held)], env=admin)
    assert again.rc == 100 and len(queued(out)) == 1  # reaches the recipients once
    # qmail-queue refusing for now: the message stays held
    failed = run_prog(["qtools-queue", "-r", names[1]], env=dict(admin, STANDIN_EXIT="71"))
    assert failed.rc == 111 and os.listdir(maildir / "new") == [names[1]]
    assert run_prog(["qtools-queue", "-d", names[1]], env=admin).rc == 0
    assert os.listdir(maildir / "new") == []
    (maildir / "new" / "junk").write_bytes(MESSAGE)
    assert run_prog(["qtools-queue", "-d", "junk"], env=admin).rc == 100
    assert run_prog(["qtools-queue", "-r", "junk"], env=admin).rc == 100


def test_quarantine_failure_delivers_tagged(tmp_path, standin, fakes):
    env, out = standin
    server = fakes(SPAMD_OK)
    env = dict(env, QTOOLS_SPAMD=server.path, QTOOLS_SPAM_QUARANTINE="1",
               QTOOLS_QUARANTINE=str(tmp_path / "missing"))
    run = run_queue(tmp_path, MESSAGE, ONE, env)
    assert run.rc == 0 and len(queued(out)) == 1
    assert b"warning: unable to create" in run.err and " tag " in run.log() and "why=quarantine" in run.log()


@pytest.mark.parametrize(("env_bytes", "code"), [(b"", 54), (b"Fa@b\0Tc@d\0", 54), (b"Xa\0\0", 91)])
def test_bad_envelope_queues_nothing(tmp_path, standin, env_bytes, code):
    env, out = standin
    run = run_queue(tmp_path, MESSAGE, env_bytes, env)
    assert (run.rc, queued(out)) == (code, [])
    assert " error " in run.log()


def test_virus_refused_and_null_sender_kept(tmp_path, standin, fakes):
    env, out = standin
    server = fakes(b"stream: Test.EICAR FOUND\0", terminator=b"\0\0\0\0")
    null = envelope(b"", b"a@x", b"b@y")
    run = run_queue(tmp_path, EICAR, null, dict(env, QTOOLS_CLAMD=server.path))
    assert (run.rc, queued(out)) == (31, [])
    assert 'reject from="" rcpts=2 size=68 spam=skipped virus=Test.EICAR ms=' in run.log()
    clean = fakes(b"stream: OK\0", terminator=b"\0\0\0\0")
    run = run_queue(tmp_path, MESSAGE, null, dict(env, QTOOLS_CLAMD=clean.path))
    assert run.rc == 0 and queued(out) == [(MESSAGE, null)]


def test_override_and_bad_configuration(tmp_path, standin):
    env, out = standin
    run = run_queue(tmp_path, MESSAGE, ONE, dict(env, QTOOLS_QUEUE="-go away (#5.7.1)"))
    assert (run.rc, queued(out)) == (31, [])
    run = run_queue(tmp_path, MESSAGE, ONE, dict(env, QTOOLS_SPAM_REJECT="x"))
    assert (run.rc, queued(out)) == (71, [])
    assert b"qtools-queue: fatal: invalid $QTOOLS_SPAM_REJECT: x: message refused for now" in run.err
    run = run_queue(tmp_path, MESSAGE, ONE, dict(env, QTOOLS_QMAILQUEUE=str(tmp_path / "none")))
    assert run.rc == 71 and b"unable to run" in run.err and " tempfail " in run.log()


def test_check_option(tmp_path, standin, fakes):
    env, _ = standin
    server = fakes(b"SPAMD/1.5 0 PONG\r\n")
    maildir = tmp_path / "q"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    env = dict(env, QTOOLS_SPAMD=server.path, QTOOLS_SPAM_REJECT="10", QTOOLS_SPAM_QUARANTINE="3",
               QTOOLS_QUARANTINE=str(maildir))
    run = run_prog(["qtools-queue", "-c"], env=env)
    assert run.rc == 0, run
    assert b"spamd at %s: SPAMD/1.5 0 PONG\n" % server.path.encode() in run.out
    assert b"score >= required + 3: quarantine in " in run.out
    assert b"score >= required + 10: refuse with 554" in run.out
    assert os.listdir(maildir / "new") == [] and os.listdir(maildir / "tmp") == []
    run = run_prog(["qtools-queue", "-c"], env=dict(env, QTOOLS_CLAMD=str(tmp_path / "no.sock")))
    assert run.rc == 111 and b"warning: clamd at" in run.err
    run = run_prog(["qtools-queue", "-c"], env=dict(env, QTOOLS_SPAM_DELETE="20"))
    assert run.rc == 100


def test_usage():
    run = run_prog(["qtools-queue", "-c", "extra"])
    assert run.rc == 100 and b"qtools-queue: usage: " in run.err


def test_scan_path_loads_nothing_heavy(tmp_path, standin, fakes):
    """Each message costs a start-up: the scan path stays on cheap modules."""
    from test_imports import HEAVY, imported

    env, out = standin
    server = fakes(SPAMD_OK)
    run = run_queue(tmp_path, MESSAGE, ONE, dict(env, QTOOLS_SPAMD=server.path, PYTHONPROFILEIMPORTTIME="1",
                                                 QTOOLS_SPAM_QUARANTINE="1", QTOOLS_QUARANTINE=str(tmp_path)))
    assert run.rc == 0
    loaded = imported(run.err)
    assert "qtools.spamc" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY) == []


def test_unreadable_envelope_descriptor(standin):
    """fd 1 open for writing only (not qmail-smtpd's pipe): 54, nothing queued."""
    env, out = standin
    run = run_prog(["qtools-queue"], env=env, stdin=MESSAGE)
    assert (run.rc, queued(out)) == (54, [])
    assert b"qtools-queue: fatal: unable to read the envelope: bad file descriptor" in run.err


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.builds(
    lambda flag, score, rest: b"SPAMD/1.1 0 EX_OK\r\nSpam: " + flag + b" ; " + score + b" / 5.0" + rest,
    st.sampled_from([b"True", b"False", b"Maybe", b""]), st.binary(max_size=12), st.binary(max_size=40)))
def test_any_spamd_answer_is_a_result_or_a_scan_error(answer):
    try:
        result = spamc.parse(answer)
    except ScanError:
        return
    float(result.score), float(result.required)
    queue.decide(pol(thresholds=THRESHOLDS, quarantine="/q"), result, None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_clamd_answer_and_envelope_has_an_answer(data):
    try:
        name = clamd.parse(data)
        assert name is None or isinstance(name, str)
    except ScanError:
        pass
    try:
        sender, recipients = queuemsg.parse_envelope(data)
        assert queuemsg.envelope(sender, recipients) == data[:len(queuemsg.envelope(sender, recipients))]
    except queuemsg.EnvelopeError as error:
        assert error.code in (11, 54, 91)
