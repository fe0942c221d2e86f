# SPDX-License-Identifier: ISC
"""throttle's state in a directory: connection slots held as locks, rates in a fixed table.

Layout of DIR (its own directory, owned by the account the connections run as):

    DIR/conn   An empty file.  A live connection holds a write lock (a POSIX
               record lock, fcntl) on one byte for its address and one for
               its network: byte REGION(key) * SLOTS + i is slot i of key.
               The kernel drops the lock when the process ends, however it
               ends, so a killed connection never leaves a count behind.  The
               lock survives exec, as long as its descriptor stays open: the
               descriptor is inheritable.
    DIR/rate   The networks' counts of connections, messages and
               recipients in a table of fixed size (qtools.ratetable).

A check costs the same with ten clients or a million: a few lock calls on
conn, one lock, one pread and one pwrite on rate.  Nothing expires by a
clock: old windows are overwritten, so no cron job is needed.  Files are
opened relative to the directory with O_NOFOLLOW and must be plain files
with one link, so a directory another account can write cannot send root
to another file.
"""

import posix

from qtools import ratetable
from qtools.store import StoreError  # one kind of store failure for every program

SLOTS = 4096  # the highest connection limit; the bytes of one key in conn
KINDS = ("conn", "mail", "rcpt")


class Admission:
    """What admit found: status "ok", "ip", "net" or "rate", and the numbers seen."""

    __slots__ = ("status", "ip", "net", "rate")

    def __init__(self, status, ip=0, net=0, rate=0.0):
        self.status, self.ip, self.net, self.rate = status, ip, net, rate

    def __repr__(self):
        return "Admission(%r, ip=%r, net=%r, rate=%r)" % (self.status, self.ip, self.net, self.rate)


def region(key):
    """Return where key's slots start in conn: a 47-bit hash of key times SLOTS."""
    import zlib

    data = key.encode("utf-8", "surrogateescape")
    return (((zlib.crc32(data) << 32) | zlib.adler32(data)) >> 17) * SLOTS


def _fail(what, path, error):
    from qtools.core import strerror

    return StoreError("unable to %s %s: %s" % (what, path, strerror(error)))


