"""Small notes the leader keeps so that the next leader carries on where it stopped.

Which window opening was already handled for each app, which apps a dry run holds as
"would be asleep" and since when, which day the savings summary was last logged for.
In memory with the in-memory registry; in Redis hashes ``<prefix>marks:<book>`` with the
Redis registry, so a leader change neither repeats nor misses an action.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # redis-py is only imported by instances that use Redis
    from .redis_link import RedisLink


class MarksUnavailable(Exception):
    """The notes cannot be read or written now: the leader must not act blind."""


class Marks(Protocol):
    def get(self, book: str, name: str) -> str | None: ...
    def set(self, book: str, name: str, value: str) -> None: ...
    def delete(self, book: str, name: str) -> None: ...
    def all(self, book: str) -> dict[str, str]: ...


class InMemoryMarks:
    def __init__(self) -> None:
        self._books: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def get(self, book: str, name: str) -> str | None:
        with self._lock:
            return self._books.get(book, {}).get(name)

    def set(self, book: str, name: str, value: str) -> None:
        with self._lock:
            self._books.setdefault(book, {})[name] = value

    def delete(self, book: str, name: str) -> None:
        with self._lock:
            self._books.get(book, {}).pop(name, None)

    def all(self, book: str) -> dict[str, str]:
        with self._lock:
            return dict(self._books.get(book, {}))


class RedisMarks:
    """One hash per book under the registry's prefix, on the registry's connection."""

    def __init__(self, link: RedisLink):
        self.link = link

    def get(self, book: str, name: str) -> str | None:
        return self._call(lambda: self.link.client.hget(self.link.key("marks", book), name))

    def set(self, book: str, name: str, value: str) -> None:
        self._call(lambda: self.link.client.hset(self.link.key("marks", book), name, value))

    def delete(self, book: str, name: str) -> None:
        self._call(lambda: self.link.client.hdel(self.link.key("marks", book), name))

    def all(self, book: str) -> dict[str, str]:
        return self._call(lambda: self.link.client.hgetall(self.link.key("marks", book)))

    def _call(self, operation):  # type: ignore[no-untyped-def]
        from .registry import Degraded

        try:
            return self.link.must(operation)
        except Degraded as error:
            raise MarksUnavailable(str(error)) from None
