"""What paastis did, as a queryable history (shared through Redis when there are many instances)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol

from .registry import utcnow

log = logging.getLogger(__name__)

APP_REGISTERED = "APP_REGISTERED"
APP_UNREGISTERED = "APP_UNREGISTERED"
APP_STARTED = "APP_STARTED"
APP_STOPPED = "APP_STOPPED"
APP_START_FAILED = "APP_START_FAILED"
APP_STOP_FAILED = "APP_STOP_FAILED"
APP_WOULD_STOP = "APP_WOULD_STOP"  # PAASTIS_DRY_RUN: what paastis would have stopped, and why
APP_WOULD_START = "APP_WOULD_START"  # PAASTIS_DRY_RUN: the first use of an app that would have been asleep
EVENT_TYPES = (
    APP_REGISTERED,
    APP_UNREGISTERED,
    APP_STARTED,
    APP_STOPPED,
    APP_START_FAILED,
    APP_STOP_FAILED,
    APP_WOULD_STOP,
    APP_WOULD_START,
)


def instance_id() -> str:
    """Who did it: host and pid, enough to tell gunicorn workers and machines apart."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Event:
    type: str
    app: str
    reason: str
    timestamp: datetime = field(default_factory=utcnow)
    duration: float | None = None  # seconds
    instance: str = field(default_factory=instance_id)
    message: str | None = None
    provider: str | None = None  # the account of the app (its name in providers:), when known
    # Names this event everywhere: a visitor's error answer quotes it, the admin finds the details under it.
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if self.duration is not None:  # milliseconds are precision enough, and read better
            object.__setattr__(self, "duration", round(self.duration, 3))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["timestamp"] = self.timestamp.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        data = {k: v for k, v in data.items() if k in EVENT_FIELDS}  # a newer writer's fields are skipped
        data["timestamp"] = datetime.fromisoformat(data["timestamp"])
        data.setdefault("id", "")  # recorded before events had ids
        return cls(**data)


EVENT_FIELDS = frozenset(Event.__dataclass_fields__)


class EventStoreUnavailable(Exception):
    """The shared history cannot be read or written right now (Redis is down)."""


class EventStore(Protocol):
    def add(self, event: Event) -> None: ...
    def query(
        self,
        app: str | None = None,
        type: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[Event]: ...
    def history(
        self, since: datetime, until: datetime, types: tuple[str, ...], app: str | None = None
    ) -> list[Event]: ...
    def healthy(self) -> bool: ...
    def close(self) -> None: ...


def history_of(
    events: Iterable[Event], since: datetime, until: datetime, types: tuple[str, ...], app: str | None
) -> list[Event]:
    """Events of ``types`` in ``[since, until)``, oldest first, after each app's last one before ``since``.

    That last event tells what state an app was in when the period began (the savings need it).
    """
    before: dict[str, Event] = {}
    during: list[Event] = []
    for event in sorted(events, key=lambda e: e.timestamp):
        if event.type not in types or (app is not None and event.app != app) or event.timestamp >= until:
            continue
        if event.timestamp < since:
            before[event.app] = event
        else:
            during.append(event)
    return sorted(before.values(), key=lambda e: e.timestamp) + during


def matches(event: Event, app: str | None, type: str | None, since: datetime | None) -> bool:
    return (
        (app is None or event.app == app)
        and (type is None or event.type == type)
        and (since is None or event.timestamp >= since)
    )


class InMemoryEventStore:
    """A bounded list: the oldest events fall off once ``maximum`` is reached."""

    def __init__(self, maximum: int = 10_000):
        self._events: deque[Event] = deque(maxlen=maximum)
        self._lock = threading.Lock()

    def add(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    def query(self, app=None, type=None, since=None, limit=100) -> list[Event]:
        """Newest first."""
        with self._lock:
            events = list(self._events)
        found = [e for e in reversed(events) if matches(e, app, type, since)]
        return found[:limit]

    def history(self, since, until, types, app=None) -> list[Event]:
        with self._lock:
            events = list(self._events)
        return history_of(events, since, until, types, app)

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        pass


def type_name(error: Exception) -> str:
    return type(error).__name__
