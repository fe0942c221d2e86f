# SPDX-License-Identifier: ISC
"""Tests for qtools.resp: URLs, requests and replies, against fakes and a real redis-server."""

import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest
from conftest import free_port
from hypothesis import given, settings
from hypothesis import strategies as st

from qtools import resp
from qtools.resp import Client, ReplyError, parse_url

DEFAULTS = {"tls": False, "host": None, "port": 6379, "path": None, "user": None,
            "password": None, "db": 0}


def url_settings(**changes):
    return dict(DEFAULTS, **changes)


class TestParseUrl:
    """Tests for `parse_url`: the man page's forms, redis-py's reading of them, and errors."""

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("redis://127.0.0.1:6379/0", url_settings(host="127.0.0.1")),
            ("redis://10.0.0.5", url_settings(host="10.0.0.5")),
            ("redis://h:7000/3", url_settings(host="h", port=7000, db=3)),
            ("redis://h/", url_settings(host="h")),
            ("redis://:6379/0", url_settings(host="localhost")),
            ("redis://:secret@h/2", url_settings(host="h", password="secret", db=2)),
            ("redis://user:secret@h", url_settings(host="h", user="user", password="secret")),
            ("redis://:p%40ss%3Aw%2Fd@h", url_settings(host="h", password="p@ss:w/d")),
            ("redis://:pa@ss@h", url_settings(host="h", password="pa@ss")),
            ("redis://:a+b@h", url_settings(host="h", password="a+b")),
            ("redis://us%20er:%E2%82%AC@h", url_settings(host="h", user="us er", password="\u20ac")),
            ("redis://user:@h", url_settings(host="h", user="user")),
            ("redis://[2001:db8::1]:6380/1", url_settings(host="2001:db8::1", port=6380, db=1)),
            ("redis://[::1]", url_settings(host="::1")),
            ("rediss://h:6380/0", url_settings(tls=True, host="h", port=6380)),
            ("rediss://h?ssl_ca_certs=/etc/ca.pem&ssl_certfile=c.pem&ssl_keyfile=k%20.pem",
             url_settings(tls=True, host="h", ssl_ca_certs="/etc/ca.pem", ssl_certfile="c.pem",
                          ssl_keyfile="k .pem")),
            ("redis://h/0?socket_timeout=0.5&socket_connect_timeout=2",
             url_settings(host="h", socket_timeout=0.5, socket_connect_timeout=2.0)),
            ("redis://h/2?db=5", url_settings(host="h", db=5)),
            ("redis://:one@h?password=two+2", url_settings(host="h", password="two 2")),
            ("redis://h?&db=1&", url_settings(host="h", db=1)),
            ("unix:///run/redis.sock", url_settings(path="/run/redis.sock")),
            ("unix:///run/redis%20x.sock?db=1", url_settings(path="/run/redis x.sock", db=1)),
            ("unix://:pw@/run/redis.sock?db=1&password=other",
             url_settings(path="/run/redis.sock", db=1, password="other")),
            ("unix://u:pw@/s?socket_timeout=3", url_settings(path="/s", user="u", password="pw",
                                                             socket_timeout=3.0)),
        ],
    )
    def test_forms(self, url, expected):
        """Each form gives its host or path, port, database, credentials and options."""
        assert parse_url(url) == expected

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("http://h/0", "not a redis://, rediss:// or unix:// URL"),
            ("h:6379", "not a redis://, rediss:// or unix:// URL"),
            ("redis://h:notaport/0", "bad port"),
            ("redis://h:65536", "bad port"),
            ("redis://h:-1", "bad port"),
            ("redis://h:\u0661", "bad port"),
            ("redis://::1/0", "bad port"),
            ("redis://[::1/0", "bad address"),
            ("redis://[::1]x/0", "bad address"),
            ("redis://\u00fc.example/0", "bad host"),
            ("redis://%C3%BC..x/0", "bad host"),
            ("redis://h/x", "bad database"),
            ("redis://h/0/1", "bad database"),
            ("redis://user@h", "a user without a password"),
            ("unix://host/run/redis.sock", "unix:// takes a path, not a host"),
            ("unix://", "unix:// takes a path, not a host"),
            ("redis://h?timeout=1", "unknown option timeout"),
            ("redis://h?db", "bad value for db"),
            ("redis://h?db=x", "bad value for db"),
            ("redis://h?ssl_ca_certs=/ca.pem", "unknown option ssl_ca_certs"),
            ("redis://h?socket_timeout=x", "bad value for socket_timeout"),
            ("redis://h?socket_timeout=0", "bad value for socket_timeout"),
            ("redis://h?socket_timeout=-1", "bad value for socket_timeout"),
            ("redis://h?socket_connect_timeout=nan", "bad value for socket_connect_timeout"),
            ("redis://h?socket_connect_timeout=inf", "bad value for socket_connect_timeout"),
            ("redis://:se?cret@h/0", "an @ after a / or ?: write / ? @ in a password as %2F %3F %40"),
            ("redis://:se/cret@h/0", "an @ after a / or ?: write / ? @ in a password as %2F %3F %40"),
            ("redis://h/0?password=se@cret",
             "an @ after a / or ?: write / ? @ in a password as %2F %3F %40"),
        ],
    )
    def test_errors(self, url, message):
        """A URL that cannot be used is a ValueError saying why, never showing a value."""
        with pytest.raises(ValueError) as error:
            parse_url(url)
        assert str(error.value) == message

    @settings(max_examples=500, deadline=None)
    @given(st.text(alphabet=st.sampled_from("%0aAfFgz+ \u00fc\u20ac") | st.characters(), max_size=20))
    def test_unquote_agrees_with_urllib(self, text):
        """Our unquote reads every text as urllib.parse.unquote does."""
        assert resp.unquote(text) == urllib.parse.unquote(text)


