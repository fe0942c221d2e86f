# SPDX-License-Identifier: ISC
"""qtools-queue - scan each message with spamd and clamd between qmail-smtpd and qmail-queue.

Run as $QMAILQUEUE: the message on fd 0, the envelope on fd 1, the
configuration in the environment.  The message is spooled to a private
file, scanned (clamd first, then spamd), and then delivered (by exec of
the real qmail-queue, so that qmail-smtpd's "qp" is qmail-send's), tagged,
quarantined, dropped or refused.  Exit codes are qmail-queue's: 0 queued or
dropped, 31 refused, 71 refused for now, 82 with the text on the admin's
descriptor, the real qmail-queue's own status passed through.  Our own
failures deliver the message unscanned, never refuse it.
"""

import os
import time

from qtools import core, queuemsg
from qtools.scansock import ScanError

PROG = "qtools-queue"
USAGE = "qtools-queue [ -c ] | -l [ dir ] | -r file | -d file"

# Replies: the texts qmail-smtpd prints after 554 / 451 when QTOOLS_REJECT_FD names its descriptor.
SPAM_TEXT = "this message looks like spam (score %s, required %s) (#5.7.1)"
VIRUS_TEXT = "this message contains a virus: %s (#5.7.1)"
TEMP_TEXT = "temporary problem scanning this message, try again later (#4.3.0)"

EXIT_REFUSED, EXIT_TEMP, EXIT_TEXT, EXIT_READ, EXIT_WRITE = 31, 71, 82, 54, 53
QMAIL_QUEUE = "/var/qmail/bin/qmail-queue"
SPAMD = "127.0.0.1:783"
MAXSIZE = 512000  # spamc's -s default
TIMEOUT = 60.0
LEVEL_STARS = 50


class Policy:
    """Everything the environment says, read once; the thresholds are offsets from spamd's required score."""

    def __init__(self, **settings):
        self.spamd = self.clamd = self.user = self.subject = self.delta = None
        self.thresholds = []  # [(offset, action)], mildest first
        self.virus = "reject"
        self.tempfail = False
        self.maxsize = MAXSIZE
        self.timeout = TIMEOUT
        self.quarantine = None
        self.reject_fd = None
        self.qmailqueue = QMAIL_QUEUE
        self.tmpdir = "/tmp"
        self.__dict__.update(settings)


def _number(environ, name, parse, check):
    text = environ.get(name)
    if not text:
        return None
    try:
        value = parse(text)
        if check(value):
            return value
    except ValueError:
        pass
    raise ValueError("invalid $%s: %s" % (name, core.clean(text)))


def policy(environ):
    """Return the Policy of environ, or raise ValueError naming the bad variable."""
    from qtools import clamd, spamc

    p = Policy()
    spamd_text = environ.get("QTOOLS_SPAMD", SPAMD)
    for name, text, module in (("QTOOLS_SPAMD", spamd_text, spamc),
                               ("QTOOLS_CLAMD", environ.get("QTOOLS_CLAMD", ""), clamd)):
        if text:
            try:
                setattr(p, name[7:].lower(), module.address(text))
            except ValueError:
                raise ValueError("invalid $%s: %s" % (name, core.clean(text))) from None
    p.user = environ.get("QTOOLS_SPAMD_USER") or None
    p.subject = environ.get("QTOOLS_SPAM_SUBJECT") or None
    offset = lambda v: v == v and 0 <= v < 1e6  # noqa: E731 (not nan, not silly)
    p.delta = _number(environ, "QTOOLS_SPAM_DELTA", float, lambda v: offset(v) and v > 0)
    for action in ("quarantine", "drop", "reject"):
        name = "QTOOLS_SPAM_" + ("DELETE" if action == "drop" else action.upper())
        value = _number(environ, name, float, offset)
        if value is not None:
            if p.thresholds and value <= p.thresholds[-1][0]:
                raise ValueError("$%s must be above the score of %s" % (name, p.thresholds[-1][1]))
            p.thresholds.append((value, action))
    p.virus = environ.get("QTOOLS_VIRUS") or "reject"
    if p.virus not in ("reject", "quarantine", "drop"):
        raise ValueError("invalid $QTOOLS_VIRUS: %s" % core.clean(p.virus))
    p.tempfail = core.flag(environ, "QTOOLS_QUEUE_TEMPFAIL", False)
    p.maxsize = _number(environ, "QTOOLS_SPAM_MAXSIZE", int, lambda v: v >= 0) or MAXSIZE
    p.timeout = _number(environ, "QTOOLS_SCAN_TIMEOUT", core.seconds, bool) or TIMEOUT
    p.reject_fd = _number(environ, "QTOOLS_REJECT_FD", int, lambda v: 2 < v < 1024)
    p.quarantine = environ.get("QTOOLS_QUARANTINE") or None
    wanted = p.virus == "quarantine" or any(a == "quarantine" for _, a in p.thresholds)
    if wanted and not p.quarantine:
        raise ValueError("quarantine wanted but $QTOOLS_QUARANTINE is not set")
    p.qmailqueue = environ.get("QTOOLS_QMAILQUEUE") or QMAIL_QUEUE
    p.tmpdir = environ.get("QTOOLS_QUEUE_TMPDIR") or environ.get("TMPDIR") or "/tmp"
    return p


