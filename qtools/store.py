# SPDX-License-Identifier: ISC
"""Greylist state: the timer rules every store follows, and the interface of a store.

The timers (this is the one place they are defined):

    delay     A key seen for the first time is deferred until delay seconds
              have passed.  Retries before that are deferred too and never
              move the first-seen time.
    window    A key that has not retried after the delay within window
              seconds of being first seen is forgotten: its next connection
              starts the clock anew.
    lifetime  A key that retried after the delay (or was allowed) passes for
              lifetime seconds after its last accepted connection; every
              accepted connection starts the lifetime anew.

A store (a subclass of Store) offers check(key, now) -> State as one atomic
step on the connection path, and passed, peek, allow, deny, forget, items and
purge; keys are text.  State.status is one of:

    new    unknown (or forgotten) until now, first seen now: defer
    wait   seen before, the delay is not over: defer, State.left seconds to go
    pass   retried after the delay: passes from now on
    known  passed before, its lifetime refreshed now

The pass count (postgrey's auto-allowlist): check and passed given most > 0
also count the pass of a key that passes, at most one every COUNT_EVERY
seconds and no more than most, and say in State.passes how many are
counted; greylist -c trusts a network with most passes.  The count lives
and dies with the key's pass: a key greylisted anew (expired, deny,
forget) starts from none.  Without most nothing is counted or read, and
State.passes is 0; peek always reads it.

The stores: the directory store (dirstore.py) and Redis (redisstore.py).
"""


COUNT_EVERY = 3600  # one pass an hour at most counts, as postgrey counts its clients


class Timers:
    """The three greylisting timers, in seconds."""

    __slots__ = ("delay", "window", "lifetime")

    def __init__(self, delay=300, window=86400, lifetime=36 * 86400):
        self.delay = delay
        self.window = window
        self.lifetime = lifetime


class State:
    """What a store knows about a key: status, first seen, last pass, wait left, passes counted."""

    __slots__ = ("status", "first", "last", "left", "passes")

    def __init__(self, status, first=None, last=None, left=0, passes=0):
        self.status = status
        self.first = first
        self.last = last
        self.left = left
        self.passes = passes

    @property
    def defer(self):
        return self.status in ("new", "wait")

    def __repr__(self):
        return "State(%r, first=%r, last=%r, left=%r, passes=%r)" % (
            self.status, self.first, self.last, self.left, self.passes)

    def __eq__(self, other):
        return isinstance(other, State) and (
            (self.status, self.first, self.last, self.left, self.passes)
            == (other.status, other.first, other.last, other.left, other.passes))


def waiting(first, now, timers):
    """Return the State of an unproven key first seen at first."""
    # A concurrent connection's first sight may be a moment after ours.
    left = min(first + timers.delay - now, timers.delay)
    if left > 0:
        return State("wait", first, left=left)
    return State("pass", first, last=now)


class StoreError(Exception):
    """The store cannot be read or written; the message says what failed."""


class Store:
    """The interface every store implements; times are seconds since the epoch."""

    def __init__(self, where, timers=None):
        self.timers = timers or Timers()

    def check(self, key, now, most=0):
        """Apply the timers to key at time now in one atomic step; return its State.

        With most, a pass is counted too (see the module's text).
        """
        raise NotImplementedError

    def passed(self, key, now, most=0):
        """Refresh key and return its State ("known") if it passed and is alive.

        Otherwise change nothing and return None.  With most, the pass is
        counted too.
        """
        raise NotImplementedError

    def peek(self, key, now):
        """Return the State check would return, changing nothing."""
        raise NotImplementedError

    def allow(self, key, now):
        """Let key pass from now on, for one lifetime."""
        raise NotImplementedError

    def deny(self, key, now):
        """Take key's pass away: it is greylisted anew from now."""
        raise NotImplementedError

    def forget(self, key, now):
        """Remove everything the store knows about key."""
        raise NotImplementedError

    def items(self, now):
        """Yield (key, State) for every live key, each once."""
        raise NotImplementedError

    def purge(self, now):
        """Remove dead state, safely while connections are served (a no-op where it expires alone)."""
        raise NotImplementedError

    def close(self):
        """Let go of what the store holds open (a connection to a server)."""


def open_store(where, timers):
    """Return the store at where: a directory, or a URL of another store."""
    if "://" in where:
        scheme = where.split("://", 1)[0]
        if scheme in ("redis", "rediss", "unix"):
            from qtools.redisstore import RedisStore

            return RedisStore(where, timers)
        raise StoreError("unknown store: %s" % where)
    from qtools.dirstore import DirStore

    return DirStore(where, timers)


def __getattr__(name):
    """Give the directory store's names from here too, where they were first."""
    if name in ("DirStore", "file_name", "key_of"):
        from qtools import dirstore

        return getattr(dirstore, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def _when(t):
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def describe(key, state):
    """Return one line of `greylist -q` output for key."""
    from qtools.core import clean

    # A key comes from the store's names and the clients' addresses: no
    # control byte of theirs reaches root's terminal.
    parts = [clean(key, None), state.status]
    if state.first is not None and state.status != "new":
        parts.append("first=" + _when(state.first))
    if state.last is not None:
        parts.append("last=" + _when(state.last))
    if state.passes:
        parts.append("passes=%d" % state.passes)
    if state.defer:
        parts.append("left=%d" % -(-state.left // 1))
    return " ".join(parts)


def admin(letter, store, keys, now, write):
    """Run a command-line request: P purge, q query, A allow, D deny.

    keys are store keys; write(line) prints a line.  Return the exit code.
    """
    if letter == "P":
        if keys:
            return 100
        store.purge(now)  # silent, as a cron job should be when all is well
    elif letter == "q":
        if keys:
            for key in keys:
                write(describe(key, store.peek(key, now)))
        else:
            for key, state in store.items(now):
                write(describe(key, state))
    elif not keys:
        return 100
    else:
        for key in keys:
            (store.allow if letter == "A" else store.deny)(key, now)
            write(describe(key, store.peek(key, now)))
    return 0
