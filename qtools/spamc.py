# SPDX-License-Identifier: ISC
"""A SPAMC/1.5 client: one SYMBOLS request to spamd per message, no spamc process.

SYMBOLS gives the verdict, the score, the required score and the names of
the rules that hit, without sending the message back: qtools-queue writes
the X-Spam-* header lines itself and leaves the message's own bytes alone.
spamd/PROTOCOL in SpamAssassin's sources is the reference.
"""

from qtools.scansock import Connection, ScanError, parse_address

PORT = 783
ANSWER_LIMIT = 65536  # status, two headers and a rule list


class SpamResult:
    """What spamd said: spam flag, score and required score as spamd wrote them, rule names."""

    __slots__ = ("spam", "score", "required", "tests")

    def __init__(self, spam, score, required, tests=()):
        self.spam = spam
        self.score = score
        self.required = required
        self.tests = tuple(tests)

    def __repr__(self):
        return "SpamResult(%r, %r, %r, %r)" % (self.spam, self.score, self.required, self.tests)


def address(text):
    """Return the parsed $QTOOLS_SPAMD (raise ValueError)."""
    return parse_address(text, PORT)


def _user(name):
    """Return name if spamd takes it as a User: header, else None."""
    if not name or len(name) > 255 or any(not "!" <= c <= "~" for c in name):
        return None
    return name


def request(command, size, user=None):
    """Return the request head of command for a body of size bytes."""
    head = ["%s SPAMC/1.5" % command, "Content-length: %d" % size]
    user = _user(user)
    if user:
        head.append("User: %s" % user)
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii")


def parse(answer):
    """Return the SpamResult of a SYMBOLS answer, or raise ScanError."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith(b"SPAMD/") or not status[1].isdigit():
        if not answer:
            raise ScanError("closed", "connection closed without an answer")
        raise ScanError("protocol", "not a SPAMD answer: %s" % _shown(lines[0]))
    if status[1] != b"0":
        raise ScanError("error", "spamd said: %s" % _shown(lines[0]))
    spam = length = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise ScanError("protocol", "bad header line: %s" % _shown(line))
        if name == b"Spam":
            spam = _spam_header(value)
        elif name == b"Content-length":
            if not value.strip().isdigit():
                raise ScanError("protocol", "bad Content-length: %s" % _shown(value))
            length = int(value)
    if spam is None or not sep:
        raise ScanError("protocol", "no Spam: header in the answer")
    if length is not None and length != len(body):
        raise ScanError("protocol", "answer cut short (%d of %d bytes)" % (len(body), length))
    text = body.decode("ascii", "replace").strip()
    tests = [t for t in text.replace(" ", "").split(",") if t]
    return SpamResult(spam[0], spam[1], spam[2], tests)


def _spam_header(value):
    """Read " True ; 1002.7 / 5.0" as (True, "1002.7", "5.0"), or raise ScanError."""
    try:
        flag, _, numbers = value.decode("ascii").partition(";")
    except UnicodeDecodeError:
        flag, numbers = "", ""
    score, slash, required = numbers.partition("/")
    flag, score, required = flag.strip(), score.strip(), required.strip()
    if not slash or flag not in ("True", "False", "Yes", "No") or not (_decimal(score) and _decimal(required)):
        raise ScanError("protocol", "bad Spam: header: %s" % _shown(value))
    return flag in ("True", "Yes"), score, required


def _decimal(text):
    """True for what spamd's %2.1f writes: digits, a point and digits, maybe a minus (no nan, inf or 1_0)."""
    whole, _, fraction = text[1:].partition(".") if text.startswith("-") else text.partition(".")
    return (whole.isascii() and whole.isdigit() and len(whole) < 12
            and (fraction == "" and "." not in text or fraction.isascii() and fraction.isdigit()))


def _shown(data):
    return data[:80].decode("latin-1")


def check(addr, fd, size, timeout, user=None, clock=None):
    """Ask spamd at addr about the size bytes spooled in fd; return a SpamResult or raise ScanError."""
    extra = {} if clock is None else {"clock": clock}
    with Connection(addr, timeout, **extra) as conn:
        conn.send(request("SYMBOLS", size, user))
        conn.send_file(fd, size)
        conn.shutdown()
        return parse(conn.read_all(ANSWER_LIMIT))


def ping(addr, timeout):
    """Return spamd's answer to PING (raise ScanError)."""
    with Connection(addr, timeout) as conn:
        conn.send(b"PING SPAMC/1.5\r\n\r\n")
        conn.shutdown()
        answer = conn.read_all(ANSWER_LIMIT).strip()
    if not answer.startswith(b"SPAMD/") or not answer.endswith(b"PONG"):
        raise ScanError("protocol", "not a PONG: %s" % _shown(answer))
    return answer.decode("ascii", "replace")

