# SPDX-License-Identifier: ISC
"""Read and write djb's constant databases (cdb); reading needs the standard library only."""

import posix  # the writers load os; a reader on the connection path need not


def cdb_hash(key):
    """Return djb's cdb hash of key (bytes), 32 bits."""
    h = 5381
    for byte in key:
        h = ((h << 5) + h) & 0xFFFFFFFF ^ byte
    return h


def _u32(data, at):
    return int.from_bytes(data[at : at + 4], "little")


class Reader:
    """A cdb file opened for lookups; first match wins, as in tcpserver.

    Lookups read the file with pread: a handful of system calls cost less
    than loading mmap (a shared library on Debian) on the connection path.
    The file stays open, so a cdb renamed over it later is not seen.
    """

    def __init__(self, path):
        self.path = path
        self._fd = -1  # for close() when the open fails
        fd = posix.open(path, posix.O_RDONLY)
        try:
            size = posix.fstat(fd).st_size
            if size < 2048:
                raise OSError(0, "not a cdb file (shorter than its header)", path)
        except BaseException:
            posix.close(fd)
            raise
        self._fd = fd
        self._size = size

    def _read(self, at, count):
        # pread allocates count bytes before reading: a length read from
        # a crafted file must not ask for more than the file holds.
        return posix.pread(self._fd, min(count, max(self._size - at, 0)), at)

    def close(self):
        if self._fd >= 0:
            posix.close(self._fd)
            self._fd = -1

    # A reader dropped unclosed (a filter's, at the end of a session run
    # in-process) gives its descriptor back.
    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def get_all(self, key):
        """Yield every value stored under key, in insertion order."""
        read = self._read
        h = cdb_hash(key)
        head = read((h & 255) * 8, 8)
        table, slots = _u32(head, 0), _u32(head, 4)
        if not slots:
            return
        slot = (h >> 8) % slots
        for _ in range(slots):
            pair = read(table + slot * 8, 8)
            stored, record = _u32(pair, 0), _u32(pair, 4)
            if not record:
                return
            if stored == h:
                found = read(record, 8 + len(key))  # lengths, then as much key as ours
                klen, dlen = _u32(found, 0), _u32(found, 4)
                if klen == len(key) and found[8:] == key:
                    yield read(record + 8 + klen, dlen)
            slot = (slot + 1) % slots

    def get(self, key, default=None):
        """Return the first value stored under key, or default."""
        for value in self.get_all(key):
            return value
        return default

    def __contains__(self, key):
        return self.get(key) is not None

    def items(self):
        """Yield every (key, value) in file order; raise OSError where the file lies.

        Every length is checked against the file before it is used, so a
        crafted file costs no more than its size (cdbdump's "truncated file").
        """
        end = _u32(self._read(0, 4), 0)  # the first hash table starts after the records
        if not 2048 <= end <= self._size:
            raise self._broken("the records end at %d, past the end of the file" % end)
        data = self._read(0, end)  # read whole: a dump reads them all
        at = 2048
        while at < end:
            if at + 8 > end:
                raise self._broken("a record header at %d runs past the records" % at)
            klen, dlen = _u32(data, at), _u32(data, at + 4)
            start = at + 8
            if klen + dlen > end - start:
                raise self._broken("the record at %d runs past the records" % at)
            yield data[start : start + klen], data[start + klen : start + klen + dlen]
            at = start + klen + dlen

    def _broken(self, why):
        return OSError(0, "not a cdb file (%s)" % why, self.path)


# --- Writing ------------------------------------------------------------------


class Writer:
    """Write a cdb to a binary file, byte for byte as djb's cdbmake does."""

    def __init__(self, out):
        import struct

        self._out = out
        self._pack = struct.Struct("<LL").pack
        self._tables = [[] for _ in range(256)]
        self._pos = 2048
        self._hash = _hasher()
        out.write(b"\0" * 2048)

    def add(self, key, value=b""):
        """Append one record; an earlier record of the same key is found first."""
        h = self._hash(key)
        self._tables[h & 255].append((h, self._pos))
        self._out.write(self._pack(len(key), len(value)) + key + value)
        self._pos += 8 + len(key) + len(value)
        if self._pos > 0xFFFFFFFF:
            raise _too_big()

    def finish(self):
        """Write the hash tables and the header; the file stays open."""
        import struct

        pos = self._pos
        header = []
        for table in self._tables:
            slots = len(table) * 2
            pairs = [0] * (slots * 2)
            for h, record in table:
                # as cdb_make: an empty slot is one without a record position
                # (a key may hash to 0), first in, first probed
                at = (h >> 8) % slots
                while pairs[at * 2 + 1]:
                    at = at + 1 if at + 1 < slots else 0
                pairs[at * 2] = h
                pairs[at * 2 + 1] = record
            header += (pos, slots)
            if slots:
                self._out.write(struct.pack("<%dL" % len(pairs), *pairs))
            pos += slots * 8
            if pos > 0xFFFFFFFF:
                raise _too_big()
        self._out.seek(0)
        self._out.write(struct.pack("<512L", *header))
        self._out.flush()


