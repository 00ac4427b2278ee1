"""The registry: which apps paastis started or saw running, and how recently they were used.

Two stores share one interface: :class:`InMemoryRegistry` for a single process and
``RedisRegistry`` (see :mod:`paastis.redis_registry`) for many processes and machines.
Besides running apps, the registry keeps each app's *memo* (what a provider needs to
start it again exactly as it was, such as a formation), which outlives the app's stop.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol


class Degraded(Exception):
    """The cluster state cannot be read fresh now (Redis is down): nothing may act on it as if it were."""


@dataclass(frozen=True)
class Look:
    """One app as the cluster sees it at one instant: its entry (None: not registered) and requests in flight."""

    entry: RunningApp | None
    in_flight: int


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RunningApp:
    """An app paastis considers awake; dates are timezone-aware UTC."""

    key: str
    started_at: datetime
    last_accessed_at: datetime

    def idle_seconds(self, now: datetime) -> float:
        return (now - self.last_accessed_at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["last_accessed_at"] = self.last_accessed_at.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunningApp:
        return cls(
            key=data["key"],
            started_at=datetime.fromisoformat(data["started_at"]),
            last_accessed_at=datetime.fromisoformat(data["last_accessed_at"]),
        )


class Registry(Protocol):
    """What the lifecycle, the proxy and the admin API need to know about running apps."""

    def get(self, key: str) -> RunningApp | None: ...
    def all(self) -> list[RunningApp]: ...
    def register(self, app: RunningApp) -> None: ...
    def unregister(self, key: str) -> None: ...
    def touch(self, key: str) -> None: ...
    def begin_request(self, key: str) -> object: ...
    def end_request(self, key: str, token: object, accessed_at: datetime | None = None) -> None:
        """The request (or upgraded connection) is over; its last access was ``accessed_at`` (default: now)."""

    def in_flight(self, key: str) -> int: ...
    def in_flight_many(self, keys: list[str]) -> dict[str, int]: ...
    def last_look(self, keys: list[str]) -> dict[str, Look]:
        """Entries and requests in flight of ``keys``, read fresh and at one instant (what a stop checks last).

        Raises :class:`Degraded` when that cannot be had: a stop must not act on a local view.
        """

    def remember(self, key: str, memo: dict[str, Any]) -> None: ...
    def recall(self, key: str) -> dict[str, Any] | None: ...
    def clear(self) -> None: ...
    def prune(self, known: Callable[[str], bool], shared: bool) -> int: ...
    def healthy(self) -> bool: ...
    def close(self) -> None: ...


class InMemoryRegistry:
    """One process's registry, guarded by a lock because gunicorn threads share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._apps: dict[str, RunningApp] = {}
        self._in_flight: dict[str, int] = defaultdict(int)
        self._memos: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> RunningApp | None:
        return self._apps.get(key)

    def all(self) -> list[RunningApp]:
        with self._lock:
            return list(self._apps.values())

    def register(self, app: RunningApp) -> None:
        with self._lock:
            self._apps[app.key] = app

    def unregister(self, key: str) -> None:
        with self._lock:
            self._apps.pop(key, None)

    def touch(self, key: str) -> None:
        with self._lock:
            self._touch(key)

    def begin_request(self, key: str) -> object:
        with self._lock:
            self._in_flight[key] += 1
        return key

    def end_request(self, key: str, token: object, accessed_at: datetime | None = None) -> None:
        when = accessed_at or utcnow()
        with self._lock:
            self._in_flight[key] -= 1
            if self._in_flight[key] <= 0:
                del self._in_flight[key]
            self._touch(key, when)

    def in_flight(self, key: str) -> int:
        return self._in_flight.get(key, 0)

    def in_flight_many(self, keys: list[str]) -> dict[str, int]:
        return {key: self._in_flight.get(key, 0) for key in keys}

    def last_look(self, keys: list[str]) -> dict[str, Look]:
        """One process: its memory is the truth, never degraded."""
        with self._lock:
            return {key: Look(self._apps.get(key), self._in_flight.get(key, 0)) for key in keys}

    def remember(self, key: str, memo: dict[str, Any]) -> None:
        with self._lock:
            self._memos[key] = memo

    def recall(self, key: str) -> dict[str, Any] | None:
        return self._memos.get(key)

    def clear(self) -> None:
        with self._lock:
            self._apps.clear()

    def prune(self, known: Callable[[str], bool], shared: bool = True) -> int:
        """Drop the memos of apps the provider no longer has (review apps come and go); how many were dropped."""
        with self._lock:
            gone = [key for key in self._memos if not known(key)]
            for key in gone:
                del self._memos[key]
        return len(gone)

    def _touch(self, key: str, when: datetime | None = None) -> None:
        """Time only moves forward, even if the wall clock steps back."""
        app = self._apps.get(key)
        when = when or utcnow()
        if app is not None and when > app.last_accessed_at:
            self._apps[key] = replace(app, last_accessed_at=when)

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        pass
