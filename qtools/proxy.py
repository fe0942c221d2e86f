# SPDX-License-Identifier: ISC
"""The SMTP proxy engine: one process between the client and the next program.

A proxy-level program (validrcptto, tarpit, triplet greylisting) does not
start a proxy: it calls add_filter(), which registers its Filter and hands
the connection on.  When the chain reaches an external program (qmail-smtpd),
one proxy starts with every filter stacked in chain order and that program as
a child on a socketpair.

The filters' side of it (the Filter hooks, the Session they see, the
header fields they add) is qtools.proxyfilter.

The framing is qmail-smtpd's: a command ends at LF, one CR before it is
dropped for parsing, and the bytes are forwarded exactly as received.
A command line of more than MAX_LINE bytes, not counting its CR LF or LF,
is answered 500 and never forwarded (qmail-smtpd has no limit; 2048 is
Postfix's line_length_limit, RFC 5321 needs 512).  DATA
mode starts on the backend's 354 and ends only on CR LF . CR LF; a bare LF
in DATA gets qmail-smtpd's own 451 and the connection is closed, so no two
programs can disagree about where a message ends.

This module is the SMTP logic only, a state machine fed bytes (Engine);
qtools.proxyio runs it between file descriptors and the child.
"""

import time

from qtools import core
from qtools import address
from qtools.proxyfilter import Filter, Session  # noqa: F401 (proxy.Filter, proxy.Session to the filters)

# Replies the proxy makes itself.
TOO_LONG = b"500 command line too long (#5.5.2)\r\n"
BARE_LF = b"451 See http://pobox.com/~djb/docs/smtplf.html.\r\n"
UNIMPLEMENTED = b"502 unimplemented (#5.5.1)\r\n"
TLS_SYNTAX = b"501 syntax error, STARTTLS takes no parameters (#5.5.4)\r\n"
TLS_READY = b"220 ready to start TLS\r\n"
TIMEOUT = b"421 timeout, closing connection (#4.4.2)\r\n"
BACKEND_GONE = b"421 the mail server went away, closing connection (#4.3.0)\r\n"

# EHLO keywords the proxy never lets through from the backend: it does not
# convert BDAT, and a backend's STARTTLS would make it a blind relay.
HIDDEN = frozenset((b"CHUNKING", b"STARTTLS"))

MAX_LINE = 2048  # bytes of a command line without its line ending
HIGH_WATER = 1 << 20  # stop reading a side while this much waits to be written
# Replies owed to the client, at most: past it (a client pipelining behind
# a reply the tarpit holds) no command is read until some have been sent.
MAX_OWED = 100


def bare_lf(data, start, stop):
    """Return the index of the first LF without a CR before it in data[start:stop], or -1."""
    # Two counts run at C speed; the loop runs only when there is one.
    if data.count(b"\n", start, stop) == data.count(b"\r\n", max(0, start - 1), stop):
        return -1
    at = data.find(b"\n", start, stop)
    while at >= 0:
        if at == 0 or data[at - 1] != 13:
            return at
        at = data.find(b"\n", at + 1, stop)
    return -1


class Entry:
    """One reply the client is owed, in command order."""

    __slots__ = ("verb", "path", "reply", "ready_at", "close", "starttls", "headers")

    def __init__(self, verb, path=None, reply=None):
        self.verb = verb
        self.path = path
        self.reply = reply
        self.ready_at = 0.0
        self.close = reply is not None and reply[:3] == b"421"
        self.starttls = False
        self.headers = []  # fields added at this command: they count if it is accepted


def code_of(lines):
    """Return the three-digit code of a reply as bytes."""
    return lines[0][:3] if lines else b""


def edit_ehlo(lines, offer_tls):
    """Return EHLO reply lines without CHUNKING and STARTTLS, with our STARTTLS if offer_tls."""
    kept = [lines[0]] + [
        line for line in lines[1:]
        if (line[4:].split(None, 1) or [b""])[0].upper() not in HIDDEN
    ]
    if offer_tls:
        ending = b"\r\n" if lines[0].endswith(b"\r\n") else b"\n"
        kept.insert(1, kept[0][:3] + b"-STARTTLS" + ending)
    last = len(kept) - 1
    out = []
    for i, line in enumerate(kept):
        if len(line) >= 4 and line[3:4] in (b"-", b" "):
            line = line[:3] + (b" " if i == last else b"-") + line[4:]
        elif i != last:  # a bare "250" line that is no longer the last one
            line = line[:3] + b"-" + line[3:]
        out.append(line)
    return out


