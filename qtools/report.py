# SPDX-License-Identifier: ISC
"""qtools-report: what the filters did, as a summary for cron mail, JSON or an HTML page.

Reads the decision lines of multilog directories (current and the @*.s,
@*.u archives), files or standard input; counts them (reportstats);
prints a pflogsumm-style summary (reporttext) or JSON, and writes a
self-contained HTML page with SVG charts (reporthtml).
"""

import json
import os
import sys
import time

from qtools import core, logread

PROG = "qtools-report"
USAGE = ("qtools-report [ -j ] [ -H file ] [ -s start ] [ -e end ] [ -d today|yesterday ] [ -n top ]"
         " [ -t score ] [ -q score ] [ -r score ] [ logdir | file ... ]")
OPTIONS = "jH:s:e:d:n:t:q:r:"
CHUNK = 1 << 20  # bytes of lines counted between two looks at the progress bar


class Options:
    def __init__(self):
        self.json = False
        self.html = None
        self.start = self.end = None
        self.top = 10
        self.thresholds = {}
        self.paths = []


def parse_time(text, end=False):
    """Return the Unix time of an ISO date or date and time, read in local time.

    A date alone is its midnight; as an end (-e) it is the next midnight, so
    that -s D -e D is the whole day D.
    """
    text = text.strip().replace("T", " ")
    for form in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            parsed = time.strptime(text, form)
        except ValueError:
            continue
        fields = list(parsed[:6]) + [0, 0, -1]
        if form == "%Y-%m-%d" and end:
            fields[2] += 1
        return time.mktime(tuple(fields))
    raise core.Usage("invalid time: %s (use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS])" % core.clean(text))


def day_range(word, now):
    """Return (start, end) of today or yesterday in local time."""
    year, month, day = time.localtime(now)[:3]
    offset = {"today": 0, "yesterday": -1}.get(word)
    if offset is None:
        raise core.Usage("invalid day: %s (use today or yesterday)" % core.clean(word))
    start = time.mktime((year, month, day + offset, 0, 0, 0, 0, 0, -1))
    return start, time.mktime((year, month, day + offset + 1, 0, 0, 0, 0, 0, -1))


def _score(letter, text):
    try:
        value = float(text)
    except ValueError:
        raise core.Usage("invalid score for -%s: %s" % (letter, core.clean(text)))
    if value != value or abs(value) > 1000:
        raise core.Usage("invalid score for -%s: %s" % (letter, core.clean(text)))
    return value


def parse(argv, now):
    """Return the Options of argv; --json is -j."""
    argv = list(argv)
    index = 0
    while index < len(argv) and argv[index] not in ("--", "-") and argv[index][:1] == "-":
        if argv[index] == "--json":
            argv[index] = "-j"
        else:
            for at, letter in enumerate(argv[index][1:], 2):
                if OPTIONS.find(letter + ":") >= 0:  # its argument: the rest, else the next word
                    index += at == len(argv[index])
                    break
        index += 1
    options, rest = core.getopt(argv, OPTIONS)
    result = Options()
    for letter, value in options:
        if letter == "j":
            result.json = True
        elif letter == "H":
            result.html = value
        elif letter == "s":
            result.start = parse_time(value)
        elif letter == "e":
            result.end = parse_time(value, end=True)
        elif letter == "d":
            result.start, result.end = day_range(value, now)
        elif letter == "n":
            result.top = core.number(PROG, letter, value, 1, 100000)
        else:
            name = {"t": "tag", "q": "quarantine", "r": "reject"}[letter]
            result.thresholds[name] = _score(letter, value)
    if result.start is not None and result.end is not None and result.start >= result.end:
        raise core.Usage("the start (-s) must come before the end (-e)")
    result.paths = rest
    return result


def inputs(paths, start=None):
    """Return the files to read, oldest first in each log directory ("-" is standard input).

    An archive named before start holds only older lines: multilog names
    it by the time it was closed, so it is left out.
    """
    if not paths:
        return ["-"]
    low = None
    if start is not None:
        from qtools.reportstats import stamp_of

        low = stamp_of(start)
    found = []
    for path in paths:
        if path != "-" and os.path.isdir(path):
            found += [name for name in logread.files(path)
                      if low is None or os.path.basename(name)[:25] >= low
                      or os.path.basename(name)[:1] != "@"]
        else:
            found.append(path)
    return found


class Progress:
    """A bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total, stream):
        self.total = total
        self.stream = stream
        self.done = 0
        self.shown = -1

    def add(self, amount):
        self.done += amount
        if self.total:
            part = min(self.done * 40 // self.total, 40)
            if part != self.shown:
                self.shown = part
                self.stream.write("\r%s: [%-40s] %3d%%" % (PROG, "#" * part, part * 100 // 40))
                self.stream.flush()

    def close(self):
        if self.shown >= 0:
            self.stream.write("\r%s\r" % (" " * 60))
            self.stream.flush()


def read(paths, stats, progress=None):
    """Feed every line of paths to stats, in chunks so the bar moves between them."""
    for path in paths:
        if path == "-":
            import io

            handle = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
        else:
            try:
                handle = open(path, encoding="utf-8", errors="replace")
            except FileNotFoundError:
                if os.path.basename(path)[:1] == "@" or os.path.basename(path) == "previous":
                    continue  # rotated away by multilog while we read
                raise
        with handle:
            while True:
                lines = handle.readlines(CHUNK)
                if not lines:
                    break
                stats.feed(lines)
                if progress is not None:
                    progress.add(sum(map(len, lines)))


def write_atomically(path, text):
    temporary = "%s.tmp%d" % (path, os.getpid())
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


@core.main_of(PROG, USAGE)
def main(argv, environ):
    """Count the decision lines of the inputs, then print and write the report."""
    from qtools import reportstats, reporttext

    options = parse(argv, time.time())
    stats = reportstats.Stats(options.start, options.end)
    progress = None
    try:
        paths = inputs(options.paths, options.start)
        if sys.stderr.isatty():
            total = sum(os.path.getsize(p) for p in paths if p != "-" and os.path.isfile(p))
            progress = Progress(total, sys.stderr)
        read(paths, stats, progress)
    except OSError as error:
        raise core.Die(core.TEMP_EXIT, "unable to read %s: %s" % (
            core.clean(str(error.filename)), core.strerror(error)))
    finally:
        if progress is not None:
            progress.close()
    data = stats.as_dict(options.top, options.thresholds)
    if options.html:
        from qtools import reporthtml

        try:
            write_atomically(options.html, reporthtml.render(data))
        except OSError as error:
            raise core.Die(core.TEMP_EXIT, "unable to write %s: %s" % (
                core.clean(options.html), core.strerror(error)))
    if options.json:
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    else:
        text = reporttext.render(data)
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    return 0
