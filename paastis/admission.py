"""Admission: which request gets a thread next, and which waits, in a per-app queue, without holding one.

A gunicorn worker has ``threads`` threads (``PAASTIS_THREADS``). Refusing a request that could be
served a moment later is wrong for a proxy in front of every app (a burst, a wake), and so is
letting one app (a hung one, a flood) take every thread from the others. paastis's worker
therefore decides in its main loop, once a request head (and body) is whole, as HAProxy does
with ``maxconn`` and ``timeout queue``:

- **Work-conserving**: an app may use every free thread while no other app is waiting.
- **Fair share**: an app's share is ``share`` threads (``MAX_IN_FLIGHT_PER_APP``). Past it, an app
  gets a thread only while no other app waits; once several apps wait, free threads go round-robin
  between them, apps under their share first.
- **Nobody over its share blocks anybody under it**: while some apps hold more than their share,
  an app under its share still gets a thread, up to ``threads`` counted within shares (so the
  pool may grow to ``2 × threads - share`` threads, which :meth:`Admission.max_threads` says).
- **Refusals**: a request waits at most its app's queue timeout (``QUEUE_TIMEOUT``, or the rule's
  ``queue_timeout``), and an app's queue holds at most ``max_queued`` requests
  (``MAX_QUEUED_PER_APP``); past either, the caller answers ``503``. The timeout does not run while
  the app is being woken: a wake is one piece of work, and its requests are never refused.

Requests that are not for an app (system API, dashboard, a Host naming no app) are never queued:
they carry no key (``None``) and are always admitted.

Everything here runs in the worker's main loop: no locks.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

WARN_EVERY = 10.0  # seconds between two "refusing requests" lines for one app
RUN, QUEUED, FULL = "run", "queued", "full"


@dataclass(eq=False)
class Waiting:
    """One queued request: what the caller parked, when, and until when it may wait."""

    item: Any
    since: float
    deadline: float
    key: str = field(default="")


class Admission:
    """Per-app in-flight counts and FIFOs; the caller dispatches what :meth:`offer` and :meth:`ready` give."""

    def __init__(
        self,
        threads: int,
        share: int,
        max_queued: int,
        queue_timeout_of: Callable[[str], float],
        waking: Callable[[str], bool] = lambda key: False,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.threads = threads
        self.share = min(share, threads)
        self.max_queued = max_queued
        self.queue_timeout_of = queue_timeout_of
        self.waking = waking  # an app being woken: its requests wait without a deadline
        self.clock = clock
        self.in_flight: dict[str, int] = {}
        self.total = 0  # app requests holding a thread
        self.within = 0  # of which within their app's share (sum of min(in_flight, share))
        self.queues: OrderedDict[str, deque[Waiting]] = OrderedDict()  # apps waiting, in round-robin order
        self.queued = 0
        self._warned: dict[str, float] = {}

    @property
    def max_threads(self) -> int:
        """Threads app requests may hold at once (the pool needs as many, plus room for system requests)."""
        return 2 * self.threads - self.share

    # -- what the worker's main loop calls ------------------------------------------

    def offer(self, key: str | None, item: Any) -> tuple[str, Waiting | None]:
        """A whole request of ``key``: RUN it now (it holds a place until :meth:`done`), or QUEUED (with its
        place in the queue), or FULL (the caller refuses it)."""
        if key is None:
            return RUN, None
        if key not in self.queues and self._may_run(key, others_wait=bool(self.queues)):
            self._start(key)
            return RUN, None
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = deque()
        elif len(queue) >= self.max_queued:
            return FULL, None
        now = self.clock()
        waiting = Waiting(item, now, now + self.queue_timeout_of(key), key)
        queue.append(waiting)
        self.queued += 1
        return QUEUED, waiting

    def done(self, key: str | None) -> None:
        """A request admitted by :meth:`offer` or :meth:`ready` gave its thread back."""
        if key is None:
            return
        count = self.in_flight[key]
        if count <= self.share:
            self.within -= 1
        self.total -= 1
        if count > 1:
            self.in_flight[key] = count - 1
        else:
            del self.in_flight[key]

    def ready(self) -> list[Waiting]:
        """Queued requests that may run now, taken off their queues in fair order (each now holds a place)."""
        started: list[Waiting] = []
        while self.queues:
            key = self._next_key()
            if key is None:
                break
            queue = self.queues[key]
            started.append(queue.popleft())
            self.queued -= 1
            self._start(key)
            if queue:
                self.queues.move_to_end(key)
            else:
                del self.queues[key]
        return started

    def expired(self) -> list[Waiting]:
        """Queued requests past their deadline, taken off their queues (the caller refuses them).

        An app being woken keeps its requests: their deadlines move on instead.
        """
        now = self.clock()
        gone: list[Waiting] = []
        for key in list(self.queues):
            queue = self.queues[key]
            if queue[0].deadline > now:
                continue  # FIFO with one timeout per app: the oldest expires first
            if self.waking(key):
                timeout = self.queue_timeout_of(key)
                for waiting in queue:
                    waiting.deadline = max(waiting.deadline, now + timeout)
                continue
            while queue and queue[0].deadline <= now:
                gone.append(queue.popleft())
                self.queued -= 1
            if not queue:
                del self.queues[key]
        return gone

    def forget(self, waiting: Waiting) -> bool:
        """Take a queued request off its queue (its client left); False if it was not queued any more."""
        queue = self.queues.get(waiting.key)
        if queue is None:
            return False
        try:
            queue.remove(waiting)
        except ValueError:
            return False
        self.queued -= 1
        if not queue:
            del self.queues[waiting.key]
        return True

    def queued_for(self, key: str) -> int:
        queue = self.queues.get(key)
        return len(queue) if queue else 0

    def should_warn(self, key: str) -> bool:
        """True at most once every ``WARN_EVERY`` seconds per app: a flood of refusals is one log line, not one each."""
        now = self.clock()
        if now - self._warned.get(key, -WARN_EVERY) < WARN_EVERY:
            return False
        self._warned[key] = now
        if len(self._warned) > 10_000:  # keys are known apps, but stay bounded anyway
            self._warned.clear()
        return True

    # -- the rule -------------------------------------------------------------------

    def _may_run(self, key: str, others_wait: bool) -> bool:
        count = self.in_flight.get(key, 0)
        if count < self.share and self.within < self.threads:
            return True  # within its share: a thread, even beside apps over theirs
        return self.total < self.threads and not others_wait

    def _next_key(self) -> str | None:
        """The first waiting app (round-robin order) under its share, else the first one at all if a thread is free."""
        for key in self.queues:
            if self.in_flight.get(key, 0) < self.share and self.within < self.threads:
                return key
        if self.total < self.threads:
            return next(iter(self.queues))
        return None

    def _start(self, key: str) -> None:
        count = self.in_flight.get(key, 0)
        if count < self.share:
            self.within += 1
        self.in_flight[key] = count + 1
        self.total += 1
