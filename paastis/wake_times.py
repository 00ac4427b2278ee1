"""How long apps take to wake, read from their past ``APP_STARTED`` events.

The waiting page tells a visitor what to expect, and the dashboard shows each app's last
wake. Both read the event history; the waiting page is rendered for every waiting browser,
so its figure is cached for a little while per app.
"""

from __future__ import annotations

import statistics
import threading
import time

from . import events as ev
from .events import Event, EventStore, EventStoreUnavailable

SAMPLE = 5  # the median of the last few wakes: one slow cold start does not set expectations
CACHE_SECONDS = 30.0
MAX_CACHED = 10_000
RECENT = 500  # how far back the dashboard looks for each app's last wake


class WakeTimes:
    def __init__(self, events: EventStore):
        self.events = events
        self._typical: dict[str, tuple[float, float | None]] = {}
        self._lock = threading.Lock()

    def typical(self, key: str) -> float | None:
        """The median duration of ``key``'s last wakes in seconds, or None when it never woke (that we know)."""
        now = time.monotonic()
        with self._lock:
            cached = self._typical.get(key)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        try:
            found = self.events.query(app=key, type=ev.APP_STARTED, limit=SAMPLE)
        except EventStoreUnavailable:
            return cached[1] if cached else None
        durations = [e.duration for e in found if e.duration is not None]
        value = statistics.median(durations) if durations else None
        if value is None:
            return None  # not cached: its first wake should show at once
        with self._lock:
            if len(self._typical) >= MAX_CACHED:
                self._typical.clear()
            self._typical[key] = (now, value)
        return value

    def latest(self) -> dict[str, Event]:
        """Each app's most recent wake among the last ``RECENT`` (one query for a whole page of apps)."""
        latest: dict[str, Event] = {}
        for event in self.events.query(type=ev.APP_STARTED, limit=RECENT):
            latest.setdefault(event.app, event)
        return latest
