# SPDX-License-Identifier: ISC
"""qtools-queue's $QMAILQUEUE path: spool, check the envelope, scan, decide, act.

Both descriptors are read to their end before anything else happens
(qmail-smtpd counts a write error on either as a failure, whatever the
exit code), then the scanners are asked, and the decision is carried out:
the real qmail-queue replaces this process with the message on fd 0 and
the envelope on fd 1, both private unlinked files.
"""

import os
import time

from qtools import core, queuemsg
from qtools.queue import (EXIT_READ, EXIT_REFUSED, EXIT_TEMP, EXIT_TEXT, EXIT_WRITE, PROG,
                          decide, local_client, policy)
from qtools.scansock import ScanError, show

DEATH = 86400


def _drain(fd):
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def run(environ):
    import _signal

    _signal.alarm(DEATH)  # as qmail-queue: nothing hangs for ever on a stuck descriptor
    start = time.monotonic()
    environ.pop("QMAILQUEUE", None)  # nothing we run may come back here
    ip = core.clean(environ.get("TCPREMOTEIP") or environ.get("TCP6REMOTEIP") or "-", 64)
    try:
        p = policy(environ)
    except ValueError as error:
        _drain(0), _drain(1)
        core.fatal(PROG, "%s: message refused for now" % error)
        return EXIT_TEMP
    try:
        fd = queuemsg.tmpfile(p.tmpdir)
        size = queuemsg.spool(0, fd)
        data = queuemsg.read_envelope(1)
    except queuemsg.EnvelopeError as error:  # too long: read the rest, queue nothing
        _drain(1)
        core.fatal(PROG, error.text)
        return error.code
    except OSError as error:
        _drain(0), _drain(1)
        core.fatal(PROG, "unable to spool the message in %s: %s" % (p.tmpdir, core.strerror(error)))
        return EXIT_WRITE
    except queuemsg.ReadError as error:
        _drain(0), _drain(1)
        core.fatal(PROG, "unable to read %s: %s" % (error.what, core.strerror(error.error)))
        return EXIT_READ
    try:
        sender, recipients = queuemsg.parse_envelope(data)
    except queuemsg.EnvelopeError as error:
        fields = [("from", ""), ("rcpts", 0), ("size", size), ("spam", "skipped"),
                  ("ms", _ms(start)), ("why", error.text)]
        core.log(PROG, ip, "error", fields)
        return error.code
    ov = core.override(environ, "QTOOLS_QUEUE")
    relay = "RELAYCLIENT" in environ
    spam = virus = None
    if not relay and ov.action == "check":
        virus = _ask("clamd", p.clamd, lambda: _clamd(p, fd, size))
        if not isinstance(virus, str) and size <= p.maxsize:
            user = recipients[0].decode("latin-1") if len(recipients) == 1 else p.user
            spam = _ask("spamd", p.spamd, lambda: _spamd(p, fd, size, user))
    noreject = local_client(ip) or "QTOOLS_QUEUE_NOREJECT" in environ
    d = decide(p, spam, virus, noreject, relay, ov)
    fields = _fields(sender, recipients, size, spam, virus, d)
    code = _act(p, d, fd, size, sender, recipients, ip, fields)
    if code is None and not os.access(p.qmailqueue, os.X_OK):
        core.warn(PROG, "unable to run %s: %s" % (p.qmailqueue, "not an executable file"))
        d.action, d.why, code = "tempfail", "qmail-queue", EXIT_TEMP
    core.log(PROG, ip, d.action, fields + _tail(start, recipients, d.why))
    if code is None:  # deliver: logged, now exec
        return _exec(p, d, fd, size, data, environ)
    return code


def _ask(name, address, call):
    """Return call()'s answer, or the ScanError it raised (warned about, unless a size limit)."""
    if address is None:
        return None
    try:
        return call()
    except ScanError as error:
        kind = "warning" if error.kind != "toobig" else "info"
        text = "%s at %s: %s" % (name, show(address), error.text)
        (core.warn if kind == "warning" else core.info)(PROG, text)
        return error


