# SPDX-License-Identifier: ISC
"""Shared test fixtures: transcript runs, the demo sink, tcpserver, rbldnsd, redis-server."""

import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(os.path.abspath(sys.executable))
BASE_PATH = "%s:/usr/bin:/bin:/usr/sbin:/sbin" % VENV_BIN
SINK = [sys.executable, os.path.join(REPO, "examples", "smtpsink")]

_PID = re.compile(rb"pid \d+")


class Result:
    """What a program run produced: exit code, stdout, stderr (pids masked)."""

    def __init__(self, rc, out, err):
        self.rc = rc
        self.out = out
        self.err = err

    def __repr__(self):
        return "Result(rc=%r, out=%r, err=%r)" % (self.rc, self.out, self.err)


def mask_pids(data):
    """Replace every "pid N" by "pid x", as djb's rts does with sed."""
    return _PID.sub(b"pid x", data)


os.environ.setdefault("DNSCACHEIP", "127.0.0.1")  # for programs run with the test's own environment


def base_env(env=None):
    """Return a minimal environment ({PATH}) updated by env.

    DNSCACHEIP points a program that is given no QTOOLS_RESOLVER at
    loopback, never at the resolver of /etc/resolv.conf: tests contact
    only loopback addresses.
    """
    result = {"PATH": BASE_PATH, "DNSCACHEIP": "127.0.0.1"}
    if env:
        result.update(env)
    return result


def run_prog(argv, env=None, stdin=b"", timeout=10):
    """Run .venv/bin/argv[0] with a hand-made environment and scripted stdin."""
    path = argv[0] if "/" in argv[0] else os.path.join(VENV_BIN, argv[0])
    done = subprocess.run(
        [path] + list(argv[1:]),
        input=stdin,
        env=base_env(env),
        capture_output=True,
        timeout=timeout,
    )
    return Result(done.returncode, done.stdout, mask_pids(done.stderr))


def make_client(ip="192.0.2.7", host=None, relay=False):
    """Return a core.Client for ip, as core.client() would make it."""
    from qtools import core

    packed = core.parse_ip(ip)[1]
    return core.Client(core.format_ip(packed), packed, host=host, relay=relay)


def fake_resolver(table):
    """Return a resolver answering from {(name, type): Answer}; it records the questions."""
    from qtools.resolver import Answer

    def resolve(questions):
        resolve.asked.extend(questions)
        return [table.get(q, Answer()) for q in questions]

    resolve.asked = []
    return resolve


def sink_cmd(maildir):
    """Return the argv of the demo SMTP sink storing messages in maildir."""
    return SINK + [str(maildir)]


def free_port(host="127.0.0.1", kind=socket.SOCK_STREAM):
    """Return a port number free on host right now."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_for_port(host, port, timeout=10.0):
    """Wait until a TCP server accepts on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("nothing listens on %s:%d" % (host, port))


def smtp_from(host, port, source_ip="127.0.0.1", timeout=30):
    """Return an smtplib.SMTP connected from source_ip, so TCPREMOTEIP varies."""
    return smtplib.SMTP(host, port, timeout=timeout, source_address=(source_ip, 0))


