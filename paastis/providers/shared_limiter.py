"""An API budget shared in Redis by every process that calls one provider account.

A per-process :class:`~paastis.providers.http.RateLimiter` keeps one process within the
budget, but with the Redis registry paastis runs several gunicorn workers, maybe on several
machines, all calling the same account: each would spend the whole budget. This limiter
keeps a sliding log of the calls of the last window in a Redis sorted set (timestamps from
Redis' own clock, so machines need not agree on the time), and lets a call through only
while the log holds fewer than ``limit``. A 429 blocks every process for the wait it asked.
While Redis cannot be reached, each process falls back to its own bucket (logged once).
"""

from __future__ import annotations

import itertools
import logging
import time

import redis

from .. import deadlines
from ..redis_link import redis_client
from .http import RateLimiter

log = logging.getLogger(__name__)

RETRY_REDIS_AFTER = 5.0  # seconds of local-only limiting after Redis failed

# KEYS: log, blocked-until. ARGV: window ms, limit, member. Returns ms to wait (0: the call may go).
ACQUIRE_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
if blocked > now then
  return blocked - now
end
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
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
        client: redis.Redis,
        key: str,
        limit: int,
        window: float = 60.0,
        local: tuple[float, float] | None = None,
    ):
        per_minute, burst = local or (limit * 60 / window, limit)
        super().__init__(per_minute, burst)  # the fallback while Redis is unreachable
        self.client = client
        self.key = key
        self.blocked_key = key + ":blocked"
        self.limit = limit
        self.window_ms = max(1, int(window * 1000))
        self._members = itertools.count()
        self._member_prefix = f"{id(self):x}:{time.monotonic_ns()}"
        self._acquire = client.register_script(ACQUIRE_SCRIPT)
        self._block = client.register_script(BLOCK_SCRIPT)
        self._local_until = 0.0

    @classmethod
    def from_url(cls, url: str, key: str, limit: int, socket_timeout: float, **kwargs) -> SharedRateLimiter:
        return cls(redis_client(url, socket_timeout), key, limit, **kwargs)

    def acquire(self) -> None:
        while True:
            wait = self.delay()
            if wait is None:
                super().acquire()
                return
            if wait <= 0:
                return
            deadlines.sleep(wait)  # stops at the current operation's deadline

    def delay(self) -> float | None:
        """Take a slot now (0.0), or say how long to wait for one; None while Redis is out of reach."""
        if time.monotonic() < self._local_until:
            return None
        member = f"{self._member_prefix}:{next(self._members)}"
        try:
            wait_ms = int(self._acquire(keys=[self.key, self.blocked_key], args=[self.window_ms, self.limit, member]))
        except redis.RedisError as error:
            self._redis_failed(error)
            return None
        return wait_ms / 1000

    def slow_down(self, seconds: float) -> None:
        super().slow_down(seconds)
        if time.monotonic() < self._local_until or seconds <= 0:
            return
        try:
            self._block(keys=[self.blocked_key], args=[max(1, int(seconds * 1000))])
        except redis.RedisError as error:
            self._redis_failed(error)

    def close(self) -> None:
        self.client.close()

    def _redis_failed(self, error: Exception) -> None:
        if time.monotonic() >= self._local_until:
            log.warning(
                "rate limit: Redis unreachable (%s): counting API calls in this process only for %gs",
                type(error).__name__,
                RETRY_REDIS_AFTER,
            )
        self._local_until = time.monotonic() + RETRY_REDIS_AFTER
