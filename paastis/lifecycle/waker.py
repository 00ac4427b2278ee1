"""Waking apps: single flight within the process, the per-app cluster lock across instances.

Owns starts. Concurrent requests for a sleeping app join the start already under way
instead of calling the provider again, and learn its outcome, failure included; a
request that arrives while the app is being stopped waits for the stop, then wakes it
again. Owns the memory of recent failed starts, shown on the waiting page.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager

from .. import deadlines
from .. import events as ev
from ..directory import Directory
from ..hooks import HookFailed, HookRunner
from ..logs import about_app
from ..metrics import Metrics
from ..providers import RUNNING, AppInfo, AppNotFound, Provider, ProviderError, ProviderTimeout
from ..providers.priority import CallClass, calls_as
from ..registry import Registry
from ..rules import Rules
from .errors import NotManaged, UnknownApp, WakeError, WakeTimeout, wake_timeout
from .flights import Flight, Flights
from .journal import Journal
from .lookup import AppLookup
from .readiness import Readiness

log = logging.getLogger("paastis.lifecycle")

WAKE_GRACE = 1.0  # seconds a waiter gives the start past its deadline to report its own error
FAILURE_MEMORY = 10.0  # seconds a failed start stays on the waiting page before a reload retries
CLUSTER_POLL_INTERVAL = 0.1  # seconds between looks at another instance's start or stop

ClusterLock = Callable[[str], AbstractContextManager[bool]]  # yields True when this instance holds it
OPERATOR_REASONS = ("manual", "schedule")  # starts an operator (or an awake window) asked for: class operator


def start_class(reason: str) -> CallClass:
    """A user's wake (and its linked apps) goes first; an operator's start or an awake window's next."""
    return CallClass.OPERATOR if reason in OPERATOR_REASONS else CallClass.WAKE


