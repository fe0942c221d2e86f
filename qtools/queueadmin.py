# SPDX-License-Identifier: ISC
"""qtools-queue's commands for the admin: -c (check the setup), -l, -r and -d (the quarantine).

Exit codes here are djb's: 0 done, 100 bad configuration or a file that is
not a held message, 111 a temporary problem (a scanner down, qmail-queue
failing for now).
"""

import os
import sys
import time

from qtools import core, queuemsg, quarantine
from qtools.queue import PROG, policy
from qtools.scansock import ScanError, show


def run(option, environ):
    letter, value = option
    environ.pop("QMAILQUEUE", None)
    if letter == "c":
        return check(environ)
    maildir = environ.get("QTOOLS_QUARANTINE") or None
    if letter == "l":
        return listing(value or maildir)
    path = quarantine.resolve(value, maildir)
    if letter == "d":
        return delete(path)
    return release(path, environ)


def _say(text):
    sys.stdout.write(text + "\n")


def check(environ):
    """Say what the configuration does; exit 100 if it is wrong, 111 if a part is unreachable."""
    try:
        p = policy(environ)
    except ValueError as error:
        raise core.Die(core.USAGE_EXIT, str(error))
    from qtools import clamd, spamc

    problems = 0
    for name, address, ask in (("spamd", p.spamd, spamc.ping), ("clamd", p.clamd, clamd.version)):
        if address is None:
            _say("%s: not asked" % name)
            continue
        try:
            _say("%s at %s: %s" % (name, show(address), ask(address, p.timeout)))
        except ScanError as error:
            core.warn(PROG, "%s at %s: %s" % (name, show(address), error.text))
            problems += 1
    if not os.access(p.qmailqueue, os.X_OK):
        raise core.Die(core.USAGE_EXIT, "unable to run %s: not an executable file" % p.qmailqueue)
    _say("deliver through %s" % p.qmailqueue)
    if p.quarantine:
        try:
            name = quarantine.deliver(p.quarantine, lambda fd: None)
            os.unlink(os.path.join(p.quarantine, "new", name))  # the test delivery
        except (OSError, quarantine.QuarantineError) as error:
            core.warn(PROG, str(error))
            problems += 1
        else:
            _say("quarantine: %s is writable" % p.quarantine)
    for line in describe(p):
        _say(line)
    return core.TEMP_EXIT if problems else 0


def describe(p):
    """Return the policy in words, one line per rule."""
    lines = []
    if p.spamd:
        tag = "score >= required: tag (X-Spam-Flag, X-Spam-Level, X-Spam-Status"
        if p.subject:
            tag += ", subject prefix %r" % p.subject
            if p.delta:
                tag += " with LOW/MEDIUM/HIGH every %g points" % p.delta
        lines.append(tag + ")")
        for offset, action in p.thresholds:
            what = {"quarantine": "quarantine in %s" % p.quarantine, "drop": "drop (250 to the client)",
                    "reject": "refuse with 554 (loopback clients and $QTOOLS_QUEUE_NOREJECT: drop)"}
            lines.append("score >= required + %g: %s" % (offset, what[action]))
        lines.append("messages over %d bytes: not sent to spamd" % p.maxsize)
    if p.clamd:
        lines.append("virus: %s" % p.virus)
    lines.append("scanner down, slow (over %g s) or garbled: %s" % (
        p.timeout, "refuse for now (451)" if p.tempfail else "deliver unscanned"))
    if p.reject_fd is not None:
        lines.append("refusals: text on descriptor %d, exit 82" % p.reject_fd)
    else:
        lines.append("refusals: exit 31 (554 mail server permanently rejected message)")
    return lines