def _too_big():
    import errno

    return OSError(errno.EFBIG, "a cdb cannot be 4 GiB or larger")


def _hasher():
    """Return the cdb hash function: pure-cdb's C one when present, else ours."""
    try:
        from cdblib import djb_hash
    except ImportError:
        return cdb_hash
    return djb_hash


class _FastWriter:
    """The Writer interface on cdbx's C cdb_make (same bytes, much faster)."""

    def __init__(self, fd):
        import cdbx

        self._maker = cdbx.CDB.make(fd, close=False, mmap=False)
        self.add = self._maker.add

    def finish(self):
        self._maker.commit().close()


def fast_available():
    """Return True when the C-accelerated writer (cdbx) can be imported."""
    try:
        import cdbx  # noqa: F401
    except ImportError:
        return False
    return True


class WriteError(Exception):
    """Writing a cdb failed: the message says what, the old cdb is untouched."""


def _open_tmp(tmp):
    """Open tmp for writing, locked, truncated; only one build writes it at a time."""
    import fcntl
    import os

    while True:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a file system without locks: write as tcprules does
        try:
            # the holder of the lock may have renamed tmp into place meanwhile
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    return fd


def write(path, records, tmp=None, writer="auto", mtime_ns=None):
    """Write records, (key, value) pairs, to the cdb path atomically; return their number.

    The data goes to tmp (default path.tmp, same directory), is synced and
    then renamed over path.  If anything fails, including the records
    iterator raising, tmp is removed, path is left as it was and the
    exception (WriteError for our own I/O) propagates.  writer is "fast"
    (cdbx), "pure" or "auto" (fast when installed); mtime_ns, if given, is
    stamped on the new file.
    """
    import os

    from qtools.core import strerror

    tmp = tmp or path + ".tmp"
    try:
        fd = _open_tmp(tmp)
    except OSError as error:
        raise WriteError("unable to create %s: %s" % (tmp, strerror(error)))
    count = 0
    out = None
    try:
        try:
            if writer == "fast" or (writer == "auto" and fast_available()):
                maker = _FastWriter(fd)
            else:
                out = open(fd, "wb", closefd=False, buffering=1 << 16)
                maker = Writer(out)
            # The loop runs in C (starmap drained by a deque); zip pulls
            # the counter only after a record was added.
            from collections import deque
            from itertools import count as counter, starmap

            counted = counter()
            deque(zip(starmap(maker.add, records), counted), maxlen=0)
            count = next(counted)
            maker.finish()
            if out is not None:
                out.close()
                out = None
            os.fsync(fd)
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
        except OSError as error:
            raise WriteError("unable to write to %s: %s" % (tmp, strerror(error)))
        try:
            os.rename(tmp, path)
        except OSError as error:
            raise WriteError("unable to move %s to %s: %s" % (tmp, path, strerror(error)))
    except BaseException:
        if out is not None:
            try:
                out.close()  # before fd goes: a later flush must not hit a reused fd
            except (OSError, ValueError):
                pass
        try:
            os.unlink(tmp)
        except OSError:
            pass
        os.close(fd)
        raise
    os.close(fd)  # after the rename: the lock covers it
    _sync_directory(path)
    return count


def _sync_directory(path):
    """Make the rename durable; a failure here loses nothing already visible."""
    import os

    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_or_warn(path, prog):
    """Return a Reader for path, or None after "prog: warning: unable to open path: ..."."""
    from qtools import core

    try:
        return Reader(path)
    except OSError as error:
        core.warn(prog, "unable to open %s: %s" % (path, core.strerror(error)))
        return None
