"""The idle policy: one tick of the supervisor, which syncs the registry with the provider and stops idle apps.

Owns the decision "is this app idle?": idle by its own measure (``max_idle_time``, no
request in flight on any instance), and not held awake by a busy app that links to it
(a back under its front). It decides; :class:`~paastis.lifecycle.stopper.Stopper` stops.
"""

from __future__ import annotations

import logging

from .. import events as ev
from ..directory import Directory
from ..metrics import Metrics
from ..providers import FAILED, RUNNING, STOPPED, AppInfo, Provider, ProviderError
from ..registry import Registry, utcnow
from ..rules import Rules
from .flights import Flights
from .journal import Journal
from .lookup import AppLookup
from .stopper import Stopper

log = logging.getLogger("paastis.lifecycle")


class IdleCheck:
    def __init__(
        self,
        provider: Provider,
        registry: Registry,
        directory: Directory,
        rules: Rules,
        metrics: Metrics,
        lookup: AppLookup,
        flights: Flights,
        journal: Journal,
        stopper: Stopper,
    ):
        self.provider = provider
        self.registry = registry
        self.directory = directory
        self.rules = rules
        self.metrics = metrics
        self.lookup = lookup
        self.flights = flights
        self.journal = journal
        self.stopper = stopper

    def check(self) -> None:
        """One tick: sync the registry with the provider's list, then stop idle apps."""
        listed = self.lookup.tracked(self.directory.refresh(), self.registry.all())
        for app in listed.values():
            self._sync(app)
        for entry in self.registry.all():
            app = listed.get(entry.key)
            if app is None:
                self.journal.forgotten(entry.key, "idle", "the provider no longer lists it (or a renamed key holds it)")
            elif self.is_idle(app):
                self.stopper.stop(app, "idle", still_idle=self.is_idle)
        self.metrics.registry_size.set(len(self.registry.all()))

    def is_idle(self, app: AppInfo) -> bool:
        """Idle by its own measure, and not held by a busy app that links to it (a back under its front)."""
        if self.registry.get(app.key) is None or not self._idle_alone(app.key):
            return False
        holders = (e.key for e in self.registry.all() if e.key != app.key and app.key in self.lookup.links_of(e.key))
        return all(self._idle_alone(key) for key in holders)

    def _idle_alone(self, key: str) -> bool:
        entry = self.registry.get(key)
        if entry is None or self.registry.in_flight(key) > 0:
            return entry is None  # an app no longer registered holds nothing
        now, policy = utcnow(), self.rules.policy(key)
        if policy.schedule is not None and policy.schedule.keeps_awake(now):
            return False  # inside an awake_during window
        return entry.idle_seconds(now) > policy.max_idle_time * 60

    def _sync(self, app: AppInfo) -> None:
        """Register running apps we did not know; forget those found stopped."""
        if self.flights.busy(app.key):
            return  # unmanaged apps are registered too (so requests reach them), but never stopped
        try:
            status = app.status or self.provider.status(app)
        except ProviderError as error:
            log.warning("idle check: no status for %s: %s", app.key, error)
            return
        known = self.registry.get(app.key) is not None
        if status == RUNNING and not known:
            self.journal.registered(app, "idle", ev.APP_REGISTERED)
        elif status in (STOPPED, FAILED) and known:  # crashed: forgotten, so the next request wakes it
            self.journal.forgotten(app.key, "idle", f"found {status}")
