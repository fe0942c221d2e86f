# SPDX-License-Identifier: ISC
"""Send DNS queries in parallel to the configured servers, with one deadline."""

import posix  # not os, whose import costs a connection most of a millisecond
import time

RESOLV_CONF = "/etc/resolv.conf"


class Answer:
    """The outcome of one query: the records found, or why there are none."""

    __slots__ = ("records", "error")

    def __init__(self, records=(), error=None):
        self.records = list(records)
        self.error = error

    def __repr__(self):
        return "Answer(%r, error=%r)" % (self.records, self.error)

    def __eq__(self, other):
        return isinstance(other, Answer) and (self.records, self.error) == (
            other.records,
            other.error,
        )


def parse_servers(text, port=53):
    """Return [(ip, port)] from "ip[:port][,ip[:port]...]"; "[v6]:port" for v6 ports."""
    from qtools.core import format_ip, parse_ip

    servers = []
    for item in text.replace(",", " ").split():
        host, number = item, port
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest.startswith(":"):
                number = rest[1:]
        elif item.count(":") == 1:
            host, number = item.split(":")
        try:
            number = int(number)
        except ValueError:
            raise ValueError("invalid port in %s" % item)
        parsed = parse_ip(host)
        if parsed is None or not 0 < number < 65536:
            raise ValueError("invalid server address %s" % item)
        # Canonical text, so that a reply's source address compares equal.
        servers.append((format_ip(parsed[1]), number))
    return servers


def servers(environ, resolv_conf=RESOLV_CONF):
    """Return the servers to ask: $QTOOLS_RESOLVER, $DNSCACHEIP, resolv.conf, 127.0.0.1."""
    # A variable holding something that is not an address raises ValueError.
    text = environ.get("QTOOLS_RESOLVER")
    if text and text.strip():
        return parse_servers(text)
    text = environ.get("DNSCACHEIP")
    if text and text.strip():
        # djbdns: addresses only, always port 53.
        return [(ip, 53) for ip, _ in parse_servers(text.replace(":", " "), 53)]
    found = []
    try:
        with open(resolv_conf, "rb") as f:
            for line in f:
                words = line.decode("ascii", "replace").split()
                if len(words) >= 2 and words[0] == "nameserver":
                    try:
                        found += parse_servers(words[1])
                    except ValueError:
                        pass
    except OSError:
        pass
    return found[:16] or [("127.0.0.1", 53)]


def _octet(text):
    """Return the set of values "7", "[2..11]" or "[2;4..6]" allows."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    values = set()
    for part in text.split(";"):
        low, _, high = part.partition("..")
        low, high = int(low), int(high or low)
        if not 0 <= low <= high <= 255:
            raise ValueError(part)
        values.update(range(low, high + 1))
    return values


def parse_list(spec):
    """Return (base, codes, weight) from postscreen's "bl.example=127.0.0.[2..11]*3"."""
    weight = 1
    if "*" in spec:
        spec, _, text = spec.rpartition("*")
        weight = int(text)
    base, _, codes = spec.partition("=")
    if not base or base.startswith(".") or ".." in base:
        raise ValueError(base)
    if not codes:
        return base, None, weight
    octets, depth, part = [], 0, ""
    for c in codes + ".":
        depth += (c == "[") - (c == "]")
        if c == "." and depth == 0:
            octets.append(_octet(part))
            part = ""
        else:
            part += c
    if len(octets) != 4:
        raise ValueError(codes)
    return base, octets, weight


def listed(codes, addresses):
    """Return True when an A record passes the return-code filter codes (None: any)."""
    if codes is None:
        return bool(addresses)
    for address in addresses:
        octets = address.split(".")
        if len(octets) == 4 and all(int(o) in c for o, c in zip(octets, codes)):
            return True
    return False


def _tcp(wire, server, deadline, clock=time.monotonic):
    """Ask over TCP (after a truncated UDP answer); return the reply bytes.

    Every step waits only until deadline: a server that sends its answer
    one byte at a time holds the lookup no longer than one that is silent.
    """
    import _socket

    def left():
        seconds = deadline - clock()
        if seconds <= 0:
            raise _socket.timeout("timed out")
        return seconds

    family = _socket.AF_INET6 if ":" in server[0] else _socket.AF_INET
    s = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        s.settimeout(left())
        s.connect(server)
        s.settimeout(left())
        s.sendall(len(wire).to_bytes(2, "big") + wire)
        data = b""
        while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
            s.settimeout(left())
            chunk = s.recv(65537)
            if not chunk:
                raise OSError("connection closed")
            data += chunk
        return data[2 : 2 + int.from_bytes(data[:2], "big")]
    finally:
        s.close()


class _Query:
    """One question in flight: its socket, its attempts, its answer."""

    def __init__(self, name, rdtype_text):
        from qtools import dnswire

        ident = int.from_bytes(posix.urandom(2), "big")
        self.wire = dnswire.make_query(name, rdtype_text, ident)
        self.sockets = []
        self.attempt = 0
        self.server = None
        self.answer = None
        self.failure = "timeout"


