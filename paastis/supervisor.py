"""The background thread that runs idle checks on a schedule, only while it leads.

Every gunicorn worker runs one. With the in-memory registry there is a single worker,
which always leads; with Redis, leadership is a lock only one worker in the fleet holds
(see :mod:`paastis.leader`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

import schedule

from .lifecycle import Lifecycle
from .logs import JobErrors
from .metrics import Metrics

log = logging.getLogger(__name__)


class Leadership(Protocol):
    def hold(self) -> bool:
        """Acquire or renew leadership; True while this worker leads."""

    def confirm(self) -> bool:
        """Still leading, asked afresh (a stop's last check before the provider is called)."""

    def release(self) -> None: ...


class SoleLeader:
    """One process, one registry: it always leads."""

    def hold(self) -> bool:
        return True

    def confirm(self) -> bool:
        return True

    def release(self) -> None:
        pass


class CronTimes:
    """When a cron expression (``START_AND_STOP_CHECKING_INTERVAL_CRON``) says the next check is due.

    Six fields put seconds first, as node-cron (the original paastis's scheduler) does.
    """

    def __init__(self, expression: str):
        from croniter import croniter  # only with a cron expression: an idle instance does without it

        self._times = croniter(expression, datetime.now(UTC), second_at_beginning=len(expression.split()) == 6)
        self.next_at: datetime = self._times.get_next(datetime)

    def due(self, now: datetime) -> bool:
        """True once per cron time; missed times (a long check) are skipped, not run in a burst."""
        if now < self.next_at:
            return False
        while self.next_at <= now:
            self.next_at = self._times.get_next(datetime)
        return True


class Supervisor:
    def __init__(
        self,
        lifecycle: Lifecycle,
        interval: float,
        leadership: Leadership,
        metrics: Metrics,
        jobs: Sequence[tuple[str, Callable[[], None]]] = (),
        cron: str | None = None,
    ):
        self.lifecycle = lifecycle
        self.jobs = jobs  # run by the leader before each idle check: (name, callable)
        self.interval = interval
        self.leadership = leadership
        self.metrics = metrics
        self.scheduler = schedule.Scheduler()
        if cron is None:
            self.scheduler.every(interval).seconds.do(self.tick)
        else:  # the schedule package has no cron syntax: it polls the cron times every second instead
            self.cron = CronTimes(cron)
            self.scheduler.every(1).seconds.do(self._tick_on_cron)
            self.interval = 1.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._leading = False
        self.errors = JobErrors(log)  # a job failing at every tick: its traceback once, then a line a minute

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="paastis-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.leadership.release()

    @property
    def leading(self) -> bool:
        return self._leading

    def tick(self) -> None:
        """One idle check, if we lead; never lets an error kill the thread."""
        leading = bool(self._run_job("leadership", self.leadership.hold))
        self._set_leading(leading)
        if not leading:
            self._run_job("pruning", self.lifecycle.prune)  # a follower forgets its own state of apps that are gone
            return
        for name, job in self.jobs:
            self._run_job(name, job)
        self._run_job("idle check", self.lifecycle.check_idle)

    def _run_job(self, name: str, job: Callable[[], object]) -> object:
        """Run one job; an error is logged (traceback once, then rate-limited) and the next tick tries again."""
        try:
            result = job()
        except Exception as error:  # noqa: BLE001 - logged; the next tick tries again
            self.errors.failed(f"supervisor: {name}", error)
            return None
        self.errors.succeeded(f"supervisor: {name}")
        return result

    def _tick_on_cron(self) -> None:
        if self.cron.due(datetime.now(UTC)):
            self.tick()

    def _set_leading(self, leading: bool) -> None:
        if leading != self._leading:
            log.info("supervisor: %s", "now leading the idle checks" if leading else "no longer leading")
        self._leading = leading
        self.metrics.leader.set(1 if leading else 0)

    def _run(self) -> None:
        self.tick()  # learn what already runs right away
        while not self._stopping.wait(min(0.5, self.interval / 4)):
            self.scheduler.run_pending()