def listing(maildir):
    """Print one line per held message: name, envelope, why it is held."""
    if not maildir:
        raise core.Usage("-l needs a directory, or $QTOOLS_QUARANTINE")
    try:
        paths = quarantine.held(maildir)
    except OSError as error:
        raise core.Die(core.TEMP_EXIT, "unable to read %s: %s" % (maildir, core.strerror(error)))
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # released or deleted meanwhile
        try:
            fields, _ = quarantine.read_block(fd)
            sender, recipients = quarantine.envelope_of(fields)
        except quarantine.QuarantineError as error:
            core.warn(PROG, "%s: %s" % (path, error))
            continue
        finally:
            os.close(fd)
        why = fields["Quarantined"][0].split(b"; ", 1)[-1].decode("ascii", "replace")
        date = fields.get("Date", [b""])[0].decode("ascii", "replace")
        pairs = [("from", sender.decode("latin-1")), ("rcpts", len(recipients)),
                 ("to", ",".join(r.decode("latin-1") for r in recipients)),
                 ("client", fields.get("Client", [b"-"])[0].decode("ascii", "replace")),
                 ("date", date), ("why", why)]
        _say(os.path.basename(path) + " " + " ".join("%s=%s" % (k, core._field(v)) for k, v in pairs))
    return 0


def _open_held(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise core.Die(core.USAGE_EXIT, "unable to open %s: %s" % (path, core.strerror(error)))
    try:
        fields, offset = quarantine.read_block(fd)
        return fd, fields, offset, quarantine.envelope_of(fields)
    except quarantine.QuarantineError as error:
        os.close(fd)
        raise core.Die(core.USAGE_EXIT, "%s: %s" % (path, error))


def delete(path):
    """Remove a held message (only a file that is one)."""
    fd = _open_held(path)[0]
    os.close(fd)
    try:
        os.unlink(path)
    except OSError as error:
        raise core.Die(core.TEMP_EXIT, "unable to remove %s: %s" % (path, core.strerror(error)))
    core.info(PROG, "deleted %s" % path)
    return 0


def release(path, environ):
    """Queue a held message for its original envelope, unscanned, once; then remove it."""
    import subprocess

    start = time.monotonic()
    fd, fields, offset, (sender, recipients) = _open_held(path)
    p_tmpdir = environ.get("QTOOLS_QUEUE_TMPDIR") or environ.get("TMPDIR") or "/tmp"
    qmailqueue = environ.get("QTOOLS_QMAILQUEUE") or "/var/qmail/bin/qmail-queue"
    try:
        claimed = quarantine.claim(path)
    except quarantine.QuarantineError as error:
        raise core.Die(core.USAGE_EXIT, str(error))
    try:
        envelope = queuemsg.tmpfile(p_tmpdir)
        queuemsg.write_all(envelope, queuemsg.envelope(sender, recipients))
        os.lseek(envelope, 0, os.SEEK_SET)
        os.lseek(fd, offset, os.SEEK_SET)
        code = subprocess.run([qmailqueue], stdin=fd, stdout=envelope, env=environ).returncode
    except OSError as error:
        os.rename(claimed, path)
        raise core.Die(core.TEMP_EXIT, "unable to run %s: %s" % (qmailqueue, core.strerror(error)))
    if code != 0:
        os.rename(claimed, path)
        permanent = 11 <= code <= 40
        raise core.Die(core.USAGE_EXIT if permanent else core.TEMP_EXIT,
                       "%s refused %s %s (exit %d)" % (qmailqueue, path,
                                                       "permanently" if permanent else "for now", code))
    os.unlink(claimed)
    size = os.fstat(fd).st_size - offset
    ip = fields.get("Client", [b"-"])[0].decode("ascii", "replace")
    log = [("from", sender.decode("latin-1")), ("rcpts", len(recipients)), ("size", size),
           ("spam", "skipped"), ("ms", int((time.monotonic() - start) * 1000))]
    if len(recipients) == 1:
        log.append(("rcpt", recipients[0].decode("latin-1")))
    core.log(PROG, core.clean(ip, 64), "release", log)
    return 0