class Decision:
    """What to do with one message: action, header lines to add on top, subject prefix, reply text."""

    __slots__ = ("action", "headers", "prefix", "text", "why")

    def __init__(self, action, headers=b"", prefix=None, text="", why=None):
        self.action = action
        self.headers = headers
        self.prefix = prefix
        self.text = text
        self.why = why

    def __repr__(self):
        return "Decision(%r, %r, %r, %r, %r)" % (self.action, self.headers, self.prefix, self.text, self.why)


def spam_headers(result, p):
    """Return (header lines, subject prefix or None) for spamd's result."""
    tests = [core.clean(t, 100) for t in result.tests] or ["none"]
    words = [(" ", "Yes," if result.spam else "No,"), (" ", "score=" + result.score),
             (" ", "required=" + result.required)]
    words += [(" " if i == 0 else "", ("tests=" if i == 0 else "") + t + ("," if i < len(tests) - 1 else ""))
              for i, t in enumerate(tests)]
    lines = [_fold("X-Spam-Status", words)]
    stars = min(max(int(float(result.score)), 0), LEVEL_STARS)
    if stars:
        lines.append("X-Spam-Level: " + "*" * stars)
    prefix = None
    if result.spam:
        lines.insert(0, "X-Spam-Flag: YES")
        if p.subject:
            prefix = p.subject
            if p.delta:
                over = float(result.score) - float(result.required)
                prefix += " " + ("LOW" if over < p.delta else "MEDIUM" if over < 2 * p.delta else "HIGH")
    head = "".join(line + "\n" for line in lines).encode("ascii")
    return head, prefix and prefix.encode("utf-8", "surrogateescape")


def _fold(name, words, width=78):
    """Return a header line of (glue, word) pairs, folded before a word that would pass width."""
    line, lines = name + ":", []
    for glue, word in words:
        if len(line) + len(glue) + len(word) > width and len(line) > len(name) + 1:
            lines.append(line)
            line = "\t" + word
        else:
            line += glue + word
    return "\n".join(lines + [line])


def decide(p, spam, virus, noreject=False, relay=False, ov=None):
    """Decide from the scans: spam is a SpamResult, None (not asked) or a ScanError;
    virus a signature name, None (clean or not asked) or a ScanError."""
    if relay:
        return Decision("deliver", why="relayclient")
    if ov is not None and ov.action == "skip":
        return Decision("deliver", why="override")
    if ov is not None and ov.action == "refuse":
        return Decision("reject" if ov.permanent else "tempfail", text=core.clean(ov.text), why="override")
    failed = [("spamd", spam), ("clamd", virus)]
    failed = ["%s:%s" % (who, e.kind) for who, e in failed if isinstance(e, ScanError) and e.kind != "toobig"]
    if isinstance(virus, str):
        action = "drop" if p.virus == "reject" and noreject else p.virus
        return Decision(action, text=VIRUS_TEXT % core.clean(virus), why="virus")
    headers, prefix, action = b"", None, "deliver"
    if spam is not None and not isinstance(spam, ScanError):
        headers, prefix = spam_headers(spam, p)
        over = float(spam.score) - float(spam.required)
        action = "tag" if spam.spam else "deliver"
        for offset, severer in p.thresholds:
            if spam.spam and over >= offset:
                action = severer
        if action == "reject" and noreject:
            action = "drop"
        if action not in ("deliver", "tag"):
            return Decision(action, headers, prefix, SPAM_TEXT % (spam.score, spam.required), "spam")
    if failed:
        action = "tempfail" if p.tempfail else "unscanned"
        return Decision(action, headers, prefix, TEMP_TEXT, ",".join(failed))
    return Decision(action, headers, prefix, why="size" if spam is None and p.spamd else None)


def local_client(ip):
    """True for a local injection (no TCPREMOTEIP) and for 127.0.0.1 and ::1.

    Those are the addresses programs on this host connect from; the rest
    of 127.0.0.0/8 is left to stand for other clients, as the demo and
    the tests use it.
    """
    if ip == "-":
        return True
    parsed = core.parse_ip(ip)
    return parsed is not None and parsed[1] in (b"\x7f\0\0\x01", b"\0" * 15 + b"\x01")


@core.main_of(PROG, USAGE)
def main(argv, environ):
    """Scan the message on fd 0 for the envelope on fd 1; or -c, -l, -r, -d."""
    options, rest = ([("l", None)], []) if argv == ["-l"] else core.getopt(argv, "cl:r:d:")
    if rest or len(options) > 1:
        raise core.Usage("")
    if options:
        from qtools import queueadmin

        return queueadmin.run(options[0], environ)
    return scan_message(environ)


def scan_message(environ):
    """The $QMAILQUEUE path: spool, check the envelope, scan, decide, act."""
    from qtools import queuescan

    return queuescan.run(environ)
