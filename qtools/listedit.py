# SPDX-License-Identifier: ISC
"""qtools-list: edit the allow and deny lists, and rebuild their cdb, in one step.

The lists are qtools-mkcdb -n texts, DIR/allow and DIR/deny, each beside
the cdb built from it (DIR/allow.cdb, DIR/deny.cdb, as qtools-mkcdb -s DIR
names them).  An edit holds DIR/.lock, so two admins never lose one;
the new text is parsed before anything is replaced, and a bad line (ours
or one already in the file) is named file:line with the old text and cdb
kept.
"""

import os
import sys

from qtools import core

PROG = "qtools-list"
USAGE = ("qtools-list [ -d dir ] { allow | deny } { add entry [ text ... ]"
         " | del entry ... | show [ entry ] }")
DIRECTORY = "/etc/qtools/lists"
LISTS = ("allow", "deny")


def key_of(entry):
    """Return the cdb key of an entry (an address, network or host name), or raise Usage."""
    from qtools.rules import network_key

    try:
        return network_key(os.fsencode(entry))[0]
    except ValueError as error:
        raise core.Die(core.USAGE_EXIT, str(error))


def line_key(line):
    """Return the key of a text line, or None for a comment, a blank or a bad line."""
    from qtools.rules import network_key

    words = line.split(None, 1)
    if not words or words[0][:1] == b"#":
        return None
    try:
        return network_key(words[0])[0]
    except ValueError:
        return None


def add(lines, entry, text):
    """Return lines with entry's line added, or put in place of the line with its key."""
    key = key_of(entry)
    if any(c < " " or c == "\x7f" for c in text):
        raise core.Die(core.USAGE_EXIT, "the text holds a control character: %s" % core.clean(text))
    new = os.fsencode(entry) + (b" " + os.fsencode(text) if text else b"") + b"\n"
    out = [new if line_key(line) == key else line for line in lines]
    return out if new in out else out + [new]


def delete(lines, entries):
    """Return lines without those of entries; raise Die(100) for an entry not listed."""
    keys = {key_of(entry): entry for entry in entries}
    present = {line_key(line) for line in lines}
    for key, entry in keys.items():
        if key not in present:
            raise core.Die(core.USAGE_EXIT, "%s is not in the list" % core.clean(entry))
    return [line for line in lines if line_key(line) not in keys]


def replace(path, lines, writer="auto"):
    """Check the new text, build its cdb, then put the text in place."""
    from qtools import mkcdb

    data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
    list(mkcdb.records("n", path, data, mkcdb.strict))  # Die(100) naming path:line
    temporary = path + ".tmp"
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        mtime = os.stat(temporary).st_mtime_ns
    except OSError as error:
        raise core.Die(core.TEMP_EXIT, "unable to write %s: %s" % (temporary, core.strerror(error)))
    try:
        # the cdb carries the text's mtime: qtools-mkcdb -s sees it up to date
        mkcdb.build("n", path, data, path + ".cdb", None, writer, mtime)
        os.rename(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def lock(directory):
    """Hold DIR/.lock until the process ends; wait for another edit to finish."""
    import fcntl

    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as error:
        raise core.Die(core.TEMP_EXIT, "unable to lock %s: %s" % (directory, core.strerror(error)))
    return fd


def read_lines(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().splitlines(True)
    except FileNotFoundError:
        return []
    except OSError as error:
        raise core.Die(core.TEMP_EXIT, "unable to read %s: %s" % (path, core.strerror(error)))


def show(path, entry, out):
    """Print the list, or the line that covers entry as the cdb's readers find it; return the exit code."""
    lines = read_lines(path)
    if entry is None:
        out.extend(line for line in lines if line_key(line) is not None)
        return 0
    from qtools import cdb, mkcdb

    try:
        with cdb.Reader(path + ".cdb") as reader:
            found, accepted = mkcdb.find("n", reader, os.fsencode(entry))
    except OSError as error:
        raise core.Die(core.TEMP_EXIT, "unable to read %s.cdb: %s" % (path, core.strerror(error)))
    if not (found and accepted):
        return 100
    key = found[0][0]
    out.extend(line for line in lines if line_key(line) == key)
    return 0


@core.main_of(PROG, USAGE)
def main(argv, environ):
    """Add, delete or show entries of the allow or deny list."""
    options, rest = core.getopt(argv, "d:")
    directory = dict(options).get("d", DIRECTORY)
    if len(rest) < 2 or rest[0] not in LISTS or rest[1] not in ("add", "del", "show"):
        raise core.Usage()
    name, verb, args = rest[0], rest[1], rest[2:]
    path = os.path.join(directory, name)
    out = []
    if verb == "show":
        if len(args) > 1:
            raise core.Usage()
        code = show(path, args[0] if args else None, out)
    else:
        if not args:
            raise core.Usage()
        fd = lock(directory)
        try:
            lines = read_lines(path)
            if verb == "add":
                lines = add(lines, args[0], " ".join(args[1:]))
            else:
                lines = delete(lines, args)
            replace(path, lines, environ.get("QTOOLS_CDB_WRITER") or "auto")
        finally:
            os.close(fd)
        core.info(PROG, "%s.cdb rebuilt: %d entries" % (path, sum(1 for l in lines if line_key(l))))
        code = 0
    sys.stdout.buffer.write(b"".join(out))
    sys.stdout.buffer.flush()
    return code
