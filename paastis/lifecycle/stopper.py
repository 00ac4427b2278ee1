"""Putting apps to sleep: one stop per app at a time, in this process and across instances.

Owns stops: the before/after-stop hooks, the last look for a request that arrived on
another instance, the provider call, and keeping the formation memo the next start needs.
A stop that fails loses nothing: the app stays registered as running.

An unattended stop (idle, schedule) never acts on degraded cluster state: just before
``provider.stop`` it confirms with Redis that this instance still leads, and reads the app's
activity fresh (:meth:`~paastis.registry.Registry.last_look`); if either cannot be had, the app
is left running and the next tick decides again. An operator's stop is an order, not a guess
from data: it works while Redis is down, as wakes do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .. import events as ev
from ..directory import Directory
from ..dry_run import DryRun
from ..hooks import HookFailed, HookRunner
from ..logs import about_app
from ..metrics import Metrics
from ..providers import STOPPED, AppInfo, Provider, ProviderError
from ..providers.priority import CallClass, calls_as
from ..registry import Degraded, Registry
from ..rules import Rules
from .flights import Flights
from .journal import Journal
from .waker import ClusterLock

log = logging.getLogger("paastis.lifecycle")

UNATTENDED = ("idle", "schedule")  # stops nobody waits for: they spend the API budget after wakes, and are not followed


def stop_class(reason: str) -> CallClass:
    """Idle and schedule stops spend the budget after wakes and operators' requests (paastis.providers.priority)."""
    return CallClass.STOP if reason in UNATTENDED else CallClass.OPERATOR


