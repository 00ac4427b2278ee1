"""The event history as a Redis stream that every instance shares (``EVENTS_STORE_TYPE=redis``).

Kept apart from :mod:`paastis.events` so that an instance without Redis never imports redis-py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import TypeVar

from .events import Event, EventStoreUnavailable, history_of, matches
from .redis_link import Degraded, RedisLink

log = logging.getLogger("paastis.events")

T = TypeVar("T")


# Append a spooled event unless it was appended before. KEYS: stream, the event's marker. ARGV: event JSON, maximum.
REPLAY_SCRIPT = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', 604800) then
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', 'event', ARGV[1])
  return 1
end
return 0
"""


class RedisEventStore:
    """A Redis stream under the registry's key prefix, trimmed to ``maximum`` entries.

    Every instance appends to and reads the same stream, so the history is the fleet's.
    History is best effort: while the instance's :class:`~paastis.redis_link.RedisLink` knows
    Redis is down, nothing is even tried, so an outage costs no start or stop a Redis timeout.
    """

    PAGE = 500
    CLOCK_SKEW = timedelta(minutes=5)  # stream ids are Redis's clock, timestamps the instances'

    def __init__(self, link: RedisLink, key: str, maximum: int = 10_000, owns_link: bool = False):
        self.link = link
        self.client = link.client
        self.key = key
        self.maximum = maximum
        self.owns_link = owns_link
        self._replay = self.client.register_script(REPLAY_SCRIPT)

    def add(self, event: Event) -> None:
        self._must(
            lambda: self.client.xadd(
                self.key, {"event": json.dumps(event.to_json())}, maxlen=self.maximum, approximate=False
            )
        )

    def replay(self, items: list[tuple[str, Event]]) -> None:
        """Spooled events, in order; one appended before (its marker, kept a week, says so) is skipped."""

        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            for uid, event in items:
                keys = [self.key, f"{self.key}:replayed:{uid}"]
                self._replay(keys=keys, args=[json.dumps(event.to_json()), self.maximum], client=pipe)
            pipe.execute()

        self._must(write)

    def query(self, app=None, type=None, since=None, limit=100) -> list[Event]:
        """Newest first, reading the stream backwards page by page until ``limit`` or ``since``."""

        def read() -> list[Event]:
            found: list[Event] = []
            for event in self._backwards(since):
                if matches(event, app, type, since):
                    found.append(event)
                    if len(found) >= limit:
                        break
            return found

        return self._must(read)

    def history(self, since, until, types, app=None) -> list[Event]:
        """The whole stream is read (it holds at most ``EVENTS_MAX`` entries): states begin before ``since``."""
        return self._must(lambda: history_of(self._backwards(None), since, until, types, app))

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
        return self.link.probe()

    def close(self) -> None:
        if self.owns_link:
            self.link.close()

    def _must(self, operation: Callable[[], T]) -> T:
        """Through the link (which logs an outage once): Degraded becomes the store's own error."""
        try:
            return self.link.must(operation)
        except Degraded as error:
            raise EventStoreUnavailable(f"{error}: event not recorded") from None


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
