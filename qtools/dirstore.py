# SPDX-License-Identifier: ISC
"""The directory store: greylist state in a directory, safe for root to administer.

The timers and the Store interface it implements are store.py's.
"""

import os

from qtools.dircount import PassCount
from qtools.store import State, Store, StoreError, waiting


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


# Directories below the root are opened one name at a time, relative to
# the one above, never through a symbolic link: the store's owner cannot
# send root (greylist -P, -A, -D from cron or a shell) outside the store.
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DEPTH = 3  # END/XX/NAME: purge goes no deeper than that below a generation


class DirStore(PassCount, Store):
    """Greylist state in a directory, safe for many concurrent connections.

    Layout:
        DIR/grey/END/XX/NAME   unproven keys; mtime = first seen
        DIR/pass/END/XX/NAME   passed keys; mtime = last accepted connection
        DIR/count/END/XX/NAME/N  the passes counted (dircount.py)
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

    The directory is writable by the account the connections run as, and
    root may run the command line on it: every name below DIR is used
    relative to an open directory, opened without following a symbolic
    link, and what root creates is given away with fchown on the open
    file, never by name.
    """

    def __init__(self, root, timers=None):
        super().__init__(root, timers)
        self.root = root
        self._fd = self._owner = None

    # --- paths and directories ----------------------------------------------

    def _place(self, tree, now, age, name):
        """Return the directories (tree, END, XX) of name's entry, as a tuple."""
        period = self.timers.window if tree == "grey" else self.timers.lifetime
        end = (int(now // period) + 2 - age) * period
        import zlib

        return tree, str(end), "%02x" % (zlib.crc32(name.encode()) & 255)

    def _path(self, tree, now, age, name):
        """Return the path of name's entry, for messages."""
        return os.path.join(self.root, *self._place(tree, now, age, name), name)

    def _fail(self, what, path, error):
        from qtools.core import strerror

        return StoreError("unable to %s %s: %s" % (what, path, strerror(error)))

    def _root(self):
        """Return the open root directory (the admin's path: it may be a link)."""
        if self._fd is None:
            try:
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as error:
                # A missing root is a misconfiguration to report, not to repair.
                raise self._fail("open", self.root, error)
            st = os.fstat(fd)
            # Entries made by root from the command line must stay writable
            # by the account the connections run as: the owner of the root.
            if os.geteuid() == 0 and st.st_uid != 0:
                self._owner = (st.st_uid, st.st_gid)
            self._fd = fd
        return self._fd

    def close(self):
        """Let go of the open root directory."""
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    __del__ = close  # a store dropped unclosed (a filter's, at the session's end)

    def _own(self, fd):
        if self._owner is not None:
            os.fchown(fd, *self._owner)

    def _open(self, parts, create=False):
        """Return an open descriptor of DIR/parts..., or None when missing and not create."""
        fd = self._root()
        for i, part in enumerate(parts):
            made = False
            try:
                try:
                    below = os.open(part, _DIRECTORY, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        return None
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        made = True
                    except FileExistsError:  # a concurrent connection made it
                        pass
                    below = os.open(part, _DIRECTORY, dir_fd=fd)
                    if made:
                        try:
                            self._own(below)
                        except OSError:
                            os.close(below)
                            raise
            except OSError as error:
                if isinstance(error, NotADirectoryError) and not create:
                    return None
                path = os.path.join(self.root, *parts[: i + 1])
                raise self._fail("create" if made or create else "open", path, error)
            finally:
                if fd != self._fd:
                    os.close(fd)
            fd = below
        return fd

    # --- entries --------------------------------------------------------------

    def _temp(self, fd, parts, name, now, key):
        """Write a complete entry for name under a temporary name in fd; return it."""
        import _thread

        temp = ".tmp.%d.%d" % (os.getpid(), _thread.get_ident())
        path = os.path.join(self.root, *parts, temp)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(2):
            try:
                out = os.open(temp, flags, 0o644, dir_fd=fd)
                break
            except FileExistsError:  # left by a crash, maybe linked already
                self._remove(fd, temp, parts)
            except OSError as error:
                raise self._fail("create", path, error)
        else:
            raise self._fail("create", path, FileExistsError(17, "File exists"))
        try:
            self._own(out)
            if name.startswith("="):  # the name cannot give the key back: keep it inside
                os.write(out, key.encode("utf-8", "surrogateescape"))
            os.utime(out, (now, now))
        except OSError as error:
            self._remove(fd, temp, parts)
            raise self._fail("write", path, error)
        finally:
            os.close(out)
        return temp

    def _create(self, parts, name, now, key):
        """Create the entry name with mtime now; return False when it exists already.

        The entry is complete before link() makes it visible, so a
        concurrent reader never sees it with the time of its creation
        instead of now; link() fails if the name exists, also over NFS.
        """
        fd = self._open(parts, create=True)
        try:
            temp = self._temp(fd, parts, name, now, key)
            try:
                os.link(temp, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
                return True
            except FileExistsError:
                # Over NFS a link whose reply was lost is retried and fails
                # with EEXIST although it was made: the link count tells.
                return os.stat(temp, dir_fd=fd, follow_symlinks=False).st_nlink == 2
            except OSError as error:
                raise self._fail("link", os.path.join(self.root, *parts, temp), error)
            finally:
                self._remove(fd, temp, parts)
        finally:
            os.close(fd)

    def _replace(self, parts, name, now, key):
        """Put a new entry with mtime now at name, whatever was there."""
        fd = self._open(parts, create=True)
        try:
            temp = self._temp(fd, parts, name, now, key)
            try:
                os.rename(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except OSError as error:
                self._remove(fd, temp, parts)
                raise self._fail("rename", os.path.join(self.root, *parts, temp), error)
        finally:
            os.close(fd)

    def _remove(self, fd, name, parts=()):
        try:
            os.unlink(name, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as error:
            raise self._fail("remove", os.path.join(self.root, *parts, name), error)

    def _unlink(self, parts, name):
        fd = self._open(parts)
        if fd is not None:
            try:
                self._remove(fd, name, parts)
            finally:
                os.close(fd)

    def _mtime(self, parts, name):
        """Return the mtime of the entry name (not of what a link points to), or None."""
        fd = self._open(parts)
        if fd is None:
            return None
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise self._fail("stat", os.path.join(self.root, *parts, name), error)
        finally:
            os.close(fd)

    # --- the connection path ------------------------------------------------

    def _passed(self, name, now, refresh):
        """Return the last pass of name if alive, refreshing it when asked."""
        current = self._place("pass", now, 0, name)
        if refresh:
            fd = self._open(current)
            try:
                if fd is not None:
                    os.utime(name, (now, now), dir_fd=fd, follow_symlinks=False)
                    return now
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as error:
                raise self._fail("update", self._path("pass", now, 0, name), error)
            finally:
                if fd is not None:
                    os.close(fd)
        else:
            last = self._mtime(current, name)
            if last is not None:
                return last
        previous = self._place("pass", now, 1, name)
        last = self._mtime(previous, name)
        if last is None or now >= last + self.timers.lifetime:
            return None
        if not refresh:
            return last
        source = self._open(previous)
        if source is None:  # removed by a concurrent purge
            return None
        try:
            target = self._open(current, create=True)
            try:
                os.rename(name, name, src_dir_fd=source, dst_dir_fd=target)
                os.utime(name, (now, now), dir_fd=target, follow_symlinks=False)
            except FileNotFoundError:
                pass  # moved by a concurrent connection, which refreshed it
            except OSError as error:
                raise self._fail("update", self._path("pass", now, 0, name), error)
            finally:
                os.close(target)
        finally:
            os.close(source)
        return now

    def _first(self, name, now):
        """Return the first-seen time of name's unproven entry if alive."""
        for age in (0, 1):
            first = self._mtime(self._place("grey", now, age, name), name)
            if first is not None and now < first + self.timers.window:
                return first
        return None

    def passed(self, key, now, most=0):
        """Refresh key and return its State if it passed and is alive; else change nothing, None."""
        name = file_name(key)
        last = self._passed(name, now, refresh=True)
        if last is None:
            return None
        return State("known", last=last, passes=self._count(name, now, most, key) if most else 0)

    def check(self, key, now, most=0):
        """Apply the timers to key at time now, atomically; return its State."""
        name = file_name(key)
        last = self._passed(name, now, refresh=True)
        if last is not None:
            return State("known", last=last,
                         passes=self._count(name, now, most, key) if most else 0)
        first = self._first(name, now)
        if first is None:
            grey = self._place("grey", now, 0, name)
            if self._create(grey, name, now, key):
                return State("new", now, left=self.timers.delay)
            # Created by a concurrent connection just now (its first-seen
            # time may be a little later than ours), or made stale by a
            # clock set back.
            first = self._mtime(grey, name)
            if first is None or now >= first + self.timers.window:
                self._replace(grey, name, now, key)
                return State("new", now, left=self.timers.delay)
        state = waiting(first, now, self.timers)
        if state.status == "pass":
            # A complete entry renamed into place: a crash never leaves a
            # pass entry without the key a hashed name keeps inside.
            self._replace(self._place("pass", now, 0, name), name, now, key)
            if most:
                state.passes = self._count(name, now, most, key)
        return state

    # --- the command line and cron -------------------------------------------

    def peek(self, key, now):
        """Return the State check would return, changing nothing."""
        self._root()  # a store that is not there is an error, not an empty store
        name = file_name(key)
        last = self._passed(name, now, refresh=False)
        if last is not None:
            fd, parts = self._count_dir(name, now, move=False)
            return State("known", last=last, passes=self._read_count(fd, parts, name, now)[0])
        first = self._first(name, now)
        if first is None:
            return State("new", now, left=self.timers.delay)
        return waiting(first, now, self.timers)

    def allow(self, key, now):
        """Let key pass from now on, for one lifetime."""
        name = file_name(key)
        self._replace(self._place("pass", now, 0, name), name, now, key)

    def deny(self, key, now):
        """Take key's pass away: it is greylisted anew from now."""
        name = file_name(key)
        for age in (0, 1):
            self._unlink(self._place("pass", now, age, name), name)
        self._drop_count(name, now)
        self._replace(self._place("grey", now, 0, name), name, now, key)

    def forget(self, key, now):
        """Remove everything the store knows about key."""
        name = file_name(key)
        for tree in ("pass", "grey"):
            for age in (0, 1):
                self._unlink(self._place(tree, now, age, name), name)
        self._drop_count(name, now)

    def _list(self, fd, parts):
        try:
            return os.listdir(fd)
        except OSError as error:
            raise self._fail("read", os.path.join(self.root, *parts), error)

    def _entries(self, tree):
        """Yield (open directory, name) for every entry of tree, newest generation first."""
        top = self._open((tree,))
        if top is None:
            return
        try:
            for end in sorted(self._list(top, (tree,)), reverse=True):
                fans = self._open((tree, end))
                if fans is None:
                    continue
                try:
                    for fan in self._list(fans, (tree, end)):
                        fd = self._open((tree, end, fan))
                        if fd is None:
                            continue
                        try:
                            for name in self._list(fd, (tree, end, fan)):
                                if not name.startswith("."):
                                    yield fd, name
                        finally:
                            os.close(fd)
                finally:
                    os.close(fans)
        finally:
            os.close(top)

    def items(self, now):
        """Yield (key, State) for every live key, passed keys first."""
        self._root()
        seen = set()
        for tree in ("pass", "grey"):
            for fd, name in self._entries(tree):
                if name in seen:
                    continue
                seen.add(name)
                key = self._read_key(fd, name)
                state = self.peek(key, now)
                if state.status != "new":
                    yield key, state

    def _read_key(self, fd, name):
        if not name.startswith("="):
            return key_of(name)
        try:
            entry = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                            dir_fd=fd)
        except OSError:
            return name
        try:
            # A key is at most a few hundred bytes: a bigger file is not ours.
            return os.read(entry, 4096).decode("utf-8", "surrogateescape")
        except OSError:
            return name
        finally:
            os.close(entry)

    def purge(self, now):
        """Remove every dead generation; return the number of entries removed."""
        self._root()  # a mistyped name in a crontab is an error
        removed = 0
        for tree in ("grey", "pass", "count"):
            top = self._open((tree,))
            if top is None:
                continue
            try:
                for end in self._list(top, (tree,)):
                    if end.isdigit() and int(end) <= now:
                        removed += self._remove_tree(top, end, (tree, end), _DEPTH)
            finally:
                os.close(top)
        return removed

    def _remove_tree(self, parent, name, parts, depth):
        """Remove the directory name in parent and all below it; return the entries removed."""
        # Names relative to an open directory spare the path walks, and
        # nothing is statted: a name that is a directory fails to unlink.
        # A directory is opened without following a link, so whatever a
        # link points to is never walked, and a name swapped for a link
        # between the two calls fails to open and is unlinked itself.
        path = os.path.join(self.root, *parts)
        try:
            fd = os.open(name, _DIRECTORY, dir_fd=parent)
        except FileNotFoundError:  # a concurrent purge got there first
            return 0
        except OSError as error:
            import errno

            if error.errno in (errno.ENOTDIR, errno.ELOOP):  # not a directory now
                self._remove(parent, name, parts[:-1])
                return 0
            raise self._fail("open", path, error)
        removed = 0
        try:
            for entry in self._list(fd, parts):
                try:
                    os.unlink(entry, dir_fd=fd)
                    removed += not entry.startswith(".")
                except FileNotFoundError:
                    pass
                except (IsADirectoryError, PermissionError) as error:
                    if not depth:  # deeper than the layout: not ours to walk
                        raise self._fail("remove", os.path.join(path, entry), error)
                    removed += self._remove_tree(fd, entry, parts + (entry,), depth - 1)
            os.rmdir(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise self._fail("remove", path, error)
        finally:
            os.close(fd)
        return removed
