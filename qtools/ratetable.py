# SPDX-License-Identifier: ISC
"""Counters in sliding windows, for many keys, in one file of fixed size.

The file is a table of GROUPS groups of GROUP records of RECORD bytes,
written sparsely: it never grows past GROUPS * GROUP * RECORD bytes
(32 MiB), however many keys it has seen.  A key's record lives in the group
its hash names.  A record holds the key, a window number and three counts
for that window and three for the one before; a record whose two windows
are over is free for another key, and in a group of GROUP live keys the one
with the oldest window is forgotten.  Each update locks its group's bytes
(a POSIX record lock) for one pread and one pwrite, so processes share the
file safely and a decision costs the same with 10 keys or a million.

Record layout: key length (1 byte), key (up to KEY_MAX bytes), window
number at 88 (8 bytes), the six counts at 96 (4 bytes each), little-endian.
"""

import posix

RECORD, GROUP, GROUPS = 128, 8, 32768
KEY_MAX = 80  # bytes of a key in a record
_TRIES = 200  # 1 ms apart: a group is locked for a pread and a pwrite


def estimate(start, counts, window, now):
    """Return each kind's count over the last window seconds, as a sliding window sees it.

    counts is (current window's, previous window's) tuples; the previous
    window weighs as much as it still overlaps the last window seconds.
    """
    weight = max(0.0, 1.0 - (now - start) / window)
    return tuple(cur + prev * weight for cur, prev in zip(*counts))


def _lock(fd, group, how):
    import fcntl
    import time

    for _ in range(_TRIES):
        try:
            fcntl.lockf(fd, how | fcntl.LOCK_NB, GROUP * RECORD, group * GROUP * RECORD)
            return
        except (BlockingIOError, PermissionError):
            time.sleep(0.001)
    raise TimeoutError(0, "locked for too long")


def _block(fd, data, how):
    """Return (group, the group's bytes) of key data, with the group locked."""
    group = _group(data)
    _lock(fd, group, how)
    try:
        return group, posix.pread(fd, GROUP * RECORD, group * GROUP * RECORD)
    except BaseException:
        _unlock(fd, group)
        raise


def _unlock(fd, group):
    import fcntl

    fcntl.lockf(fd, fcntl.LOCK_UN, GROUP * RECORD, group * GROUP * RECORD)


def update(fd, data, which, limit, window, now):
    """Add one to count which (0, 1 or 2) of key data unless that reaches limit.

    Return the count over the last window seconds before this one; the
    caller refuses when it is limit or more (nothing is counted then).
    Raise OSError when the file cannot be used.
    """
    import fcntl

    data = data[:KEY_MAX]
    number = int(now // window)
    group, block = _block(fd, data, fcntl.LOCK_EX)
    try:
        at, cur, prev = _find(block, data, number)
        seen = estimate(number * window, (cur, prev), window, now)[which]
        if seen < limit:
            cur[which] += 1
            posix.pwrite(fd, _pack(data, number, cur, prev), (group * GROUP + at) * RECORD)
    finally:
        _unlock(fd, group)
    return seen


def read(fd, data, window, now):
    """Return the three counts of key data over the last window seconds."""
    import fcntl

    data = data[:KEY_MAX]
    number = int(now // window)
    group, block = _block(fd, data, fcntl.LOCK_SH)
    _unlock(fd, group)
    at, cur, prev = _find(block, data, number)
    return estimate(number * window, (cur, prev), window, now)


def _group(data):
    import zlib

    return zlib.crc32(data) % GROUPS


def _pack(data, number, cur, prev):
    out = bytearray(RECORD)
    out[0] = len(data)
    out[1:1 + len(data)] = data
    out[88:96] = number.to_bytes(8, "little")
    for i, value in enumerate(list(cur) + list(prev)):
        out[96 + 4 * i:100 + 4 * i] = min(value, 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(out)


def _unpack(record):
    """Return (key bytes, window number, current counts, previous counts) of a record."""
    if len(record) < RECORD:  # past the end of the file: never written
        return b"", 0, [0, 0, 0], [0, 0, 0]
    counts = [int.from_bytes(record[96 + 4 * i:100 + 4 * i], "little") for i in range(6)]
    return record[1:1 + record[0]], int.from_bytes(record[88:96], "little"), counts[:3], counts[3:]


def _find(block, data, number):
    """Return (index in the group, current counts, previous counts) of data's record.

    The counts are moved on to window number.  Without a record of data,
    the index of a free one (empty, or both windows over), else of the
    record with the oldest window: its network is forgotten.
    """
    free, oldest = None, None
    for at in range(GROUP):
        record = block[at * RECORD:(at + 1) * RECORD]
        key, seen, cur, prev = _unpack(record)
        if key == data:
            if seen == number:
                return at, cur, prev
            return at, [0, 0, 0], (cur if seen == number - 1 else [0, 0, 0])
        if free is None and (not key or seen < number - 1):
            free = at
        if oldest is None or seen < oldest[1]:
            oldest = (at, seen)
    return (oldest[0] if free is None else free), [0, 0, 0], [0, 0, 0]