class Engine:
    """The proxy as a state machine fed bytes: no file descriptors, no clock of its own.

    Feed client bytes to client_data() and backend bytes to server_data()
    (b"" for end of file); take what to send from to_client and to_server.
    """

    def __init__(self, filters, session, tls=False, max_line=MAX_LINE, clock=time.monotonic):
        self.filters = list(filters)
        self.session = session
        self.tls_available = tls
        self.max_line = max_line
        self.clock = clock
        self.prog = self.filters[0][0] if self.filters else "proxy"
        self.to_client = bytearray()
        self.to_server = bytearray()
        self.greeting = Entry(b"")
        self.queue = [self.greeting]  # the greeting is owed first
        self.waiting = [self.greeting]
        self.cin = bytearray()
        self.sin = bytearray()
        self.lines = []
        self.data = False
        self.tail = b""
        self.blocked = False
        self.discarding = False
        self.closing = False
        self.tls_pending = False  # the 220 to STARTTLS has gone out
        self.tls_accepted = False  # STARTTLS was accepted: nothing more is plaintext SMTP
        self.held = 0.0
        self.client_eof = False
        self.server_eof = False
        self._liphost = False  # not read yet
        self.why = None

    # --- client side -------------------------------------------------------

    def client_data(self, data):
        """Take bytes from the client (b"" at end of file)."""
        if not data:
            self.client_eof = True
            return
        if self.closing or self.tls_accepted:
            return  # after STARTTLS, plaintext must never become commands
        if self.data:
            self._data(data)
        else:
            self.cin += data
            self._commands()

    def _commands(self):
        cin = self.cin
        # A command waits until the backend has answered every command
        # before it (the filters then decide on the same session, however
        # the client's bytes and the backend's replies were timed), and
        # while the client is owed MAX_OWED replies (memory stays bounded).
        # The greeting answers no command: nothing waits for it.
        while not (self.blocked or self.closing or self.data
                   or (self.waiting and self.waiting[-1] is not self.greeting)
                   or len(self.queue) >= MAX_OWED):
            end = cin.find(b"\n")
            if end < 0:
                if len(cin) > self.max_line + 1:  # + 1: a CR may come before the LF
                    # Keep memory bounded; the line is answered at its LF.
                    self.discarding = True
                    del cin[:]
                return
            raw = bytes(cin[: end + 1])
            del cin[: end + 1]
            line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            if self.discarding or len(line) > self.max_line:
                self.discarding = False
                self._log(TOO_LONG[:-2].decode(), (("why", "toolong"),))
                self._local(b"", TOO_LONG)
                continue
            self._command(line, raw)

    def _command(self, line, raw):
        session = self.session
        command = address.read(line, self._localiphost, barelf=raw[-2:] != b"\r\n")
        verb = command.verb
        if verb == b"starttls":
            self._starttls(command)
            return
        if verb == b"bdat":
            self._local(verb, UNIMPLEMENTED)
            return
        session.adding = []
        for prog, each in self.filters:
            session.prog = prog
            try:
                reply = each.command(session, verb, command)
            except Exception as error:  # a broken filter must not break mail
                core.warn(prog, "filter failed: %s: %s" % (type(error).__name__, error))
                reply = None
            if reply is not None:
                if not reply.endswith(b"\n"):
                    reply += b"\r\n"  # a reply without its end would hang the client
                session.adding = []  # no command, no field
                self._local(verb, reply)
                return
        entry = Entry(verb, command.path)
        entry.headers, session.adding = session.adding, []
        if verb in (b"helo", b"ehlo"):
            session.helo = command.arg
            session.reset()
        elif verb == b"rset":
            session.reset()
        self._forward(entry, raw)
        if verb in (b"data", b"quit"):
            # After DATA, what follows is data only if the backend says
            # 354; after QUIT, nothing follows unless the backend stays.
            self.blocked = True

    def _starttls(self, command):
        if not self.tls_available or self.session.tls:
            self._local(b"starttls", UNIMPLEMENTED)
        elif command.arg.strip(b" "):
            self._local(b"starttls", TLS_SYNTAX)
        else:
            # CVE-2011-0411: nothing sent after STARTTLS and before the
            # handshake counts, whether it came with STARTTLS, while the
            # 220 waited behind other replies or after it went out.
            self.blocked = True
            self.tls_accepted = True
            self.discarding = False
            del self.cin[:]
            self._local(b"starttls", TLS_READY, starttls=True)

    def _localiphost(self):
        """Return qmail-smtpd's name for its own address literals (read once), or None."""
        if self._liphost is False:
            self._liphost = address.localiphost(self.session.environ)
        return self._liphost

    def _local(self, verb, reply, starttls=False):
        entry = Entry(verb, reply=reply)
        entry.starttls = starttls
        if entry.close:
            self.blocked = True  # nothing after a goodbye is read
        self.queue.append(entry)
        self._release()
        return entry

    def _forward(self, entry, raw):
        self.queue.append(entry)
        self.waiting.append(entry)
        self.to_server += raw

    def _data(self, data):
        window = self.tail + data
        base = len(self.tail)
        end = window.find(b"\r\n.\r\n")
        if bare_lf(window, base, len(window) if end < 0 else end + 5) >= 0:
            self._log(BARE_LF[:-2].decode(), (("why", "barelf"),))
            self.data = False
            self.closing = True
            self.why = "barelf"
            self.to_client += BARE_LF
            return
        if end < 0:
            self.to_server += data
            self.tail = window[-4:]
            return
        cut = end + 5
        self.to_server += window[base:cut]
        self.data = False
        self.tail = b""
        self._forward(Entry(b"."), b"")
        self.cin += window[cut:]
        self._commands()

    # --- backend side ------------------------------------------------------

    def server_data(self, data):
        """Take bytes from the backend (b"" at end of file)."""
        if not data:
            self.server_eof = True
            if self.sin or self.lines:
                # The backend died in the middle of a reply: say so in a
                # whole line of our own rather than pass on half of one.
                del self.sin[:]
                self.lines = []
                self._reply([BACKEND_GONE])
            # What the backend never answered stays unanswered; what it
            # did answer still goes out in turn, held replies included.
            self.queue = [entry for entry in self.queue if entry.reply is not None]
            self.waiting = []
            self.blocked = True
            self._release()
            return
        self.sin += data
        sin = self.sin
        while True:
            end = sin.find(b"\n")
            if end < 0:
                return
            line = bytes(sin[: end + 1])
            del sin[: end + 1]
            self.lines.append(line)
            if line[3:4] != b"-":
                lines, self.lines = self.lines, []
                self._reply(lines)

    def _reply(self, lines):
        session = self.session
        if self.waiting:
            entry = self.waiting.pop(0)
        else:  # said without being asked: pass it on in turn
            entry = Entry(b"")
            self.queue.append(entry)
        verb, code = entry.verb, code_of(lines)
        ok = code[:1] == b"2"
        if verb == b"ehlo" and ok:
            lines = edit_ehlo(lines, self.tls_available and not session.tls)
        elif verb == b"mail" and ok:
            # qmail-smtpd starts a transaction only with its 250: a MAIL it
            # refuses (555, an address addrparse() cannot read) leaves the
            # one before in place, and so must it stay for the filters.
            session.mail_from = entry.path
            session.rcpts = []
        elif verb == b"rcpt" and ok and entry.path is not None:
            # None is an address qmail-smtpd refuses as a syntax error: a
            # backend that took it anyway has no recipient we could judge.
            session.rcpts.append(entry.path)
        elif verb == b".":
            session.reset()
        if code == b"235":  # only SMTP AUTH answers 235
            session.authenticated = True
        session.delay = 0
        for prog, each in reversed(self.filters):
            session.prog = prog
            try:
                edited = each.reply(session, verb, lines)
            except Exception as error:
                core.warn(prog, "filter failed: %s: %s" % (type(error).__name__, error))
                edited = None
            if edited is not None:
                lines = edited
        added, session.adding = entry.headers + session.adding, []
        if verb == b"mail" and ok:
            session.headers = added  # a new transaction
        elif code[:1] in (b"2", b"3") and verb not in (b"", b"."):
            session.headers += added
        if session.delay:
            # Held replies wait one after the other, as a backend that
            # sleeps before each reply would make them.
            entry.ready_at = max(self.clock(), self.held) + session.delay
            self.held = entry.ready_at
        entry.reply = b"".join(lines)
        # 421 closes; so does the 221 to QUIT, even if the backend stays.
        entry.close = code == b"421" or (verb == b"quit" and code == b"221")
        if verb == b"quit" and code != b"221":
            self.blocked = False
        if verb == b"data":
            self.blocked = False
            if code == b"354":
                self.data = True
                self.tail = b"\r\n"  # qmail-smtpd starts DATA as after CR LF
                if session.tls:  # the backend cannot know: say so in the message
                    from qtools.received import tls_line
                    session.headers.append(tls_line(session))
                self.to_server += b"".join(session.headers)
                session.headers = []  # once a message
        self._release()
        if self.data and self.cin:
            pending = bytes(self.cin)
            del self.cin[:]
            self._data(pending)
        elif not self.data:
            self._commands()

    # --- replies to the client ---------------------------------------------

    def _release(self):
        now = None
        while self.queue and not self.closing:
            head = self.queue[0]
            if head.reply is None:
                return
            if head.ready_at:
                now = self.clock() if now is None else now
                if now < head.ready_at:
                    return
            self.queue.pop(0)
            self.to_client += head.reply
            if head.close:
                self.closing = True
                self.why = "421" if head.reply[:3] == b"421" else "eof"
            elif head.starttls:
                self.tls_pending = True
                return

    def deadline(self):
        """Return the clock time a held reply is due, or None."""
        if self.queue and self.queue[0].reply is not None and self.queue[0].ready_at:
            return self.queue[0].ready_at
        return None

    def tick(self):
        """Send held replies whose time has come, and read the commands they held up."""
        self._release()
        if not self.data:
            self._commands()

    def finished(self):
        """Return True once nothing more can be said to the client."""
        return self.closing or (self.server_eof and not self.queue and not self.to_client)

    def drained(self):
        """Return True when no client byte already taken can still reach the backend."""
        if self.to_server:
            return False
        if self.server_eof or not self.cin:
            return True
        # A line waiting for earlier replies (or data waiting for the 354)
        # still goes to the backend; a line without its LF never does.
        return not self.blocked and b"\n" not in self.cin

    def wants_input(self):
        """Return True while more client bytes may be taken (backpressure)."""
        return (not self.closing and len(self.to_server) < HIGH_WATER
                and len(self.cin) < HIGH_WATER and len(self.queue) < MAX_OWED)

    def buffered(self):
        """Return how many bytes the engine holds: input, output and the replies it owes."""
        return (len(self.cin) + len(self.sin) + len(self.to_server) + len(self.to_client)
                + sum(len(entry.reply or b"") for entry in self.queue))

    def queuing(self):
        """Return True while the client waits for the reply to the end of a message."""
        return any(entry.verb == b"." for entry in self.queue)

    def owes(self):
        """Return True while the client waits for a reply."""
        return bool(self.queue) and not self.data

    def abort(self, reply, why):
        """Say reply now, out of turn, and close (timeouts)."""
        if not self.closing:
            self.to_client += reply
            self.closing = True
            self.why = why

    def tls_started(self):
        """The TLS handshake begins: forget the plaintext session (RFC 3207 section 4.2)."""
        self.tls_pending = False
        self.tls_accepted = False
        self.blocked = False
        self.discarding = False
        del self.cin[:]  # nothing of the plaintext session is ever run
        session = self.session
        session.tls = True
        session.helo = None
        session.reset()
        # The backend forgets a transaction begun in plaintext; its reply
        # is ours, not the client's.
        entry = Entry(b"rset")
        self._forward(entry, b"RSET\r\n")
        self.queue.remove(entry)

    def _log(self, verdict, fields):
        self.session._logger(self.prog, self.session.client.ip, verdict, fields)


_pending = []


def add_filter(prog, each, argv, environ):
    """Stack filter each for the proxy of this connection and hand the connection on."""
    if not _pending:
        core.set_launcher(_launch)
    _pending.append((prog, each))
    return core.chain(prog, argv, environ)


def _launch(argv, environ):
    filters = list(_pending)
    del _pending[:]
    core.set_launcher(None)
    from qtools import proxyio

    code = proxyio.run(filters, argv, environ)
    if core.running_as_program():
        # The session is over and logged, the child reaped: nothing is
        # left for the interpreter's teardown to do.
        core.leave(code)
    return code