class Waker:
    def __init__(
        self,
        provider: Provider,
        registry: Registry,
        directory: Directory,
        rules: Rules,
        hooks: HookRunner,
        metrics: Metrics,
        lookup: AppLookup,
        flights: Flights,
        readiness: Readiness,
        journal: Journal,
        cluster_lock: ClusterLock,
        operation_timeout: float,
        timeout_of: Callable[[AppInfo], float] | None = None,
    ):
        self.provider = provider
        self.registry = registry
        self.directory = directory
        self.rules = rules
        self.hooks = hooks
        self.metrics = metrics
        self.lookup = lookup
        self.flights = flights
        self.readiness = readiness
        self.journal = journal
        self.cluster_lock = cluster_lock
        self.operation_timeout = operation_timeout
        self.timeout_of = timeout_of or (lambda app: operation_timeout)  # each account's own deadline
        self._failures: dict[str, tuple[WakeError, float]] = {}
        self._undone: dict[str, str] = {}  # app key -> what a failed start's cleanup did, for its error

    def is_awake(self, group: list[AppInfo]) -> bool:
        """Every app of ``group`` is registered and not being started or stopped."""
        return all(self.registry.get(m.key) is not None and not self.flights.busy(m.key) for m in group)

    def ensure_awake(self, app: AppInfo, reason: str = "request", recheck: bool = False) -> None:
        """Return once ``app`` and its linked apps are ready, or raise :class:`WakeError`."""
        group = self.lookup.group(app)
        if len(group) == 1:
            self._wake(app, reason, recheck)
            return
        with ThreadPoolExecutor(max_workers=len(group)) as pool:
            futures = [
                pool.submit(self._wake, member, reason if member is app else "linked", recheck and member is app)
                for member in group
            ]
        for future in futures:
            future.result()  # the first failure, naming its app, fails the request

    def wake_in_background(self, app: AppInfo, reason: str = "request") -> None:
        """Start waking ``app`` without waiting (the waiting page polls :meth:`failure`)."""
        if self.flights.busy(app.key):
            return
        thread = threading.Thread(target=self._wake_quietly, args=(app, reason), daemon=True)
        thread.start()

    def failure(self, key: str) -> str | None:
        """What a visitor may be told about the last start of ``key``, if it failed recently.

        One sentence and the event id (:attr:`WakeError.public`): the waiting page is public, the
        details (exit code, output, paths) are in the event and the log.
        """
        failure = self._failures.get(key)
        if failure and time.monotonic() - failure[1] < FAILURE_MEMORY:
            return failure[0].public
        return None

    def prune(self, known: Callable[[str], bool]) -> None:
        """Forget failures that are old, or of apps that are gone."""
        now = time.monotonic()
        for key, (_, at) in list(self._failures.items()):
            if now - at >= FAILURE_MEMORY or not known(key):
                self._failures.pop(key, None)

    # -- internals --------------------------------------------------------------

    def _wake(self, app: AppInfo, reason: str, recheck: bool) -> None:
        """Wait for ``app`` to be awake, starting it if nobody is; never longer than its deadline (and a grace).

        The start itself runs in a thread of its own, under the deadline (:mod:`paastis.deadlines`),
        so that a waiter's time is bounded whatever the provider's API does: the waiter stops
        waiting at the deadline even if a call somewhere below ignores it.
        """
        deadline = time.monotonic() + self.timeout_of(app)
        while True:
            if not recheck and self.registry.get(app.key) is not None and not self.flights.busy(app.key):
                return
            flight, leader = self.flights.join(app.key, "start")
            if leader:
                if recheck:  # its upstream refused us: the entry is stale, and must not pass for "woken"
                    self.registry.unregister(app.key)
                self._start_in_background(app, reason, flight, deadline)
            if not flight.done.wait(max(0.0, deadline + WAKE_GRACE - time.monotonic())):
                raise wake_timeout(app.key, self.timeout_of(app))
            if flight.kind == "start":
                if flight.error is not None:
                    raise flight.error
                return
            recheck = False  # a stop just ended: go round and wake the app again

    def _wake_quietly(self, app: AppInfo, reason: str) -> None:
        try:
            self.ensure_awake(app, reason)
        except WakeError:
            pass  # already logged, recorded and remembered for the waiting page

    def _start_in_background(self, app: AppInfo, reason: str, flight: Flight, deadline: float) -> None:
        def lead() -> None:
            with deadlines.deadline_at(deadline):
                try:
                    self._lead_start(app, reason, flight, deadline)
                except WakeError:
                    pass  # recorded, and handed to every waiter through the flight

        threading.Thread(target=lead, name=f"paastis-wake-{app.key}", daemon=True).start()

    def _lead_start(self, app: AppInfo, reason: str, flight: Flight, deadline: float) -> None:
        with about_app(app.key), calls_as(start_class(reason)):
            self._lead_start_logged(app, reason, flight, deadline)

    def _lead_start_logged(self, app: AppInfo, reason: str, flight: Flight, deadline: float) -> None:
        started = time.monotonic()
        self._failures.pop(app.key, None)
        try:
            self._start_in_cluster(app, reason, deadline)
        except WakeError as error:
            flight.error = error
        except AppNotFound as error:  # deleted since the last listing: forget it, and say so
            self.directory.forget(app.key)
            flight.error = UnknownApp(app.key, f"unknown app {app.key!r} ({error})")
        except ProviderError as error:  # cut at the deadline, or failing at it: the 504 the README promises
            late = isinstance(error, ProviderTimeout) or time.monotonic() >= deadline
            flight.error = (
                wake_timeout(app.key, self.timeout_of(app), error) if late else WakeError(app.key, str(error))
            )
        except deadlines.DeadlinePassed:
            flight.error = wake_timeout(app.key, self.timeout_of(app))
        except HookFailed as error:
            flight.error = WakeError(app.key, str(error))
        except Exception as error:  # noqa: BLE001 - a bug must not leave waiters hanging
            log.exception("unexpected error while starting %s", app.key)
            flight.error = WakeError(app.key, f"unexpected error while starting {app.key!r}: {error}")
        finally:
            self._tell_what_was_undone(app, flight)
            if flight.error is not None:  # recorded before waiters read it: their answer quotes its event
                if not isinstance(flight.error, UnknownApp | NotManaged):
                    flight.error.event_id = uuid.uuid4().hex
                self._record_failure(app, reason, flight.error, time.monotonic() - started)
            self.flights.land(app.key, flight)
        if flight.error is not None:
            raise flight.error

    def _start_in_cluster(self, app: AppInfo, reason: str, deadline: float) -> None:
        """Start ``app`` under its cluster lock; while another instance holds it, wait for its result.

        The holder may be starting the app (then it becomes registered) or stopping it (then
        the lock frees up and we start it again): either way the provider is called once.
        """
        waited = False
        while True:
            if waited and self.registry.get(app.key) is not None:
                return  # another instance woke it
            with self.cluster_lock(app.key) as ours:
                if ours:
                    self._start(app, reason, deadline)
                    return
            if time.monotonic() >= deadline:
                raise wake_timeout(app.key, self.timeout_of(app))
            waited = True
            time.sleep(CLUSTER_POLL_INTERVAL)

    def _start(self, app: AppInfo, reason: str, deadline: float) -> None:
        policy = self.rules.policy(app.key)
        if self.readiness.ready(app, self.provider.status(app)):
            self.directory.note(app, RUNNING)
            self.journal.registered(app, reason, ev.APP_REGISTERED)
            return
        if not policy.managed:
            raise NotManaged(app.key, f"app {app.key!r} is not running and is not managed by paastis")
        started = time.monotonic()
        self.hooks.run("before_start", policy.hooks.get("before_start"), app.name, reason, app.region, app.provider)
        log.info("starting %s (%s)", app.key, reason)
        try:
            running = self.provider.start(app, self.registry.recall(app.key))
            if running:  # what runs now: its stop can trust it instead of reading it again
                self.registry.remember(app.key, running)
            self.readiness.wait_ready(app, deadline)
        except AppNotFound:
            raise
        except Exception:
            self._abandon(app)
            raise
        duration = time.monotonic() - started
        self.directory.note(app, RUNNING)
        self.journal.registered(app, reason, ev.APP_STARTED, duration)
        provider = self.metrics.provider_of(app)
        self.metrics.wakes.labels(app.key, "success", provider).inc()
        self.metrics.wake_duration.labels(app.key, provider).observe(duration)
        log.info("%s is ready after %.2fs", app.key, duration)
        after = policy.hooks.get("after_start")
        self.hooks.run_in_background("after_start", after, app.name, reason, app.region, app.provider)

    def _abandon(self, app: AppInfo) -> None:
        """A start that failed or timed out must leave nothing running; remember what was undone for its error.

        The cleanup gets its own time (the provider's operation timeout; a local app's ``stop_timeout``,
        see the provider): what was left of the wake's deadline is nothing when the start timed out.
        """
        try:
            with deadlines.own_time(self.operation_timeout):
                undone = self.provider.abandon_start(app)
        except Exception as error:  # noqa: BLE001 - the start's own failure is what the caller must see
            log.error("could not clean up after the failed start of %s: %s", app.key, error)
            undone = f"cleaning up failed too: {error}"
        if undone:
            self._undone[app.key] = undone

    def _tell_what_was_undone(self, app: AppInfo, flight: Flight) -> None:
        """Add what :meth:`_abandon` did to the start's error, keeping its kind (and so its status)."""
        undone = self._undone.pop(app.key, None)
        if undone and flight.error is not None:
            flight.error = flight.error.amended(f"{flight.error.message}; {undone}")

    def _record_failure(self, app: AppInfo, reason: str, error: WakeError, duration: float) -> None:
        self._failures[app.key] = (error, time.monotonic())
        if isinstance(error, UnknownApp | NotManaged):
            return
        log.error("could not wake %s: %s (event %s)", app.key, error.message, error.event_id)
        outcome = "timeout" if isinstance(error, WakeTimeout) else "failure"
        self.metrics.wakes.labels(app.key, outcome, self.metrics.provider_of(app)).inc()
        self.journal.emit(
            ev.APP_START_FAILED,
            app.key,
            reason,
            duration=duration,
            message=error.message,
            provider=app.provider or None,
            **({"id": error.event_id} if error.event_id else {}),
        )
