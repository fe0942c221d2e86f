# SPDX-License-Identifier: ISC
"""A minimal Redis client: RESP2 over one connection, standard library only.

Hand-written rather than redis-py, whose import costs 100 ms or more of CPU
on every SMTP connection that consults Redis, and on _socket rather than
socket, which loads enum, selectors and collections (8 ms): the greylist
store needs one connection, a few commands and pipelines.  ssl is loaded
for rediss:// alone.

Replies: simple strings and bulk strings are bytes, integers int, arrays
lists, a nil bulk or array None.  An error reply anywhere in a command's
reply raises ReplyError once the whole reply is read.  The socket's errors
(OSError, its timeout included) propagate, and so does ConnectionError when
the server closes the connection mid-reply or sends what is not RESP.
"""

import _socket
import time

from qtools.core import seconds

PORT = 6379
_HEX = frozenset("0123456789abcdefABCDEF")


class ReplyError(Exception):
    """An error reply; the message is the server's text, error code first."""


def unquote(text):
    """Decode %XX escapes as urllib.parse.unquote does, without its 8 ms import.

    Runs of ASCII (escapes decoded) are read as UTF-8, bad bytes replaced;
    other characters stay as they are.
    """
    out, run, i = [], bytearray(), 0
    while i < len(text):
        c, pair = text[i], text[i + 1:i + 3]
        if c == "%" and len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX:
            run.append(int(pair, 16))
            i += 3
            continue
        if c.isascii():
            run.append(ord(c))
        else:
            out += [run.decode("utf-8", "replace"), c]
            run = bytearray()
        i += 1
    return "".join(out) + run.decode("utf-8", "replace")


def _seconds(text):
    return seconds(text, 86400)  # a day: any longer is a typing mistake


OPTIONS = {"db": int, "password": str, "socket_timeout": _seconds,
           "socket_connect_timeout": _seconds,
           "ssl_ca_certs": str, "ssl_certfile": str, "ssl_keyfile": str}


def parse_url(url):
    """Return the settings of a redis://, rediss:// or unix:// URL as a dict, or raise ValueError.

    The forms are redis-py's: [[user]:password@]host[:port][/db][?options]
    for redis:// and rediss://, [[user]:password@]/path[?options] for unix://.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix"):
        raise ValueError("not a redis://, rediss:// or unix:// URL")
    # The host part ends at the first / or ?, as urllib.parse has it.
    at = min([rest.index(c) for c in "/?" if c in rest] or [len(rest)])
    netloc, (path, _, query) = rest[:at], rest[at:].partition("?")
    if "@" in rest[at:]:
        # A password (or an option) with a / or ? written as it is: the
        # host would be read from the middle of it.  No part of the URL is
        # named in the error: it would be part of the password.
        raise ValueError("an @ after a / or ?: write / ? @ in a password as %2F %3F %40")
    userinfo, _, hostport = netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if user and not colon:
        raise ValueError("a user without a password")
    settings = {"tls": scheme == "rediss", "host": None, "port": PORT, "path": None,
                "user": unquote(user) or None, "password": unquote(password) or None, "db": 0}
    if scheme == "unix":
        if hostport or not path:
            raise ValueError("unix:// takes a path, not a host")
        settings["path"] = unquote(path)
    else:
        if hostport.startswith("["):  # an IPv6 address
            host, bracket, port = hostport[1:].partition("]")
            if not bracket or port[:1] not in ("", ":"):
                raise ValueError("bad address")
            port = port[1:]
        else:
            host, _, port = hostport.partition(":")
        host = unquote(host)
        if not host.isascii():  # a name in IDNA, xn--, as DNS has it
            raise ValueError("bad host")
        settings["host"] = host or "localhost"
        if port:
            if not (port.isascii() and port.isdigit() and int(port) < 65536):
                raise ValueError("bad port")
            settings["port"] = int(port)
        db = unquote(path[1:])
        if db:
            if not (db.isascii() and db.isdigit()):
                raise ValueError("bad database")
            settings["db"] = int(db)
    for item in filter(None, query.split("&")):
        name, _, value = item.partition("=")
        name = unquote(name)
        if name not in OPTIONS or (name.startswith("ssl_") and scheme != "rediss"):
            raise ValueError("unknown option %s" % name)
        try:
            settings[name] = OPTIONS[name](unquote(value.replace("+", " ")))
        except ValueError:
            raise ValueError("bad value for %s" % name) from None
    return settings


def encode(args):
    """Return one command as RESP: str in UTF-8, int and float in their repr, bytes as they are."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            arg = repr(arg).encode("ascii")
        elif not isinstance(arg, (bytes, bytearray)):
            raise TypeError("cannot send %s to Redis" % type(arg).__name__)
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def _first_error(reply):
    if isinstance(reply, ReplyError):
        return reply
    for item in reply if isinstance(reply, list) else ():
        found = _first_error(item)
        if found is not None:
            return found
    return None