def _clamd(p, fd, size):
    from qtools import clamd

    return clamd.scan(p.clamd, fd, size, p.timeout)


def _spamd(p, fd, size, user):
    from qtools import spamc

    return spamc.check(p.spamd, fd, size, p.timeout, user)


def _fields(sender, recipients, size, spam, virus, d):
    fields = [("from", sender.decode("latin-1")), ("rcpts", len(recipients)), ("size", size)]
    if spam is None:
        fields.append(("spam", "skipped"))
    elif isinstance(spam, ScanError):
        fields.append(("spam", "failed"))
    else:
        tests = ",".join(spam.tests)
        if len(tests) > 200:
            tests = tests[:200]
        fields += [("spam", "yes" if spam.spam else "no"), ("score", spam.score),
                   ("required", spam.required), ("tests", tests)]
    if isinstance(virus, str):
        fields.append(("virus", virus))
    return fields


def _tail(start, recipients, why):
    tail = [("ms", _ms(start))]
    if len(recipients) == 1:
        tail.append(("rcpt", recipients[0].decode("latin-1")))
    if why:
        tail.append(("why", why))
    return tail


def _ms(start):
    return int((time.monotonic() - start) * 1000)


def _act(p, d, fd, size, sender, recipients, ip, fields):
    """Carry out every decision but delivery; return the exit code, or None to deliver."""
    if d.action == "quarantine":
        from qtools import quarantine

        verdict = d.why + " " + " ".join("%s=%s" % kv for kv in fields[3:])
        head = quarantine.block(sender, recipients, verdict, ip)

        def write(out):
            queuemsg.write_all(out, head)
            queuemsg.compose(out, d.headers, fd, size, d.prefix)

        try:
            name = quarantine.deliver(p.quarantine, write)
        except quarantine.QuarantineError as error:
            core.warn(PROG, "%s: message not quarantined" % error)
            if d.why == "virus" or p.tempfail:
                d.action, d.text, d.why = "tempfail", "temporary quarantine failure (#4.3.0)", "quarantine"
                return _refuse(p, d, False)
            d.action, d.why = "tag", "quarantine"
            return None
        core.info(PROG, "quarantined as %s" % name)
        return 0
    if d.action == "drop":
        return 0
    if d.action in ("reject", "tempfail"):
        return _refuse(p, d, d.action == "reject")
    return None


def _refuse(p, d, permanent):
    """Return 31 / 71, or 82 with the text on the admin's descriptor."""
    if p.reject_fd is not None:
        try:
            os.write(p.reject_fd, (("D" if permanent else "Z") + d.text).encode()[:255])
            return EXIT_TEXT
        except OSError as error:
            core.warn(PROG, "unable to write to descriptor %d: %s" % (p.reject_fd, core.strerror(error)))
    return EXIT_REFUSED if permanent else EXIT_TEMP


def _exec(p, d, fd, size, data, environ):
    """Replace this process by the real qmail-queue: message on fd 0, envelope on fd 1."""
    message = fd
    if d.headers or d.prefix:
        try:
            message = queuemsg.tmpfile(p.tmpdir)
            queuemsg.compose(message, d.headers, fd, size, d.prefix)
        except OSError as error:
            core.warn(PROG, "unable to add the header lines: %s: delivering without them"
                      % core.strerror(error))
            message = fd
    try:
        envelope = queuemsg.tmpfile(p.tmpdir)
        queuemsg.write_all(envelope, data)
        for source, target in ((message, 0), (envelope, 1)):
            os.lseek(source, 0, os.SEEK_SET)
            os.dup2(source, target)
        core.exec_program(PROG, [p.qmailqueue], environ)
    except OSError as error:
        core.fatal(PROG, "unable to hand the message on: %s" % core.strerror(error))
    except core.Die as error:
        core.fatal(PROG, error.message)
    return EXIT_TEMP
