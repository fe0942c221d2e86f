# SPDX-License-Identifier: ISC
"""Greylist state in Redis, shared by the MX hosts of one domain.

One Redis hash per key, named PREFIX + key, with the field "first" (first
seen, while unproven) and "last" (last accepted connection, once passed),
"passes" and "counted" (the passes counted and when the last one was, see
store.py),
times in seconds since the epoch by the clock of the MX that writes them,
so every MX applies the timers of store.py to the same numbers.  check is one server-side
script: it reads, decides and writes in one atomic step, so two MX hosts
never race on a key.  Each write sets the key's time to live to the window
(unproven) or the lifetime (passed): Redis expires dead state alone and
purge has nothing to do.

The client is qtools.resp, not redis-py, whose import costs more than a
whole connection of the other programs.  It connects at the store's first
command: clients that need no state never reach Redis.
"""

from qtools import resp
from qtools.store import COUNT_EVERY, State, Store, StoreError, waiting

PREFIX = "qtools:greylist:"
# Seconds to wait for the connection and for the reply: a decision is one
# connect and one command.  The URL's socket_connect_timeout and
# socket_timeout set other values.
TIMEOUT = 1.0

# KEYS[1] the key; ARGV: now, delay, window, lifetime, window ms, lifetime
# ms, "check" or "passed", most passes to count (0: none), seconds between
# two counted.  Returns {status, first, last, passes} as text.
SCRIPT = """
local now = tonumber(ARGV[1])
local most = tonumber(ARGV[8])
local h = redis.call('HMGET', KEYS[1], 'first', 'last', 'passes', 'counted')
local first, last = h[1], h[2]
local function count()
  if most <= 0 then return '0' end
  local passes = tonumber(h[3] or '0')
  if passes < most and (passes == 0 or now >= tonumber(h[4]) + tonumber(ARGV[9])) then
    passes = passes + 1
    redis.call('HSET', KEYS[1], 'passes', passes)
    redis.call('HSET', KEYS[1], 'counted', ARGV[1])
  end
  return tostring(passes)
end
if last and now < tonumber(last) + tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'last', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  return {'known', '', ARGV[1], count()}
end
if ARGV[7] == 'passed' then
  return {'none', '', '', '0'}
end
if not first or now >= tonumber(first) + tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'first', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {'new', ARGV[1], '', '0'}
end
if tonumber(ARGV[2]) > 0 and tonumber(first) + tonumber(ARGV[2]) > now then
  return {'wait', first, '', '0'}
end
redis.call('HSET', KEYS[1], 'last', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
h[3] = false  -- passing anew: what an earlier life of the key counted is gone
return {'pass', first, ARGV[1], count()}
"""


def _text(number):
    return repr(float(number))


def _count(text):
    """Return a pass count stored as text, or raise ValueError."""
    value = int(text.decode("ascii") if isinstance(text, bytes) else text)
    if not 0 <= value < 1000000:
        raise ValueError(text)
    return value


def _number(text):
    """Return a time stored as text ("1795305600.0"), or raise ValueError."""
    value = float(text.decode("ascii") if isinstance(text, bytes) else text)
    if not 0 <= value < 1e12:  # nan, inf and the impossible: not a time of ours
        raise ValueError(text)
    return value


def describe_url(url):
    """Return url without its user, password and options, for messages and logs."""
    scheme, _, rest = url.partition("://")
    # From the last @ to the options: a password may hold an @ or a / its
    # writer forgot to escape, and must not show even then.  A ? before
    # that @ may have been the password's own (or an option's @): then
    # nothing after the scheme is sure not to be part of a password.
    head, _, tail = rest.rpartition("@")
    if "?" in head:
        return "%s://..." % scheme
    return "%s://%s" % (scheme, tail.split("?", 1)[0])


