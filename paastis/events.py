"""What paastis did, as a queryable history (shared through Redis when there are many instances)."""

from __future__ import annotations

import os
import socket
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol

from .registry import utcnow

APP_REGISTERED = "APP_REGISTERED"
APP_UNREGISTERED = "APP_UNREGISTERED"
APP_STARTED = "APP_STARTED"
APP_STOPPED = "APP_STOPPED"
APP_START_FAILED = "APP_START_FAILED"
APP_STOP_FAILED = "APP_STOP_FAILED"
EVENT_TYPES = (
    APP_REGISTERED,
    APP_UNREGISTERED,
    APP_STARTED,
    APP_STOPPED,
    APP_START_FAILED,
    APP_STOP_FAILED,
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

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["timestamp"] = self.timestamp.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        data = dict(data)
        data["timestamp"] = datetime.fromisoformat(data["timestamp"])
        return cls(**data)


class EventStore(Protocol):
    def add(self, event: Event) -> None: ...
    def query(
        self,
        app: str | None = None,
        type: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[Event]: ...


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