def lookup(questions, server_list, timeout, clock=time.monotonic):
    """Ask every (name, "TXT"|"A"|"AAAA"|"PTR") at once; return an Answer for each."""
    # All queries go out together over UDP; a silent server is left for the
    # next one after a second, and every query ends by the one deadline.
    # NXDOMAIN and no data are an empty Answer; a timeout, a server failure
    # or a malformed reply is an Answer with error set (djb's dns_resolve
    # counts all three as temporary failures).  Only C modules are imported
    # here (_socket, select): this runs on the per-connection path.
    import _socket
    import select

    from qtools import dnswire

    deadline = clock() + timeout
    queries, answers = [], [None] * len(questions)
    for i, (name, rdtype) in enumerate(questions):
        try:
            queries.append((i, _Query(name, rdtype)))
        except ValueError as error:
            answers[i] = Answer(error="bad name: %s" % error)
    poller = select.poll()
    by_fd = {}
    retry = min(1.0, max(timeout / 3.0, 0.05))

    def send(query):
        server = server_list[query.attempt % len(server_list)]
        query.attempt += 1
        query.sent = clock()
        family = _socket.AF_INET6 if ":" in server[0] else _socket.AF_INET
        # A fresh socket (a fresh source port) per attempt; earlier ones stay
        # open, so a late answer to an earlier attempt still counts.
        sock = _socket.socket(family, _socket.SOCK_DGRAM)
        query.sockets.append(sock)
        try:
            sock.sendto(query.wire, server)
        except OSError as error:
            query.failure = "unable to send: %s" % error
        poller.register(sock.fileno(), select.POLLIN)
        by_fd[sock.fileno()] = (query, sock, server)

    def finish(query, answer):
        query.answer = answer
        for sock in query.sockets:
            poller.unregister(sock.fileno())
            del by_fd[sock.fileno()]
            sock.close()
        query.sockets = []

    def receive(query, sock, server):
        data, source = sock.recvfrom(65535)
        if source[:2] != server or data[:2] != query.wire[:2]:
            return  # not our answer: wait for the real one
        query.server = server
        try:
            rcode, truncated, values = dnswire.parse_reply(data, query.wire)
            if truncated:  # ask again over TCP, by the same deadline
                try:
                    data = _tcp(query.wire, query.server, deadline, clock)
                except OSError:
                    if clock() < deadline:
                        raise
                    finish(query, Answer(error="timeout"))
                    return
                rcode, _, values = dnswire.parse_reply(data, query.wire)
        except (OSError, ValueError) as error:
            query.failure = "malformed reply from %s: %s" % (query.server[0], error)
            if query.attempt < len(server_list):
                send(query)
            else:
                finish(query, Answer(error=query.failure))
            return
        if rcode == dnswire.NXDOMAIN:
            finish(query, Answer())
        elif rcode == dnswire.NOERROR:
            finish(query, Answer(values))
        else:
            query.failure = "%s from %s" % (dnswire.rcode_text(rcode), query.server[0])
            if query.attempt < len(server_list):
                send(query)  # another server may know better
            else:
                finish(query, Answer(error=query.failure))

    try:
        for _, query in queries:
            send(query)
        while by_fd:
            now = clock()
            if now >= deadline:
                break
            for query in {id(q): q for q, _, _ in by_fd.values()}.values():
                if now - query.sent >= retry * 2 ** ((query.attempt - 1) // len(server_list)):
                    send(query)
            wait = min(deadline - now, retry)
            for fd, _ in poller.poll(wait * 1000):
                entry = by_fd.get(fd)
                if entry is not None:
                    try:
                        receive(*entry)
                    except OSError:  # ICMP unreachable and the like
                        pass
    finally:
        for _, sock, _ in by_fd.values():
            sock.close()
    for i, query in queries:
        answers[i] = query.answer or Answer(error=query.failure)
    return answers


def make(environ, timeout, server_text=None, resolv_conf=RESOLV_CONF, clock=time.monotonic):
    """Return lookup(questions) bound to the servers (server_text first) and timeout.

    timeout is for all the lookups of the function returned together: the
    clock starts at the first, and each later one gets what is left (a
    check that asks twice, PTR then A, takes no longer than the limit).
    """
    if server_text:
        environ = dict(environ, QTOOLS_RESOLVER=server_text)
    server_list = servers(environ, resolv_conf)
    deadline = []

    def resolve(questions):
        if not deadline:
            deadline.append(clock() + timeout)
        left = deadline[0] - clock()
        if left <= 0:
            return [Answer(error="timeout") for _ in questions]
        return lookup(questions, server_list, left, clock)

    return resolve


def option_seconds(letter, text):
    """Return the DNS time limit of option letter, or raise Usage."""
    from qtools import core

    try:
        return core.seconds(text)
    except ValueError:
        raise core.Usage("invalid value for -%s: %s" % (letter, text))


def option_servers(letter, text):
    """Return the server list of option letter unchanged once it parses, or raise Usage."""
    from qtools import core

    try:
        parse_servers(text)
    except ValueError as error:
        raise core.Usage("invalid value for -%s: %s" % (letter, error))
    return text


def lazy(environ, server_text, timeout):
    """Return a resolve function for decide() that reads its configuration on first use."""
    # A client decided without DNS never pays for reading resolv.conf, and a
    # bad $QTOOLS_RESOLVER only stops (exit 100) a connection that needs it.
    from qtools import core

    bound = []

    def resolve(questions):
        if not bound:
            try:
                bound.append(make(environ, timeout, server_text))
            except ValueError as error:
                raise core.Die(core.USAGE_EXIT, "invalid resolver: %s" % error)
        return bound[0](questions)

    return resolve
