"""Putting apps to sleep: one stop per app at a time, in this process and across instances.

Owns stops: the before/after-stop hooks, the last look for a request that arrived on
another instance, the provider call, and keeping the formation memo the next start needs.
A stop that fails loses nothing: the app stays registered as running.
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
from ..registry import Registry
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
                if not ours or (still_idle is not None and not still_idle(app)):
                    return False  # another instance is starting or stopping it, or it was used meanwhile
                if reason != "idle" and self._already_stopped(app, reason):
                    return True  # (an idle app was just listed as running: no call to ask again)
                return self._stop(app, reason, policy.hooks)
        finally:
            self.flights.land(app.key, flight)

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

    def _stop(self, app: AppInfo, reason: str, hooks: dict[str, str]) -> bool:
        started = time.monotonic()
        try:
            self.hooks.run("before_stop", hooks.get("before_stop"), app.name, reason, app.region)
        except HookFailed as error:
            self.journal.emit(ev.APP_STOP_FAILED, app.key, reason, message=str(error))
            return False
        entry = self.registry.get(app.key)
        self.registry.unregister(app.key)  # new requests now wait for this stop, then wake the app
        if reason in ("idle", "schedule") and self.registry.in_flight(app.key) > 0:  # one came in elsewhere
            if entry is not None:
                self.registry.register(entry)
            log.info("not stopping %s: a request arrived", app.key)
            return False
        self.close_connections(app.key)  # with a Close frame (1001) rather than a reset by the dying app
        try:
            log.info("stopping %s (%s)", app.key, reason)
            memo = self.provider.stop(app, self.registry.recall(app.key))  # in the class stop_class(reason) says
        except ProviderError as error:
            if entry is not None:
                self.registry.register(entry)  # still running as far as we know: lose nothing
            log.error("could not stop %s: %s", app.key, error)
            self.journal.emit(ev.APP_STOP_FAILED, app.key, reason, message=str(error))
            return False
        if memo:
            self.registry.remember(app.key, memo)
        self._note_stopped(app)
        self.journal.emit(ev.APP_STOPPED, app.key, reason, duration=time.monotonic() - started)
        if reason == "idle":
            self.metrics.idle_stops.labels(app.key).inc()
        self.hooks.run_in_background("after_stop", hooks.get("after_stop"), app.name, reason, app.region)
        return True

    def _note_stopped(self, app: AppInfo) -> None:
        if self.directory is not None:
            self.directory.note(app, STOPPED)
