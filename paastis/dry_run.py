"""``PAASTIS_DRY_RUN=true``: paastis proxies and wakes as usual, but where it would stop an app it only says so.

A would-be stop records ``APP_WOULD_STOP`` (with the reason: ``idle``, ``schedule``, ``manual``)
and a log line, once: the app is then held as "would be asleep" (in the leader's marks, so a
new leader does not record it again) until it is used. The leader notices the first use at
its next tick and records ``APP_WOULD_START``, dated by the app's last access (at most one
checking interval after the real first request). The savings report adds up the time in
between as what paastis would have saved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from . import events as ev
from .events import Event, EventStore
from .marks import Marks, MarksUnavailable
from .providers import AppInfo
from .registry import Registry, utcnow

log = logging.getLogger(__name__)

BOOK = "dry_run"


class DryRun:
    def __init__(self, registry: Registry, events: EventStore, marks: Marks, clock: Callable[[], datetime] = utcnow):
        self.registry = registry
        self.events = events
        self.marks = marks
        self.clock = clock

    def would_stop(self, app: AppInfo, reason: str) -> bool:
        """Record that ``app`` would be stopped now; True when it is (or already was) held as asleep."""
        if self.registry.get(app.key) is None:
            return False
        try:
            if self.marks.get(BOOK, app.key) is not None:
                return True
            now = self.clock()
            self.marks.set(BOOK, app.key, now.isoformat())
        except MarksUnavailable as error:
            log.warning("dry run: cannot tell whether %s is held asleep (%s): nothing recorded", app.key, error)
            return False
        log.info("dry run: would stop %s (%s)", app.key, reason)
        self._emit(Event(type=ev.APP_WOULD_STOP, app=app.key, reason=reason, timestamp=now))
        return True

    def tick(self) -> None:
        """Leader only: apps held asleep that were used since (or really stopped) are asleep no more."""
        try:
            held = self.marks.all(BOOK)
        except MarksUnavailable as error:
            log.debug("dry run: no look at held apps this tick: %s", error)
            return
        for key, since in held.items():
            entry = self.registry.get(key)
            if entry is not None and entry.last_accessed_at <= datetime.fromisoformat(since):
                continue
            if entry is not None:
                log.info("dry run: %s used again: it would have been woken", key)
                self._emit(Event(type=ev.APP_WOULD_START, app=key, reason="request", timestamp=entry.last_accessed_at))
            try:
                self.marks.delete(BOOK, key)
            except MarksUnavailable:
                return

    def _emit(self, event: Event) -> None:
        try:
            self.events.add(event)
        except Exception as error:  # noqa: BLE001 - history is best effort
            log.warning("could not record event %s for %s: %s", event.type, event.app, error)
