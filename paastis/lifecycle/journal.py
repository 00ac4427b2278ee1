"""The lifecycle's record of what happened to apps: registry entries and the events that tell of them.

Owns the pairing of a registry change with its event (``APP_REGISTERED``, ``APP_UNREGISTERED``,
...), so that the history never disagrees with what paastis believes runs. A history store that
is down never fails a wake or a stop: a shared store spools what it cannot take (see
:mod:`paastis.spool`), and only an event no spool could take either is logged as lost here.
"""

from __future__ import annotations

import logging

from .. import events as ev
from ..events import Event, EventStore
from ..providers import AppInfo
from ..registry import Registry, RunningApp, utcnow

log = logging.getLogger("paastis.lifecycle")


class Journal:
    def __init__(self, registry: Registry, events: EventStore):
        self.registry = registry
        self.events = events

    def emit(self, type: str, key: str, reason: str, **details) -> None:
        try:
            self.events.add(Event(type=type, app=key, reason=reason, **details))
        except Exception as error:  # noqa: BLE001 - history is best effort, serving is not
            log.warning("could not record event %s for %s: %s", type, key, error)

    def registered(self, app: AppInfo, reason: str, event: str, duration: float | None = None) -> RunningApp:
        """``app`` runs from now on, used just now."""
        now = utcnow()
        entry = RunningApp(key=app.key, started_at=now, last_accessed_at=now)
        self.registry.register(entry)
        self.emit(event, app.key, reason, duration=duration, provider=app.provider or None)
        return entry

    def forgotten(self, key: str, reason: str, why: str) -> None:
        self.registry.unregister(key)
        log.info("forgetting %s: %s", key, why)
        self.emit(ev.APP_UNREGISTERED, key, reason, message=why)

    def forget_all(self, reason: str) -> int:
        """Forget every registered app, touching none; the next idle check relearns what runs."""
        entries = self.registry.all()
        self.registry.clear()
        for entry in entries:
            self.emit(ev.APP_UNREGISTERED, entry.key, reason, message="registry cleared")
        return len(entries)
