# SPDX-License-Identifier: ISC
"""qtools-queue's quarantine: a maildir of held messages, each carrying its envelope.

A held message is the message as it would have been delivered, under a
block of X-Qtools-* header lines: the first says how many lines the block
has and why the message is held, the others give the client, the date and
the envelope (sender and each recipient in xtext, RFC 3461, so any byte of
an address comes back unchanged).  Nothing else is needed to release it.

Delivery is maildir(5)'s: a new file in tmp/ (mode 0600), written and
fsynced, linked into new/, unlinked from tmp/.  A release first renames
the file away from new/ (or cur/), so two releases of one message cannot
both queue it, then queues the message with qmail-queue and removes it.
"""

import os
import time

FIRST = b"X-Qtools-Quarantined: "
BLOCK_LIMIT = 1 << 24  # 16 MiB of envelope: a million recipients


class QuarantineError(Exception):
    """A held message cannot be read, or the maildir cannot be written."""


def xtext(address):
    """Return the bytes of address as RFC 3461 xtext."""
    return b"".join(bytes([c]) if 33 <= c <= 126 and c not in b"+=" else b"+%02X" % c
                    for c in address)


def unxtext(text):
    """Return the bytes xtext stands for (raise ValueError)."""
    out, i = bytearray(), 0
    while i < len(text):
        if text[i:i + 1] == b"+":
            pair = text[i + 1:i + 3]
            if len(pair) != 2 or not pair.isalnum():
                raise ValueError("bad xtext escape")
            out.append(int(pair, 16))
            i += 3
        else:
            out += text[i:i + 1]
            i += 1
    return bytes(out)


def block(sender, recipients, why, client_ip, now=None):
    """Return the X-Qtools-* header block for a held message."""
    now = time.time() if now is None else now
    lines = [b"X-Qtools-Client: " + client_ip.encode("ascii", "replace"),
             b"X-Qtools-Date: " + time.strftime("%a, %d %b %Y %H:%M:%S +0000",
                                                time.gmtime(now)).encode(),
             b"X-Qtools-Envelope-From: " + xtext(sender)]
    lines += [b"X-Qtools-Envelope-To: " + xtext(r) for r in recipients]
    from qtools.core import clean

    first = FIRST + b"%d lines; %s" % (len(lines) + 1, clean(why, 900).encode("ascii"))
    return b"".join(line + b"\n" for line in [first] + lines)


def read_block(fd):
    """Return (headers dict of lists, byte offset of the message) from a held file's top."""
    data, offset = b"", 0
    head = os.pread(fd, 4096, 0)
    if not head.startswith(FIRST):
        raise QuarantineError("not a quarantined message")
    try:
        count = int(head[len(FIRST):].split(b" ", 1)[0])
    except ValueError:
        raise QuarantineError("bad X-Qtools-Quarantined line") from None
    fields, lines = {}, 0
    while lines < count:
        end = data.find(b"\n")
        if end < 0:
            more = os.pread(fd, 65536, offset + len(data))
            if not more or len(data) > BLOCK_LIMIT:
                raise QuarantineError("quarantine header block cut short")
            data += more
            continue
        line, data = data[:end], data[end + 1:]
        offset += end + 1
        name, colon, value = line.partition(b": ")
        if not colon or not name.startswith(b"X-Qtools-"):
            raise QuarantineError("bad quarantine header line")
        fields.setdefault(name[9:].decode("ascii", "replace"), []).append(value)
        lines += 1
    return fields, offset


def envelope_of(fields):
    """Return (sender, recipients) from a read block (raise QuarantineError)."""
    try:
        (sender,) = fields.get("Envelope-From", [None, None])
        recipients = [unxtext(r) for r in fields.get("Envelope-To", [])]
        sender = unxtext(sender)
    except ValueError:
        raise QuarantineError("bad envelope in the quarantine header block") from None
    if not recipients:
        raise QuarantineError("no recipient in the quarantine header block")
    return sender, recipients


_seq = [0]


def unique_name(now=None):
    """Return a maildir file name: time, delivery id (microseconds, pid, sequence), host."""
    now = time.time() if now is None else now
    host = os.uname().nodename.replace("/", "\\057").replace(":", "\\072")
    _seq[0] += 1
    return "%d.M%dP%dQ%d.%s" % (now, (now % 1) * 1e6, os.getpid(), _seq[0], host)


def deliver(maildir, write):
    """Deliver into maildir: write(fd) fills the new file; return the name in new/."""
    for _ in range(5):
        name = unique_name()
        tmp = os.path.join(maildir, "tmp", name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            time.sleep(0.01)
            continue
        except OSError as error:
            raise QuarantineError("unable to create %s: %s" % (tmp, _strerror(error))) from None
        try:
            try:
                write(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, os.path.join(maildir, "new", name))
        except OSError as error:
            raise QuarantineError("unable to deliver to %s: %s" % (maildir, _strerror(error))) from None
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return name
    raise QuarantineError("unable to find a free name in %s/tmp" % maildir)


def held(maildir):
    """Return the paths of the held messages in new/ and cur/, oldest first."""
    paths = []
    for sub in ("new", "cur"):
        directory = os.path.join(maildir, sub)
        paths += [os.path.join(directory, n) for n in os.listdir(directory) if not n.startswith(".")]
    return sorted(paths, key=lambda p: os.path.basename(p))


def resolve(name, maildir):
    """Return the path of held message name: a path, or a file name looked up in maildir."""
    if "/" in name:
        return name
    if maildir:
        for sub in ("new", "cur"):
            path = os.path.join(maildir, sub, name)
            if os.path.exists(path):
                return path
    return name


def claim(path):
    """Move a held message out of new/ or cur/ into the maildir's tmp/; return the new path.

    Raise QuarantineError when it is gone (released or deleted meanwhile).
    """
    directory, name = os.path.split(os.path.abspath(path))
    top, sub = os.path.split(directory)
    target = os.path.join(top, "tmp", name + ".release") if sub in ("new", "cur") else path + ".release"
    try:
        os.rename(path, target)
    except OSError as error:
        raise QuarantineError("unable to take %s: %s" % (path, _strerror(error))) from None
    return target


def _strerror(error):
    from qtools.core import strerror

    return strerror(error)
