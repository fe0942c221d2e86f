# SPDX-License-Identifier: ISC
"""Read djb's constant databases (cdb) with the standard library only."""

import os


def cdb_hash(key):
    """Return djb's cdb hash of key (bytes), 32 bits."""
    h = 5381
    for byte in key:
        h = ((h << 5) + h) & 0xFFFFFFFF ^ byte
    return h


def _u32(data, at):
    return int.from_bytes(data[at : at + 4], "little")


class Reader:
    """A cdb file opened for lookups; first match wins, as in tcpserver."""

    def __init__(self, path):
        import mmap

        self.path = path
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < 2048:
                raise OSError(0, "not a cdb file (shorter than its header)", path)
            self._data = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)

    def close(self):
        self._data.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def get_all(self, key):
        """Yield every value stored under key, in insertion order."""
        data = self._data
        h = cdb_hash(key)
        at = (h & 255) * 8
        table, slots = _u32(data, at), _u32(data, at + 4)
        if not slots:
            return
        slot = (h >> 8) % slots
        for _ in range(slots):
            place = table + slot * 8
            stored, record = _u32(data, place), _u32(data, place + 4)
            if not record:
                return
            if stored == h:
                klen, dlen = _u32(data, record), _u32(data, record + 4)
                start = record + 8
                if klen == len(key) and data[start : start + klen] == key:
                    yield data[start + klen : start + klen + dlen]
            slot = (slot + 1) % slots

    def get(self, key, default=None):
        """Return the first value stored under key, or default."""
        for value in self.get_all(key):
            return value
        return default

    def __contains__(self, key):
        return self.get(key) is not None

    def items(self):
        """Yield every (key, value) in file order."""
        data = self._data
        at = 2048
        end = _u32(data, 0)  # the first hash table starts after the records
        while at < end:
            klen, dlen = _u32(data, at), _u32(data, at + 4)
            start = at + 8
            yield data[start : start + klen], data[start + klen : start + klen + dlen]
            at = start + klen + dlen
