"""An API budget shared in Redis by every process that calls one provider account.

A per-process :class:`~paastis.providers.http.RateLimiter` keeps one process within the
budget, but with the Redis registry paastis runs several gunicorn workers, maybe on several
machines, all calling the same account: each would spend the whole budget. This limiter
keeps a sliding log of the calls of the last window in a Redis sorted set (timestamps from
Redis' own clock, so machines need not agree on the time), and lets a call through only
while the log holds fewer than ``limit``. A 429 blocks every process for the wait it asked.
While Redis cannot be reached (as the instance's :class:`~paastis.redis_link.RedisLink` knows,
and logs once for everything that uses Redis), each process falls back to its own bucket.
"""

from __future__ import annotations

import itertools
import logging
import time

from .. import deadlines
from ..redis_link import Degraded, RedisLink
from .http import RateLimiter
from .scheduler import BACKGROUND_PATIENCE

log = logging.getLogger(__name__)

# KEYS: log, blocked-until, urgent-waiting. ARGV: window ms, limit, member, background (0/1), reserve.
# Returns ms to wait (0: the call may go). Background calls leave ``reserve`` slots of the window
# free and give way while an urgent call waits (it flags itself for as long as it will wait).
ACQUIRE_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
if blocked > now then
  return blocked - now
end
local background = ARGV[4] == '1'
if background then
  local urgent = redis.call('PTTL', KEYS[3])
  if urgent > 0 then
    return urgent
  end
end
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if background then
  limit = math.max(1, limit - tonumber(ARGV[5]))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
local wait = math.max(1, tonumber(oldest[2]) + window - now)
if not background then
  redis.call('SET', KEYS[3], '1', 'PX', wait + 250)
end
return wait
"""
# KEYS: blocked-until. ARGV: ms to block.
BLOCK_SCRIPT = """
local t = redis.call('TIME')
local ms = tonumber(ARGV[1])
local until_ms = t[1] * 1000 + math.floor(t[2] / 1000) + ms
if until_ms > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], until_ms, 'PX', ms)
end
return until_ms
"""


class SharedRateLimiter(RateLimiter):
    """At most ``limit`` calls in any ``window`` seconds, counted in Redis under ``key``."""

    def __init__(
        self,
        link: RedisLink,
        key: str,
        limit: int,
        window: float = 60.0,
        local: tuple[float, float] | None = None,
        owns_link: bool = False,
    ):
        per_minute, burst = local or (limit * 60 / window, limit)
        super().__init__(per_minute, burst)  # the fallback while Redis is unreachable
        self.link = link
        self.owns_link = owns_link
        client = link.client
        self.key = key
        self.blocked_key = key + ":blocked"
        self.urgent_key = key + ":urgent"
        self.limit = limit
        self.shared_reserve = max(1, limit // 10)
        self.window_ms = max(1, int(window * 1000))
        self._members = itertools.count()
        self._member_prefix = f"{id(self):x}:{time.monotonic_ns()}"
        self._acquire = client.register_script(ACQUIRE_SCRIPT)
        self._block = client.register_script(BLOCK_SCRIPT)

    @classmethod
    def from_url(cls, url: str, key: str, limit: int, socket_timeout: float, **kwargs) -> SharedRateLimiter:
        """A limiter with a Redis link of its own (paastis itself shares the instance's link)."""
        return cls(RedisLink(url, "", socket_timeout), key, limit, owns_link=True, **kwargs)

    def acquire(self, background: bool = False) -> None:
        patient_until = time.monotonic() + BACKGROUND_PATIENCE
        while (wait := self.try_take(background, time.monotonic() <= patient_until)) > 0:
            deadlines.sleep(wait)  # stops at the current operation's deadline

    def try_take(self, background: bool = False, patient: bool = True) -> float:
        """A slot in the shared window now (0.0), or the seconds to wait; the local bucket while Redis is out.

        A low-class call that waited ``BACKGROUND_PATIENCE`` stops yielding to other processes'
        urgent calls: it is never starved by a busy fleet (within this process, the scheduler orders calls).
        """
        wait = self.delay(background and patient)
        if wait is None:
            return super().try_take(background)
        return wait

    def remaining(self) -> float:
        """Slots left in the shared window (the local bucket's while Redis is out of reach)."""
        try:
            now_ms = int(time.time() * 1000)
            used = self.link.must(lambda: self.link.client.zcount(self.key, now_ms - self.window_ms, "+inf"))
        except Degraded:
            return super().remaining()
        return float(max(0, self.limit - int(used)))

    def room(self) -> float:
        return max(0.0, self.remaining() - self.shared_reserve)

    def delay(self, background: bool = False) -> float | None:
        """Take a slot now (0.0), or say how long to wait for one; None while Redis is out of reach."""
        member = f"{self._member_prefix}:{next(self._members)}"
        keys = [self.key, self.blocked_key, self.urgent_key]
        args = [self.window_ms, self.limit, member, int(background), self.shared_reserve]
        try:
            wait_ms = int(self.link.must(lambda: self._acquire(keys=keys, args=args)))
        except Degraded:
            return None
        return wait_ms / 1000

    def slow_down(self, seconds: float) -> None:
        super().slow_down(seconds)
        if seconds > 0:
            self.link.attempt(lambda: self._block(keys=[self.blocked_key], args=[max(1, int(seconds * 1000))]))

    def close(self) -> None:
        if self.owns_link:
            self.link.close()
