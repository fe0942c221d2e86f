# SPDX-License-Identifier: ISC
"""throttle's state in Redis, shared by the MX hosts behind one name.

Keys (PREFIX is "qtools:throttle:"):

    PREFIX ip:ADDRESS, PREFIX net:NETWORK
        Sorted sets of the connections held: a member per connection (a
        token), scored with the time its lease ends.  A lease lasts LEASE
        seconds and is renewed every LEASE/3 seconds by a small watcher
        process for as long as the connection lives; the watcher gives the
        slot back the moment the connection ends.  If the watcher dies with
        it (the host goes down), the lease ends alone: a slot is never lost
        for longer than LEASE seconds.
    PREFIX rate:NETWORK:N
        A hash of the counts ("conn", "mail", "rcpt") of window number N
        (the window of seconds N*window to (N+1)*window), kept two windows.

Every decision is one server-side script, so two MX hosts never race on a
count.  Times are the writing MX host's clock, as for greylist.
"""

import os

from qtools.throttlestore import Admission, StoreError

PREFIX = "qtools:throttle:"
TIMEOUT = 1.0
LEASE = 90  # seconds; refreshed every LEASE / 3

# KEYS: ip set, net set, this window's hash, the previous window's hash.
# ARGV: now, lease end, token, maxip, maxnet, rate, weight of the previous
# window, lease ms, two windows in ms.
ADMIT = """
local now, token = ARGV[1], ARGV[3]
local maxip, maxnet, rate = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local nip, nnet, seen = 0, 0, 0
if maxip > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  nip = redis.call('ZCARD', KEYS[1])
  if nip >= maxip then return {'ip', nip, 0, '0'} end
end
if maxnet > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  nnet = redis.call('ZCARD', KEYS[2])
  if nnet >= maxnet then return {'net', nip, nnet, '0'} end
end
if rate > 0 then
  seen = tonumber(redis.call('HGET', KEYS[3], 'conn') or '0')
    + tonumber(redis.call('HGET', KEYS[4], 'conn') or '0') * tonumber(ARGV[7])
  if seen >= rate then return {'rate', nip, nnet, tostring(seen)} end
  redis.call('HINCRBY', KEYS[3], 'conn', 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[9])
  seen = seen + 1
end
for i, limit in ipairs({maxip, maxnet}) do
  if limit > 0 then
    redis.call('ZADD', KEYS[i], ARGV[2], token)
    redis.call('PEXPIRE', KEYS[i], ARGV[8])
  end
end
if maxip > 0 then nip = nip + 1 end
if maxnet > 0 then nnet = nnet + 1 end
return {'ok', nip, nnet, tostring(seen)}
"""

# KEYS: this window's hash, the previous one's.  ARGV: field, limit,
# weight of the previous window, two windows in ms.
COUNT = """
local seen = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
  + tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') * tonumber(ARGV[3])
if seen < tonumber(ARGV[2]) then
  redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return tostring(seen)
"""

# KEYS: the sets the connection holds a slot in.  ARGV: lease end (or
# "release"), token, lease ms.
RENEW = """
for i, key in ipairs(KEYS) do
  if ARGV[1] == 'release' then
    redis.call('ZREM', key, ARGV[2])
  else
    redis.call('ZADD', key, ARGV[1], ARGV[2])
    redis.call('PEXPIRE', key, ARGV[3])
  end
end
return 1
"""