class Server:
    """A tcpserver running a chain on 127.0.0.1; its stderr goes to a file."""

    def __init__(self, process, host, port, logpath):
        self.process = process
        self.host = host
        self.port = port
        self.logpath = logpath

    def log(self):
        """Return everything tcpserver and the chain wrote to stderr so far."""
        with open(self.logpath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_tcpserver(directory, chain_argv, env=None, rules_text=None, options=()):
    """Start tcpserver on 127.0.0.1 with an ephemeral port; return a Server.

    tcpserver runs with -H unless options ask for -h or -p, and with
    DNSCACHEIP=127.0.0.1 unless env names another loopback server.
    """
    if shutil.which("tcpserver") is None:
        pytest.fail("tcpserver is not installed: run make test, which installs ucspi-tcp")
    argv = ["tcpserver", "-v", "-R", "-l", "localhost", "-1"] + list(options)
    if not {"-h", "-p"} & set(options):
        argv.append("-H")  # no PTR lookup unless asked for
    # tcpserver's own lookups (-h, -p) must stay on loopback too.
    env = dict({"DNSCACHEIP": "127.0.0.1"}, **(env or {}))
    if rules_text is not None:
        rules = os.path.join(str(directory), "rules.cdb")
        subprocess.run(
            ["tcprules", rules, rules + ".tmp"],
            input=rules_text.encode(),
            check=True,
        )
        argv += ["-x", rules]
    argv += ["127.0.0.1", "0"] + [str(a) for a in chain_argv]
    logpath = os.path.join(str(directory), "tcpserver-%d.log" % len(os.listdir(str(directory))))
    logfile = open(logpath, "wb")
    process = subprocess.Popen(
        argv,
        env=base_env(env),
        stdout=subprocess.PIPE,
        stderr=logfile,
        stdin=subprocess.DEVNULL,
    )
    logfile.close()
    line = process.stdout.readline()  # -1 prints the port
    if not line.strip().isdigit():
        process.kill()
        pytest.fail("tcpserver did not start: %r" % line)
    server = Server(process, "127.0.0.1", int(line), logpath)
    wait_for_port(server.host, server.port)
    return server


@pytest.fixture
def tcpserver(tmp_path):
    """Factory: tcpserver(chain_argv, env=None, rules_text=None, options=()) -> Server."""
    servers = []
    logs = tmp_path / "tcpserver"
    logs.mkdir()

    def start(chain_argv, env=None, rules_text=None, options=()):
        server = start_tcpserver(logs, chain_argv, env, rules_text, options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def start_rbldnsd(directory, zones):
    """Start rbldnsd on a free loopback UDP port serving zones; return (process, "ip:port")."""
    if shutil.which("rbldnsd") is None:
        pytest.fail("rbldnsd is not installed: run make test, which installs it")
    directory = str(directory)
    os.chmod(directory, 0o755)
    args = []
    for n, (zone, (dataset, text)) in enumerate(sorted(zones.items())):
        name = "zone%d" % n
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(directory, name), 0o644)
        args.append("%s:%s:%s" % (zone, dataset, name))
    for _ in range(5):
        port = free_port(kind=socket.SOCK_DGRAM)
        argv = ["rbldnsd", "-n", "-q", "-c", "0", "-w", directory, "-b", "127.0.0.1/%d" % port]
        if os.getuid() == 0:
            argv += ["-u", "nobody"]
        process = subprocess.Popen(
            argv + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if _dns_answers(port):
            return process, "127.0.0.1:%d" % port
        process.kill()
        process.wait()
    pytest.fail("rbldnsd did not start: %r" % process.stderr.read())


def _dns_answers(port, timeout=5.0):
    """Return True once a DNS server answers any query on 127.0.0.1:port."""
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05probe\x00\x00\x01\x00\x01"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                s.sendto(query, ("127.0.0.1", port))
                if s.recv(512)[:2] == b"\x12\x34":
                    return True
            except OSError:
                time.sleep(0.05)
    return False


@pytest.fixture
def rbldnsd(tmp_path):
    """Factory: rbldnsd({zone: (dataset, text)}) -> "127.0.0.1:PORT"."""
    processes = []

    def start(zones):
        directory = tmp_path / ("rbldnsd%d" % len(processes))
        directory.mkdir()
        process, address = start_rbldnsd(directory, zones)
        processes.append(process)
        return address

    yield start
    for process in processes:
        process.kill()
        process.wait()


def read_maildir(maildir):
    """Return the messages the sink stored, as bytes, oldest first."""
    names = sorted(n for n in os.listdir(str(maildir)) if not n.startswith("."))
    out = []
    for name in names:
        with open(os.path.join(str(maildir), name), "rb") as f:
            out.append(f.read())
    return out


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """One redis-server for a test module, on a free loopback port."""
    from helpers_redis import RedisServer

    running = RedisServer(tmp_path_factory.mktemp("redis"))
    yield running
    running.stop()


@pytest.fixture
def redis(redis_server):
    """The module's redis-server, running and empty."""
    if redis_server.process is None:
        redis_server.start()
    redis_server.flush()
    return redis_server
