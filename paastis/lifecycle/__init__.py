"""Waking and putting apps to sleep: the only place that asks a provider to start or stop.

:class:`Lifecycle` is a thin front over small collaborators, each owning one thing:

- :mod:`.lookup`: which app a request key stands for, its linked group, its upstream URL;
- :mod:`.flights`: single flight inside this process (one start or stop per app at a time);
- :mod:`.readiness`: is a started app answering yet, and is an app its router calls down really down;
- :mod:`.waker`: starts, under the per-app cluster lock, and the memory of recent failed starts;
- :mod:`.stopper`: stops, under the same lock, with their hooks and the formation memo;
- :mod:`.idle`: the idle policy run at each supervisor tick (sync with the listing, decide, queue stops);
- :mod:`.journal`: registry entries paired with the events that tell of them.

Data flows one way: request -> routing -> lifecycle -> provider, and
schedule -> supervisor -> lifecycle -> provider. No collaborator calls back into the front.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .. import deadlines
from ..directory import Directory
from ..dry_run import DryRun
from ..events import EventStore
from ..hooks import HookRunner
from ..metrics import Metrics
from ..providers import AppInfo, Provider
from ..registry import Registry
from ..rules import Rules
from .errors import NotManaged, UnknownApp, WakeError, WakeTimeout
from .flights import Flights
from .idle import IdleCheck
from .journal import Journal
from .lookup import AppLookup
from .readiness import Readiness
from .stopper import Stopper
from .waker import ClusterLock, Waker

__all__ = ["Lifecycle", "NotManaged", "UnknownApp", "WakeError", "WakeTimeout"]

log = logging.getLogger("paastis.lifecycle")

SHUTDOWN_STOP_WAIT = 10.0  # seconds shutdown waits for running stops (gunicorn's graceful_timeout is 15 s)


@contextmanager
def _no_cluster_lock(key: str) -> Iterator[bool]:
    yield True


class Lifecycle:
    """What the proxy, the admin API and the supervisor ask of an app's lifecycle."""

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
        cluster_lock: ClusterLock = _no_cluster_lock,
        dry_run: DryRun | None = None,
        close_connections: Callable[[str], None] = lambda key: None,
        stop_concurrency: int = 4,
        leading: Callable[[], bool] = lambda: True,
        timeout_of: Callable[[AppInfo], float] | None = None,
    ):
        """``timeout_of``: an app's own operation timeout (its account's); default ``operation_timeout``."""
        self.operation_timeout = operation_timeout
        self.directory = directory
        self.registry = registry
        self.metrics = metrics
        self.lookup = AppLookup(provider, directory, rules)
        self.flights = Flights()
        self.journal = Journal(registry, events)
        self.readiness = Readiness(provider, self.lookup, operation_timeout, timeout_of)
        self.waker = Waker(
            provider,
            registry,
            directory,
            rules,
            hooks,
            metrics,
            self.lookup,
            self.flights,
            self.readiness,
            self.journal,
            cluster_lock,
            operation_timeout,
            timeout_of,
        )
        self.stopper = Stopper(
            provider,
            registry,
            rules,
            hooks,
            metrics,
            self.flights,
            self.journal,
            cluster_lock,
            operation_timeout,
            dry_run,
            close_connections,
            directory,
            leading,
        )
        self.idle = IdleCheck(
            provider,
            registry,
            directory,
            rules,
            metrics,
            self.lookup,
            self.flights,
            self.journal,
            self.stopper,
            stop_concurrency,
        )

    # -- what the proxy asks ----------------------------------------------------

    def resolve(self, key: str) -> AppInfo:
        """The app a request key stands for, or :class:`UnknownApp` (404).

        A listing this triggers stops at the operation timeout, like a wake (:mod:`paastis.deadlines`).
        """
        with deadlines.deadline_at(time.monotonic() + self.operation_timeout):
            return self.lookup.resolve(key)

    def group(self, app: AppInfo) -> list[AppInfo]:
        """``app`` (first) and every app it links to, transitively."""
        return self.lookup.group(app)

    def upstream_url(self, app: AppInfo) -> str:
        return self.lookup.upstream_url(app)

    def is_awake(self, group: list[AppInfo]) -> bool:
        return self.waker.is_awake(group)

    def ensure_awake(self, app: AppInfo, reason: str = "request", recheck: bool = False) -> None:
        """Return once ``app`` and its linked apps are ready, or raise :class:`WakeError`."""
        self.waker.ensure_awake(app, reason, recheck)

    def wake_in_background(self, app: AppInfo, reason: str = "request") -> None:
        self.waker.wake_in_background(app, reason)

    def failure(self, key: str) -> str | None:
        """Why the last start of ``key`` failed, if that was recent."""
        return self.waker.failure(key)

    def starting(self, key: str) -> bool:
        return self.flights.starting(key)

    def stop_queued(self, key: str) -> bool:
        """An idle stop of ``key`` is queued or under way here (the idle check's leader knows)."""
        return self.idle.is_stopping(key)

    def router_says_down(self, app: AppInfo, status: int) -> bool:
        return self.readiness.router_says_down(app, status)

    # -- what the admin API and the supervisor ask ------------------------------

    def stop(self, app: AppInfo, reason: str) -> bool:
        """Stop ``app`` unless something else is happening to it; True if it was stopped."""
        return self.stopper.stop(app, reason, self.idle.is_idle if reason == "idle" else None)

    def forget_all(self, reason: str = "manual") -> int:
        """Forget every registered app, touching none; the next idle check relearns what runs."""
        return self.journal.forget_all(reason)

    def check_idle(self) -> None:
        """One supervisor tick: sync the registry with the provider's list, queue idle apps' stops, prune."""
        self.idle.check()
        self.prune(shared=True)

    def prune(self, shared: bool = False) -> None:
        """Forget what is kept per app of apps the provider no longer lists: memory stays bounded
        however many review apps come and go. ``shared``: the leader also prunes Redis."""
        known = self.directory.knows
        self.waker.prune(known)
        self.readiness.prune(known)
        dropped = self.registry.prune(known, shared)
        series = self.metrics.forget_apps(lambda key: not known(key))
        if dropped or series:
            log.info("forgot %d memo(s) and %d metric series of apps that are gone", dropped, series)

    def close(self) -> None:
        self.idle.close(timeout=min(self.operation_timeout, SHUTDOWN_STOP_WAIT))  # before the provider is closed
        self.readiness.close()
