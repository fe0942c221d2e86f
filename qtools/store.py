# SPDX-License-Identifier: ISC
"""Greylist state: the timer rules every store follows, and the directory store.

The timers (this is the one place they are defined):

    delay     A key seen for the first time is deferred until delay seconds
              have passed.  Retries before that are deferred too and never
              move the first-seen time.
    window    A key that has not retried after the delay within window
              seconds of being first seen is forgotten: its next connection
              starts the clock anew.
    lifetime  A key that retried after the delay (or was allowed) passes for
              lifetime seconds after its last accepted connection; every
              accepted connection starts the lifetime anew.

A store (a subclass of Store) offers check(key, now) -> State as one atomic
step on the connection path, and passed, peek, allow, deny, forget, items and
purge; keys are text.  State.status is one of:

    new    unknown (or forgotten) until now, first seen now: defer
    wait   seen before, the delay is not over: defer, State.left seconds to go
    pass   retried after the delay: passes from now on
    known  passed before, its lifetime refreshed now
"""

import os


class Timers:
    """The three greylisting timers, in seconds."""

    __slots__ = ("delay", "window", "lifetime")

    def __init__(self, delay=300, window=86400, lifetime=36 * 86400):
        self.delay = delay
        self.window = window
        self.lifetime = lifetime


class State:
    """What a store knows about a key: status, first seen, last pass, wait left."""

    __slots__ = ("status", "first", "last", "left")

    def __init__(self, status, first=None, last=None, left=0):
        self.status = status
        self.first = first
        self.last = last
        self.left = left

    @property
    def defer(self):
        return self.status in ("new", "wait")

    def __repr__(self):
        return "State(%r, first=%r, last=%r, left=%r)" % (
            self.status, self.first, self.last, self.left)

    def __eq__(self, other):
        return isinstance(other, State) and (
            (self.status, self.first, self.last, self.left)
            == (other.status, other.first, other.last, other.left))


def waiting(first, now, timers):
    """Return the State of an unproven key first seen at first."""
    # A concurrent connection's first sight may be a moment after ours.
    left = min(first + timers.delay - now, timers.delay)
    if left > 0:
        return State("wait", first, left=left)
    return State("pass", first, last=now)


class StoreError(Exception):
    """The store cannot be read or written; the message says what failed."""


class Store:
    """The interface every store implements; times are seconds since the epoch."""

    def __init__(self, where, timers=None):
        self.timers = timers or Timers()

    def check(self, key, now):
        """Apply the timers to key at time now in one atomic step; return its State."""
        raise NotImplementedError

    def passed(self, key, now):
        """Refresh key and return True if it passed and is alive; else change nothing."""
        raise NotImplementedError

    def peek(self, key, now):
        """Return the State check would return, changing nothing."""
        raise NotImplementedError

    def allow(self, key, now):
        """Let key pass from now on, for one lifetime."""
        raise NotImplementedError

    def deny(self, key, now):
        """Take key's pass away: it is greylisted anew from now."""
        raise NotImplementedError

    def forget(self, key, now):
        """Remove everything the store knows about key."""
        raise NotImplementedError

    def items(self, now):
        """Yield (key, State) for every live key, each once."""
        raise NotImplementedError

    def purge(self, now):
        """Remove dead state, safely while connections are served (a no-op where it expires alone)."""
        raise NotImplementedError

    def close(self):
        """Let go of what the store holds open (a connection to a server)."""


# Bytes kept as they are in file names; every other byte is written %XX.
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_@+,:")
_LONG = 200


def file_name(key):
    """Return the file name of key: readable when short, else "=" and a hash."""
    raw = key.encode("utf-8", "surrogateescape")
    name = "".join(chr(b) if b in _SAFE else "%%%02X" % b for b in raw)
    if name[:1] in (".", "="):  # temporary files, "." and "..", hashed names
        name = "%%%02X" % ord(name[0]) + name[1:]
    if len(name) <= _LONG:
        return name
    import hashlib

    return "=" + hashlib.sha256(raw).hexdigest()


