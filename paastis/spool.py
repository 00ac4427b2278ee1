"""Events are never lost: what the event store cannot take now waits in a bounded, durable spool.

:class:`SpooledEventStore` wraps the history store (Redis stream or PostgreSQL). An event the
store refuses (it is down) goes to a spool that outlives the process:

- :class:`FileSpool`: JSON lines in ``PAASTIS_STATE_DIR/events-spool.jsonl``, shared by the
  workers of one machine through file locks (a restarted worker replays what a dead one left);
- :class:`RedisSpool`: a Redis list ``<prefix>events:spool``, used when the store is PostgreSQL
  and the instance has Redis (a PaaS container's disk does not outlive a restart; Redis does).
  If Redis is down too, the file takes the event.

While anything is spooled, new events are spooled behind it, and a background thread replays
the spool in order, in batches, once the store answers. Each spooled event carries an id the
store deduplicates on (a unique column in PostgreSQL, a marker key in Redis), so an event
replayed twice (a worker killed between the store's commit and the spool's trim) is stored once.
The spool holds at most ``EVENTS_SPOOL_MAX`` events: past it new events are dropped, counted in
``paastis_events_dropped_total`` and announced by one loud log line per overflow.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .events import Event, EventStore, EventStoreUnavailable
from .logs import JobErrors

if TYPE_CHECKING:
    from .metrics import Metrics
    from .redis_link import RedisLink

log = logging.getLogger("paastis.events")

SPOOL_MAX = 100_000  # EVENTS_SPOOL_MAX's default
REPLAY_BATCH = 500  # events sent to the store in one statement / pipeline
REPLAY_INTERVAL = 1.0  # seconds between attempts while the store is down
SIZE_LOG_EVERY = 1_000  # the spool's size is logged each time it grows by this much

Spooled = tuple[str, Event]  # (id the store deduplicates on, event)


class SpoolUnavailable(Exception):
    """The spool itself cannot be written (the disk, or Redis for a Redis spool)."""


class Spool(Protocol):
    name: str

    def append(self, item: Spooled) -> int:
        """Add at the end; how many events it holds now."""

    def size(self) -> int: ...
    def head(self, count: int) -> list[Spooled]: ...
    def drop_head(self, count: int) -> int:
        """Remove the first ``count`` (replayed) events; how many are left."""

    @contextmanager
    def replaying(self) -> Iterator[bool]:
        """Yields True for the one replayer of this spool (across processes), False for the others."""


class ReplayableStore(Protocol):
    def replay(self, items: list[Spooled]) -> None:
        """Store ``items`` in order, each at most once whatever was stored before (EventStoreUnavailable if down)."""


def encode(item: Spooled) -> str:
    uid, event = item
    return json.dumps({"uid": uid, "event": event.to_json()}, separators=(",", ":"))


def decode(line: str | bytes) -> Spooled | None:
    try:
        data = json.loads(line)
        return data["uid"], Event.from_json(data["event"])
    except (ValueError, KeyError, TypeError) as error:
        log.error("events: skipping an unreadable spooled event: %s", error)
        return None


class FileSpool:
    """JSON lines under the state directory; a small state file says where the unreplayed part begins.

    Appends hold ``.lock`` briefly; the replayer holds ``.replay`` (never blocking a wake or a stop
    that records an event while the store is slow).
    """

    def __init__(self, state_dir: Path):
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "events-spool.jsonl"
        self.state_path = state_dir / "events-spool.state"
        self._lock_path = state_dir / "events-spool.lock"
        self._replay_path = state_dir / "events-spool.replay"
        self.name = str(self.path)
        self._thread_lock = threading.Lock()  # flock is per open file: threads of a process take turns here

    def append(self, item: Spooled) -> int:
        line = (encode(item) + "\n").encode()
        try:
            with self._locked():
                offset, pending = self._state()
                with open(self.path, "ab") as file:
                    file.write(line)
                    file.flush()
                    os.fsync(file.fileno())
                self._save_state(offset, pending + 1)
                return pending + 1
        except OSError as error:
            raise SpoolUnavailable(f"{self.path}: {error.strerror or error}") from None

    def size(self) -> int:
        try:
            return self._state()[1]
        except OSError:
            return 0

    def head(self, count: int) -> list[Spooled]:
        with self._locked():
            offset, pending = self._state()
        items: list[Spooled] = []
        with open(self.path, "rb") as file:
            file.seek(offset)
            for _ in range(min(count, pending)):
                line = file.readline()
                if not line.endswith(b"\n"):
                    break  # an append cut short by a crash: the rest is not an event
                item = decode(line)
                items.append(item if item is not None else ("", _UNREADABLE))
        if not items and pending:  # counted, but cut short by a crash: nothing left to replay
            log.error("events: the spool %s ends in a partial line; starting it afresh", self.path)
            self.drop_head(pending)
        return items

    def drop_head(self, count: int) -> int:
        with self._locked():
            offset, pending = self._state()
            with open(self.path, "rb") as file:
                file.seek(offset)
                for _ in range(count):
                    file.readline()
                offset = file.tell()
            pending = max(0, pending - count)
            if pending == 0:
                self.path.write_bytes(b"")  # replayed to the end: start afresh
                offset = 0
            self._save_state(offset, pending)
            return pending

    @contextmanager
    def replaying(self) -> Iterator[bool]:
        with open(self._replay_path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False  # another worker replays it
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock, open(self._lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _state(self) -> tuple[int, int]:
        try:
            data = json.loads(self.state_path.read_text())
            return int(data["offset"]), int(data["pending"])
        except FileNotFoundError:
            return 0, 0
        except (ValueError, KeyError, TypeError):
            return 0, self._count_lines()  # a damaged state file: replay the whole file (ids deduplicate)

    def _save_state(self, offset: int, pending: int) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"offset": offset, "pending": pending}))
        tmp.replace(self.state_path)

    def _count_lines(self) -> int:
        try:
            with open(self.path, "rb") as file:
                return sum(1 for line in file if line.endswith(b"\n"))
        except FileNotFoundError:
            return 0


class RedisSpool:
    """A Redis list under the registry's prefix; one replayer at a time holds ``events:spool:replay``."""

    REPLAY_LOCK_TTL_MS = 60_000

    def __init__(self, link: RedisLink):
        self.link = link
        self.key = link.key("events", "spool")
        self.lock_key = link.key("events", "spool", "replay")
        self.name = f"redis list {self.key}"

    def append(self, item: Spooled) -> int:
        try:
            return int(self._must(lambda: self.link.client.rpush(self.key, encode(item))))
        except EventStoreUnavailable as error:
            raise SpoolUnavailable(str(error)) from None

    def size(self) -> int:
        try:
            return int(self._must(lambda: self.link.client.llen(self.key)))
        except EventStoreUnavailable:
            return 0

    def head(self, count: int) -> list[Spooled]:
        lines = self._must(lambda: self.link.client.lrange(self.key, 0, count - 1))
        return [item if (item := decode(line)) is not None else ("", _UNREADABLE) for line in lines]

    def drop_head(self, count: int) -> int:
        pipe = self.link.client.pipeline(transaction=True)
        pipe.ltrim(self.key, count, -1)
        pipe.llen(self.key)
        return int(self._must(pipe.execute)[1])

    @contextmanager
    def replaying(self) -> Iterator[bool]:
        token = uuid.uuid4().hex
        try:
            taken = self._must(lambda: self.link.client.set(self.lock_key, token, nx=True, px=self.REPLAY_LOCK_TTL_MS))
            ours = bool(taken)
        except EventStoreUnavailable:
            ours = False
        try:
            yield ours
        finally:
            if ours:
                self.link.attempt(lambda: self.link.client.delete(self.lock_key))

    def _must(self, operation: Callable[[], Any]) -> Any:
        from .registry import Degraded

        try:
            return self.link.must(operation)
        except Degraded as error:
            raise EventStoreUnavailable(str(error)) from None


