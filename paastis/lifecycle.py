"""Waking and putting apps to sleep: the only place that asks a provider to start or stop.

Each app has at most one operation in flight in this process (a :class:`Flight`).
Concurrent requests for a sleeping app join the start already under way instead of
calling the provider again, and learn its outcome, failure included. A request that
arrives while the app is being stopped waits for the stop, then wakes it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import requests

from . import events as ev
from .directory import Directory
from .events import Event, EventStore
from .hooks import HookFailed, HookRunner
from .metrics import Metrics
from .providers import FAILED, RUNNING, STOPPED, AppInfo, AppNotFound, Provider, ProviderError
from .registry import Registry, RunningApp, utcnow
from .rules import Rules

log = logging.getLogger(__name__)

ROUTER_ERRORS = {502, 503, 504}  # what a PaaS router answers while an app is down or booting
DOWN_STATUSES = {502, 503}  # what it answers for an app that is not running (504: running, but slow)
PROBE_INTERVAL = 0.1
DOWN_CHECK_INTERVAL = 30.0  # seconds between provider checks of an app whose router says it is down
FAILURE_MEMORY = 10.0  # seconds a failed start stays on the waiting page before a reload retries
CLUSTER_POLL_INTERVAL = 0.1  # seconds between looks at another instance's start or stop


class WakeError(Exception):
    """A request cannot be served because its app could not be woken; ``status`` is the answer."""

    status = 502

    def __init__(self, app: str, message: str):
        self.app = app
        self.message = message
        super().__init__(message)


class UnknownApp(WakeError):
    status = 404


class NotManaged(WakeError):
    status = 503


class WakeTimeout(WakeError):
    status = 504


@dataclass
class Flight:
    """One start or stop of one app, which others may wait on."""

    kind: str  # "start" or "stop"
    done: threading.Event = field(default_factory=threading.Event)
    error: WakeError | None = None


@contextmanager
def _no_cluster_lock(key: str, ttl: float) -> Iterator[bool]:
    yield True


class Lifecycle:
    def __init__(
        self,
        provider: Provider,
        registry: Registry,
        directory: Directory,
        rules: Rules,
        events: EventStore,
        hooks: HookRunner,
        metrics: Metrics,
        operation_timeout: float,
        cluster_lock: Callable[[str, float], AbstractContextManager[bool]] = _no_cluster_lock,
    ):
        self.provider = provider
        self.registry = registry
        self.directory = directory
        self.rules = rules
        self.events = events
        self.hooks = hooks
        self.metrics = metrics
        self.operation_timeout = operation_timeout
        self.cluster_lock = cluster_lock
        self._flights: dict[str, Flight] = {}
        self._failures: dict[str, tuple[str, float]] = {}
        self._down_checks: dict[str, float] = {}
        self._lock = threading.Lock()
        self._probe = requests.Session()

    # -- what the proxy asks ----------------------------------------------------

    def resolve(self, key: str) -> AppInfo:
        """The app a request key stands for, or :class:`UnknownApp` (404).

        While the provider cannot be listed, an app missing from the cache may exist:
        that is a 502 naming the provider, not a 404.
        """
        app = self.directory.resolve(key)
        if app is None and self.directory.last_error is not None:
            raise WakeError(key, f"cannot tell whether app {key!r} exists: {self.directory.last_error}")
        if app is None:
            raise UnknownApp(key, f"unknown app {key!r}")
        return app

    def upstream_url(self, app: AppInfo) -> str:
        """Where requests for ``app`` go: a rule's ``upstream_url``, else the provider's URL."""
        policy = self.rules.policy(app.key)
        return (policy.upstream_url or app.upstream_url or self.provider.upstream_url(app)).rstrip("/")

    def router_says_down(self, app: AppInfo, status: int) -> bool:
        """A PaaS router answered 502/503 for an app we believe awake: was it stopped behind our back?

        Asks the provider at most once per app every ``DOWN_CHECK_INTERVAL`` seconds, so an
        app that answers 503 itself cannot spend the API quota.
        """
        if status not in DOWN_STATUSES or not self.provider.probe_upstream:
            return False
        now = time.monotonic()
        if now - self._down_checks.get(app.key, -DOWN_CHECK_INTERVAL) < DOWN_CHECK_INTERVAL:
            return False
        self._down_checks[app.key] = now
        try:
            return self.provider.status(app) != RUNNING
        except ProviderError as error:
            log.warning("could not check whether %s is down: %s", app.key, error)
            return False

    def is_awake(self, group: list[AppInfo]) -> bool:
        """Every app of ``group`` is registered and not being started or stopped."""
        return all(self.registry.get(m.key) is not None and m.key not in self._flights for m in group)

    def group(self, app: AppInfo) -> list[AppInfo]:
        """``app`` (first) and every app it links to, transitively; cycles end, each app once."""
        seen: dict[str, AppInfo] = {app.key: app}
        queue = [app]
        while queue:
            current = queue.pop()
            for name in self.rules.policy(current.key).linked_apps:
                linked = self.directory.resolve(name)
                if linked is None:
                    raise WakeError(name, f"linked app {name!r} (of {current.key!r}) is unknown")
                if linked.key not in seen:
                    seen[linked.key] = linked
                    queue.append(linked)
        return list(seen.values())

    def ensure_awake(self, app: AppInfo, reason: str = "request", recheck: bool = False) -> None:
        """Return once ``app`` and its linked apps are ready, or raise :class:`WakeError`."""
        group = self.group(app)
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
        if app.key in self._flights:
            return
        thread = threading.Thread(target=self._wake_quietly, args=(app, reason), daemon=True)
        thread.start()

    def failure(self, key: str) -> str | None:
        """Why the last start of ``key`` failed, if that was recent."""
        failure = self._failures.get(key)
        if failure and time.monotonic() - failure[1] < FAILURE_MEMORY:
            return failure[0]
        return None

    def starting(self, key: str) -> bool:
        flight = self._flights.get(key)
        return flight is not None and flight.kind == "start"

    # -- what the supervisor asks ----------------------------------------------

    def check_idle(self) -> None:
        """One tick: sync the registry with the provider's list, then stop idle apps."""
        listed = self._tracked(self.directory.refresh())
        for app in listed.values():
            self._sync(app)
        for entry in self.registry.all():
            app = listed.get(entry.key)
            if app is None:
                self._unregister(entry.key, "idle", "the provider no longer lists it (or a renamed key holds it)")
            elif self._idle(app):
                self.stop(app, "idle")
        self.metrics.registry_size.set(len(self.registry.all()))

    def _tracked(self, apps: list[AppInfo]) -> dict[str, AppInfo]:
        """Listed apps by key, where a registered key renamed by a rule (``app_name``) stands for its app.

        The renamed key carries the rule (idle time, links, hooks), so it alone tracks the app.
        """
        tracked = {app.key: app for app in apps}
        by_name = {app.name: app for app in apps}
        for entry in self.registry.all():
            if entry.key in tracked or self.rules.policy(entry.key).app_name == entry.key:
                continue
            target = self.directory.resolve(entry.key)  # by name, key or alias, as for requests
            if target is not None:
                listed = by_name.get(target.name)
                tracked.pop(listed.key if listed else target.key, None)
                tracked[entry.key] = target
        return tracked

    def forget_all(self, reason: str = "manual") -> int:
        """Forget every registered app, touching none; the next idle check relearns what runs."""
        entries = self.registry.all()
        self.registry.clear()
        for entry in entries:
            self._emit(ev.APP_UNREGISTERED, entry.key, reason, message="registry cleared")
        return len(entries)

    def stop(self, app: AppInfo, reason: str) -> bool:
        """Stop ``app`` unless something else is happening to it; True if it was stopped."""
        policy = self.rules.policy(app.key)
        if not policy.managed:
            return False
        flight, leader = self._join(app.key, "stop")
        if not leader:
            flight.done.wait(self.operation_timeout)
            return False
        try:
            with self.cluster_lock(app.key, self.operation_timeout + 30) as ours:
                if not ours or (reason == "idle" and not self._idle(app)):
                    return False  # another instance is starting or stopping it
                return self._stop(app, reason, policy.hooks)
        finally:
            self._land(app.key, flight)

    # -- internals --------------------------------------------------------------

    def _join(self, key: str, kind: str) -> tuple[Flight, bool]:
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = Flight(kind)
            return flight, True

    def _land(self, key: str, flight: Flight) -> None:
        with self._lock:
            self._flights.pop(key, None)
        flight.done.set()

    def _wake(self, app: AppInfo, reason: str, recheck: bool) -> None:
        deadline = time.monotonic() + self.operation_timeout
        while True:
            if not recheck and self.registry.get(app.key) is not None and app.key not in self._flights:
                return
            flight, leader = self._join(app.key, "start")
            if leader:
                if recheck:  # its upstream refused us: the entry is stale, and must not pass for "woken"
                    self.registry.unregister(app.key)
                self._lead_start(app, reason, flight, deadline)
                return
            if not flight.done.wait(max(0.0, deadline - time.monotonic())):
                raise self._timeout(app)
            if flight.kind == "start":
                if flight.error is not None:
                    raise flight.error
                return
            recheck = False  # a stop just ended: go round and wake the app again

    def _timeout(self, app: AppInfo) -> WakeTimeout:
        return WakeTimeout(app.key, f"app {app.key!r} did not become ready within {self.operation_timeout:g}s")

    def _wake_quietly(self, app: AppInfo, reason: str) -> None:
        try:
            self.ensure_awake(app, reason)
        except WakeError:
            pass  # already logged, recorded and remembered for the waiting page

    def _lead_start(self, app: AppInfo, reason: str, flight: Flight, deadline: float) -> None:
        started = time.monotonic()
        self._failures.pop(app.key, None)
        try:
            self._start_in_cluster(app, reason, deadline)
        except WakeError as error:
            flight.error = error
        except AppNotFound as error:  # deleted since the last listing: forget it, and say so
            self.directory.forget(app.key)
            flight.error = UnknownApp(app.key, f"unknown app {app.key!r} ({error})")
        except (ProviderError, HookFailed) as error:
            flight.error = WakeError(app.key, str(error))
        except Exception as error:  # noqa: BLE001 - a bug must not leave waiters hanging
            log.exception("unexpected error while starting %s", app.key)
            flight.error = WakeError(app.key, f"unexpected error while starting {app.key!r}: {error}")
        finally:
            self._land(app.key, flight)
        if flight.error is not None:
            self._record_failure(app, reason, flight.error, time.monotonic() - started)
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
            with self.cluster_lock(app.key, self.operation_timeout + 30) as ours:
                if ours:
                    self._start(app, reason, deadline)
                    return
            if time.monotonic() >= deadline:
                raise self._timeout(app)
            waited = True
            time.sleep(CLUSTER_POLL_INTERVAL)

    def _start(self, app: AppInfo, reason: str, deadline: float) -> None:
        policy = self.rules.policy(app.key)
        if self._ready(app, self.provider.status(app)):
            self._register(app, reason, ev.APP_REGISTERED)
            return
        if not policy.managed:
            raise NotManaged(app.key, f"app {app.key!r} is not running and is not managed by paastis")
        started = time.monotonic()
        self.hooks.run("before_start", policy.hooks.get("before_start"), app.name, reason, app.region)
        log.info("starting %s (%s)", app.key, reason)
        self.provider.start(app, self.registry.recall(app.key))
        self._wait_ready(app, deadline)
        duration = time.monotonic() - started
        self._register(app, reason, ev.APP_STARTED, duration)
        self.metrics.wakes.labels(app.key, "success").inc()
        self.metrics.wake_duration.labels(app.key).observe(duration)
        log.info("%s is ready after %.2fs", app.key, duration)
        self.hooks.run_in_background("after_start", policy.hooks.get("after_start"), app.name, reason, app.region)

    def _wait_ready(self, app: AppInfo, deadline: float) -> None:
        """Poll the provider (at its own pace) and the upstream until the app answers."""
        next_status_at = 0.0
        platform_running = False
        while True:
            now = time.monotonic()
            if now >= next_status_at:
                status = self.provider.status(app)
                next_status_at = now + self.provider.poll_interval
                if status == FAILED:
                    raise WakeError(app.key, f"{self.provider.name} reports that app {app.key!r} failed to start")
                platform_running = status == RUNNING
            if self._ready(app, RUNNING if platform_running else STOPPED):
                return
            if time.monotonic() >= deadline:
                raise self._timeout(app)
            time.sleep(min(PROBE_INTERVAL, self.provider.poll_interval))

    def _ready(self, app: AppInfo, status: str) -> bool:
        """Running for the platform, and (where the provider wants it) answering through its router."""
        if status != RUNNING:
            return False
        if not self.provider.probe_upstream:
            return True
        url = self.upstream_url(app) + (self.provider.ready_path(app) or "/")
        try:
            response = self._probe.get(url, timeout=5, allow_redirects=False, stream=True)
            response.close()
        except requests.RequestException:
            return False
        return response.status_code not in ROUTER_ERRORS

    def _stop(self, app: AppInfo, reason: str, hooks: dict[str, str]) -> bool:
        started = time.monotonic()
        try:
            self.hooks.run("before_stop", hooks.get("before_stop"), app.name, reason, app.region)
        except HookFailed as error:
            self._emit(ev.APP_STOP_FAILED, app.key, reason, message=str(error))
            return False
        entry = self.registry.get(app.key)
        self.registry.unregister(app.key)  # new requests now wait for this stop, then wake the app
        if reason == "idle" and self.registry.in_flight(app.key) > 0:  # one came in on another instance
            if entry is not None:
                self.registry.register(entry)
            log.info("not stopping %s: a request arrived", app.key)
            return False
        try:
            log.info("stopping %s (%s)", app.key, reason)
            memo = self.provider.stop(app)
        except ProviderError as error:
            if entry is not None:
                self.registry.register(entry)  # still running as far as we know: lose nothing
            log.error("could not stop %s: %s", app.key, error)
            self._emit(ev.APP_STOP_FAILED, app.key, reason, message=str(error))
            return False
        if memo:
            self.registry.remember(app.key, memo)
        self._emit(ev.APP_STOPPED, app.key, reason, duration=time.monotonic() - started)
        if reason == "idle":
            self.metrics.idle_stops.labels(app.key).inc()
        self.hooks.run_in_background("after_stop", hooks.get("after_stop"), app.name, reason, app.region)
        return True

    def _sync(self, app: AppInfo) -> None:
        """Register running apps we did not know; forget those found stopped."""
        if app.key in self._flights:
            return  # unmanaged apps are registered too (so requests reach them), but never stopped
        try:
            status = app.status or self.provider.status(app)
        except ProviderError as error:
            log.warning("idle check: no status for %s: %s", app.key, error)
            return
        known = self.registry.get(app.key) is not None
        if status == RUNNING and not known:
            self._register(app, "idle", ev.APP_REGISTERED)
        elif status in (STOPPED, FAILED) and known:  # crashed: forgotten, so the next request wakes it
            self._unregister(app.key, "idle", f"found {status}")

    def _idle(self, app: AppInfo) -> bool:
        """Idle by its own measure, and not held by a busy app that links to it (a back under its front)."""
        if self.registry.get(app.key) is None or not self._idle_alone(app.key):
            return False
        holders = (e.key for e in self.registry.all() if e.key != app.key and app.key in self._links_of(e.key))
        return all(self._idle_alone(key) for key in holders)

    def _idle_alone(self, key: str) -> bool:
        entry = self.registry.get(key)
        if entry is None or self.registry.in_flight(key) > 0:
            return entry is None  # an app no longer registered holds nothing
        return entry.idle_seconds(utcnow()) > self.rules.policy(key).max_idle_time * 60

    def _links_of(self, key: str) -> set[str]:
        """The keys ``key`` links to, transitively (from the rules alone: no provider lookup)."""
        seen: set[str] = set()
        queue = [key]
        while queue:
            for linked in self.rules.policy(queue.pop()).linked_apps:
                if linked not in seen:
                    seen.add(linked)
                    queue.append(linked)
        return seen

    def _register(self, app: AppInfo, reason: str, event: str, duration: float | None = None) -> None:
        now = utcnow()
        self.registry.register(RunningApp(key=app.key, started_at=now, last_accessed_at=now))
        self._emit(event, app.key, reason, duration=duration)

    def _unregister(self, key: str, reason: str, why: str) -> None:
        self.registry.unregister(key)
        log.info("forgetting %s: %s", key, why)
        self._emit(ev.APP_UNREGISTERED, key, reason, message=why)

    def _record_failure(self, app: AppInfo, reason: str, error: WakeError, duration: float) -> None:
        self._failures[app.key] = (error.message, time.monotonic())
        if isinstance(error, UnknownApp | NotManaged):
            return
        log.error("could not wake %s: %s", app.key, error.message)
        self.metrics.wakes.labels(app.key, "timeout" if isinstance(error, WakeTimeout) else "failure").inc()
        self._emit(ev.APP_START_FAILED, app.key, reason, duration=duration, message=error.message)

    def _emit(self, type: str, key: str, reason: str, **details) -> None:
        try:
            self.events.add(Event(type=type, app=key, reason=reason, **details))
        except Exception as error:  # noqa: BLE001 - history is best effort, serving is not
            log.warning("could not record event %s for %s: %s", type, key, error)

    def close(self) -> None:
        self._probe.close()