class RedisStore(Store):
    """Greylist state in one Redis database, safe for many MX hosts at once."""

    def __init__(self, url, timers=None):
        super().__init__(url, timers)
        self.url, self.name = url, describe_url(url)
        self._client = self._down = None

    @property
    def client(self):
        """The connection to Redis, from the URL at first use (it connects at its first command)."""
        if self._client is None:
            try:
                self._client = resp.Client(self.url, TIMEOUT)
            except ValueError as error:
                raise StoreError("invalid store %s: %s" % (self.name, error))
        return self._client

    def _call(self, what, *args):
        """Run one command or pipeline of the client; turn any failure into StoreError."""
        if self._down is not None:  # the connection's one timeout is spent
            raise StoreError(self._down)
        try:
            return what(*args)
        except (OSError, resp.ReplyError) as error:
            # No retries: a Redis that is down costs one timeout, once.
            self._down = "unable to use %s: %s" % (self.name, _reason(error))
        self.close()
        raise StoreError(self._down)

    def _key(self, key):
        return (PREFIX + key).encode("utf-8", "surrogateescape")

    def _script(self, key, now, mode, most=0):
        t = self.timers
        # EVAL, not EVALSHA with a fallback on NOSCRIPT: Redis keeps the
        # compiled script by its digest either way, and its 900 bytes cost
        # nothing next to the round trip.
        return self._call(
            self.client.command, "EVAL", SCRIPT, 1, self._key(key), _text(now), _text(t.delay),
            _text(t.window), _text(t.lifetime), int(t.window * 1000), int(t.lifetime * 1000), mode,
            int(most), COUNT_EVERY)

    def _malformed(self, command, reply):
        """Return the StoreError for a reply or a stored value that makes no sense."""
        from qtools.core import clean

        return StoreError("unable to use %s: malformed reply to %s: %s" % (
            self.name, command, clean(repr(reply), 60)))

    def _fields(self, command, reply, count):
        """Return reply as count texts, or raise StoreError: a server may answer anything."""
        if isinstance(reply, list) and len(reply) == count and all(
                x is None or isinstance(x, bytes) for x in reply):
            return reply
        raise self._malformed(command, reply)

    def check(self, key, now, most=0):
        """Apply the timers to key at time now in one atomic step; return its State."""
        reply = self._fields("EVAL", self._script(key, now, "check", most), 4)
        status, first, last, passes = reply
        try:
            if status == b"known":
                return State("known", last=_number(last), passes=_count(passes))
            if status == b"new":
                return State("new", now, left=self.timers.delay)
            if status in (b"wait", b"pass"):
                state = waiting(_number(first), now, self.timers)
                state.passes = _count(passes)
                return state
        except (TypeError, ValueError):
            pass
        raise self._malformed("EVAL", reply)

    def passed(self, key, now, most=0):
        """Refresh key and return its State if it passed and is alive; else change nothing, None."""
        reply = self._fields("EVAL", self._script(key, now, "passed", most), 4)
        try:
            if reply[0] == b"known":
                return State("known", last=_number(reply[2]), passes=_count(reply[3]))
            if reply[0] == b"none":
                return None
        except (TypeError, ValueError):
            pass
        raise self._malformed("EVAL", reply)

    def _state(self, first, last, now, passes=None):
        try:
            if last is not None and now < _number(last) + self.timers.lifetime:
                return State("known", last=_number(last), passes=_count(passes or b"0"))
            if first is None or now >= _number(first) + self.timers.window:
                return State("new", now, left=self.timers.delay)
            return waiting(_number(first), now, self.timers)
        except (TypeError, ValueError):
            raise self._malformed("HMGET", [first, last, passes])

    def peek(self, key, now):
        """Return the State check would return, changing nothing."""
        reply = self._call(self.client.command, "HMGET", self._key(key), "first", "last", "passes")
        first, last, passes = self._fields("HMGET", reply, 3)
        return self._state(first, last, now, passes)

    def _transaction(self, key, *steps):
        self._call(self.client.pipeline,
                   [(name, self._key(key), *args) for name, *args in steps], True)

    def allow(self, key, now):
        """Let key pass from now on, for one lifetime."""
        self._transaction(key, ("HSET", "last", _text(now)),
                          ("PEXPIRE", int(self.timers.lifetime * 1000)))

    def deny(self, key, now):
        """Take key's pass away: it is greylisted anew from now."""
        self._transaction(key, ("DEL",), ("HSET", "first", _text(now)),
                          ("PEXPIRE", int(self.timers.window * 1000)))

    def forget(self, key, now):
        """Remove everything the store knows about key."""
        self._call(self.client.command, "DEL", self._key(key))

    def _names(self):
        """Return the sorted names of every key of ours, by SCAN."""
        names, cursor = set(), b"0"  # a set: SCAN may repeat a name
        while True:
            cursor, found = self._call(self.client.command, "SCAN", cursor,
                                       "MATCH", PREFIX + "*", "COUNT", 1000)
            names.update(found)
            if cursor == b"0":
                return sorted(names)

    def items(self, now):
        """Yield (key, State) for every live key, passed keys first."""
        names = self._names()
        later = []
        for start in range(0, len(names), 1000):
            batch = names[start:start + 1000]
            replies = self._call(self.client.pipeline,
                                 [("HMGET", name, "first", "last", "passes") for name in batch])
            for name, reply in zip(batch, replies):
                first, last, passes = self._fields("HMGET", reply, 3)
                key = name[len(PREFIX):].decode("utf-8", "surrogateescape")
                state = self._state(first, last, now, passes)
                if state.status == "known":
                    yield key, state
                elif state.status != "new":
                    later.append((key, state))
        yield from later

    def purge(self, now):
        """Check that Redis answers; it expires dead state alone.  Return 0."""
        self._call(self.client.command, "PING")
        return 0

    def close(self):
        """Let go of the connection to Redis."""
        if self._client is not None:
            self._client.close()


def _reason(error):
    """Return why a command failed in lowercase system-error words."""
    from qtools.core import clean, strerror

    if isinstance(error, OSError):
        return strerror(error)
    # A reply error: "READONLY You can't write ... replica. script: ..."
    text = str(error).split(". script:")[0]
    code, _, rest = text.partition(" ")
    if code.isupper() and rest:
        text = rest
    text = clean(text).rstrip(".") or "error"
    if text[1:2].islower():  # "You can't", not "AUTH <password>" or "DB index"
        text = text[:1].lower() + text[1:]
    return text
