# SPDX-License-Identifier: ISC
"""qtools-queue test helpers: a stand-in qmail-queue, fake scanners, real spamd and clamd."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from conftest import VENV_BIN, base_env

QUEUE = os.path.join(VENV_BIN, "qtools-queue")

# qmail-queue's stand-in: each run stores the message (fd 0) and the
# envelope (fd 1) as N.msg and N.env in $STANDIN_DIR, and exits
# $STANDIN_EXIT (0 when unset).
STANDIN = """#!/bin/sh
n=$$
cat > "$STANDIN_DIR/$n.msg" || exit 54
cat <&1 > "$STANDIN_DIR/$n.env" || exit 54
env > "$STANDIN_DIR/$n.environ"
exit ${STANDIN_EXIT:-0}
"""

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def envelope(sender, *recipients):
    return b"F" + sender + b"\0" + b"".join(b"T" + r + b"\0" for r in recipients) + b"\0"


def make_standin(directory):
    """Write the stand-in qmail-queue into directory; return its path and its output directory."""
    out = os.path.join(str(directory), "queued")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(str(directory), "qmail-queue")
    with open(path, "w") as f:
        f.write(STANDIN)
    os.chmod(path, 0o755)
    return path, out


def queued(out):
    """Return [(message, envelope)] the stand-in stored, oldest first."""
    names = sorted((n for n in os.listdir(out) if n.endswith(".msg")),
                   key=lambda n: os.stat(os.path.join(out, n)).st_mtime_ns)
    result = []
    for name in names:
        with open(os.path.join(out, name), "rb") as m, open(os.path.join(out, name[:-4] + ".env"), "rb") as e:
            result.append((m.read(), e.read()))
    return result


class Run:
    def __init__(self, rc, err, fd_text, rusage=None):
        self.rc, self.err, self.fd_text, self.rusage = rc, err, fd_text, rusage

    def __repr__(self):
        return "Run(rc=%r, err=%r, fd_text=%r)" % (self.rc, self.err, self.fd_text)

    def log(self):
        """Return the decision line (the one with " pid ")."""
        lines = [line for line in self.err.decode().splitlines() if " pid " in line]
        assert len(lines) == 1, self.err
        return lines[0]


def run_queue(tmp, message, env_bytes, env=None, text_fd=None, timeout=60, message_path=None):
    """Run qtools-queue as qmail-smtpd does: message on fd 0, envelope on fd 1.

    Both are files here (qmail-queue only read()s them).  text_fd, when
    given, is a descriptor number on which the text qmail-smtpd would read
    is collected.  Return a Run; rusage is the child's resource usage.
    """
    tmp = str(tmp)
    if message_path is None:
        message_path = os.path.join(tmp, "in.msg")
        with open(message_path, "wb") as f:
            f.write(message)
    env_path = os.path.join(tmp, "in.env")
    with open(env_path, "wb") as f:
        f.write(env_bytes)
    environ = base_env({"TCPREMOTEIP": "192.0.2.7"})
    environ.update(env or {})
    reader = None
    if text_fd is not None:
        reader, writer = os.pipe()
    with open(message_path, "rb") as stdin, open(env_path, "rb") as stdout:

        def child_setup():
            if writer == text_fd:
                os.set_inheritable(writer, True)  # dup2 onto itself keeps close-on-exec
            else:
                os.dup2(writer, text_fd)

        process = subprocess.Popen([QUEUE], stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                   env=environ, preexec_fn=child_setup if text_fd else None,
                                   close_fds=text_fd is None)
    if text_fd is not None:
        os.close(writer)
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        err = process.stderr.read()
        process.stderr.close()
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    fd_text = None
    if reader is not None:
        fd_text = os.read(reader, 1024)
        os.close(reader)
    return Run(process.returncode, err, fd_text, usage)


class FakeScanner:
    """A unix-socket server that answers each connection as behaviour says.

    behaviour: "hung" (accept, never answer), "closed" (accept, close),
    "garbage" (read the request, answer junk) or bytes (read the request
    to its end, answer these bytes).  Requests are kept in .requests.
    """

    def __init__(self, directory, behaviour, terminator=None):
        self.path = os.path.join(str(directory), "fake-%d.sock" % id(self))
        self.behaviour = behaviour
        self.terminator = terminator  # clamd: the request ends with a zero-length chunk
        self.requests = []
        self.held = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.behaviour == "hung":
                self.held.append(conn)
                continue
            if self.behaviour == "closed":
                conn.close()
                continue
            data = b""
            conn.settimeout(10)
            try:
                while True:
                    if self.terminator and data.endswith(self.terminator):
                        break
                    more = conn.recv(65536)
                    if not more:
                        break
                    data += more
                self.requests.append(data)
                answer = b"garbage\xff\r\n\r\n" if self.behaviour == "garbage" else self.behaviour
                conn.sendall(answer)
            except OSError:
                pass
            conn.close()

    def stop(self):
        self.server.close()
        for conn in self.held:
            conn.close()


def writable_tmp(directory):
    """Return a mode-1777 directory for spamd's TMPDIR (spamd dies when /tmp is not one)."""
    path = os.path.join(str(directory), "tmp")
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o1777)
    return path


