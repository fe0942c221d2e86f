# SPDX-License-Identifier: ISC
"""qtools-adaptive's state in Redis, shared by the MX hosts of a domain.

The URL forms are greylist's.  Under PREFIX: "w:KEY" a hash of bucket
counts, "b:KEY" a block, "h:KEY" the offences, "x:KEY" an exempt client,
"p:HOST" the log positions of the host HOST (a hash, one field a log
directory).  Counts and positions go in one script (COMMIT), so a crash
between them cannot count a line twice; a block is made by BLOCK, which
refuses to make a second one, so two MX hosts that decide at once make one
block with one offence.  Redis expires every key alone.
"""

import json
import socket

from qtools import core, resp
from qtools.redisstore import _reason, describe_url
from qtools.adaptstore import EXEMPT_TIME, StateError

PREFIX = "qtools:adaptive:"
TIMEOUT = 10.0

# KEYS[1] positions, KEYS[2..] windows; ARGV: buckets, ttl ms, p, p times
# (log directory, its position), then per window: n, latest bucket, n times
# (bucket, attempts, bad).
COMMIT = """
local nb, ttl, at, out = tonumber(ARGV[1]), ARGV[2], 4 + 2 * tonumber(ARGV[3]), {}
for i = 4, at - 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
for k = 2, #KEYS do
  local n, latest = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  at = at + 2
  for i = 1, n do
    redis.call('HINCRBY', KEYS[k], ARGV[at] .. 'a', ARGV[at + 1])
    redis.call('HINCRBY', KEYS[k], ARGV[at] .. 'b', ARGV[at + 2])
    at = at + 3
  end
  local all, a, b = redis.call('HGETALL', KEYS[k]), 0, 0
  for j = 1, #all, 2 do
    local field = all[j]
    if tonumber(string.sub(field, 1, -2)) <= latest - nb then
      redis.call('HDEL', KEYS[k], field)
    elseif string.sub(field, -1) == 'a' then
      a = a + tonumber(all[j + 1])
    else
      b = b + tonumber(all[j + 1])
    end
  end
  redis.call('PEXPIRE', KEYS[k], ttl)
  out[#out + 1] = a
  out[#out + 1] = b
end
return out
"""

# KEYS: block, offences, exempt; ARGV: now, since, attempts, bad, offences
# ttl ms, then the block length after 0, 1, ... 20 offences.
BLOCK = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
  return nil
end
local offences = tonumber(redis.call('GET', KEYS[2]) or '0')
local length = tonumber(ARGV[6 + math.min(offences, 20)])
local untl = tonumber(ARGV[2]) + length
if untl <= tonumber(ARGV[1]) then
  return nil
end
local block = cjson.encode({['until'] = untl, since = tonumber(ARGV[2]), attempts = tonumber(ARGV[3]),
                            bad = tonumber(ARGV[4]), offences = offences})
redis.call('SET', KEYS[1], block, 'PX', math.ceil((untl - tonumber(ARGV[1])) * 1000))
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], math.ceil((untl - tonumber(ARGV[1])) * 1000) + ARGV[5])
return block
"""



class RedisState:
    """The counts and blocks in Redis; positions per host; the windows of a run in memory."""

    shared = True

    def __init__(self, url, rules, host=None):
        self.rules, self.name = rules, describe_url(url)
        self.host = host or socket.gethostname()
        try:
            self.client = resp.Client(url, TIMEOUT)
        except ValueError as error:
            raise core.Die(core.USAGE_EXIT, "invalid state %s: %s" % (self.name, error))
        self.windows, self.positions, self.local = {}, {}, {}

    def _call(self, what, *args):
        try:
            return what(*args)
        except (OSError, resp.ReplyError, ConnectionError) as error:
            self.client.close()
            raise StateError("unable to use %s: %s" % (self.name, _reason(error)))

    def _key(self, kind, key):
        return (PREFIX + kind + key).encode("utf-8", "surrogateescape")

    def lock(self):
        pass  # each change is one atomic script

    def load(self):
        saved = self._call(self.client.command, "HGETALL", self._key("p:", self.host))
        self.positions = {saved[i].decode("utf-8", "surrogateescape"): json.loads(saved[i + 1])
                          for i in range(0, len(saved), 2)}

    def commit(self, pending):
        """Add pending {key: {bucket: [attempts, bad]}} and the positions; return {key: (attempts, bad)}."""
        keys = sorted(pending)
        args = [self.rules.buckets, int((self.rules.window + self.rules.width) * 1000),
                len(self.positions)]
        for logdir, position in sorted(self.positions.items()):
            args += [logdir.encode("utf-8", "surrogateescape"), json.dumps(position)]
        for key in keys:
            buckets = pending[key]
            args += [len(buckets), max(buckets)]
            for index, (attempts, bad) in sorted(buckets.items()):
                args += [index, attempts, bad]
        names = [self._key("p:", self.host)] + [self._key("w:", k) for k in keys]
        sums = self._call(self.client.command, "EVAL", COMMIT, len(names), *names, *args)
        return {k: (sums[2 * i], sums[2 * i + 1]) for i, k in enumerate(keys)}

    def set_exempt(self, key, until):
        if self.local.get(key, 0) > until - 3600:
            return False  # said less than an hour ago
        self._call(self.client.command, "SET", self._key("x:", key), repr(until),
                   "PX", max(1, int(EXEMPT_TIME * 1000)))
        self.local[key] = until
        return self._call(self.client.command, "DEL", self._key("b:", key)) == 1

    def is_exempt(self, key, when):
        return self.local.get(key, 0) > when

    def blocked(self, key, when):
        return False  # BLOCK itself refuses a second block

    def block(self, key, since, attempts, bad, now):
        from qtools.attempts import ban_time

        lengths = [ban_time(n, self.rules) for n in range(21)]
        names = [self._key(kind, key) for kind in ("b:", "h:", "x:")]
        made = self._call(self.client.command, "EVAL", BLOCK, 3, *names, repr(now), repr(since),
                          attempts, bad, int(self.rules.maxtime * 1000), *lengths)
        return json.loads(made) if made else None

    def _names(self, kind):
        names, cursor = set(), b"0"
        while True:
            cursor, found = self._call(self.client.command, "SCAN", cursor, "MATCH",
                                       PREFIX + kind + "*", "COUNT", 1000)
            names.update(found)
            if cursor == b"0":
                return sorted(names)

    def current(self, now):
        names = self._names("b:")
        out = {}
        for start in range(0, len(names), 1000):
            batch = names[start:start + 1000]
            for name, value in zip(batch, self._call(self.client.command, "MGET", *batch)):
                if value:
                    block = json.loads(value)
                    if block["until"] > now:
                        key = name[len(PREFIX) + 2:].decode("utf-8", "surrogateescape")
                        out[key] = block
        return out

    def lift(self, key):
        names = [self._key(kind, key) for kind in ("b:", "h:", "w:")]
        found = self._call(self.client.command, "EXISTS", names[0])
        self._call(self.client.command, "DEL", *names)
        return found == 1

    def close(self):
        self.client.close()
