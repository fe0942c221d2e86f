# SPDX-License-Identifier: ISC
"""Read back the decision lines qtools programs write, from multilog directories.

Every program logs "prog: IP pid N: verdict k=v ..." (core.log_line) on
stderr; multilog puts a TAI64N stamp in front.  parse() turns one such line
into a Record; files() lists a multilog directory's files oldest first;
Follower reads directories incrementally, remembering (inode, offset) so that
a line is never read twice or missed across rotation and restarts.

Used by the tools that run once (qtools-report, qtools-adaptive), never on
the connection path.
"""

import os
import re
import time

# daemontools' TAI64 label of 1970-01-01 00:00:10 TAI: 2^62 + 10.
TAI64_EPOCH = 4611686018427387914

RELIST = 40  # looks at a directory caught in a rotation, 50 ms apart
HEAD = 64  # bytes that identify a log file along with its inode

_HEAD = re.compile(r"([A-Za-z0-9_.-]+): (\S+) pid (\d+): (.*)\Z", re.S)
_FIELD = re.compile(r' ([a-z][a-z0-9_]*)=("(?:[^"\\]|\\.)*"|[^ "]*)(?= |\Z)')
_UNQUOTE = re.compile(r"\\(.)")


def tai64n(stamp):
    """Return the Unix time of "@" + 24 hex digits as a float, or None if malformed."""
    if len(stamp) != 25 or stamp[0] != "@":
        return None
    try:
        seconds = int(stamp[1:17], 16)
        nano = int(stamp[17:], 16)
    except ValueError:
        return None
    if nano >= 1000000000:
        return None
    return seconds - TAI64_EPOCH + nano / 1e9


class Record:
    """One decision line: when, which program, which client, what it decided."""

    __slots__ = ("time", "prog", "ip", "pid", "verdict", "fields")

    def __init__(self, time, prog, ip, pid, verdict, fields):
        self.time = time
        self.prog = prog
        self.ip = ip
        self.pid = pid
        self.verdict = verdict
        self.fields = fields

    @property
    def code(self):
        """Return the SMTP code a refusal was logged with (e.g. 451), or None."""
        head = self.verdict[:3]
        return int(head) if head.isdigit() and self.verdict[3:4] in ("", " ") else None

    def __repr__(self):
        return "Record(%r, %r, %r, %r, %r, %r)" % (
            self.time, self.prog, self.ip, self.pid, self.verdict, self.fields)


def split_fields(rest):
    """Split "verdict k=v ..." into (verdict, {k: v}).

    The verdict may hold spaces (a reply text) and even "=" (a DNSBL's TXT
    record), so the fields begin at the first " key=" from which every
    remaining token is a whole field, as core.log_line writes them.
    """
    if '"' not in rest:
        return _split_plain(rest)
    text = " " + rest
    start = text.find("=")
    while start >= 0:
        space = text.rfind(" ", 0, start)
        fields = _fields_from(text, space)
        if fields is not None:
            return rest[: max(space - 1, 0)] if space > 0 else "", fields
        start = text.find("=", start + 1)
    return rest, {}


_KEY = re.compile(r"[a-z][a-z0-9_]*\Z")
_keys = {}  # key -> whether it is a key's spelling, so each is matched once


def _split_plain(rest):
    # The same reading without quotes, token by token from the end: the
    # fields are the longest tail of "key=value" tokens.  Four times
    # quicker, and most lines have no quotes.
    tokens = rest.split(" ")
    end = at = len(tokens)
    while at:
        token = tokens[at - 1]
        equals = token.find("=")
        if equals < 1:
            break
        key = token[:equals]
        good = _keys.get(key)
        if good is None:
            good = _KEY.match(key) is not None
            if len(_keys) < 10000:
                _keys[key] = good
        if not good:
            break
        at -= 1
    if at == end:
        return rest, {}
    fields = {}
    for token in tokens[at:]:
        key, _, value = token.partition("=")
        fields[key] = value
    return " ".join(tokens[:at]), fields


def _fields_from(text, at):
    fields = {}
    while at < len(text):
        match = _FIELD.match(text, at)
        if not match:
            return None
        value = match.group(2)
        if value[:1] == '"':
            value = _UNQUOTE.sub(r"\1", value[1:-1])
        fields[match.group(1)] = value
        at = match.end()
    return fields


def parse(line, default_time=None):
    """Return the Record of one log line (stamped or not), or None if it is not a decision line."""
    line = line.rstrip("\n")
    when = default_time
    if line[:1] == "@":
        when = tai64n(line[:25])
        if when is None:
            return None
        line = line[26:]
    match = _HEAD.match(line)
    if not match:
        return None
    prog, ip, pid, rest = match.groups()
    verdict, fields = split_fields(rest)
    return Record(when, prog, ip, int(pid), verdict, fields)


