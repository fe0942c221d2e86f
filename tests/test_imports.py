# SPDX-License-Identifier: ISC
"""The import budget: what each program may load on the paths every connection takes.

Start-up is the per-connection cost, and one heavy module (dnspython,
socket, re, subprocess) costs more than the rest of a connection.  Each
case runs the installed program with Python's import profiler on and
fails naming any module outside the budget: what a bare `python -c pass`
loads, the qtools package, and a few cheap C modules.
"""

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SINK, base_env, run_prog

# Cheap C modules the programs may load (well under a millisecond each).
ALLOWED = {"_socket", "select", "mmap", "zlib", "errno", "_signal", "fcntl", "array", "math"}
# Never on a connection path, whatever the budget says: each costs more
# than a whole decision.
HEAVY = {"dns", "socket", "re", "subprocess", "signal", "ipaddress", "selectors", "threading",
         "importlib", "collections", "typing", "asyncio", "logging", "ssl", "email", "enum"}
PROFILE = {"PYTHONPROFILEIMPORTTIME": "1"}
# The sink is another program: keep its imports out of the profile.
QUIET_SINK = ["env", "-u", "PYTHONPROFILEIMPORTTIME"] + SINK


def imported(stderr):
    """Return the names of the modules in a -X importtime profile."""
    names = set()
    for line in stderr.decode("utf-8", "replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name)
    return names


@pytest.fixture(scope="module")
def baseline():
    """The modules a bare run of this interpreter loads."""
    done = subprocess.run([sys.executable, "-c", "pass"], env=base_env(PROFILE),
                          capture_output=True, check=True)
    return imported(done.stderr)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An allow list, a validrcptto cdb and a greylist store."""
    top = tmp_path_factory.mktemp("imports")
    allow, rcpt = str(top / "allow.cdb"), str(top / "validrcptto.cdb")
    run = run_prog(["qtools-mkcdb", "-n", allow, allow + ".tmp"], stdin=b"192.0.2.0/24\n")
    assert run.rc == 0, run
    run = run_prog(["qtools-mkcdb", "-a", rcpt, rcpt + ".tmp"], stdin=b"joe@example.com\n")
    assert run.rc == 0, run
    (top / "mail").mkdir()
    (top / "badmailfrom").write_text("@spam.example\nbad@example.org\n")
    return {"allow": allow, "rcpt": rcpt, "greylist": str(top / "greylist"),
            "mail": str(top / "mail"), "badmailfrom": str(top / "badmailfrom")}


CLIENT = {"TCPREMOTEIP": "192.0.2.7", "TCPREMOTEHOST": "mail.example.org",
          # a closed port on loopback: a query is sent and fails at once
          "QTOOLS_RESOLVER": "127.0.0.1:9"}
SESSION = (b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<joe@example.com>\r\n"
           b"DATA\r\nSubject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n")


def chain(f, rbl=("-r", "bl.test")):
    """Return the argv of the whole chain in front of the sink."""
    return (["rhostcheck", "rblcheck", "-T", "2"] + list(rbl)
            + ["greylist", "-m", "0", f["greylist"], "validrcptto", "tarpit"]
            + QUIET_SINK + [f["mail"]])


CASES = [
    # (label, argv builder, environment, stdin)
    ("rblcheck, $RBLSMTPD empty", lambda f: ["rblcheck", "-r", "bl.test", "true"],
     {"RBLSMTPD": ""}, b""),
    ("rblcheck, RELAYCLIENT", lambda f: ["rblcheck", "-r", "bl.test", "true"],
     {"RELAYCLIENT": ""}, b""),
    ("rblcheck -A, allow-list hit", lambda f: ["rblcheck", "-A", f["allow"], "-r", "bl.test", "true"],
     {}, b""),
    ("rblcheck, queries sent", lambda f: ["rblcheck", "-T", "2", "-r", "bl.test", "-l", "bl2.test",
                                          "true"], {}, b""),
    ("rblcheck, refusal conversation", lambda f: ["rblcheck", "-r", "bl.test", "true"],
     {"RBLSMTPD": "go away"}, b"HELO x\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nQUIT\r\n"),
    ("rhostcheck -h, PTR and A queries sent", lambda f: ["rhostcheck", "-h", "-T", "2", "true"],
     {}, b"QUIT\r\n"),
    ("rhostcheck, name given", lambda f: ["rhostcheck", "true"], {}, b""),
    ("greylist, first attempt refused", lambda f: ["greylist", f["greylist"] + "-new", "true"],
     {}, b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nQUIT\r\n"),
    ("validrcptto and tarpit, RELAYCLIENT", lambda f: ["validrcptto", "tarpit", "true"],
     {"RELAYCLIENT": ""}, b""),
    ("mfcheck, MX, RHSBL and SPF asked", lambda f: ["mfcheck", "-T", "2", "-p", "6", "-l", "rhs.test"]
     + QUIET_SINK + [f["mail"]], {}, SESSION),
    ("mfcheck, pattern lists read", lambda f: ["mfcheck", "-N", "-b", f["badmailfrom"]]
     + QUIET_SINK + [f["mail"]], {"MFCHECK_HELO": ""}, SESSION),
    ("whole chain, RELAYCLIENT", lambda f: chain(f), {"RELAYCLIENT": ""}, b"QUIT\r\n"),
    ("whole chain, accepted message through the proxy", lambda f: chain(f), {}, SESSION),
]


@pytest.mark.parametrize(("label", "argv", "env", "stdin"), CASES, ids=[c[0] for c in CASES])
def test_budget(label, argv, env, stdin, baseline, files):
    """The program loads nothing outside the budget on this path."""
    environ = dict(CLIENT, VALIDRCPTTO_CDB=files["rcpt"], **PROFILE)
    environ.update(env)
    run = run_prog(argv(files), env=environ, stdin=stdin)
    assert run.rc == 0, run
    loaded = imported(run.err)
    over = sorted(m for m in loaded - baseline - ALLOWED if not m.startswith("qtools"))
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert (over, heavy) == ([], []), run.err.decode("utf-8", "replace")


def test_the_profile_sees_a_heavy_import():
    """The check itself works: a program that loads socket is caught."""
    code = "import socket"
    run = subprocess.run([sys.executable, "-c", code], env=base_env(PROFILE), capture_output=True)
    assert "socket" in imported(run.stderr)


def test_accepted_message_was_stored(files):
    """The accepted-session case really crossed the proxy and reached the sink."""
    assert os.listdir(files["mail"]), "no message stored: the budget case tested nothing"


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.lists(st.integers(0, 999).map(str) | st.text("0123456789\u0661x+", max_size=4),
             min_size=1, max_size=5).map(".".join),
    st.ip_addresses(v=4).map(str),
))
def test_ipv4_without_socket_agrees_with_inet_pton(text):
    """core reads a dotted quad without _socket exactly as inet_pton does."""
    import _socket

    from qtools import core

    try:
        expected = (_socket.AF_INET, _socket.inet_pton(_socket.AF_INET, text))
    except OSError:
        expected = None
    assert core.parse_ip(text) == expected
    if expected:
        assert core.format_ip(expected[1]) == _socket.inet_ntop(_socket.AF_INET, expected[1])


def test_mfcheck_loads_spf_and_patterns_only_when_asked(files):
    """mfcheck without -p, -b or -h loads neither the SPF code nor the pattern lists."""
    environ = dict(CLIENT, **PROFILE)
    run = run_prog(["mfcheck", "-T", "2"] + QUIET_SINK + [files["mail"]], env=environ, stdin=SESSION)
    assert run.rc == 0, run
    loaded = imported(run.err)
    assert "qtools.mailcheck" in loaded, run.err.decode("utf-8", "replace")  # the proxy ran
    assert not loaded & {"qtools.spf", "qtools.spfrecord", "qtools.patterns"}, sorted(loaded)