def key_of(name):
    """Return the key of a readable file name (the inverse of file_name)."""
    raw = bytearray()
    i = 0
    while i < len(name):
        if name[i] == "%":
            raw.append(int(name[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(name[i]))
            i += 1
    return raw.decode("utf-8", "surrogateescape")


class DirStore(Store):
    """Greylist state in a directory, safe for many concurrent connections.

    Layout:
        DIR/grey/END/XX/NAME   unproven keys; mtime = first seen
        DIR/pass/END/XX/NAME   passed keys; mtime = last accepted connection
    Each END directory is a generation: the keys written during one window
    (grey) or one lifetime (pass), so nothing in it is alive at time END or
    later.  A lookup looks only at the current and the previous generation;
    a passed key found in the previous one is renamed into the current one.
    purge removes whole dead generations and never stats an entry.  XX (two
    hex digits of a hash of NAME) keeps directories small.  Every change is
    one atomic system call (link of a complete entry, utime, rename), so
    there is no read-modify-write window between concurrent connections.  Changing the
    window or the lifetime starts new generations: the old keys are no
    longer seen and are purged in time.
    """

    def __init__(self, root, timers=None):
        super().__init__(root, timers)
        self.root = root

    # --- paths --------------------------------------------------------------

    def _path(self, tree, now, age, name):
        period = self.timers.window if tree == "grey" else self.timers.lifetime
        end = (int(now // period) + 2 - age) * period
        import zlib

        fan = "%02x" % (zlib.crc32(name.encode()) & 255)
        return os.path.join(self.root, tree, str(end), fan, name)

    def _fail(self, what, path, error):
        from qtools.core import strerror

        return StoreError("unable to %s %s: %s" % (what, path, strerror(error)))

    def _mkdirs(self, path):
        # Create tree/END/XX below the root, never the root itself: a
        # missing root is a misconfiguration to report, not to repair.
        parts = os.path.relpath(os.path.dirname(path), self.root).split(os.sep)
        for i in range(1, len(parts) + 1):
            directory = os.path.join(self.root, *parts[:i])
            try:
                os.mkdir(directory, 0o755)
            except FileExistsError:
                continue
            except OSError as error:
                raise self._fail("create", directory, error)
            self._own(directory)

    def _own(self, path):
        # Entries made by root from the command line must stay writable by
        # the account the connections run as: the owner of the root.
        if os.geteuid() == 0:
            st = os.stat(self.root)
            if st.st_uid != 0:
                os.chown(path, st.st_uid, st.st_gid)

    def _write(self, path, now, key, hashed, fresh=False):
        """Create (a new file if fresh) or open path and set its mtime to now."""
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if fresh else 0)
        for _ in range(3):
            try:
                fd = os.open(path, flags, 0o644)
                break
            except FileNotFoundError:
                self._mkdirs(path)
            except FileExistsError:  # left by a crash, maybe linked already
                self._unlink(path)
            except OSError as error:
                raise self._fail("create", path, error)
        else:
            raise self._fail("create", path, FileNotFoundError(2, "No such file or directory"))
        try:
            if hashed:  # the name cannot give the key back: keep it inside
                os.write(fd, key.encode("utf-8", "surrogateescape"))
            os.utime(fd, (now, now))
        except OSError as error:
            raise self._fail("write", path, error)
        finally:
            os.close(fd)
        self._own(path)

    def _temp(self, path, now, key):
        """Write a complete entry for path under a temporary name; return it."""
        import _thread

        temp = os.path.join(
            os.path.dirname(path), ".tmp.%d.%d" % (os.getpid(), _thread.get_ident()))
        self._write(temp, now, key, os.path.basename(path).startswith("="), fresh=True)
        return temp

    def _create(self, path, now, key):
        """Create path with mtime now; return False when it exists already.

        The entry is complete before link() makes it visible, so a
        concurrent reader never sees it with the time of its creation
        instead of now; link() fails if the name exists, also over NFS.
        """
        temp = self._temp(path, now, key)
        try:
            os.link(temp, path)
            return True
        except FileExistsError:
            # Over NFS a link whose reply was lost is retried and fails
            # with EEXIST although it was made: the link count tells.
            return os.stat(temp).st_nlink == 2
        except OSError as error:
            raise self._fail("link", temp, error)
        finally:
            self._unlink(temp)

    def _replace(self, path, now, key):
        """Put a new entry with mtime now at path, whatever was there."""
        temp = self._temp(path, now, key)
        try:
            os.rename(temp, path)
        except OSError as error:
            self._unlink(temp)
            raise self._fail("rename", temp, error)

    def _mtime(self, path):
        try:
            return os.stat(path).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise self._fail("stat", path, error)

    # --- the connection path ------------------------------------------------

    def _passed(self, name, now, refresh):
        """Return the last pass of name if alive, refreshing it when asked."""
        current = self._path("pass", now, 0, name)
        if refresh:
            try:
                os.utime(current, (now, now))
                return now
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as error:
                raise self._fail("update", current, error)
        else:
            last = self._mtime(current)
            if last is not None:
                return last
        previous = self._path("pass", now, 1, name)
        last = self._mtime(previous)
        if last is None or now >= last + self.timers.lifetime:
            return None
        if not refresh:
            return last
        try:
            os.rename(previous, current)
        except FileNotFoundError:
            # Moved by a concurrent connection (or never had a directory).
            self._mkdirs(current)
            try:
                os.rename(previous, current)
            except FileNotFoundError:
                pass
        except OSError as error:
            raise self._fail("rename", previous, error)
        try:
            os.utime(current, (now, now))
        except OSError as error:
            raise self._fail("update", current, error)
        return now

    def _first(self, name, now):
        """Return the first-seen time of name's unproven entry if alive."""
        for age in (0, 1):
            first = self._mtime(self._path("grey", now, age, name))
            if first is not None and now < first + self.timers.window:
                return first
        return None

    def passed(self, key, now):
        """Refresh key and return True if it passed and is alive; else change nothing."""
        return self._passed(file_name(key), now, refresh=True) is not None

    def check(self, key, now):
        """Apply the timers to key at time now, atomically; return its State."""
        name = file_name(key)
        last = self._passed(name, now, refresh=True)
        if last is not None:
            return State("known", last=last)
        first = self._first(name, now)
        if first is None:
            path = self._path("grey", now, 0, name)
            if self._create(path, now, key):
                return State("new", now, left=self.timers.delay)
            # Created by a concurrent connection just now (its first-seen
            # time may be a little later than ours), or made stale by a
            # clock set back.
            first = self._mtime(path)
            if first is None or now >= first + self.timers.window:
                self._replace(path, now, key)
                return State("new", now, left=self.timers.delay)
        state = waiting(first, now, self.timers)
        if state.status == "pass":
            # A complete entry renamed into place: a crash never leaves a
            # pass entry without the key a hashed name keeps inside.
            self._replace(self._path("pass", now, 0, name), now, key)
        return state

    # --- the command line and cron -------------------------------------------

    def peek(self, key, now):
        """Return the State check would return, changing nothing."""
        name = file_name(key)
        last = self._passed(name, now, refresh=False)
        if last is not None:
            return State("known", last=last)
        first = self._first(name, now)
        if first is None:
            return State("new", now, left=self.timers.delay)
        return waiting(first, now, self.timers)

    def allow(self, key, now):
        """Let key pass from now on, for one lifetime."""
        self._replace(self._path("pass", now, 0, file_name(key)), now, key)

    def deny(self, key, now):
        """Take key's pass away: it is greylisted anew from now."""
        name = file_name(key)
        for age in (0, 1):
            self._unlink(self._path("pass", now, age, name))
        self._replace(self._path("grey", now, 0, name), now, key)

    def forget(self, key, now):
        """Remove everything the store knows about key."""
        name = file_name(key)
        for tree in ("pass", "grey"):
            for age in (0, 1):
                self._unlink(self._path(tree, now, age, name))

    def _unlink(self, path):
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as error:
            raise self._fail("remove", path, error)

    def _entries(self, tree):
        top = os.path.join(self.root, tree)
        try:
            ends = sorted(os.listdir(top), reverse=True)
        except FileNotFoundError:
            return
        for end in ends:
            try:
                fans = os.listdir(os.path.join(top, end))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for fan in fans:
                directory = os.path.join(top, end, fan)
                try:
                    names = os.listdir(directory)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for name in names:
                    if not name.startswith("."):
                        yield os.path.join(directory, name), name

    def items(self, now):
        """Yield (key, State) for every live key, passed keys first."""
        seen = set()
        for tree in ("pass", "grey"):
            for path, name in self._entries(tree):
                if name in seen:
                    continue
                seen.add(name)
                state = self.peek(self._read_key(path, name), now)
                if state.status != "new":
                    yield self._read_key(path, name), state

    def _read_key(self, path, name):
        if not name.startswith("="):
            return key_of(name)
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "surrogateescape")
        except OSError:
            return name

    def purge(self, now):
        """Remove every dead generation; return the number of entries removed."""
        if not os.path.isdir(self.root):  # a mistyped name in a crontab
            raise self._fail("open", self.root, FileNotFoundError(2, "No such file or directory"))
        removed = 0
        for tree in ("grey", "pass"):
            top = os.path.join(self.root, tree)
            try:
                ends = os.listdir(top)
            except FileNotFoundError:
                continue
            except OSError as error:
                raise self._fail("read", top, error)
            for end in ends:
                if end.isdigit() and int(end) <= now:
                    removed += self._remove_tree(os.path.join(top, end))
        return removed

    def _remove_tree(self, top):
        """Remove the directory top and all below it; return the entries removed."""
        # Names relative to an open directory spare the path walks, and
        # nothing is statted: a name that is a directory fails to unlink.
        removed = 0
        try:
            fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:  # a concurrent purge got there first
            return 0
        except OSError as error:
            raise self._fail("open", top, error)
        try:
            for name in os.listdir(fd):
                try:
                    os.unlink(name, dir_fd=fd)
                    removed += not name.startswith(".")
                except FileNotFoundError:
                    pass
                except (IsADirectoryError, PermissionError):
                    removed += self._remove_tree(os.path.join(top, name))
            os.rmdir(top)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise self._fail("remove", top, error)
        finally:
            os.close(fd)
        return removed


def open_store(where, timers):
    """Return the store at where: a directory, or a URL of another store."""
    if "://" in where:
        scheme = where.split("://", 1)[0]
        if scheme in ("redis", "rediss", "unix"):
            from qtools.redisstore import RedisStore

            return RedisStore(where, timers)
        raise StoreError("unknown store: %s" % where)
    return DirStore(where, timers)


def _when(t):
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def describe(key, state):
    """Return one line of `greylist -q` output for key."""
    parts = [key, state.status]
    if state.first is not None and state.status != "new":
        parts.append("first=" + _when(state.first))
    if state.last is not None:
        parts.append("last=" + _when(state.last))
    if state.defer:
        parts.append("left=%d" % -(-state.left // 1))
    return " ".join(parts)


def admin(letter, store, keys, now, write):
    """Run a command-line request: P purge, q query, A allow, D deny.

    keys are store keys; write(line) prints a line.  Return the exit code.
    """
    if letter == "P":
        if keys:
            return 100
        store.purge(now)  # silent, as a cron job should be when all is well
    elif letter == "q":
        if keys:
            for key in keys:
                write(describe(key, store.peek(key, now)))
        else:
            for key, state in store.items(now):
                write(describe(key, state))
    elif not keys:
        return 100
    else:
        for key in keys:
            (store.allow if letter == "A" else store.deny)(key, now)
            write(describe(key, store.peek(key, now)))
    return 0