class TestEncode:
    """Tests for `encode`: arguments as redis-py sends them."""

    def test_types(self):
        """Text in UTF-8, numbers as their repr, bytes unchanged."""
        assert resp.encode(("SET", "\u00fc", 1, 1.5, b"\r\n", bytearray(b"x"), -2)) == (
            b"*7\r\n$3\r\nSET\r\n$2\r\n\xc3\xbc\r\n$1\r\n1\r\n$3\r\n1.5\r\n$2\r\n\r\n\r\n"
            b"$1\r\nx\r\n$2\r\n-2\r\n")

    @pytest.mark.parametrize("bad", [None, True, object(), ["a"]])
    def test_other_types_refused(self, bad):
        """What has no one meaning as a Redis argument is a TypeError, sent nowhere."""
        with pytest.raises(TypeError):
            resp.encode(("SET", "k", bad))


class Scripted:
    """A connected socket's stand-in: replies in chunks of size bytes, requests recorded."""

    def __init__(self, replies, size=65536):
        self.replies, self.size, self.sent, self.closed = replies, size, b"", False

    def settimeout(self, seconds):
        pass

    def sendall(self, data):
        self.sent += data

    def recv(self, limit):
        chunk = self.replies[:min(limit, self.size)]
        self.replies = self.replies[len(chunk):]
        return chunk

    def close(self):
        self.closed = True


def scripted_client(replies, size=65536):
    client = Client("redis://127.0.0.1/0", 1.0)
    client.sock = Scripted(replies, size)
    return client


