# SPDX-License-Identifier: ISC
"""One connection to a scanner (spamd, clamd) under one deadline.

The spamd and clamd clients share this: the address forms (a unix socket
path, or host:port), connecting, sending a spooled file in chunks and
reading a bounded answer, each step given only what is left of the time
allowed to the whole exchange.  On _socket, not socket, whose import
loads enum, selectors and collections.

Every failure is a ScanError whose kind says what went wrong in one word
(unreachable, timeout, closed, protocol, error, toobig) and whose text is
for the warning line.
"""

import _socket
import os
import time

from qtools.core import strerror

CHUNK = 65536


class ScanError(Exception):
    """The scanner gave no usable answer."""

    def __init__(self, kind, text):
        super().__init__(text)
        self.kind = kind
        self.text = text


def parse_address(text, default_port):
    """Return ("unix", path) or ("tcp", host, port) for text, or raise ValueError.

    A text with a "/" is a unix socket path; otherwise host, host:port,
    or [v6]:port.
    """
    if "/" in text:
        return ("unix", text)
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or port[:1] not in ("", ":"):
            raise ValueError(text)
        port = port[1:]
    elif text.count(":") > 1:
        host, port = text, ""
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(text)
    if port:
        if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(text)
        return ("tcp", host, int(port))
    return ("tcp", host, default_port)


def show(address):
    """Return address as the admin wrote it, for messages."""
    if address[0] == "unix":
        return address[1]
    host = "[%s]" % address[1] if ":" in address[1] else address[1]
    return "%s:%d" % (host, address[2])


class Connection:
    """A stream socket to address, every operation bounded by one deadline."""

    def __init__(self, address, timeout, clock=time.monotonic):
        self.clock = clock
        self.deadline = clock() + timeout
        self.sock = None
        try:
            if address[0] == "unix":
                targets = [(_socket.AF_UNIX, address[1])]
            else:
                targets = [(info[0], info[4]) for info in _socket.getaddrinfo(
                    address[1], address[2], 0, _socket.SOCK_STREAM)]
        except OSError as error:
            raise ScanError("unreachable", "unable to look up %s: %s" % (address[1], _text(error)))
        last = None
        for family, target in targets:
            sock = _socket.socket(family, _socket.SOCK_STREAM)
            try:
                self._limit(sock)
                sock.connect(target)
            except OSError as error:
                sock.close()
                last = error
                if isinstance(error, TimeoutError):
                    break
                continue
            self.sock = sock
            return
        if isinstance(last, TimeoutError):
            raise ScanError("timeout", "timed out connecting")
        raise ScanError("unreachable", "unable to connect: %s" % _text(last))

    def _limit(self, sock=None):
        left = self.deadline - self.clock()
        if left <= 0:
            raise TimeoutError("deadline")
        (sock or self.sock).settimeout(left)

    def send(self, data):
        try:
            self._limit()
            self.sock.sendall(data)
        except OSError as error:
            raise self._failure(error, "sending")

    def send_file(self, fd, size, framing=None):
        """Send size bytes of fd from offset 0, each chunk passed through framing."""
        offset = 0
        while offset < size:
            chunk = os.pread(fd, min(CHUNK, size - offset), offset)
            if not chunk:
                raise ScanError("error", "spool file shorter than %d bytes" % size)
            offset += len(chunk)
            self.send(framing(chunk) if framing else chunk)

    def shutdown(self):
        try:
            self.sock.shutdown(_socket.SHUT_WR)
        except OSError as error:
            raise self._failure(error, "sending")

    def read_all(self, limit):
        """Return everything until the peer closes, at most limit bytes."""
        parts, total = [], 0
        while True:
            try:
                self._limit()
                data = self.sock.recv(CHUNK)
            except OSError as error:
                raise self._failure(error, "reading")
            if not data:
                return b"".join(parts)
            total += len(data)
            if total > limit:
                raise ScanError("protocol", "answer longer than %d bytes" % limit)
            parts.append(data)

    def read_until(self, terminator, limit):
        """Return the bytes up to terminator (excluded); or all if the peer closes first."""
        data = b""
        while terminator not in data:
            try:
                self._limit()
                more = self.sock.recv(limit + 1 - len(data))
            except OSError as error:
                raise self._failure(error, "reading")
            if not more:
                return data
            data += more
            if len(data) > limit:
                raise ScanError("protocol", "answer longer than %d bytes" % limit)
        return data.split(terminator, 1)[0]

    def _failure(self, error, doing):
        if isinstance(error, TimeoutError):
            return ScanError("timeout", "timed out %s" % doing)
        return ScanError("closed", "connection lost %s: %s" % (doing, _text(error)))

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _text(error):
    return "no address" if error is None else strerror(error)
