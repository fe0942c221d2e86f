# SPDX-License-Identifier: ISC
"""Pattern lists for envelope senders and HELO names: badmailfrom's format, plus regexes.

One entry a line; blank lines and lines starting with "#" are skipped.

    user@example.com   this exact address (case does not matter)
    @example.com       every address at this domain (badmailfrom)
    .example.com       a HELO name or sender domain ending in .example.com
    name.example       this exact HELO name
    /regex             a Python regular expression searched in the address
                       or HELO name, case ignored (qregex's use)

The re module is loaded only when a list holds a regular expression: it
costs more than the rest of a decision, and most lists are plain.
"""

from qtools import core


class Patterns:
    """An opened list: exact entries, suffixes, compiled regexes with their text."""

    def __init__(self, exact=(), suffixes=(), regexes=()):
        self.exact = set(exact)
        self.suffixes = tuple(suffixes)
        self.regexes = list(regexes)

    def __bool__(self):
        return bool(self.exact or self.suffixes or self.regexes)

    def match(self, keys, name, text):
        """Return the entry matching: a key in exact, name ending in a suffix, or text; else None."""
        for key in keys:
            if key in self.exact:
                return key
        for suffix in self.suffixes:
            if name.endswith(suffix):
                return suffix
        for source, regex in self.regexes:
            if regex.search(text):
                return "/" + source
        return None

    def sender(self, address):
        """Return the entry a (lowercase) sender address matches, or None."""
        local, at, domain = address.rpartition("@")
        keys = (address, "@" + domain) if at else (address,)
        return self.match(keys, domain if at else "", address)

    def helo(self, name):
        """Return the entry a (lowercase) HELO name matches, or None."""
        return self.match((name,), name, name)


def parse(lines, where, prog):
    """Return Patterns from text lines; warn about a bad regex naming where:line and skip it."""
    exact, suffixes, regexes = [], [], []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("/"):
            import re

            try:
                regexes.append((line[1:], re.compile(line[1:], re.IGNORECASE)))
            except re.error as error:
                core.warn(prog, "%s:%d: bad regular expression: %s" % (where, number, error))
        elif line.startswith("."):
            suffixes.append(line.lower())
        else:
            exact.append(line.lower())
    return Patterns(exact, suffixes, regexes)


def load(path, prog):
    """Return the Patterns of file path; an unreadable file warns and gives an empty list."""
    # A missing list is our own failure: it must not refuse anyone.
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        core.warn(prog, "unable to read %s: %s" % (path, core.strerror(error)))
        return Patterns()
    return parse(data.decode("utf-8", "surrogateescape").splitlines(), path, prog)
