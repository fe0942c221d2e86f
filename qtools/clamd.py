# SPDX-License-Identifier: ISC
"""A clamd client: zINSTREAM, the message sent in length-prefixed chunks.

clamd(8) is the reference: the command ends with a NUL, each chunk is a
4-byte big-endian length and the data, a zero length ends the stream, and
the one answer ends with a NUL.  A message over clamd's StreamMaxLength
gets "INSTREAM size limit exceeded. ERROR" and the connection closed,
possibly while chunks are still being sent: that is a message too big to
scan (kind "toobig"), not a failure of clamd.
"""

from qtools.scansock import Connection, ScanError, parse_address

ANSWER_LIMIT = 4096
TOO_BIG = b"INSTREAM size limit exceeded"


def address(text):
    """Return the parsed $QTOOLS_CLAMD (raise ValueError); clamd has no usual port."""
    return parse_address(text, 3310)


def frame(chunk):
    """Return chunk as one INSTREAM chunk: its length in 4 bytes, big-endian, then the data."""
    return len(chunk).to_bytes(4, "big") + chunk


def parse(answer):
    """Return None for a clean stream or the signature name; raise ScanError otherwise."""
    text = answer.rstrip(b"\0\n")
    if text.startswith(b"stream:"):
        verdict = text[7:].strip()
        if verdict == b"OK":
            return None
        if verdict.endswith(b" FOUND") and len(verdict) > 6:
            return verdict[:-6].decode("utf-8", "replace").strip()
        if verdict.endswith(b" ERROR"):
            raise ScanError("error", "clamd said: %s" % _shown(verdict))
    if TOO_BIG in text:
        raise ScanError("toobig", "message over clamd's StreamMaxLength")
    if not text:
        raise ScanError("closed", "connection closed without an answer")
    raise ScanError("protocol", "not an INSTREAM answer: %s" % _shown(text))


def _shown(data):
    return data[:80].decode("latin-1")


def scan(addr, fd, size, timeout, clock=None):
    """Return None (clean) or the signature clamd found in the size bytes spooled in fd.

    Raise ScanError when clamd gives no verdict.
    """
    extra = {} if clock is None else {"clock": clock}
    with Connection(addr, timeout, **extra) as conn:
        conn.send(b"zINSTREAM\0")
        try:
            conn.send_file(fd, size, frame)
            conn.send(b"\0\0\0\0")
        except ScanError as error:
            if error.kind != "closed":
                raise
            # clamd may have answered (size limit) and closed: read it.
            try:
                answer = conn.read_until(b"\0", ANSWER_LIMIT)
            except ScanError:
                raise error from None
            if TOO_BIG in answer:
                return parse(answer)
            raise
        return parse(conn.read_until(b"\0", ANSWER_LIMIT))


def version(addr, timeout):
    """Return clamd's answer to zVERSION (raise ScanError)."""
    with Connection(addr, timeout) as conn:
        conn.send(b"zVERSION\0")
        answer = conn.read_until(b"\0", ANSWER_LIMIT)
    if not answer.startswith(b"ClamAV "):
        raise ScanError("protocol", "not a VERSION answer: %s" % _shown(answer))
    return answer.decode("utf-8", "replace")