_UNREADABLE = Event(type="UNREADABLE", app="", reason="")  # placeholder: skipped at replay, then dropped


class SpooledEventStore:
    """An :class:`~paastis.events.EventStore` that spools what its store refuses, and replays it in order."""

    def __init__(
        self,
        store: EventStore,
        spools: list[Spool],
        metrics: Metrics,
        maximum: int = SPOOL_MAX,
        replay_interval: float = REPLAY_INTERVAL,
    ):
        self.store = store
        self.spools = spools  # the first that takes an event; replayed in this order
        self.metrics = metrics
        self.maximum = maximum
        self.replay_interval = replay_interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._overflowing = False
        self._logged_size = 0
        self._errors = JobErrors(log)
        metrics.events_spooled.set_function(self.spooled)  # read at scrape time: the spool is shared by the workers
        if self._size():
            log.warning("events: %d event(s) spooled earlier wait for the store: replaying them", self._size())
            self._ensure_thread()

    # -- the EventStore protocol ----------------------------------------------------

    def add(self, event: Event) -> None:
        if not self._size():
            try:
                self.store.add(event)
                return
            except EventStoreUnavailable as error:
                self._spool(event, str(error))
                return
        self._spool(event, None)  # behind what waits already: the history stays in order

    def query(self, app=None, type=None, since=None, limit=100) -> list[Event]:
        return self.store.query(app=app, type=type, since=since, limit=limit)

    def history(self, since: datetime, until: datetime, types: tuple[str, ...], app: str | None = None) -> list[Event]:
        return self.store.history(since, until, types, app)

    def healthy(self) -> bool:
        return self.store.healthy()

    def close(self) -> None:
        """One last replay (the store may be back), then close the store; what is left stays spooled."""
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=3)  # within gunicorn's graceful timeout, after the stops' wait
        self.store.close()

    def spooled(self) -> int:
        """Events waiting in the spools (``paastis_events_spooled``)."""
        return self._size()

    # -- spooling -----------------------------------------------------------------------

    def _spool(self, event: Event, why: str | None) -> None:
        item = (event.id or uuid.uuid4().hex, event)  # replayed under its own id: stored once, found by it
        with self._lock:
            if self._size() >= self.maximum:
                self._drop(event)
                return
            size = self._append(item)
            self._overflowing = False
            if why is not None and size == 1:
                log.warning(
                    "events: the store is unreachable (%s): spooling events to %s until it answers",
                    why,
                    self._where(),
                )
            if size >= self._logged_size + SIZE_LOG_EVERY:
                self._logged_size = size - size % SIZE_LOG_EVERY
                log.warning("events: %d event(s) spooled, waiting for the store", size)
        self.metrics.events_spooled.set(size)
        self._ensure_thread()
        self._wake.set()

    def _append(self, item: Spooled) -> int:
        last: SpoolUnavailable | None = None
        for spool in self.spools:
            try:
                spool.append(item)
                return self._size()
            except SpoolUnavailable as error:
                last = error
        raise EventStoreUnavailable(f"event not recorded: no spool could take it ({last})")

    def _drop(self, event: Event) -> None:
        self.metrics.events_dropped.inc()
        if not self._overflowing:
            self._overflowing = True
            log.error(
                "events: SPOOL FULL (%d events, EVENTS_SPOOL_MAX): dropping new events until the store answers "
                "(counted in paastis_events_dropped_total); first dropped: %s %s",
                self.maximum,
                event.type,
                event.app,
            )

    def _size(self) -> int:
        return sum(spool.size() for spool in self.spools)

    def _where(self) -> str:
        return " (or ".join(spool.name for spool in self.spools) + ")" * (len(self.spools) - 1)

    # -- replaying ------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._replay_loop, name="paastis-events-spool", daemon=True)
                self._thread.start()

    def _replay_loop(self) -> None:
        while True:
            try:
                self.replay()
                self._errors.succeeded("events: replaying the spool")
            except Exception as error:  # noqa: BLE001 - the replayer must outlive any surprise
                self._errors.failed("events: replaying the spool", error)  # traceback once, then a line a minute
            if self._closing.is_set() or not self._size():
                return
            self._wake.wait(self.replay_interval)
            self._wake.clear()

    def replay(self) -> int:
        """Send every spooled event to the store, oldest first; how many were replayed (stops at a failure)."""
        replayed = 0
        for spool in self.spools:
            replayed += self._replay(spool)
        if replayed:
            left = self._size()
            self.metrics.events_spooled.set(left)
            log.info("events: replayed %d spooled event(s) in order; %d left in the spool", replayed, left)
            if not left:
                self._logged_size = 0
        return replayed

    def _replay(self, spool: Spool) -> int:
        replayed = 0
        with spool.replaying() as ours:
            if not ours:
                return 0
            while True:
                try:
                    batch = spool.head(REPLAY_BATCH)
                except (EventStoreUnavailable, OSError):
                    return replayed
                if not batch:
                    return replayed
                try:
                    self.store.replay([item for item in batch if item[1] is not _UNREADABLE])  # type: ignore[attr-defined]
                except EventStoreUnavailable:
                    return replayed
                try:
                    spool.drop_head(len(batch))
                except (EventStoreUnavailable, OSError):
                    return replayed  # replayed again later: the ids deduplicate
                replayed += len(batch)
        return replayed