def files(logdir):
    """Return the paths of a multilog directory's logs, oldest first.

    The archives @*.s and @*.u, then previous (the name multilog gives
    current while it rotates it), then current.
    """
    return [os.path.join(logdir, name) for name, _ in _listing(logdir)]


def _listing(logdir):
    # One directory read gives names and inode numbers together, so a
    # rotation between two looks cannot make a file appear under no name.
    with os.scandir(logdir) as entries:
        found = {entry.name: entry.inode() for entry in entries
                 if (entry.name[:1] == "@" and entry.name[-2:] in (".s", ".u"))
                 or entry.name in ("previous", "current")}
    names = sorted(name for name in found if name[:1] == "@")
    names += [name for name in ("previous", "current") if name in found]
    # A directory read while multilog renames can see one file under its
    # old and its new name: keep the first, the archive.
    listing, inodes = [], set()
    for name in names:
        if found[name] not in inodes:
            inodes.add(found[name])
            listing.append((name, found[name]))
    return listing


class _Moved(Exception):
    """A name no longer holds the file the listing saw under it."""


def _head(handle):
    """Return the first bytes of an open file as hex, to tell it from another with its inode number."""
    return os.pread(handle.fileno(), HEAD, 0).hex()


class Follower:
    """Read the new lines of multilog directories, resuming where the last run stopped.

    The position of each directory is the inode of the file being read and
    the offset after its last whole line, plus that file's name when it was
    archived.  multilog renames current to @stamp.s on rotation, so a
    saved inode found among the archives is finished first, then every
    newer archive, then the new current from its start.
    """

    def __init__(self, positions=None):
        # {logdir: position}; the caller keeps it between runs (JSON-safe)
        self.positions = {} if positions is None else positions

    def lines(self, logdir):
        """Yield each line of logdir not read before, in order; the position moves as they are taken."""
        key = os.path.abspath(logdir)
        while True:
            saved = self.positions.get(key)
            for attempt in range(RELIST):
                listing = _listing(logdir)
                if not saved:
                    start, offset = 0, 0
                    break
                start, offset = self._resume(logdir, listing, saved)
                if offset >= 0:
                    break
                # Our file is under neither name: multilog may be between
                # renaming current and creating the new one; look again.
                time.sleep(0.05)
            else:
                start, offset = self._newer(listing, saved), 0
            offset = max(offset, 0)
            try:
                for index in range(start, len(listing)):
                    name, inode = listing[index]
                    path = os.path.join(logdir, name)
                    yield from self._file(key, path, inode, offset if index == start else 0)
                return
            except (FileNotFoundError, _Moved):
                continue  # renamed by a rotation after the listing: list again

    def _file(self, key, path, inode, begin):
        # One descriptor for inode, head and lines: a rename after the
        # open changes nothing we read.
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_ino != inode:
                raise _Moved(path)
            old = self.positions.get(key) or {}
            position = {"inode": inode, "offset": begin, "name": os.path.basename(path),
                        "head": handle.read(HEAD).hex(), "stamp": old.get("stamp", "")}
            self.positions[key] = position
            handle.seek(begin)
            for raw in handle:
                if not raw.endswith(b"\n"):
                    return
                if len(position["head"]) < 2 * HEAD:
                    position["head"] = _head(handle)
                position["offset"] += len(raw)
                if raw[:1] == b"@":
                    position["stamp"] = raw[:25].decode("ascii", "replace")
                yield raw.decode("utf-8", "replace")

    @staticmethod
    def _resume(logdir, listing, saved):
        for index, (name, inode) in enumerate(listing):
            try:
                if inode == saved["inode"]:
                    # An inode number is reused once its file is removed:
                    # the same number with other first bytes, or fewer
                    # bytes than we read, is another file.
                    with open(os.path.join(logdir, name), "rb") as handle:
                        head = _head(handle)
                        status = os.fstat(handle.fileno())
                    if (status.st_ino == inode and status.st_size >= saved["offset"]
                            and head.startswith(saved.get("head", ""))):
                        return index, saved["offset"]
            except FileNotFoundError:
                continue
        return len(listing), -1

    @staticmethod
    def _newer(listing, saved):
        # The file we were in is gone (multilog's n limit removed it): an
        # archive is named by the time it was closed, so those named after
        # the last stamp we read hold only newer lines.
        stamp = saved.get("stamp", "")
        for index, (name, _) in enumerate(listing):
            if name in ("current", "previous") or name[:25] > stamp:
                return index
        return len(listing)
