# SPDX-License-Identifier: ISC
"""make install and make uninstall with Debian's /usr/bin/python3, staged as a packager does."""

import os
import subprocess
import time

import pytest

from conftest import REPO, SINK, read_maildir, smtp_from

pytestmark = pytest.mark.e2e
PYTHON = "/usr/bin/python3"
PROGRAMS = sorted(os.listdir(os.path.join(REPO, "bin")))


def make(*args):
    """Run make in the repository; return its output, or fail showing it."""
    done = subprocess.run(["make", "-s"] + list(args), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def files_under(top):
    """Return every file below top, as paths relative to it."""
    return sorted(os.path.relpath(os.path.join(d, n), top)
                  for d, _, names in os.walk(top) for n in names)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Install into a staging DESTDIR for PREFIX, then move it to PREFIX as a package would."""
    if not os.access(PYTHON, os.X_OK):
        pytest.fail("%s is missing: the install test is about Debian's python3" % PYTHON)
    top = tmp_path_factory.mktemp("install")
    prefix, stage = str(top / "prefix"), str(top / "stage")
    make("install", "PYTHON=" + PYTHON, "PREFIX=" + prefix, "DESTDIR=" + stage)
    staged = files_under(stage + prefix)
    for name in staged:
        with open(os.path.join(stage + prefix, name), "rb") as f:
            assert stage.encode() not in f.read(), name
    os.rename(stage + prefix, prefix)
    return prefix, staged


def test_staged_installation_holds_programs_pages_and_its_own_library(installed):
    """Programs in bin with Debian's python3 -IS, pages in share/man, the rest in lib/qtools."""
    prefix, staged = installed
    assert [n for n in staged if n.startswith("bin/")] == ["bin/" + p for p in PROGRAMS]
    assert "share/man/man7/qtools.7" in staged and "share/man/man8/validrcptto.8" in staged
    # compiled at install time: the programs run as qmaild and never write one
    assert any(n.startswith("lib/qtools/qtools/__pycache__/core.") for n in staged)
    assert any(n.startswith("lib/qtools/cdblib/") for n in staged)  # pure-cdb, offline
    for program in PROGRAMS:
        with open(os.path.join(prefix, "bin", program)) as f:
            first = f.readline()
        assert first == "#!%s -IS\n" % PYTHON
        done = subprocess.run([os.path.join(prefix, "bin", program), "--version"],
                              env={"PATH": "/usr/bin:/bin"}, capture_output=True)
        assert (done.returncode, done.stdout[:len(program) + 9]) == (0, program.encode() + b" (qtools)")


def test_installed_chain_under_tcpserver(installed, tmp_path, tcpserver, rbldnsd):
    """The installed chain, one process per connection, greylists, refuses and delivers."""
    prefix, _ = installed
    bin_ = os.path.join(prefix, "bin")
    rcpt = str(tmp_path / "validrcptto.cdb")
    done = subprocess.run([os.path.join(bin_, "qtools-mkcdb"), "-a", rcpt, rcpt + ".tmp"],
                          input=b"joe@example.com\n", capture_output=True)
    assert done.returncode == 0, done
    (tmp_path / "mail").mkdir()
    (tmp_path / "greylist").mkdir()
    dns = rbldnsd({"bl.test": ("ip4set", ":127.0.0.2:Listed by bl.test\n127.0.0.2\n")})
    env = {"PATH": "%s:/usr/bin:/bin" % bin_, "QTOOLS_RESOLVER": dns, "VALIDRCPTTO_CDB": rcpt}
    chain = ([os.path.join(bin_, "rhostcheck"), "rblcheck", "-r", "bl.test",
              "greylist", "-m", "1", str(tmp_path / "greylist"), "validrcptto", "tarpit"]
             + SINK + [str(tmp_path / "mail")])
    server = tcpserver(chain, env=env, rules_text='127.0.0.:allow,TCPREMOTEHOST="localhost"\n')

    def rcpt_to(source, address):
        client = smtp_from(server.host, server.port, source)
        try:
            client.ehlo("client.example")
            client.mail("sender@example.org")
            code, _ = client.rcpt(address)
            if code == 250:
                code, _ = client.data(b"Subject: installed\r\n\r\nhello\r\n")
            return code
        finally:
            client.quit()

    assert rcpt_to("127.0.0.1", "joe@example.com") == 451  # greylisted
    time.sleep(1.5)
    assert rcpt_to("127.0.0.1", "joe@example.com") == 250
    assert rcpt_to("127.0.0.1", "nobody@example.com") == 553
    assert rcpt_to("127.0.0.2", "joe@example.com") == 451  # listed
    assert len(read_maildir(tmp_path / "mail")) == 1
    log = server.log()
    assert "fatal" not in log and "Traceback" not in log, log
    # in-process hand-off: rhostcheck and greylist of a connection share a pid
    pids = {}
    for line in log.splitlines():
        if ": 127.0.0.1 pid " in line:
            prog, pid = line.split(":")[0], line.split(" pid ")[1].split(":")[0]
            pids.setdefault(prog, []).append(pid)
    assert pids["rhostcheck"][-1] == pids["greylist"][-1] == pids["validrcptto"][-1]


def test_installed_proxy_path_imports_no_os(installed, tmp_path):
    """mfcheck, its DNS query and tarpit in one proxy, installed: posix only, never os.

    Importing os costs a connection most of a millisecond; an installed
    program has no site import to load it first."""
    prefix, _ = installed
    bin_ = os.path.join(prefix, "bin")
    (tmp_path / "mail").mkdir()
    session = (b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<joe@example.com>\r\n"
               b"RSET\r\nMAIL FROM:<>\r\nRCPT TO:<joe@example.com>\r\n"
               b"DATA\r\nSubject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    # a closed port on loopback: the MX query is sent and fails at once (451 to the RCPT)
    env = {"PATH": "%s:/usr/bin:/bin" % bin_, "TCPREMOTEIP": "127.0.0.9",
           "TCPREMOTEHOST": "mail.example.org", "QTOOLS_RESOLVER": "127.0.0.1:9"}
    # -X importtime reaches only this process: the sink's imports are not in the profile
    argv = ([PYTHON, "-X", "importtime", "-IS", os.path.join(bin_, "mfcheck"), "-T", "2",
             os.path.join(bin_, "tarpit")] + SINK + [str(tmp_path / "mail")])
    done = subprocess.run(argv, input=session, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done
    assert b"\r\n451 " in done.stdout and len(read_maildir(str(tmp_path / "mail"))) == 1, done
    loaded = {line.rsplit(b"|", 1)[1].strip() for line in done.stderr.splitlines()
              if line.startswith(b"import time:")}
    assert {b"qtools.proxyio", b"qtools.resolver", b"qtools.address"} <= loaded, done.stderr
    assert b"os" not in loaded, done.stderr


def test_upgrade_removes_what_the_old_version_had(installed, tmp_path):
    """Installing over an installation leaves none of its files that the new one has not."""
    prefix, staged = installed
    stale_prog = os.path.join(prefix, "bin", "oldprog")
    stale_module = os.path.join(prefix, "lib", "qtools", "qtools", "oldmodule.py")
    for path in (stale_prog, stale_module):
        with open(path, "w") as f:
            f.write("old\n")
    with open(os.path.join(prefix, "lib", "qtools", "MANIFEST"), "a") as f:
        f.write("f %s\n" % stale_prog)
    make("install", "PYTHON=" + PYTHON, "PREFIX=" + prefix)
    assert not os.path.exists(stale_prog) and not os.path.exists(stale_module)
    assert files_under(prefix) == staged
    done = subprocess.run([os.path.join(prefix, "bin", "rblcheck"), "-r", "bl.test", "true"],
                          env={"PATH": "/usr/bin:/bin", "TCPREMOTEIP": "192.0.2.7", "RBLSMTPD": ""},
                          capture_output=True)
    assert done.returncode == 0, done


def test_uninstall_leaves_nothing(installed, tmp_path):
    """make uninstall removes every file and directory install made, and only those."""
    prefix, _ = installed
    mine = os.path.join(prefix, "share", "man", "man8", "local.8")
    with open(mine, "w") as f:
        f.write("not qtools'\n")
    make("uninstall", "PREFIX=" + prefix)
    assert files_under(prefix) == ["share/man/man8/local.8"]
    os.remove(mine)
    # what kept share/man/man8 is gone: removing the empty directories up
    # from there removes the prefix too, so nothing else was left in it
    os.removedirs(os.path.dirname(mine))
    assert not os.path.exists(prefix)


def test_fresh_install_and_uninstall_in_place(tmp_path):
    """Without DESTDIR, uninstall also removes the PREFIX that install created."""
    prefix = str(tmp_path / "opt" / "qtools")
    make("install", "PYTHON=" + PYTHON, "PREFIX=" + prefix)
    assert os.path.isfile(os.path.join(prefix, "bin", "validrcptto"))
    make("uninstall", "PREFIX=" + prefix)
    assert os.listdir(str(tmp_path)) == ["opt"] and os.listdir(str(tmp_path / "opt")) == []
