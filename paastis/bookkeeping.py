"""Registry bookkeeping for upgraded connections, off the relay's selector thread and in batches.

The relay (:mod:`paastis.relay`) serves every WebSocket of a worker with one selector thread. A
registry call there (``begin_request`` publishes an in-flight entry: a Redis round trip, up to
the socket timeout when Redis is slow) would make every connection of the worker wait. So the
relay only queues what happened (a connection starts or stops counting, traffic to note), and
this thread tells the registry, taking everything queued at once: touches of one app in a batch
become one, and the registry's own batching (one publication per app) does the rest.

Order is kept: the queue is FIFO and one thread applies it, so an end never overtakes its begin.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from queue import Empty, SimpleQueue
from typing import Any

from .logs import JobErrors
from .registry import Registry

log = logging.getLogger(__name__)

BATCH_WINDOW = 0.02  # seconds the thread lets a batch gather after its first item
_STOP = ("stop", "", 0, None)


class Bookkeeper:
    """Applies ``begin``/``touch``/``end`` of upgraded connections to the registry from a thread of its own."""

    def __init__(self, registry: Registry, batch_window: float = BATCH_WINDOW):
        self.registry = registry
        self.batch_window = batch_window
        self._queue: SimpleQueue[tuple[str, str, int, datetime | None]] = SimpleQueue()
        self._tokens: dict[int, object] = {}  # connection ref -> the registry's in-flight token
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._errors = JobErrors(log)
        self.batches = 0  # how many batches were applied (tests, benchmarks)

    def adopted(self, ref: int, token: object) -> None:
        """A connection counted from its handshake (``begin_request`` made by the request thread)."""
        with self._lock:
            self._tokens[ref] = token

    def begin(self, app: str, ref: int) -> None:
        self._put(("begin", app, ref, None))

    def touch(self, app: str) -> None:
        self._put(("touch", app, 0, None))

    def end(self, app: str, ref: int, accessed_at: datetime | None) -> None:
        self._put(("end", app, ref, accessed_at))

    def close(self, timeout: float = 5.0) -> None:
        """Apply what is queued (ends of the connections just closed), then stop."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)

    # -- the thread ---------------------------------------------------------------

    def _put(self, item: tuple[str, str, int, datetime | None]) -> None:
        self._queue.put(item)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="paastis-bookkeeping", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            stopping = self._gather(batch)
            try:
                self._apply(batch)
                self._errors.succeeded("relay bookkeeping")
            except Exception as error:  # noqa: BLE001 - the thread serves every connection: it must not die
                self._errors.failed("relay bookkeeping", error)
            if stopping:
                return

    def _gather(self, batch: list[tuple[str, str, int, datetime | None]]) -> bool:
        """Add what else is queued (waiting ``batch_window`` for more); True once asked to stop."""
        if batch[0] is _STOP:
            batch.clear()
            return True
        threading.Event().wait(self.batch_window)
        while True:
            try:
                item = self._queue.get_nowait()
            except Empty:
                return False
            if item is _STOP:
                return True
            batch.append(item)

    def _apply(self, batch: list[tuple[str, str, int, datetime | None]]) -> None:
        touched: set[str] = set()
        for kind, app, ref, accessed_at in batch:
            if kind == "touch":
                if app not in touched:  # one touch per app and batch
                    touched.add(app)
                    self.registry.touch(app)
            elif kind == "begin":
                token: Any = self.registry.begin_request(app)
                with self._lock:
                    self._tokens[ref] = token
            elif kind == "end":
                with self._lock:
                    token = self._tokens.pop(ref, None)
                if token is not None:
                    self.registry.end_request(app, token, accessed_at=accessed_at)
        self.batches += 1
