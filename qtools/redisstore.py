# SPDX-License-Identifier: ISC
"""Greylist state in Redis, shared by the MX hosts of one domain.

One Redis hash per key, named PREFIX + key, with the field "first" (first
seen, while unproven) and "last" (last accepted connection, once passed),
times in seconds since the epoch by the clock of the MX that writes them,
so every MX applies the timers of store.py to the same numbers.  check is one server-side
script: it reads, decides and writes in one atomic step, so two MX hosts
never race on a key.  Each write sets the key's time to live to the window
(unproven) or the lifetime (passed): Redis expires dead state alone and
purge has nothing to do.

redis-py is imported at the store's first command, never before: its import
costs more than a whole connection of the other programs, and clients that
need no state must not pay it.
"""

from qtools.store import State, Store, StoreError, waiting

PREFIX = "qtools:greylist:"
# Seconds to wait for the connection and for the reply: a decision is one
# connect and one command.  The URL's socket_connect_timeout and
# socket_timeout set other values.
TIMEOUT = 1.0

# KEYS[1] the key; ARGV: now, delay, window, lifetime, window ms, lifetime
# ms, "check" or "passed".  Returns {status, first, last} as text.
SCRIPT = """
local now = tonumber(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'first', 'last')
local first, last = h[1], h[2]
if last and now < tonumber(last) + tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'last', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  return {'known', '', ARGV[1]}
end
if ARGV[7] == 'passed' then
  return {'none', '', ''}
end
if not first or now >= tonumber(first) + tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'first', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {'new', ARGV[1], ''}
end
if tonumber(ARGV[2]) > 0 and tonumber(first) + tonumber(ARGV[2]) > now then
  return {'wait', first, ''}
end
redis.call('HSET', KEYS[1], 'last', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {'pass', first, ARGV[1]}
"""


def _text(number):
    return repr(float(number))


def describe_url(url):
    """Return url without its password, for messages and logs."""
    scheme, _, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return "%s://%s" % (scheme, rest.split("?", 1)[0])


class RedisStore(Store):
    """Greylist state in one Redis database, safe for many MX hosts at once."""

    def __init__(self, url, timers=None):
        super().__init__(url, timers)
        self.url, self.name = url, describe_url(url)
        self._client = self._down = None
        self._errors = ()

    @property
    def redis(self):
        """The redis-py client, made on first use: clients that need no state never import it."""
        if self._client is None:
            try:
                import redis
                from redis.backoff import NoBackoff
                from redis.retry import Retry
            except ImportError as error:
                raise StoreError("unable to use %s: %s" % (self.name, error))
            self._errors = redis.RedisError
            # No retries: a Redis that is down costs one timeout, once.
            options = dict(socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT,
                           retry=Retry(NoBackoff(), 0))
            if int(redis.__version__.split(".")[0]) >= 5:
                options["protocol"] = 2  # no HELLO: one round trip a decision
            try:
                self._client = redis.Redis.from_url(self.url, **options)
            except (ValueError, TypeError) as error:
                raise StoreError("invalid store %s: %s" % (self.name, error))
        return self._client

    def _call(self, what, *args):
        """Run one redis-py call; turn any Redis failure into StoreError."""
        if self._down is not None:  # the connection's one timeout is spent
            raise StoreError(self._down)
        try:
            return what(*args)
        except self._errors as error:
            reason = _reason(error)
        except TypeError as error:  # an option in the URL that redis-py does not know
            reason = str(error)
        self._down = "unable to use %s: %s" % (self.name, reason)
        self.close()
        raise StoreError(self._down)

    def _key(self, key):
        return (PREFIX + key).encode("utf-8", "surrogateescape")

    def _script(self, key, now, mode):
        t = self.timers
        return self._call(
            self.redis.eval, SCRIPT, 1, self._key(key), _text(now), _text(t.delay),
            _text(t.window), _text(t.lifetime), int(t.window * 1000), int(t.lifetime * 1000), mode)

    def check(self, key, now):
        """Apply the timers to key at time now in one atomic step; return its State."""
        status, first, last = (x.decode() for x in self._script(key, now, "check"))
        if status == "known":
            return State("known", last=float(last))
        if status == "new":
            return State("new", now, left=self.timers.delay)
        return waiting(float(first), now, self.timers)

    def passed(self, key, now):
        """Refresh key and return True if it passed and is alive; else change nothing."""
        return self._script(key, now, "passed")[0] == b"known"

    def _state(self, first, last, now):
        if last is not None and now < float(last) + self.timers.lifetime:
            return State("known", last=float(last))
        if first is None or now >= float(first) + self.timers.window:
            return State("new", now, left=self.timers.delay)
        return waiting(float(first), now, self.timers)

    def peek(self, key, now):
        """Return the State check would return, changing nothing."""
        first, last = self._call(self.redis.hmget, self._key(key), "first", "last")
        return self._state(first, last, now)

    def _transaction(self, key, *steps):
        pipe = self.redis.pipeline(transaction=True)
        for name, *args in steps:
            getattr(pipe, name)(self._key(key), *args)
        self._call(pipe.execute)

    def allow(self, key, now):
        """Let key pass from now on, for one lifetime."""
        self._transaction(key, ("hset", "last", _text(now)),
                          ("pexpire", int(self.timers.lifetime * 1000)))

    def deny(self, key, now):
        """Take key's pass away: it is greylisted anew from now."""
        self._transaction(key, ("delete",), ("hset", "first", _text(now)),
                          ("pexpire", int(self.timers.window * 1000)))

    def forget(self, key, now):
        """Remove everything the store knows about key."""
        self._call(self.redis.delete, self._key(key))

    def items(self, now):
        """Yield (key, State) for every live key, passed keys first."""
        names = set(self._call(lambda: list(self.redis.scan_iter(
            match=PREFIX.encode() + b"*", count=1000))))  # SCAN may repeat a name
        names = sorted(names)
        later = []
        for start in range(0, len(names), 1000):
            pipe = self.redis.pipeline(transaction=False)
            for name in names[start:start + 1000]:
                pipe.hmget(name, "first", "last")
            for name, (first, last) in zip(names[start:], self._call(pipe.execute)):
                key = name[len(PREFIX):].decode("utf-8", "surrogateescape")
                state = self._state(first, last, now)
                if state.status == "known":
                    yield key, state
                elif state.status != "new":
                    later.append((key, state))
        yield from later

    def purge(self, now):
        """Check that Redis answers; it expires dead state alone.  Return 0."""
        self._call(self.redis.ping)
        return 0

    def close(self):
        """Let go of the connection to Redis."""
        if self._client is not None:
            try:
                self._client.close()
            except self._errors:
                pass


def _reason(error):
    """Return the cause of a redis-py error in lowercase system-error words."""
    from qtools.core import clean, strerror

    cause = error.__cause__ or error.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return strerror(cause)
    if type(error).__name__ == "TimeoutError" or "timeout" in str(error).lower():
        return "timed out"
    text = clean(str(error).split(". script:")[0]) or type(error).__name__
    return text[:1].lower() + text[1:]
