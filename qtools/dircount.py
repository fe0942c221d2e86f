# SPDX-License-Identifier: ISC
"""The directory store's pass count (greylist -c): one empty file per counted pass.

    DIR/count/END/XX/NAME/N   N = 1, 2, ...: the passes counted; the mtime of
                              the highest is when it was counted, or the
                              last pass once most are counted

END and XX are the pass tree's (one lifetime a generation); a count found in
the previous generation moves into the current one with its pass.  A pass
is counted by link() of a complete entry named one more than the highest:
two connections counting the same pass make one entry.  Every name is used
relative to an open directory, opened without following a symbolic link,
as everything else in the directory store (dirstore.py).
"""

import os

from qtools.store import COUNT_EVERY


class PassCount:
    """The pass count, for DirStore: it uses the store's directories and entries."""

    def _count_dir(self, name, now, move):
        """Return (open directory of name's count or None, its generation's parts).

        With move, a count found in the previous generation is renamed into
        the current one first, as a pass entry is.
        """
        current = self._place("count", now, 0, name)
        fd = self._open(current + (name,))
        if fd is not None:
            return fd, current
        previous = self._place("count", now, 1, name)
        if not move:
            return self._open(previous + (name,)), previous
        source = self._open(previous)
        if source is None:
            return None, current
        try:
            target = self._open(current, create=True)
            try:
                os.rename(name, name, src_dir_fd=source, dst_dir_fd=target)
            except (FileNotFoundError, FileExistsError):
                pass  # none to move, or moved by a concurrent connection
            except OSError as error:
                import errno

                if error.errno != errno.ENOTEMPTY:  # a concurrent count is already there
                    raise self._fail("update", self._path("count", now, 0, name), error)
            finally:
                os.close(target)
        finally:
            os.close(source)
        return self._open(current + (name,)), current

    def _read_count(self, fd, parts, name, now):
        """Return (passes counted, mtime of the highest) of the open count fd, and close it.

        A count whose highest entry is a lifetime old outlived its pass: none.
        """
        if fd is None:
            return 0, None
        try:
            numbers = [int(n) for n in self._list(fd, parts + (name,))
                       if n.isdigit() and n.isascii() and len(n) < 10]
            if not numbers:
                return 0, None
            count = max(numbers)
            try:
                last = os.stat(str(count), dir_fd=fd, follow_symlinks=False).st_mtime
            except FileNotFoundError:  # dropped by a concurrent deny
                return 0, None
            except OSError as error:
                raise self._fail("stat", os.path.join(self.root, *parts, name, str(count)), error)
        finally:
            os.close(fd)
        return (0, None) if now >= last + self.timers.lifetime else (count, last)

    def _count(self, name, now, most, key):
        """Count a pass of name (one every COUNT_EVERY seconds, up to most); return the count."""
        fd, parts = self._count_dir(name, now, move=True)
        count, last = self._read_count(fd, parts, name, now)
        if count >= most:
            # Counted in full: the highest entry's time follows the passes,
            # so that the count lives as long as the pass.
            fd = self._open(parts + (name,))
            if fd is not None:
                try:
                    os.utime(str(count), (now, now), dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    pass
                except OSError as error:
                    raise self._fail("update", self._path("count", now, 0, name), error)
                finally:
                    os.close(fd)
            return count
        if count and now < last + COUNT_EVERY:
            return count
        if count == 0:
            self._drop_count(name, now)  # what an earlier life of the key left
        # link() of a complete entry: a concurrent connection that counted
        # the same pass makes this one fail, and the pass counts once.
        self._create(parts + (name,), str(count + 1), now, key)
        return count + 1

    def _drop_count(self, name, now):
        """Remove name's count, in both generations."""
        for age in (0, 1):
            parts = self._place("count", now, age, name)
            parent = self._open(parts)
            if parent is not None:
                try:
                    self._remove_tree(parent, name, parts + (name,), 0)
                finally:
                    os.close(parent)