class Stopper:
    def __init__(
        self,
        provider: Provider,
        registry: Registry,
        rules: Rules,
        hooks: HookRunner,
        metrics: Metrics,
        flights: Flights,
        journal: Journal,
        cluster_lock: ClusterLock,
        operation_timeout: float,
        dry_run: DryRun | None = None,
        close_connections: Callable[[str], None] = lambda key: None,
        directory: Directory | None = None,
        leading: Callable[[], bool] = lambda: True,
    ):
        self.provider = provider
        self.registry = registry
        self.rules = rules
        self.hooks = hooks
        self.metrics = metrics
        self.flights = flights
        self.journal = journal
        self.cluster_lock = cluster_lock
        self.operation_timeout = operation_timeout
        self.dry_run = dry_run  # PAASTIS_DRY_RUN: stops are only recorded (APP_WOULD_STOP)
        self.close_connections = close_connections  # an app's open WebSockets (see paastis.relay)
        self.directory = directory  # told of each stop: the list reads "stopped" before the next listing
        self.leading = leading  # asks Redis afresh whether this instance still leads (unattended stops)

    def stop(self, app: AppInfo, reason: str, still_idle: Callable[[AppInfo], bool] | None = None) -> bool:
        """Stop ``app`` unless something else is happening to it; True if it was stopped.

        ``still_idle`` is asked again under the cluster lock: another instance may have
        served the app since the decision was taken.
        """
        policy = self.rules.policy(app.key)
        if not policy.managed:
            return False
        if self.dry_run is not None:
            return self.dry_run.would_stop(app, reason)
        flight, leader = self.flights.join(app.key, "stop")
        if not leader:
            flight.done.wait(self.operation_timeout)
            return False
        try:
            with about_app(app.key), calls_as(stop_class(reason)), self.cluster_lock(app.key) as ours:
                if not ours or not self._still_idle(app, still_idle):
                    return False  # another instance is starting or stopping it, or it was used meanwhile
                if reason != "idle" and self._already_stopped(app, reason):
                    return True  # (an idle app was just listed as running: no call to ask again)
                return self._stop(app, reason, policy.hooks, still_idle)
        finally:
            self.flights.land(app.key, flight)

    def _still_leading(self, app: AppInfo) -> bool:
        if self.leading():
            return True
        log.warning("not stopping %s: this instance no longer leads (or Redis cannot confirm it)", app.key)
        return False

    def _nobody_came(self, app: AppInfo) -> bool:
        """After unregistering: no request in flight on any instance, read fresh (a request that begins
        from now on finds the app gone and waits for this stop). Degraded: no stop."""
        try:
            look = self.registry.last_look([app.key])[app.key]
        except Degraded as error:
            log.warning("not stopping %s: cluster state is degraded (%s)", app.key, error)
            return False
        if look.in_flight > 0:  # one came in elsewhere
            log.info("not stopping %s: a request arrived", app.key)
            return False
        return True

    def _already_stopped(self, app: AppInfo, reason: str) -> bool:
        """A stopped app is not stopped again: no hooks, no second ``APP_STOPPED`` (one status call)."""
        try:
            stopped = self.provider.status(app) == STOPPED
        except ProviderError as error:
            log.warning("could not tell whether %s is already stopped (%s): stopping it", app.key, error)
            return False
        if stopped:
            self._note_stopped(app)
            log.info("%s is already stopped: nothing to do", app.key)
            if self.registry.get(app.key) is not None:
                self.journal.forgotten(app.key, reason, "found stopped")
        return stopped

    def _still_idle(self, app: AppInfo, still_idle: Callable[[AppInfo], bool] | None) -> bool:
        """``still_idle`` asked afresh; False (no stop) when the cluster state is degraded."""
        if still_idle is None:
            return True
        try:
            return still_idle(app)
        except Degraded as error:
            log.warning("not stopping %s: cluster state is degraded (%s); the next check decides again", app.key, error)
            return False

    def _stop(
        self, app: AppInfo, reason: str, hooks: dict[str, str], still_idle: Callable[[AppInfo], bool] | None = None
    ) -> bool:
        started = time.monotonic()
        try:
            self.hooks.run("before_stop", hooks.get("before_stop"), app.name, reason, app.region, app.provider)
        except HookFailed as error:
            self.journal.emit(ev.APP_STOP_FAILED, app.key, reason, message=str(error), provider=app.provider or None)
            return False
        unattended = reason in UNATTENDED
        if unattended and not self._still_idle(app, still_idle):  # the hook took time: looked at again
            log.info("not stopping %s: a request arrived (or it was used) while its before_stop hook ran", app.key)
            return False
        if unattended and not self._still_leading(app):
            return False
        entry = self.registry.get(app.key)
        self.registry.unregister(app.key)  # new requests now wait for this stop, then wake the app
        if unattended and not self._nobody_came(app):
            if entry is not None:
                self.registry.register(entry)
            return False
        self.close_connections(app.key)  # with a Close frame (1001) rather than a reset by the dying app
        try:
            log.info("stopping %s (%s)", app.key, reason)
            memo = self.provider.stop(app, self.registry.recall(app.key))  # in the class stop_class(reason) says
        except ProviderError as error:
            if entry is not None:
                self.registry.register(entry)  # still running as far as we know: lose nothing
            log.error("could not stop %s: %s", app.key, error)
            self.journal.emit(ev.APP_STOP_FAILED, app.key, reason, message=str(error), provider=app.provider or None)
            return False
        if memo:
            self.registry.remember(app.key, memo)
        self._note_stopped(app)
        took = time.monotonic() - started
        log.info("stopped %s after %.2fs", app.key, took)  # the match of a wake's "ready after"
        self.journal.emit(ev.APP_STOPPED, app.key, reason, duration=took, provider=app.provider or None)
        if reason == "idle":
            self.metrics.idle_stops.labels(app.key, self.metrics.provider_of(app)).inc()
        after = hooks.get("after_stop")
        self.hooks.run_in_background("after_stop", after, app.name, reason, app.region, app.provider)
        return True

    def _note_stopped(self, app: AppInfo) -> None:
        if self.directory is not None:
            self.directory.note(app, STOPPED)
