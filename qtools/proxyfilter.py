# SPDX-License-Identifier: ISC
"""The proxy's filter contract: the hooks a filter offers and the Session it sees.

The filter contract.  A Filter has two hooks, both optional:

  command(session, verb, cmd)
      Called for each client command outside DATA, in order, after the
      filters before it passed it, and only once the backend has answered
      every command before it: what a filter knows of the session never
      depends on how fast the backend's replies came.  cmd is the line as
      qmail-smtpd will act on it (qtools.address.read: verb, arg, path;
      cmd.line is the raw line, for logs only; cmd.barelf tells that it
      ended in a LF without CR) and verb is cmd.verb: a filter decides on
      this reading and no other.  Return None to pass the
      command on, or a complete CRLF-terminated reply to answer it in the
      backend's place; the reply waits behind the backend's outstanding
      replies (PIPELINING order).  A reply starting with "421" closes the
      connection once sent.

  reply(session, verb, lines)
      Called with each backend reply to a passed command, last filter
      first (as if the filters were stacked proxies).  lines are the reply
      lines with their line endings.  Return None to keep them or a new
      list of lines.  Call session.hold(seconds) to have the reply sent
      that much later (the tarpit); meanwhile the proxy keeps relaying and
      replies behind it wait.  verb is b"" for the greeting and b"." for
      the reply at the end of a message.  The code of a reply to DATA must
      not be changed: the backend is in DATA mode after its 354.

The session carries client (core.Client), environ, helo, mail_from (the
address as qmail-smtpd parses it, b"" for the null sender, None outside a
transaction; set when the backend accepts a MAIL, and left as it was when
the backend refuses one, as qmail-smtpd keeps its transaction then),
rcpts (the recipients the backend accepted), tls, authenticated (the
backend answered SMTP AUTH with 235: checks step aside, as for
RELAYCLIENT), a per-connection dict state for filters, log(verdict,
fields), hold(seconds) and add_header(name, *parts).

Header fields.  session.add_header(name, *parts), called from a command
hook (at MAIL or later), adds a field at the top of this transaction's
message; the parts are text from anywhere, cleaned and folded by
qtools.received.field.  A field counts once the backend accepts the
command it was added at (a MAIL accepted starts the transaction's list
afresh); the fields are written to the backend right after its 354, in
the order added and before any byte of the client's message, followed by
the proxy's own Received line on a TLS session.  RSET, HELO/EHLO, STARTTLS
and the end of the message forget them; a DATA refused writes nothing.
"""

from qtools import core

MAX_HEADERS = 8192  # bytes of header fields the filters may add to one message


class Filter:
    """A proxy-level check; both hooks are optional (see the module text)."""

    def command(self, session, verb, cmd):
        return None

    def reply(self, session, verb, lines):
        return None


class Session:
    """What the filters know of one connection."""

    def __init__(self, client, environ, logger=None):
        self.client = client
        self.environ = environ
        self.helo = None
        self.mail_from = None
        self.rcpts = []
        self.tls = False
        self.authenticated = False
        self.state = {}
        self.prog = "proxy"
        self.delay = 0
        self.headers = []  # the fields of this transaction, as bytes
        self.adding = []  # the fields added at the command being filtered
        self._logger = logger or core.log

    def log(self, verdict, fields=()):
        """Write the decision log line under the name of the filter being called."""
        self._logger(self.prog, self.client.ip, verdict, fields)

    def hold(self, seconds):
        """Send the reply being filtered seconds later (reply hooks only)."""
        self.delay = max(self.delay, seconds)

    def add_header(self, name, *parts):
        """Add the header field "name: parts" to this transaction's message (see the module text).

        Return False, with a warning, when the fields added to one message
        would pass MAX_HEADERS bytes.
        """
        from qtools.received import field

        data = field(name, *parts)
        if sum(map(len, self.headers + self.adding)) + len(data) > MAX_HEADERS:
            core.warn(self.prog, "header field %s not added: more than %d bytes for one message"
                      % (name, MAX_HEADERS))
            return False
        self.adding.append(data)
        return True

    def reset(self):
        """Forget the transaction: no sender, no recipients, no header fields."""
        self.mail_from = None
        self.rcpts = []
        self.headers = []