class RedisStore:
    """throttle's state in one Redis database, one limit for many MX hosts.

    The connection is greylist's Redis store's (qtools.redisstore): its
    URL forms, its time limits, and one timeout at most when Redis is down.
    """

    def __init__(self, url, lease=LEASE):
        from qtools.redisstore import RedisStore as Link

        self.link, self.lease = Link(url), lease
        self._held = []
        self.token = None

    def _call(self, *args):
        return self.link._call(self.link.client.command, *args)

    def _windows(self, net, window, now):
        """Return (this window's key, the previous one's, weight of the previous)."""
        number = int(now // window)
        weight = max(0.0, 1.0 - (now - number * window) / window)
        keys = ["%srate:%s:%d" % (PREFIX, net, n) for n in (number, number - 1)]
        return keys[0], keys[1], repr(weight)

    def admit(self, ip, net, maxip, maxnet, rate, window, now):
        """Take a slot for ip and one for net, then count a new connection of net.

        A limit of 0 is off.  Return an Admission; when it is "ok", keep()
        must be called for the slots to outlive LEASE seconds.
        """
        if self.token is None:
            self.token = "%s:%d:%s" % (os.uname().nodename, os.getpid(), os.urandom(6).hex())
        sets = [PREFIX + "ip:" + ip, PREFIX + "net:" + net]
        cur, prev, weight = self._windows(net, window, now)
        status, nip, nnet, seen = self._call(
            "EVAL", ADMIT, 4, *sets, cur, prev, repr(now), repr(now + self.lease), self.token,
            maxip, maxnet, rate, weight, int(self.lease * 1000), int(2000 * window))
        status = status.decode()
        if status == "ok":
            self._held = [key for key, limit in zip(sets, (maxip, maxnet)) if limit]
        return Admission(status, nip, nnet, float(seen))

    def count(self, net, kind, limit, window, now):
        """Count one more kind for net unless that reaches limit; return the count before."""
        cur, prev, weight = self._windows(net, window, now)
        return float(self._call("EVAL", COUNT, 2, cur, prev, kind, limit, weight,
                                int(2000 * window)))

    def renew(self, now, release=False):
        """Extend the lease of the slots held (or give them back)."""
        if self._held:
            self._call("EVAL", RENEW, len(self._held), *self._held,
                       "release" if release else repr(now + self.lease), self.token,
                       int(self.lease * 1000))

    def keep(self):
        """Start the watcher that renews the slots while the connection lives.

        The connection keeps the write end of a pipe open (inheritable, so
        the programs it execs and starts hold it too); the watcher, detached
        by a double fork, sees the pipe close when the last of them ends.
        """
        if not self._held:
            return
        import _signal

        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(w)
                if os.fork() == 0:
                    _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
                    self._watch(r)
            finally:
                os._exit(0)
        os.close(r)
        os.waitpid(pid, 0)
        os.set_inheritable(w, True)
        self._pipe = w  # open until the connection ends

    def _watch(self, r):
        import select
        import time

        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):  # the client sees the end when the connection ends, not us
            os.dup2(null, fd)
        os.close(null)
        link = self.link
        if link._client is not None and link._client.sock is not None:
            self._inherited = link._client  # the parent's: never closed by the collector
            os.close(link._client.sock.fileno())
            link._client = None
        poller = select.poll()
        poller.register(r, select.POLLIN)
        while not poller.poll(self.lease * 1000 / 3):
            self.link._down = None  # a Redis that was down may be back
            try:
                self.renew(time.time())
            except StoreError:
                pass  # the next renewal may succeed; the lease covers two misses
        self.link._down = None
        try:
            self.renew(time.time(), release=True)
        except StoreError:
            pass  # the lease ends alone

    def query(self, ip, net, window, now):
        """Return {"ip": holders, "net": holders, "conn"/"mail"/"rcpt": rates} for -q."""
        cur, prev, weight = self._windows(net, window, now)
        found = {}
        for name in ("ip", "net"):
            key = PREFIX + name + ":" + (ip if name == "ip" else net)
            members = self._call("ZRANGEBYSCORE", key, "(" + repr(now), "+inf")
            found[name] = [m.decode("utf-8", "replace") for m in members]
        counts = [self._call("HMGET", key, "conn", "mail", "rcpt") for key in (cur, prev)]
        for i, kind in enumerate(("conn", "mail", "rcpt")):
            found[kind] = int(counts[0][i] or 0) + int(counts[1][i] or 0) * float(weight)
        return found

    def idle(self):
        """Let go of the connection to Redis: the watcher has its own."""
        self.close()

    def close(self):
        self.link.close()