def spamd_binary():
    for candidate in (shutil.which("spamd"), "/usr/sbin/spamd", "/usr/bin/spamd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def clamd_binary():
    for candidate in (shutil.which("clamd"), "/usr/sbin/clamd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class Daemon:
    def __init__(self, process, socket_path, logpath, cleanup=None):
        self.process, self.socket, self.logpath, self.cleanup = process, socket_path, logpath, cleanup

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.cleanup:
            shutil.rmtree(self.cleanup, ignore_errors=True)

    def log(self):
        with open(self.logpath, "rb") as f:
            return f.read().decode("utf-8", "replace")


def _wait_for(path, probe, process, logpath, what, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if os.path.exists(path):
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(5)
                    s.connect(path)
                    s.sendall(probe)
                    if probe.startswith(b"PING"):
                        s.shutdown(socket.SHUT_WR)
                    if s.recv(100):
                        return
            except OSError:
                pass
        time.sleep(0.2)
    with open(logpath, "rb") as f:
        raise RuntimeError("%s did not start: %s" % (what, f.read()[-2000:].decode("utf-8", "replace")))


def start_spamd(timeout=90):
    """Start spamd on a unix socket: local tests only (-L), no user config (-x).

    Run as root it drops to nobody, who must reach its helper home and
    TMPDIR: they live in a fresh directory of their own (pytest's are
    private to root), removed when the daemon is stopped.
    """
    directory = tempfile.mkdtemp(prefix="qtools-spamd.")
    os.chmod(directory, 0o755)
    tmp = writable_tmp(directory)
    home = os.path.join(directory, "home")
    os.makedirs(home)
    os.chmod(home, 0o1777)
    sock = os.path.join(directory, "spamd.sock")
    logpath = os.path.join(directory, "spamd.log")
    argv = [spamd_binary(), "--socketpath=" + sock, "-L", "-x", "--max-children", "2",
            "-r", os.path.join(directory, "spamd.pid"), "-s", "stderr", "-H", home]
    if os.getuid() == 0:
        argv += ["-u", "nobody"]
    env = dict(os.environ, TMPDIR=tmp, HOME=home)
    with open(logpath, "wb") as log:
        process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
    daemon = Daemon(process, sock, logpath, cleanup=directory)
    try:
        _wait_for(sock, b"PING SPAMC/1.5\r\n\r\n", process, logpath, "spamd", timeout)
    except Exception:
        daemon.stop()
        raise
    return daemon


def start_clamd(directory, stream_max="20M", timeout=90):
    """Start clamd on a unix socket in directory with a one-line EICAR signature database."""
    directory = str(directory)
    db = os.path.join(directory, "clamdb")
    os.makedirs(db, exist_ok=True)
    with open(os.path.join(db, "test.ndb"), "w") as f:
        f.write("Test.EICAR.NDB:0:*:%s\n" % EICAR.hex())
    sock = os.path.join(directory, "clamd.sock")
    logpath = os.path.join(directory, "clamd.log")
    conf = os.path.join(directory, "clamd.conf")
    with open(conf, "w") as f:
        f.write("DatabaseDirectory %s\nLocalSocket %s\nForeground yes\nPidFile %s\n"
                "TemporaryDirectory %s\nStreamMaxLength %s\nLogFile %s\n"
                % (db, sock, os.path.join(directory, "clamd.pid"), writable_tmp(directory),
                   stream_max, os.path.join(directory, "clamd-file.log")))
    with open(logpath, "wb") as log:
        process = subprocess.Popen([clamd_binary(), "-c", conf], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=log, start_new_session=True)
    _wait_for(sock, b"zPING\0", process, logpath, "clamd", timeout)
    return Daemon(process, sock, logpath)


# Runs argv[3] with fd 0 = argv[1], fd 1 = argv[2]; prints its exit code and peak RSS in KiB.
# The launcher is a small process of its own: a child forked from a big
# one (pytest) would count the parent's pages in its peak.
_LAUNCHER = """import os, sys
m, e = os.open(sys.argv[1], os.O_RDONLY), os.open(sys.argv[2], os.O_RDONLY)
pid = os.fork()
if pid == 0:
    os.dup2(m, 0); os.dup2(e, 1); os.execv(sys.argv[3], sys.argv[3:])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss(message_path, envelope_path, env, argv=(QUEUE,)):
    """Run qtools-queue on the files; return (exit code, peak RSS in MB)."""
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, message_path, envelope_path] + list(argv),
                          env=env, capture_output=True, check=True, timeout=300)
    code, kib = done.stdout.split()
    return int(code), int(kib) / 1024