REPLIES = [
    (b"+OK\r\n", b"OK"),
    (b"+\r\n", b""),
    (b":42\r\n", 42),
    (b":-3\r\n", -3),
    (b"$5\r\nhe\r\nl\r\n", b"he\r\nl"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*3\r\n:1\r\n$1\r\na\r\n*2\r\n$-1\r\n*1\r\n+x\r\n", [1, b"a", [None, [b"x"]]]),
    (b"$100000\r\n" + b"v" * 100000 + b"\r\n", b"v" * 100000),
]


class TestReplies:
    """Tests for reading replies: every RESP2 type, whole or in pieces, and broken streams."""

    @pytest.mark.parametrize("size", [1, 3, 65536])
    @pytest.mark.parametrize(("wire", "value"), REPLIES, ids=[repr(w[:12]) for w, _ in REPLIES])
    def test_types(self, wire, value, size):
        """Each type reads as documented, however the bytes arrive."""
        client = scripted_client(wire + b"+NEXT\r\n", size)
        assert client.command("GET", "k") == value
        assert client.command("PING") == b"NEXT"
        assert client.sock.sent == resp.encode(("GET", "k")) + resp.encode(("PING",))

    def test_error(self):
        """An error reply raises ReplyError with the server's text; the connection stays usable."""
        client = scripted_client(b"-ERR unknown command 'X'\r\n+OK\r\n")
        with pytest.raises(ReplyError, match=r"^ERR unknown command 'X'$"):
            client.command("X")
        assert client.command("PING") == b"OK"

    def test_error_in_an_array_after_the_whole_reply(self):
        """An error inside an array is raised once the array is read, so the next reply is in step."""
        client = scripted_client(b"*3\r\n:1\r\n-ERR first\r\n-ERR second\r\n:7\r\n")
        with pytest.raises(ReplyError, match="^ERR first$"):
            client.command("EVAL")
        assert client.command("INCR", "k") == 7

    def test_pipeline(self):
        """A pipeline is one write and one reply each, in order."""
        client = scripted_client(b"+OK\r\n$1\r\n1\r\n")
        assert client.pipeline([("SET", "a", 1), ("GET", "a")]) == [b"OK", b"1"]
        assert client.sock.sent == resp.encode(("SET", "a", 1)) + resp.encode(("GET", "a"))

    def test_transaction(self):
        """A transaction is MULTI, the commands and EXEC; its replies are EXEC's."""
        client = scripted_client(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n:1\r\n")
        assert client.pipeline([("DEL", "a"), ("HSET", "a", "f", 1)], transaction=True) == [1, 1]
        assert client.sock.sent == b"".join(resp.encode(c) for c in [
            ("MULTI",), ("DEL", "a"), ("HSET", "a", "f", 1), ("EXEC",)])

    def test_transaction_error(self):
        """A command EXEC ran and Redis refused raises ReplyError, after EXEC's reply is read."""
        client = scripted_client(b"+OK\r\n+QUEUED\r\n*1\r\n-WRONGTYPE no\r\n+PONG\r\n")
        with pytest.raises(ReplyError, match="^WRONGTYPE no$"):
            client.pipeline([("HSET", "a", "f", 1)], transaction=True)
        assert client.command("PING") == b"PONG"

    @pytest.mark.parametrize("wire", [b"", b"$10\r\nabc", b"*2\r\n:1\r\n", b"+OK", b"+OK\r"])
    def test_closed_mid_reply(self, wire):
        """A connection closed before the reply's end raises ConnectionError and is let go."""
        client = scripted_client(wire)
        sock = client.sock
        with pytest.raises(ConnectionError, match="^connection closed by the server$"):
            client.command("GET", "k")
        assert sock.closed and client.sock is None

    @pytest.mark.parametrize("wire", [b"220 mail.example ESMTP\r\n", b":x\r\n", b"$abc\r\n",
                                      b"*1\r\n?\r\n", b"$2\r\nabcd\r\n", b"$1\r\nab\r\n"])
    def test_not_redis(self, wire):
        """Bytes that are no RESP2 reply (another service on the port) raise ConnectionError."""
        client = scripted_client(wire)
        with pytest.raises(ConnectionError, match="^not a Redis reply"):
            client.command("PING")
        assert client.sock is None

    def test_closed_socket_does_not_hang(self):
        """On a real socket, a server that closes mid-reply is an error at once, not a wait."""
        ours, theirs = socket.socketpair()
        client = Client("redis://127.0.0.1/0", 5.0)
        client.sock = ours
        theirs.sendall(b"*2\r\n$3\r\nabc\r\n")
        theirs.close()
        start = time.monotonic()
        with pytest.raises(ConnectionError):
            client.command("HMGET", "k", "a", "b")
        assert time.monotonic() - start < 1

    def test_silence_times_out(self):
        """A server that never answers costs the reply timeout, then socket.timeout."""
        ours, theirs = socket.socketpair()
        ours.settimeout(0.3)
        client = Client("redis://127.0.0.1/0", 0.3)
        client.sock = ours
        start = time.monotonic()
        with pytest.raises(socket.timeout):
            client.command("PING")
        assert 0.25 < time.monotonic() - start < 2
        theirs.close()

    def test_dripped_reply_times_out(self):
        """The limit is for the whole reply: a byte every 0.1 s does not stretch it."""
        ours, theirs = socket.socketpair()
        client = Client("redis://127.0.0.1/0", 0.5)
        client.sock = ours
        reply = b"$40\r\n" + b"x" * 40 + b"\r\n"  # 4.8 s at that pace

        def drip():
            try:
                for byte in reply:
                    theirs.sendall(bytes([byte]))
                    time.sleep(0.1)
            except OSError:
                pass  # the client has let go

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="^timed out$"):
            client.command("GET", "k")
        assert 0.45 < time.monotonic() - start < 1.5
        assert client.sock is None
        theirs.close()
        dripper.join(10)


# --- a fake server that records what it is sent ------------------------------------


def read_command(stream):
    """Read one RESP request from a binary file; return its words, or None at the end."""
    head = stream.readline()
    if not head:
        return None
    words = []
    for _ in range(int(head[1:])):
        size = int(stream.readline()[1:])
        words.append(stream.read(size + 2)[:-2])
    return words


class FakeRedis:
    """A one-connection server on a listening socket: replies from answers, +OK by default."""

    def __init__(self, listener, answers=None):
        self.listener, self.answers, self.commands = listener, answers or {}, []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as stream:
            while True:
                words = read_command(stream)
                if words is None:
                    return
                self.commands.append(words)
                conn.sendall(self.answers.get(words[0], b"+OK\r\n"))

    def done(self):
        self.thread.join(5)
        self.listener.close()
        return self.commands


def tcp_listener(host="127.0.0.1", family=socket.AF_INET):
    listener = socket.socket(family)
    listener.bind((host, 0))
    listener.listen(1)
    return listener


class TestConnect:
    """Tests for connecting: AUTH and SELECT first when the URL asks, TCP, IPv6, unix sockets."""

    @pytest.mark.parametrize(
        ("credentials", "db", "hello"),
        [
            ("", 0, []),
            (":pw@", 0, [[b"AUTH", b"pw"]]),
            ("user:pw@", 0, [[b"AUTH", b"user", b"pw"]]),
            ("", 3, [[b"SELECT", b"3"]]),
            (":p%40w@", 2, [[b"AUTH", b"p@w"], [b"SELECT", b"2"]]),
            ("user:@", 0, [[b"AUTH", b"user", b""]]),  # an ACL user with nopass
        ],
    )
    def test_auth_and_select_before_the_first_command(self, credentials, db, hello):
        """AUTH, then SELECT for a database other than 0, then the commands."""
        listener = tcp_listener()
        server = FakeRedis(listener, {b"PING": b"+PONG\r\n"})
        url = "redis://%s127.0.0.1:%d/%d" % (credentials, listener.getsockname()[1], db)
        client = Client(url, 2.0)
        assert client.command("PING") == b"PONG"
        assert client.command("PING") == b"PONG"
        client.close()
        assert server.done() == hello + [[b"PING"], [b"PING"]]

    def test_failed_auth_stops_there(self):
        """A refused AUTH raises ReplyError; no command is sent, and the connection is let go."""
        listener = tcp_listener()
        server = FakeRedis(listener, {b"AUTH": b"-WRONGPASS invalid username-password pair\r\n",
                                      b"SELECT": b"-NOAUTH Authentication required.\r\n"})
        client = Client("redis://:bad@127.0.0.1:%d/1" % listener.getsockname()[1], 2.0)
        with pytest.raises(ReplyError, match="^WRONGPASS"):
            client.command("SET", "k", "v")
        assert client.sock is None
        assert server.done() == [[b"AUTH", b"bad"], [b"SELECT", b"1"]]

    def test_ipv6(self):
        """A bracketed IPv6 address is connected to."""
        try:
            listener = tcp_listener("::1", socket.AF_INET6)
        except OSError:
            pytest.skip("no IPv6 on loopback here")
        server = FakeRedis(listener)
        client = Client("redis://[::1]:%d" % listener.getsockname()[1], 2.0)
        assert client.command("SET", "k", 1) == b"OK"
        client.close()
        assert server.done() == [[b"SET", b"k", b"1"]]

    def test_unix_socket(self, tmp_path):
        """unix:// connects to the path, and ?db= selects the database."""
        path = str(tmp_path / "fake.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(1)
        server = FakeRedis(listener)
        client = Client("unix://%s?db=4" % path, 2.0)
        assert client.command("SET", "k", "v") == b"OK"
        client.close()
        assert server.done() == [[b"SELECT", b"4"], [b"SET", b"k", b"v"]]

    def test_refused(self):
        """A closed port raises ConnectionRefusedError, the socket's own error."""
        client = Client("redis://127.0.0.1:%d/0" % free_port(), 2.0)
        with pytest.raises(ConnectionRefusedError):
            client.command("PING")

    def test_url_timeout_overrides(self):
        """socket_timeout in the URL replaces the caller's timeout for replies."""
        listener = tcp_listener()  # accepts (the backlog) and never answers
        url = "redis://127.0.0.1:%d/0?socket_timeout=0.3" % listener.getsockname()[1]
        client = Client(url, 30.0)
        assert (client.timeout, client.connect_timeout) == (0.3, 30.0)
        start = time.monotonic()
        with pytest.raises(socket.timeout):
            client.command("PING")
        assert time.monotonic() - start < 2
        listener.close()


# --- a real redis-server ------------------------------------------------------------


class TestRedisServer:
    """Round trips with Debian's redis-server."""

    def test_commands(self, redis):
        """Strings, integers, nil, arrays, a script's nested reply and an error."""
        client = Client(redis.url, 2.0)
        assert client.command("SET", "k", "\u00fc") == b"OK"
        assert client.command("GET", "k") == "\u00fc".encode()
        assert client.command("GET", "none") is None
        assert client.command("HMGET", "h", "a", "b") == [None, None]
        assert client.command("EVAL", "return {1, 'a', {2}}", 0) == [1, b"a", [2]]
        with pytest.raises(ReplyError, match="^WRONGTYPE "):
            client.command("HGET", "k", "f")
        big = os.urandom(3 << 20)
        assert client.command("SET", "big", big) == b"OK"
        assert client.command("GET", "big") == big
        client.close()

    def test_pipelines(self, redis):
        """A transaction and a plain pipeline, with their replies in order."""
        client = Client(redis.url, 2.0)
        assert client.pipeline([("INCR", "n"), ("INCR", "n")], transaction=True) == [1, 2]
        replies = client.pipeline([("SET", "k%d" % i, i) for i in range(5000)] + [("DBSIZE",)])
        assert replies == [b"OK"] * 5000 + [5001]

    def test_database_and_password(self, redis):
        """/db selects the database; a password, and a user with one, are sent with AUTH."""
        assert redis.command(b"CONFIG", b"SET", b"requirepass", b"pw") == b"+OK\r\n"
        try:
            base = "redis://%s127.0.0.1:%d/5"
            assert Client(base % (":pw@", redis.port), 2.0).command("SET", "k", 5) == b"OK"
            client = Client(base % (":pw@", redis.port), 2.0)
            assert client.pipeline([("SELECT", 0), ("EXISTS", "k"), ("SELECT", 5),
                                    ("GET", "k")]) == [b"OK", 0, b"OK", b"5"]
            assert client.command("ACL", "SETUSER", "grey", "on", ">secret", "~*", "+@all") == b"OK"
            assert Client(base % ("grey:secret@", redis.port), 2.0).command("GET", "k") == b"5"
            with pytest.raises(ReplyError, match="^WRONGPASS"):
                Client(base % ("grey:wrong@", redis.port), 2.0).command("GET", "k")
        finally:
            redis.stop()  # the next test gets a server without a password

    def test_ssl_only_for_rediss(self, redis):
        """A redis:// round trip loads neither ssl nor socket."""
        code = ("import sys; from qtools.resp import Client\n"
                "Client(%r, 2.0).command('PING')\n"
                "print(sorted(m for m in ('ssl', 'socket', 're') if m in sys.modules))" % redis.url)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
        assert done.stdout == b"[]\n", done.stderr


# --- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """A redis-server that speaks TLS alone and wants client certificates; yields (url, files)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed: run make test, which installs it")
    top = tmp_path_factory.mktemp("tls")
    cert, key = str(top / "cert.pem"), str(top / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", cert,
         "--save", "", "--appendonly", "no", "--dir", str(top)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = "rediss://127.0.0.1:%d/0" % port
    full = url + "?ssl_ca_certs=%s&ssl_certfile=%s&ssl_keyfile=%s" % (cert, cert, key)
    deadline = time.monotonic() + 10
    while True:
        try:
            Client(full, 1.0).command("PING")
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.terminate()
                pytest.fail("redis-server with TLS did not start")
            time.sleep(0.05)
    yield url, full
    process.terminate()
    process.wait(10)


class TestTLS:
    """Tests for rediss://: the server's certificate checked, a client certificate sent."""

    def test_round_trip(self, tls_server):
        """With our CA and a client certificate, commands go through TLS."""
        client = Client(tls_server[1], 2.0)
        assert client.command("SET", "k", "v") == b"OK"
        assert client.pipeline([("GET", "k"), ("PING",)]) == [b"v", b"PONG"]

    def test_unknown_certificate_refused(self, tls_server):
        """Without ssl_ca_certs the self-signed server is not trusted."""
        with pytest.raises(ssl.SSLCertVerificationError):
            Client(tls_server[0], 2.0).command("PING")

    def test_encrypted_key_never_reads_the_client(self, tls_server, tmp_path):
        """A key file with a pass phrase fails like a bad key; OpenSSL does not ask for it.

        Under tcpserver there is no terminal, and OpenSSL's prompt would read
        the pass phrase from standard input: the SMTP client.
        """
        settings = parse_url(tls_server[1])
        locked = str(tmp_path / "locked.pem")
        subprocess.run(["openssl", "pkey", "-in", settings["ssl_keyfile"], "-aes256",
                        "-passout", "pass:secret", "-out", locked], check=True, capture_output=True)
        url = tls_server[1].replace(settings["ssl_keyfile"], locked)
        script = (
            "import sys\n"
            "from qtools.resp import Client\n"
            "try:\n"
            "    Client(sys.argv[1], 2.0).command('PING')\n"
            "    print('connected')\n"
            "except OSError as error:\n"
            "    print(type(error).__name__, error)\n"
            "print(sys.stdin.buffer.read())\n"
        )
        done = subprocess.run([sys.executable, "-c", script, url], input=b"secret\n",
                              capture_output=True, timeout=20, start_new_session=True)
        assert done.stdout.decode() == (
            "SSLError no certificate and key in %s and %s, or a key locked by a pass phrase\n"
            "b'secret\\n'\n" % (settings["ssl_certfile"], locked)), done.stderr

