# SPDX-License-Identifier: ISC
"""Where qtools-adaptive keeps its state: a directory, or Redis for several MX hosts.

Directory: STATE/state, one JSON file holding the log positions, the
windows, the blocks, the offences and the exempt clients, replaced
atomically (temporary file, fsync, rename) at the end of a run, so counts
and positions always move together and a restart reads no line twice;
STATE/lock serializes runs and -u.

Redis: qtools.adaptredis.
"""

import json
import os

from qtools import core

EXEMPT_TIME = 86400  # a trusted client stays exempt a day after its last line


class StateError(Exception):
    """The state cannot be read or written: a temporary failure."""


class DirState:
    """The whole state in memory, read at the start and written at the end of a run."""

    shared = False

    def __init__(self, path, rules):
        self.path, self.rules = path, rules
        self.windows, self.blocks, self.history, self.exempt, self.positions = {}, {}, {}, {}, {}
        self._lock = None

    def lock(self):
        """Take STATE/lock (waiting for another run), creating STATE if needed."""
        import fcntl

        try:
            os.makedirs(self.path, exist_ok=True)
            self._lock = os.open(os.path.join(self.path, "lock"),
                                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        except OSError as error:
            raise StateError("unable to lock %s: %s" % (self.path, core.strerror(error)))

    def load(self):
        try:
            with open(os.path.join(self.path, "state")) as handle:
                saved = json.load(handle)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as error:
            why = core.strerror(error) if isinstance(error, OSError) else "not JSON"
            raise StateError("unable to read %s/state: %s" % (self.path, why))
        for name in ("windows", "blocks", "history", "exempt", "positions"):
            setattr(self, name, saved.get(name) or {})

    def save(self, windows, now):
        """Write everything atomically, without what has expired by now."""
        self.forget(now)
        data = {"windows": windows, "blocks": self.blocks, "history": self.history,
                "exempt": self.exempt, "positions": self.positions}
        target = os.path.join(self.path, "state")
        temporary = "%s.tmp" % target
        try:
            with open(temporary, "w") as handle:
                json.dump(data, handle, separators=(",", ":"))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except OSError as error:
            raise StateError("unable to write %s: %s" % (target, core.strerror(error)))

    def forget(self, now):
        for table, alive in ((self.blocks, lambda v: v["until"] > now),
                             (self.history, lambda v: v[1] > now),
                             (self.exempt, lambda v: v > now)):
            for key in [k for k, v in table.items() if not alive(v)]:
                del table[key]

    def set_exempt(self, key, until):
        self.exempt[key] = until
        return self.blocks.pop(key, None) is not None

    def is_exempt(self, key, when):
        return self.exempt.get(key, 0) > when

    def blocked(self, key, when):
        block = self.blocks.get(key)
        return block is not None and block["until"] > when

    def block(self, key, since, attempts, bad, now):
        """Make a block unless one is in force; return it, or None."""
        from qtools.attempts import ban_time

        if self.blocked(key, since) or self.is_exempt(key, since):
            return None
        offences = self.history.get(key, [0, 0])[0]
        until = since + ban_time(offences, self.rules)
        if until <= now:
            return None
        block = {"until": until, "since": since, "attempts": attempts, "bad": bad,
                 "offences": offences}
        self.blocks[key] = block
        self.history[key] = [offences + 1, until + self.rules.maxtime]
        return block

    def current(self, now):
        """Return {key: block} of the blocks in force at now."""
        return {k: v for k, v in self.blocks.items() if v["until"] > now}

    def lift(self, key):
        """Remove key's block, offences and counts; return True if it was blocked."""
        self.history.pop(key, None)
        self.windows.pop(key, None)
        return self.blocks.pop(key, None) is not None

    def close(self):
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def open_state(where, rules):
    """Return the state at where: a directory, or a redis://, rediss:// or unix:// URL."""
    if "://" in where:
        if where.split("://", 1)[0] in ("redis", "rediss", "unix"):
            from qtools.adaptredis import RedisState

            return RedisState(where, rules)
        raise core.Die(core.USAGE_EXIT, "unknown state: %s" % core.clean(where))
    return DirState(where, rules)
