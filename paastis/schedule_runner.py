"""The leader's window openings: apps start as their ``awake_during`` opens, stop as their ``asleep_during`` does.

Each opening is acted on once. The opening handled last for each app and kind is kept in the
leader's marks (in Redis with the Redis registry), so a new leader neither repeats an opening
its predecessor handled nor misses one that happened while no leader was alive: it acts at
its first tick, at most one checking interval late. A stop waits until no request is in flight
(it is tried again at the next tick); an opening that failed is tried again at the next tick
while its window is open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from .directory import Directory
from .lifecycle import Lifecycle, WakeError
from .marks import Marks, MarksUnavailable
from .providers import RUNNING, AppInfo, Provider, ProviderError
from .providers.priority import CallClass, calls_as
from .registry import Registry, utcnow
from .rules import Rules

log = logging.getLogger(__name__)

BOOK = "schedule"
PARALLEL = 4  # openings acted on at once (each may wait for an app to become ready)


class ScheduleRunner:
    def __init__(
        self,
        lifecycle: Lifecycle,
        provider: Provider,
        directory: Directory,
        rules: Rules,
        registry: Registry,
        marks: Marks,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.lifecycle = lifecycle
        self.provider = provider
        self.directory = directory
        self.rules = rules
        self.registry = registry
        self.marks = marks
        self.clock = clock

    def tick(self) -> None:
        """Act on every window opening not handled yet (leader only)."""
        now = self.clock()
        try:
            handled = self.marks.all(BOOK)
        except MarksUnavailable as error:
            log.warning("schedule: cannot read which openings were handled (%s): trying again next tick", error)
            return
        due = [
            (app, kind, opened)
            for app in self.directory.apps()
            for kind, opened in self._openings(app, now)
            if handled.get(f"{kind}:{app.key}") != opened.isoformat()
        ]
        if not due:
            return
        with ThreadPoolExecutor(min(PARALLEL, len(due)), thread_name_prefix="paastis-schedule") as pool:
            list(pool.map(lambda item: self._open(*item), due))

    def _openings(self, app: AppInfo, now: datetime) -> list[tuple[str, datetime]]:
        policy = self.rules.policy(app.key)
        if not policy.managed or policy.schedule is None:
            return []
        found = [("asleep", policy.schedule.asleep_opened(now)), ("awake", policy.schedule.awake_opened(now))]
        return [(kind, opened) for kind, opened in found if opened is not None]

    def _open(self, app: AppInfo, kind: str, opened: datetime) -> None:
        done = self._stop(app) if kind == "asleep" else self._start(app)
        if not done:
            return
        try:
            self.marks.set(BOOK, f"{kind}:{app.key}", opened.isoformat())
        except MarksUnavailable as error:
            log.warning("schedule: %s handled but not noted (%s): a later leader may handle it again", app.key, error)

    def _start(self, app: AppInfo) -> bool:
        log.info("schedule: awake window opens for %s", app.key)
        try:
            self.lifecycle.ensure_awake(app, reason="schedule")
        except WakeError as error:
            log.warning("schedule: could not start %s: %s (trying again next tick)", app.key, error.message)
            return False
        return True

    def _stop(self, app: AppInfo) -> bool:
        if self.registry.get(app.key) is None and not self._running(app):
            return True  # asleep already
        if self.registry.in_flight(app.key) > 0:
            log.info("schedule: asleep window open for %s: stopping it once its requests end", app.key)
            return False
        log.info("schedule: asleep window opens for %s", app.key)
        return self.lifecycle.stop(app, "schedule")

    def _running(self, app: AppInfo) -> bool:
        """An app not in the registry may still run (nobody told this leader yet): ask the provider."""
        try:
            with calls_as(CallClass.STOP):  # part of the schedule's stop
                return (app.status or self.provider.status(app)) == RUNNING
        except ProviderError as error:
            log.warning("schedule: no status for %s: %s", app.key, error)
            return True  # try to stop it: a stop of a stopped app costs one call
