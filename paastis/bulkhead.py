"""The bulkhead: how many requests of one app a worker serves at once.

A gunicorn worker has a fixed number of threads. Without a bound, an app that hangs (or
a flood for one app) takes every thread, and every other app stops being served. With
it, the app's extra requests get a quick 503 while the other apps keep their threads.
The count is per worker process: it protects that worker's threads, which is what runs out.
"""

from __future__ import annotations

import threading
import time

WARN_EVERY = 10.0  # seconds between two "app is busy" warnings for one app


class Bulkhead:
    """At most ``limit`` admissions per app key at a time."""

    def __init__(self, limit: int):
        self.limit = limit
        self._counts: dict[str, int] = {}
        self._warned: dict[str, float] = {}
        self._lock = threading.Lock()

    def enter(self, key: str) -> bool:
        """Admit one request of ``key``, or refuse it (False) when the app already has ``limit``."""
        with self._lock:
            count = self._counts.get(key, 0)
            if count >= self.limit:
                return False
            self._counts[key] = count + 1
            return True

    def leave(self, key: str) -> None:
        """One admitted request of ``key`` ended; keys with nothing in flight are forgotten (bounded memory)."""
        with self._lock:
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
            else:
                self._counts.pop(key, None)

    def in_flight(self, key: str) -> int:
        return self._counts.get(key, 0)

    def should_warn(self, key: str) -> bool:
        """True at most once every ``WARN_EVERY`` seconds per app: a flood of refusals is one log line, not one each."""
        now = time.monotonic()
        with self._lock:
            if now - self._warned.get(key, -WARN_EVERY) < WARN_EVERY:
                return False
            self._warned[key] = now
            if len(self._warned) > 10_000:  # keys are known apps, but stay bounded anyway
                self._warned.clear()
            return True