class Client:
    """One connection to one Redis server, opened at the first command.

    timeout (seconds) bounds the connection and, from the moment the
    commands are sent, the whole of their replies; the URL's
    socket_connect_timeout and socket_timeout set each apart.
    """

    def __init__(self, url, timeout=None):
        self.settings = parse_url(url)
        self.timeout = self.settings.get("socket_timeout", timeout)
        self.connect_timeout = self.settings.get("socket_connect_timeout", timeout)
        self.sock, self._buf, self._at = None, bytearray(), 0
        self._deadline = None

    def command(self, *args):
        """Send one command; return its reply."""
        return self._run([args])[0]

    def pipeline(self, commands, transaction=False):
        """Send commands in one write, in MULTI/EXEC if transaction; return their replies."""
        if transaction:
            return self._run([("MULTI",)] + list(commands) + [("EXEC",)])[-1]
        return self._run(commands)

    def close(self):
        """Let go of the connection; the next command opens a new one."""
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock, self._buf, self._at = None, bytearray(), 0

    def _run(self, commands):
        data = b"".join(encode(c) for c in commands)
        try:
            if self.sock is None:
                self._connect()
            self.sock.settimeout(self.timeout)  # _fill may have left less
            self.sock.sendall(data)
            if self.timeout is not None:
                # one limit for all the replies: a server that drips them
                # a byte at a time must not stretch the wait
                self._deadline = time.monotonic() + self.timeout
            replies = [self._reply() for _ in commands]
        except BaseException:
            self.close()  # a stream out of step must never be read again
            raise
        error = _first_error(replies)
        if error is not None:
            raise error
        return replies

    def _connect(self):
        s = self.settings
        if s["path"] is not None:
            targets = [(_socket.AF_UNIX, s["path"])]
        else:
            # bytes: getaddrinfo would load the idna codec (and re) for text
            host = s["host"].encode("ascii")
            targets = [(family, address) for family, _, _, _, address
                       in _socket.getaddrinfo(host, s["port"], 0, _socket.SOCK_STREAM)]
        for family, address in targets:  # each in turn, as socket.create_connection
            sock = _socket.socket(family, _socket.SOCK_STREAM)
            try:
                sock.settimeout(self.connect_timeout)
                sock.connect(address)
                if s["path"] is None:
                    sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
                if s["tls"]:
                    sock = _tls(sock, s)
                sock.settimeout(self.timeout)
                break
            except OSError as error:
                sock.close()
                failure = error
        else:
            raise failure
        self.sock = sock
        # AUTH and SELECT in a round trip of their own: sent along with the
        # first command, that command would still run after a failed SELECT,
        # in database 0.
        hello = []
        if s["password"] or s["user"]:  # an ACL user may have no password (nopass)
            hello.append(("AUTH",) + ((s["user"],) if s["user"] else ()) + (s["password"] or "",))
        if s["db"]:
            hello.append(("SELECT", s["db"]))
        if hello:
            self._run(hello)

    def _fill(self):
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            self.sock.settimeout(left)
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        del self._buf[:self._at]  # cheap: a bytearray drops its head in place
        self._buf += data
        self._at = 0

    def _line(self):
        while True:
            end = self._buf.find(b"\r\n", self._at)
            if end >= 0:
                line, self._at = bytes(self._buf[self._at:end]), end + 2
                return line
            self._fill()

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        try:
            if kind == b"+":
                return rest
            if kind == b"-":
                return ReplyError(rest.decode("utf-8", "replace"))
            if kind == b":":
                return int(rest)
            if kind in (b"$", b"*") and int(rest) < 0:
                return None
            if kind == b"*":
                return [self._reply() for _ in range(int(rest))]
            if kind == b"$":
                size = int(rest)
                while len(self._buf) - self._at < size + 2:
                    self._fill()
                self._at += size + 2
                if self._buf[self._at - 2:self._at] == b"\r\n":
                    return bytes(self._buf[self._at - size - 2:self._at - 2])
        except ValueError:
            pass
        raise ConnectionError("not a Redis reply: %r" % line[:40])


def _tls(sock, settings):
    import ssl  # only rediss:// pays for it

    context = ssl.create_default_context(cafile=settings.get("ssl_ca_certs"))
    if "ssl_certfile" in settings:
        files = [settings["ssl_certfile"]]
        if "ssl_keyfile" in settings:
            files.append(settings["ssl_keyfile"])
        try:
            # An empty password: OpenSSL would otherwise ask for a locked
            # key's pass phrase on the terminal, which under tcpserver is
            # the SMTP client.
            context.load_cert_chain(*files, password="")
        except ssl.SSLError:
            # OpenSSL's own words here are "PEM lib", whatever the cause
            raise ssl.SSLError(0, "no certificate and key in %s, or a key locked by a pass phrase"
                               % " and ".join(files)) from None
    return context.wrap_socket(sock, server_hostname=settings["host"])
