"""One API budget per provider account, spent by priority (see :mod:`paastis.providers.priority`).

Every API call of an account asks its scheduler for a slot. Waiting calls form one queue,
ordered by class, then by arrival: only the call at the head asks the budget (the rate
limiter) for a slot, and a call of a higher class that arrives takes the head at once, so a
lower class never delays a higher one by more than the one call already in flight. Calls of
the ``stop`` and ``background`` classes also leave the limiter's reserve untouched (a wake's
worth of calls), so a wake that arrives in the middle of a stop crowd finds budget at once.

There is one scheduler per provider instance (each account its own), never a global one.
It also counts the calls by class (``paastis_provider_calls_total{provider,class}``) and shows
what is left (``paastis_provider_budget_remaining{provider}``), and tells the idle check
whether the budget has room (:meth:`CallScheduler.room`, :meth:`CallScheduler.waiting`).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from typing import TYPE_CHECKING, Protocol

from .. import deadlines
from .priority import CallClass, current_class

if TYPE_CHECKING:
    from ..metrics import Metrics

BACKGROUND_PATIENCE = 5.0  # seconds a low-class call yields to other processes' urgent calls (shared budget)
TURN_CHECK = 1.0  # seconds between looks at the deadline while waiting for one's turn


class Budget(Protocol):
    """What the scheduler needs of a rate limiter (:class:`~paastis.providers.http.RateLimiter` and kin)."""

    def try_take(self, background: bool = False, patient: bool = True) -> float: ...

    def remaining(self) -> float: ...

    def room(self) -> float: ...


class CallScheduler:
    """The queue of one account's API calls, in front of its rate limiter (None: no limit, only counted)."""

    def __init__(self, provider: str, limiter: Budget | None, metrics: Metrics | None = None):
        self.provider = provider
        self.limiter = limiter
        self.metrics = metrics
        self.reported_remaining: float | None = None  # what the platform itself last said is left (Heroku)
        self._cond = threading.Condition()
        self._queue: list[tuple[int, int]] = []  # (class, arrival): a heap, the head goes next
        self._arrivals = itertools.count()
        self._taking = False  # the head is asking the limiter right now
        self.granted = dict.fromkeys(CallClass, 0)  # calls let through, by class, since start
        if metrics is not None and limiter is not None:
            metrics.provider_budget_remaining.labels(provider).set_function(self.remaining)

    # -- taking a slot ---------------------------------------------------------------

    def acquire(self, klass: CallClass | None = None) -> None:
        """Wait for this call's turn and a slot in the budget; :class:`~paastis.deadlines.DeadlinePassed` if late."""
        klass = current_class() if klass is None else klass
        if self.limiter is None:
            self._count(klass)
            return
        ticket = (int(klass), next(self._arrivals))
        arrived = time.monotonic()
        with self._cond:
            heapq.heappush(self._queue, ticket)
            self._cond.notify_all()  # a head waiting for a slot looks again: it may no longer be the head
        try:
            while True:
                self._wait_turn(ticket)
                patient = time.monotonic() - arrived < BACKGROUND_PATIENCE
                wait = 1.0
                try:
                    wait = self.limiter.try_take(klass >= CallClass.STOP, patient)
                finally:
                    with self._cond:
                        self._taking = False
                        if wait <= 0:
                            self._leave(ticket)
                        self._cond.notify_all()
                if wait <= 0:
                    self._count(klass)
                    return
                self._sleep(wait)
        except BaseException:
            with self._cond:
                if ticket in self._queue:
                    self._leave(ticket)
                self._cond.notify_all()
            raise

    def _wait_turn(self, ticket: tuple[int, int]) -> None:
        with self._cond:
            while self._queue[0] != ticket or self._taking:
                deadlines.check()
                self._cond.wait(deadlines.capped(TURN_CHECK))
            deadlines.check()
            self._taking = True

    def _sleep(self, wait: float) -> None:
        """Wait for the slot the limiter announced, or less: an arrival of a higher class wakes the head."""
        left = deadlines.remaining()
        if left is not None and wait >= left:
            raise deadlines.DeadlinePassed()
        with self._cond:
            self._cond.wait(wait)

    def _leave(self, ticket: tuple[int, int]) -> None:
        self._queue.remove(ticket)
        heapq.heapify(self._queue)

    def _count(self, klass: CallClass) -> None:
        self.granted[klass] += 1
        if self.metrics is not None:
            self.metrics.provider_calls_by_class.labels(self.provider, klass.label).inc()

    # -- what the idle check and the metrics ask -------------------------------------

    def waiting(self, up_to: CallClass = CallClass.BACKGROUND) -> int:
        """Calls waiting for their turn, of class ``up_to`` or a higher one (a lower value)."""
        with self._cond:
            return sum(1 for klass, _ in self._queue if klass <= up_to)

    def remaining(self) -> float:
        """Calls that could go now; the platform's own figure when it gives one and it is lower."""
        local = self.limiter.remaining() if self.limiter is not None else math.inf
        if self.reported_remaining is not None:
            return min(local, self.reported_remaining)
        return local

    def room(self) -> float:
        """Calls the lower classes could make now without touching the reserve kept for wakes (inf: no limit)."""
        if self.limiter is None:
            return math.inf
        return self.limiter.room()

    def has_room(self, calls: float = 1.0) -> bool:
        """Nothing of a higher class than ``background`` waits, and ``calls`` fit above the reserve."""
        return self.waiting(CallClass.STOP) == 0 and self.room() >= calls
