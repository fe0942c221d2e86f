# SPDX-License-Identifier: ISC
"""qtools-mkcdb: build the cdb files of tcpserver and qtools from text, atomically."""

import os
import sys

from qtools import core

PROG = "qtools-mkcdb"
USAGE = (
    "qtools-mkcdb [ -t | -a | -n ] { cdb tmp < text | -c [ text ... ]"
    " | -s [ -v ] { text cdb ... | dir } | -q key cdb | -d cdb }"
)
WRITERS = ("auto", "fast", "pure")


def lines_of(data):
    """Split text into lines as getln does: a last line without LF counts."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def records(fmt, name, data, report):
    """Return the parsed records of one text; report(message, fatal) hears of problems."""
    from qtools import rules

    if fmt == "a":
        plain = rules.plain_addresses(data)
        if plain is not None:
            return plain
    lines = lines_of(data)

    def problem(number, what, fatal):
        line = core.clean(lines[number - 1].decode("latin-1"))
        text = "%s line %d: %s" % (name, number, what)
        report("unable to parse %s: %s" % (text, line) if fatal else text, fatal)

    return rules.FORMATS[fmt](lines, problem)


def strict(message, fatal):
    """Stop at the first bad line, as tcprules does; warn about the others."""
    if fatal:
        raise core.Die(100, message)
    core.warn(PROG, message)


def build(fmt, name, data, target, tmp, writer, mtime_ns=None):
    """Write the cdb target from text data; return the number of records."""
    from qtools import cdb

    try:
        return cdb.write(target, records(fmt, name, data, strict), tmp, writer, mtime_ns)
    except cdb.WriteError as error:
        raise core.Die(core.TEMP_EXIT, str(error))


def read(path):
    """Return the bytes of path ("-": standard input), or raise Die(111)."""
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        what = "input" if path == "-" else path
        raise core.Die(core.TEMP_EXIT, "unable to read %s: %s" % (what, core.strerror(error)))


def stdin_name():
    """Name standard input after the file it was redirected from, if any."""
    import stat

    try:
        if stat.S_ISREG(os.fstat(0).st_mode):
            return os.readlink("/proc/self/fd/0")
    except OSError:
        pass
    return "standard input"


def check(fmt, paths, out):
    """Parse every text and report every bad line; write nothing."""
    bad = []

    def report(message, fatal):
        core.warn(PROG, message)
        bad.extend([message] if fatal else [])

    for path in paths or ["-"]:
        name = stdin_name() if path == "-" else path
        count = sum(1 for _ in records(fmt, name, read(path), report))
        out.append(b"%s: %d records\n" % (name.encode("utf-8", "replace"), count))
    if bad:
        raise core.Die(100, "%d bad line%s" % (len(bad), "s" * (len(bad) > 1)))


def stale_pairs(args):
    """Return the (text, cdb) pairs of -s: given pairs, or each text file of a directory."""
    if len(args) == 1 and os.path.isdir(args[0]):
        try:
            names = sorted(os.listdir(args[0]))
        except OSError as error:
            why = core.strerror(error)
            raise core.Die(core.TEMP_EXIT, "unable to list %s: %s" % (args[0], why))
        paths = [os.path.join(args[0], n) for n in names if not n.startswith(".")]
        return [
            (p, p + ".cdb")
            for p in paths
            if os.path.isfile(p) and not p.endswith((".cdb", ".tmp", "~"))
        ]
    if not args or len(args) % 2:
        raise core.Usage("-s needs text cdb pairs or one directory")
    return list(zip(args[0::2], args[1::2]))


def stale(fmt, args, writer, verbose):
    """Rebuild each cdb whose text changed since it was built; return the exit code."""
    worst = 0
    for text, target in stale_pairs(args):
        try:
            try:
                mtime = os.stat(text).st_mtime_ns
            except OSError as error:
                why = core.strerror(error)
                raise core.Die(core.TEMP_EXIT, "unable to read %s: %s" % (text, why))
            try:
                # a build stamps the text's mtime on the cdb: any change of
                # the text, even to an older file, shows as a difference
                # (a list built before qtools-mkcdb marked its cdbs is
                # rebuilt once, so validrcptto reads it relaxed again)
                if os.stat(target).st_mtime_ns == mtime and (fmt != "a" or marked(target)):
                    continue
            except OSError:
                pass
            count = build(fmt, text, read(text), target, None, writer, mtime)
            if verbose:
                core.info(PROG, "rebuilt %s from %s: %d records" % (target, text, count))
        except core.Die as error:
            core.warn(PROG, "%s (%s kept as it was)" % (error.message, target))
            worst = max(worst, error.code)
    return worst


def show(fmt, key, value):
    """Return one record as a line of its text format."""
    if fmt == "a":
        rejected = value[:1] == b"-"
        return b"-" * rejected + key + (b" " + value[1:] if rejected and value[1:] else b"")
    if fmt == "n":
        return key + (b" " + value if value else b"")
    words = [b"allow"]
    for item in value.split(b"\0"):
        if item == b"D":
            words[0] = b"deny"
        elif item[:1] == b"+" and b"=" in item:
            name, _, text = item[1:].partition(b"=")
            quote = next(q for q in b"\"'/|#%!~^" if q not in text).to_bytes(1, "big")
            words.append(b"," + name + b"=" + quote + text + quote)
    return key + b":" + b"".join(words)


def find(fmt, reader, key):
    """Return (the records that decide for key, best first; whether its reader accepts it).

    The lookup is the reading program's own: netlist.lookup as rblcheck,
    rhostcheck and greylist call it, validrcptto.decide for an address.
    """
    from qtools import netlist

    if fmt == "t":
        found = [(key, bytes(v)) for v in reader.get_all(key)]
        return found, bool(found)
    if fmt == "a":
        return recipient(reader, key)
    text = key.decode("latin-1")
    parsed = core.parse_ip(text)
    if parsed is None and "/" in text:
        from qtools.rules import network_key

        try:
            base, bits, _ = network_key(key)
        except ValueError as error:
            raise core.Die(100, str(error))
        parsed = core.parse_ip(base.split(b"/")[0].decode("ascii"))
        hit = netlist.lookup(reader, packed=parsed[1], within=bits)
    elif parsed is None:
        hit = netlist.lookup(reader, host=text.lstrip("="))
    else:
        hit = netlist.lookup(reader, packed=parsed[1])
    return ([hit], True) if hit else ([], False)


def recipient(reader, address):
    """Return ([the record validrcptto decides on], whether it accepts the address).

    A pass without a record (postmaster, a domain the list does not speak
    for) is told as a comment line, which the -a format reads as nothing.
    """
    from qtools import validrcptto

    verdict = validrcptto.decide(address, reader, validrcptto.strict_for(reader))
    why = dict(verdict.why)
    accepted = verdict.action == "pass"
    if "key" in why:
        return [(why["key"], bytes(reader.get(why["key"])))], accepted
    if accepted:
        return [(b"# accepted: %s" % why["why"].encode(), None)], accepted
    return [], accepted


def marked(path):
    """Return True when the cdb at path carries qtools-mkcdb -a's record."""
    from qtools import cdb
    from qtools.validrcptto import MARKER

    try:
        with cdb.Reader(path) as reader:
            return reader.get(MARKER) is not None
    except OSError:
        return False