class DirStore:
    """throttle's state in a directory, for the connections of one host."""

    def __init__(self, root):
        self.root = root
        self._fds = {}

    def _open(self, name, create=True):
        """Return a descriptor of root/name: a plain file with one link, never through a symlink.

        Without create, a file that does not exist yet gives None.
        """
        fd = self._fds.get(name)
        if fd is not None:
            return fd
        import stat

        path = self.root + "/" + name
        try:
            top = posix.open(self.root, posix.O_RDONLY | posix.O_DIRECTORY)
        except OSError as error:
            raise _fail("open", self.root, error)
        try:
            # O_NONBLOCK: a FIFO the store's owner put there must not hold
            # root's -q at the open; the check below refuses it.
            flags = (posix.O_NOFOLLOW | posix.O_NONBLOCK
                     | (posix.O_RDWR | posix.O_CREAT if create else posix.O_RDONLY))
            try:
                fd = posix.open(name, flags, 0o644, dir_fd=top)
            except FileNotFoundError:
                if create:
                    raise
                return None
            st = posix.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                posix.close(fd)
                raise StoreError("unable to use %s: not a plain file with one link" % path)
            if create and posix.geteuid() == 0 and st.st_uid == 0:
                # Made by root (tcpserver without -u): the connections'
                # account, the owner of the directory, must keep it writable.
                owner = posix.fstat(top)
                if owner.st_uid != 0:
                    posix.fchown(fd, owner.st_uid, owner.st_gid)
        except OSError as error:
            raise _fail("open", path, error)
        finally:
            posix.close(top)
        self._fds[name] = fd
        return fd

    # --- connection slots ---------------------------------------------------

    def _take(self, fd, key, limit):
        """Lock the first free of key's limit slots; return its number from 1, or 0 if all are held."""
        import fcntl

        base = region(key)
        for i in range(limit):
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, base + i)
                return i + 1
            except (BlockingIOError, PermissionError):
                continue
        return 0

    def _give(self, fd, key, slot):
        import fcntl

        fcntl.lockf(fd, fcntl.LOCK_UN, 1, region(key) + slot - 1)

    def admit(self, ip, net, maxip, maxnet, rate, window, now):
        """Take a slot for ip and one for net, then count a new connection of net.

        A limit of 0 is off.  Return an Admission; when it is "ok" the slots
        are held until this process (or the program it execs) ends.
        """
        ipslot = netslot = 0
        try:
            if maxip or maxnet:
                fd = self._open("conn")
                posix.set_inheritable(fd, True)  # the lock lives as long as the connection
                if maxip:
                    ipslot = self._take(fd, "ip " + ip, maxip)
                    if not ipslot:
                        return Admission("ip", maxip, 0)
                if maxnet:
                    netslot = self._take(fd, "net " + net, maxnet)
                    if not netslot:
                        if ipslot:
                            self._give(fd, "ip " + ip, ipslot)
                        return Admission("net", ipslot, maxnet)
            seen = 0.0
            if rate:
                seen = self.count(net, "conn", rate, window, now)
                if seen >= rate:
                    if ipslot:
                        self._give(fd, "ip " + ip, ipslot)
                    if netslot:
                        self._give(fd, "net " + net, netslot)
                    return Admission("rate", ipslot, netslot, seen)
                seen += 1
        except OSError as error:
            raise _fail("lock", self.root + "/conn", error)
        return Admission("ok", ipslot, netslot, seen)

    def keep(self):
        """Make the held slots last as long as the connection: locks do that alone."""

    # --- rates ----------------------------------------------------------------

    def count(self, net, kind, limit, window, now):
        """Count one more kind ("conn", "mail", "rcpt") for net unless that reaches limit.

        Return the count over the last window seconds before this one; the
        caller refuses when it is limit or more (nothing is counted then).
        """
        fd = self._open("rate")
        try:
            return ratetable.update(fd, net.encode("utf-8", "surrogateescape"), KINDS.index(kind),
                                    limit, window, now)
        except OSError as error:
            raise _fail("update", self.root + "/rate", error)

    # --- the command line ------------------------------------------------------

    def query(self, ip, net, window, now):
        """Return {"ip": holders, "net": holders, "conn"/"mail"/"rcpt": rates} for -q."""
        found = {}
        for name in ("conn", "rate"):
            self._open(name, create=False)
        fd = self._fds.get("conn")
        found["ip"] = _holders(fd, "ip " + ip) if fd is not None else []
        found["net"] = _holders(fd, "net " + net) if fd is not None else []
        fd = self._fds.get("rate")
        rates = (0.0, 0.0, 0.0)
        if fd is not None:
            try:
                rates = ratetable.read(fd, net.encode("utf-8", "surrogateescape"), window, now)
            except OSError as error:
                raise _fail("read", self.root + "/rate", error)
        found.update(zip(KINDS, rates))
        return found

    def idle(self):
        """Let go of what the rest of the connection does not need: the rate table."""
        fd = self._fds.pop("rate", None)
        if fd is not None:
            posix.close(fd)

    def close(self):
        """Close the files; the slots of this process go with the descriptor of conn."""
        for fd in self._fds.values():
            posix.close(fd)
        self._fds = {}


def _holders(fd, key):
    """Return the pids holding key's slots (F_GETLK: nothing is locked by asking)."""
    import fcntl
    import struct

    pids, start, end = [], region(key), region(key) + SLOTS
    while start < end:
        asked = struct.pack("hhqqi", fcntl.F_WRLCK, 0, start, end - start, 0)
        kind, _, at, length, pid = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, asked))
        if kind == fcntl.F_UNLCK:
            break
        pids.append(pid)
        start = at + (length or SLOTS)
    return pids


def open_store(where):
    """Return the store at where: a directory, or a redis://, rediss:// or unix:// URL."""
    if "://" in where:
        scheme = where.split("://", 1)[0]
        if scheme in ("redis", "rediss", "unix"):
            from qtools.throttleredis import RedisStore

            return RedisStore(where)
        raise StoreError("unknown store: %s" % where)
    return DirStore(where)
