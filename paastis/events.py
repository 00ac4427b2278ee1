"""What paastis did, as a queryable history (shared through Redis when there are many instances)."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import redis

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

    def __post_init__(self) -> None:
        if self.duration is not None:  # milliseconds are precision enough, and read better
            object.__setattr__(self, "duration", round(self.duration, 3))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["timestamp"] = self.timestamp.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        data = dict(data)
        data["timestamp"] = datetime.fromisoformat(data["timestamp"])
        return cls(**data)


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


class RedisEventStore:
    """A Redis stream under the registry's key prefix, trimmed to ``maximum`` entries.

    Every instance appends to and reads the same stream, so the history is the fleet's.
    History is best effort: after a failure, writes are skipped for ``RETRY_AFTER``
    seconds so that an outage costs requests no Redis timeout at every start or stop.
    """

    RETRY_AFTER = 2.0
    PAGE = 500
    CLOCK_SKEW = timedelta(minutes=5)  # stream ids are Redis's clock, timestamps the instances'

    def __init__(self, client: redis.Redis, key: str, maximum: int = 10_000):
        self.client = client
        self.key = key
        self.maximum = maximum
        self._failed_at: float | None = None

    def add(self, event: Event) -> None:
        if self._failed_at is not None and time.monotonic() - self._failed_at < self.RETRY_AFTER:
            raise EventStoreUnavailable("redis was unreachable moments ago: event not recorded")
        try:
            self.client.xadd(self.key, {"event": json.dumps(event.to_json())}, maxlen=self.maximum, approximate=False)
        except redis.RedisError as error:
            self._failed_at = time.monotonic()
            raise EventStoreUnavailable(f"redis: {type_name(error)}: {error}") from None
        self._failed_at = None

    def query(self, app=None, type=None, since=None, limit=100) -> list[Event]:
        """Newest first, reading the stream backwards page by page until ``limit`` or ``since``."""
        found: list[Event] = []
        try:
            for event in self._backwards(since):
                if matches(event, app, type, since):
                    found.append(event)
                    if len(found) >= limit:
                        break
        except redis.RedisError as error:
            raise EventStoreUnavailable(f"redis: {type_name(error)}: {error}") from None
        return found

    def history(self, since, until, types, app=None) -> list[Event]:
        """The whole stream is read (it holds at most ``EVENTS_MAX`` entries): states begin before ``since``."""
        try:
            return history_of(self._backwards(None), since, until, types, app)
        except redis.RedisError as error:
            raise EventStoreUnavailable(f"redis: {type_name(error)}: {error}") from None

    def _backwards(self, since: datetime | None) -> Iterator[Event]:
        low = "-" if since is None else str(int((since - self.CLOCK_SKEW).timestamp() * 1000))
        high = "+"
        while True:
            page = self.client.xrevrange(self.key, max=high, min=low, count=self.PAGE)
            for _id, fields in page:
                event = _decode(fields)
                if event is not None:
                    yield event
            if len(page) < self.PAGE:
                return
            high = "(" + _as_str(page[-1][0])  # exclusive: continue below the last id seen

    def healthy(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self.client.close()


def type_name(error: Exception) -> str:
    return type(error).__name__


def _as_str(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(fields: dict) -> Event | None:
    """One stream entry; an entry written by something else is skipped, not fatal."""
    raw = fields.get("event") or fields.get(b"event")
    try:
        return Event.from_json(json.loads(raw))
    except (TypeError, ValueError, KeyError) as error:
        log.warning("events: skipping an unreadable stream entry: %s", error)
        return None
