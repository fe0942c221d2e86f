# SPDX-License-Identifier: ISC
"""A private redis-server on a loopback port (or a unix socket) for the Redis store tests."""

import os
import shutil
import socket
import subprocess
import time

import pytest
from conftest import free_port


class RedisServer:
    """Debian's redis-server with no persistence, started in directory."""

    def __init__(self, directory, unix=False):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed: run make test, which installs it")
        self.directory = str(directory)
        self.unix = os.path.join(self.directory, "redis.sock") if unix else None
        self.port = free_port()
        self.process = None
        self.start(tries=5)

    @property
    def url(self):
        if self.unix:
            return "unix://%s?db=0" % self.unix
        return "redis://127.0.0.1:%d/0" % self.port

    def start(self, tries=1):
        """Start (a restart keeps the port) and wait until it answers as itself.

        With tries, a port taken by another program meanwhile is given up
        for a new one.
        """
        argv = ["redis-server", "--port", "0" if self.unix else str(self.port),
                "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.directory, "--daemonize", "no"]
        if self.unix:
            argv += ["--unixsocket", self.unix]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        mine = b"process_id:%d\r\n" % self.process.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                # Another program may have taken the free port first: the
                # server that answers must be ours.
                if mine in self.command(b"INFO", b"server"):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        if tries > 1 and not self.unix:
            self.port = free_port()
            return self.start(tries - 1)
        pytest.fail("redis-server did not start")

    def connect(self):
        if self.unix:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            s.connect(self.unix)
            return s
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def command(self, *words):
        """Send one command and return the first bytes of its raw reply."""
        request = b"*%d\r\n" % len(words) + b"".join(
            b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
        with self.connect() as s:
            s.sendall(request)
            return s.recv(65536)

    def flush(self):
        assert self.command(b"FLUSHALL") == b"+OK\r\n"

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None
