# SPDX-License-Identifier: ISC
"""qtools-queue's message handling: the spool file, the envelope, the message handed on.

The message is copied from fd 0 to a private temporary file (O_TMPFILE, or
a file unlinked as soon as it is created), so any size costs the same
memory; the scanners and qmail-queue read it from there.  The message
handed on is the original bytes with header lines added on top: the one
change inside the original is an optional Subject: prefix, which is
inserted and nothing else moved.
"""

import os

CHUNK = 65536
ENVELOPE_LIMIT = 1 << 26  # 64 MiB: 65 000 recipients of the longest address
ADDRESS_LIMIT = 1003  # qmail-queue.c's ADDR
HEADER_SCAN = 1 << 18  # where a Subject: line is looked for


class EnvelopeError(Exception):
    """The envelope is cut short or malformed; code is qmail-queue's exit code for it."""

    def __init__(self, code, text):
        super().__init__(text)
        self.code = code
        self.text = text


class ReadError(Exception):
    """fd 0 or fd 1 cannot be read: what (the message, the envelope) and the OSError."""

    def __init__(self, what, error):
        super().__init__(what, error)
        self.what = what
        self.error = error


def tmpfile(directory):
    """Return a read-write fd of a new private file in directory that no name points to."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_EXCL, 0o600)
    except (OSError, AttributeError):
        pass
    for n in range(100):
        path = os.path.join(directory, ".qtools-queue.%d.%d" % (os.getpid(), n))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue
        os.unlink(path)
        return fd
    raise FileExistsError("no free name in %s" % directory)


def write_all(fd, data):
    """Write all of data to fd."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _chunks(source, what):
    """Yield what fd source holds, chunk by chunk, to its EOF; raise ReadError naming what."""
    while True:
        try:
            data = os.read(source, CHUNK)
        except OSError as error:
            raise ReadError(what, error) from None
        if not data:
            return
        yield data


def spool(source, fd):
    """Copy source to fd until EOF; return the number of bytes."""
    size = 0
    for data in _chunks(source, "the message"):
        write_all(fd, data)
        size += len(data)
    return size


def read_envelope(source):
    """Read fd source to EOF (the envelope; qmail-smtpd closes it when done)."""
    parts, total = [], 0
    for data in _chunks(source, "the envelope"):
        total += len(data)
        if total > ENVELOPE_LIMIT:
            raise EnvelopeError(91, "envelope longer than %d bytes" % ENVELOPE_LIMIT)
        parts.append(data)
    return b"".join(parts)


def parse_envelope(data):
    """Return (sender, [recipients]) of qmail-queue's envelope (raise EnvelopeError).

    Codes are qmail-queue's: 54 for an envelope cut short (qmail-smtpd gave
    up on the message), 91 for a bad format, 11 for an address too long.
    """
    if not data:
        raise EnvelopeError(54, "no envelope")
    if data[:1] != b"F":
        raise EnvelopeError(91, "envelope does not start with F")
    end = data.find(b"\0")
    if end < 0:
        raise EnvelopeError(54, "envelope cut short")
    sender, pos, recipients = data[1:end], end + 1, []
    while True:
        if pos >= len(data):
            raise EnvelopeError(54, "envelope cut short")
        if data[pos] == 0:
            break
        if data[pos:pos + 1] != b"T":
            raise EnvelopeError(91, "recipient record does not start with T")
        end = data.find(b"\0", pos)
        if end < 0:
            raise EnvelopeError(54, "envelope cut short")
        recipients.append(data[pos + 1:end])
        pos = end + 1
    if any(len(a) >= ADDRESS_LIMIT for a in [sender] + recipients):
        raise EnvelopeError(11, "address too long")
    return sender, recipients


def envelope(sender, recipients):
    """Return the envelope bytes for sender and recipients."""
    return b"F" + sender + b"\0" + b"".join(b"T" + r + b"\0" for r in recipients) + b"\0"


def subject_offset(fd, size):
    """Return the offset where a Subject: line's text starts in the header, or None."""
    head = os.pread(fd, min(size, HEADER_SCAN), 0)
    pos = 0
    while pos < len(head):
        end = head.find(b"\n", pos)
        if end < 0:
            return None  # the header goes on past what is looked at
        line = head[pos:end]
        if line in (b"", b"\r"):
            return None  # end of the header
        if line[:8].lower() == b"subject:":
            start = pos + 8
            while head[start:start + 1] in (b" ", b"\t"):
                start += 1
            return start
        pos = end + 1
    return None


def copy_range(src, dst, offset, count):
    """Copy count bytes of src from offset to dst's current position."""
    while count > 0:
        try:
            done = os.copy_file_range(src, dst, min(count, 1 << 30), offset)
        except (OSError, AttributeError):
            done = 0
        if done == 0:  # not supported here, or a short source: the slow way
            data = os.pread(src, min(count, CHUNK), offset)
            if not data:
                raise OSError(5, "spool file shorter than expected")
            write_all(dst, data)
            done = len(data)
        offset += done
        count -= done


def compose(dst, headers, src, size, prefix=None):
    """Write headers, then the size bytes of src with prefix put before the Subject: text.

    Return the headers as written (with a Subject: line added when the
    message had none and prefix is given).
    """
    at = subject_offset(src, size) if prefix else None
    if prefix and at is None:
        headers = headers + b"Subject: " + prefix + b"\n"
    write_all(dst, headers)
    if at is None:
        copy_range(src, dst, 0, size)
    else:
        copy_range(src, dst, 0, at)
        write_all(dst, prefix + b" ")
        copy_range(src, dst, at, size - at)
    return headers
