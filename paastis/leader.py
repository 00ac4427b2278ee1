"""Locks in Redis: one leader for the idle checks, one instance at a time per app.

Leadership is ``SET key token NX PX ttl``. The holder renews it from its own thread every
third of the TTL, so a long idle check (or a schedule longer than the TTL) never lets it
lapse; it is released only by its holder (compare-and-delete), and the other workers try to
take it at each tick, so a leader killed without a word is replaced within the TTL.

The per-app lock makes waking and stopping single-flight across instances: the instance
that holds it calls the provider, the others wait for its result (see ``paastis.lifecycle``).
It is renewed while its work runs, however long that takes (``CLUSTER_LOCK_TTL`` is only how
soon a dead holder's lock frees up).
While Redis is down nothing leads (no app is stopped), and apps are woken by each
instance's own single-flight, which is the best that can be done without a shared store.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from .redis_link import Degraded, RedisLink

log = logging.getLogger(__name__)

# Only the holder (the one that knows the token) may extend or delete a lock.
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLeadership:
    """The :class:`~paastis.supervisor.Leadership` of one worker, through a lock in Redis."""

    def __init__(self, link: RedisLink, ttl: float):
        self.link = link
        self.ttl_ms = max(1, int(ttl * 1000))
        self.key = link.key("supervisor", "leader")
        self.token = link.instance  # GET on the key tells an operator who leads
        self._renew_script = link.client.register_script(RENEW_SCRIPT)
        self._release_script = link.client.register_script(RELEASE_SCRIPT)
        self._held = threading.Event()
        self._stopping = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._held.is_set()

    def hold(self) -> bool:
        """Take the lock if it is free, or confirm that it is still ours."""
        try:
            ours = self.link.must(self._renew if self.held else self._acquire)
        except Degraded:
            self._lose("Redis is unreachable")
            return False
        if ours and not self.held:
            log.info("leader: %s now holds %s", self.token, self.key)
            self._held.set()
            self._start_renewer()
        elif not ours:
            self._lose("another worker holds it")
        return ours

    def confirm(self) -> bool:
        """Still the leader, asked of Redis now: a stop checks it just before calling the provider.

        False when Redis cannot say (degraded): nothing is stopped on a leadership that may have lapsed.
        """
        if not self.held:
            return False
        try:
            ours = self.link.must(self._renew)
        except Degraded:
            return False
        if not ours:
            self._lose("it expired or was taken")
        return ours

    def release(self) -> None:
        self._stopping.set()
        if not self.held:
            return
        self._held.clear()
        if self.link.attempt(lambda: self._release_script(keys=[self.key], args=[self.token])):
            log.info("leader: %s released %s", self.token, self.key)
        else:
            log.warning("leader: could not release %s (it expires by itself)", self.key)

    def _acquire(self) -> bool:
        if self.link.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return True
        return self._renew()  # still ours, from before an outage?

    def _renew(self) -> bool:
        return bool(self._renew_script(keys=[self.key], args=[self.token, self.ttl_ms]))

    def _lose(self, why: str) -> None:
        if self.held:
            self._held.clear()
            log.warning("leader: %s lost %s: %s", self.token, self.key, why)

    def _start_renewer(self) -> None:
        if self._renewer is None or not self._renewer.is_alive():
            self._renewer = threading.Thread(target=self._renew_loop, name="paastis-leader", daemon=True)
            self._renewer.start()

    def _renew_loop(self) -> None:
        """Renew every third of the TTL while we lead: two renewals may fail before the lock lapses."""
        while self.held and not self._stopping.wait(self.ttl_ms / 3000):
            if not self.held:
                return
            try:
                if not self.link.must(self._renew):
                    self._lose("it expired or was taken")
                    return
            except Degraded:
                pass  # try again; the lock lapses if Redis stays away


class ClusterLocks:
    """``cluster_lock(key)`` for the lifecycle: a per-app lock in Redis that lives as long as its work.

    Yields True when this instance holds the lock (or Redis is down: single-instance logic),
    False when another instance holds it. While held, a watchdog thread renews it every third
    of ``ttl``, so a before-stop hook followed by a slow provider call never outlives it; it is
    released by its holder (compare-and-delete), and expires ``ttl`` after its holder died.
    """

    def __init__(self, link: RedisLink, ttl: float = 30.0):
        self.link = link
        self.ttl_ms = max(3, int(ttl * 1000))
        self._renew_script = link.client.register_script(RENEW_SCRIPT)
        self._release_script = link.client.register_script(RELEASE_SCRIPT)
        self._held: dict[str, str] = {}  # lock name -> our token
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None

    @contextmanager
    def __call__(self, key: str) -> Iterator[bool]:
        if self.link.down:
            yield True
            return
        name = self.link.key("lock", key)
        token = uuid.uuid4().hex
        try:
            acquired = bool(self.link.must(lambda: self.link.client.set(name, token, nx=True, px=self.ttl_ms)))
        except Degraded:
            acquired = None
        if acquired is None:  # degraded: single-instance logic (a stop still refuses: see Stopper)
            yield True
            return
        if not acquired:
            yield False
            return
        self._hold(name, token)
        try:
            yield True
        finally:
            self._let_go(name)
            self.link.attempt(lambda: self._release_script(keys=[name], args=[token]))  # or it expires by itself

    def _hold(self, name: str, token: str) -> None:
        with self._lock:
            self._held[name] = token
            if self._watchdog is None or not self._watchdog.is_alive():
                self._watchdog = threading.Thread(target=self._renew_loop, name="paastis-locks", daemon=True)
                self._watchdog.start()

    def _let_go(self, name: str) -> None:
        with self._lock:
            self._held.pop(name, None)

    def _renew_loop(self) -> None:
        """Renew every held lock every third of the TTL; ends when none is held."""
        while True:
            time.sleep(self.ttl_ms / 3000)
            with self._lock:
                held = dict(self._held)
                if not held:
                    self._watchdog = None
                    return
            for name, token in held.items():
                self._renew(name, token)

    def _renew(self, name: str, token: str) -> None:
        try:
            renewed = self.link.must(lambda: self._renew_script(keys=[name], args=[token, self.ttl_ms]))
        except Degraded:
            return  # tried again at the next round; the lock lapses if Redis stays away
        if not renewed and name in self._held:
            log.warning(
                "lock %s expired while its work was running (Redis lost it, or it was not renewed in time)", name
            )