def lookup(fmt, key, path, out):
    """Print the records of -q key or, with key None, every record (-d)."""
    from qtools import cdb

    try:
        reader = cdb.Reader(path)
    except OSError as error:
        raise core.Die(core.TEMP_EXIT, "unable to read %s: %s" % (path, core.strerror(error)))
    with reader:
        if key is None:
            # the bits keys of -n and the domain markers of -a are derived
            hidden = (lambda k: b"@" not in k) if fmt == "a" else (lambda k: k[:1] == b"\0")
            try:
                found = [(bytes(k), bytes(v)) for k, v in reader.items() if not hidden(k)]
            except OSError as error:
                raise core.Die(core.TEMP_EXIT, "unable to read %s: %s" % (path, core.strerror(error)))
            accepted = True
        else:
            found, accepted = find(fmt, reader, os.fsencode(key))
        out.extend((k if v is None else show(fmt, k, v)) + b"\n" for k, v in found)
    return 0 if accepted else 100


@core.main_of(PROG, USAGE)
def main(argv, environ):
    """Build, check, rebuild-if-stale or query cdb files."""
    options, args = core.getopt(argv, "tancdq:sv")
    fmt, mode, key, verbose = "t", "build", None, False
    for letter, value in options:
        if letter in "tan":
            fmt = letter
        elif letter == "v":
            verbose = True
        else:
            if mode != "build":
                raise core.Usage("only one of -c, -d, -q, -s")
            mode, key = {"c": "check", "d": "dump", "q": "query", "s": "stale"}[letter], value
    writer = environ.get("QTOOLS_CDB_WRITER") or "auto"
    if writer not in WRITERS:
        raise core.Die(100, "invalid $QTOOLS_CDB_WRITER: %s" % core.clean(writer))
    from qtools.cdb import fast_available

    if writer == "fast" and not fast_available():
        raise core.Die(100, "$QTOOLS_CDB_WRITER is fast but cdbx is not installed")
    out = []
    code = 0
    if mode == "check":
        check(fmt, args, out)
    elif mode == "stale":
        code = stale(fmt, args, writer, verbose)
    elif mode in ("query", "dump"):
        if len(args) != 1:
            raise core.Usage()
        code = lookup(fmt, key, args[0], out)
    elif len(args) != 2:
        raise core.Usage()
    else:
        build(fmt, stdin_name(), read("-"), args[0], args[1], writer)
    try:
        sys.stdout.buffer.write(b"".join(out))
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        pass
    return code
