"""The idle policy: one tick of the supervisor, which syncs the registry with the provider and stops idle apps.

Owns the decision "is this app idle?": idle by its own measure (``max_idle_time``, no
request in flight on any instance), and not held awake by a busy app that links to it
(a back under its front). It decides; :class:`~paastis.lifecycle.stopper.Stopper` stops.

A tick is linear in the number of apps: one listing, one registry snapshot, a map of which
apps hold which others awake computed once, unmanaged apps skipped before anything else.
Stops run afterwards on a small pool (``STOP_CONCURRENCY``), so the next tick lists on time
even while a crowd of idle apps is being put to sleep.

The API budget (see :mod:`paastis.providers.scheduler`):
- The listing is of the lowest class (``background``). While stops are queued and the budget
  is short, a tick does not list: it decides from the last listing plus what paastis itself did
  (the directory's notes), down to one listing per ``PROVIDER_DIRECTORY_TTL``; that overdue
  listing then takes its turn among the stops. With the budget idle, every tick lists.
- While the budget has room, the formations of running apps paastis never woke are read ahead
  (one app at a time, lowest class), so that their stop is one call when they go idle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime

from .. import events as ev
from ..directory import Directory
from ..metrics import Metrics
from ..providers import FAILED, RUNNING, STOPPED, AppInfo, Provider, ProviderError
from ..providers.priority import CallClass, calls_as
from ..registry import Registry, RunningApp, utcnow
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
        stop_concurrency: int = 4,
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
        self.stop_concurrency = stop_concurrency
        self._pools: dict[str, ThreadPoolExecutor] = {}  # one per account: a hung API holds only its own stops
        self._closed = False
        self._stopping: set[str] = set()  # queued or under way
        self._futures: set[Future[None]] = set()
        self._lock = threading.Lock()
        self._rules_checked = False  # rules matching no app are reported at the first listing
        self.last_listing_seconds = 0.0  # how long the last tick waited on the provider's listing
        self.last_own_seconds = 0.0  # and how long its own work took
        self.listings = {"listed": 0, "skipped": 0}  # ticks that listed the provider, and those that did not
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paastis-read-ahead")
        self._reading = False  # a read-ahead round is under way
        self._formation_known: set[str] = set()  # keys whose formation is remembered (no need to ask again)

    def check(self) -> None:
        """One tick: sync the registry with the provider's list, then queue the stops of idle apps."""
        started = time.perf_counter()
        try:
            with calls_as(CallClass.BACKGROUND):  # the listing, and status calls where it does not tell (Clever)
                apps = self._listing()
                listed_at = time.perf_counter()
                self._check_rules_once(apps)
                self._decide(apps)
        finally:
            ended = time.perf_counter()
            self.metrics.idle_check_duration.observe(ended - started)
        self.last_listing_seconds = listed_at - started
        self.last_own_seconds = ended - listed_at
        self._read_ahead()

    def _listing(self) -> list[AppInfo]:
        """List the provider, unless stops are queued and the budget is short (then the last list, and our notes)."""
        scheduler = self.provider.scheduler
        overdue = self.directory.age() >= self.directory.ttl
        if scheduler is None or overdue or not self._stopping or scheduler.has_room():
            self.listings["listed"] += 1
            self.metrics.idle_check_listings.labels("listed").inc()
            # Overdue (a TTL without a listing): it takes its turn among the stops instead of after all of them.
            with calls_as(CallClass.STOP if overdue and self._stopping else CallClass.BACKGROUND):
                return self.directory.refresh()
        self.listings["skipped"] += 1
        self.metrics.idle_check_listings.labels("skipped").inc()
        return self.directory.apps()

    def _check_rules_once(self, apps: list[AppInfo]) -> None:
        """A rule whose pattern matches no listed app is most likely a typo: say so at the first listing.

        The local provider's apps are known at start-up, where this was said already.
        """
        if self._rules_checked:
            return
        self._rules_checked = True
        if self.provider.name != "local":
            for warning in self.rules.unmatched(tuple(app.key for app in apps)):
                log.warning(warning)

    def is_idle(self, app: AppInfo) -> bool:
        """Idle by its own measure, and not held by a busy app that links to it (read afresh)."""
        holders = {e.key for e in self.registry.all() if e.key != app.key and app.key in self.lookup.links_of(e.key)}
        return self._still_idle(app.key, holders)

    @property
    def stopping(self) -> frozenset[str]:
        """The apps whose idle stop is queued or under way."""
        with self._lock:
            return frozenset(self._stopping)

    def is_stopping(self, key: str) -> bool:
        """Whether the idle stop of ``key`` is queued or under way (GET /apps ``stop_queued``)."""
        with self._lock:
            return key in self._stopping

    def close(self, timeout: float = 30.0) -> None:
        """Cancel queued stops and wait (at most ``timeout`` seconds) for those under way: the provider
        and the registry they use are closed next, and a stop cut in half would lose its event or memo."""
        with self._lock:
            self._closed = True
            pools = list(self._pools.values())
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        self._reader.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            running = [future for future in self._futures if not future.done()]
        if running:
            log.info("waiting for %d stop(s) under way before shutting down", len(running))
            _done, late = wait(running, timeout)
            if late:
                log.warning("%d stop(s) still running after %gs: shutting down anyway", len(late), timeout)

    def _pool(self, app: AppInfo) -> ThreadPoolExecutor:
        """The stop pool of ``app``'s account (under ``self._lock``); RuntimeError once closed."""
        if self._closed:
            raise RuntimeError("the idle check is closed")
        pool = self._pools.get(app.provider)
        if pool is None:
            prefix = f"paastis-stop-{app.provider}" if app.provider else "paastis-stop"
            pool = self._pools[app.provider] = ThreadPoolExecutor(self.stop_concurrency, thread_name_prefix=prefix)
        return pool

    # -- one tick ---------------------------------------------------------------

    def _decide(self, apps: list[AppInfo]) -> None:
        entries = {entry.key: entry for entry in self.registry.all()}  # the tick's one snapshot
        listed = self.lookup.tracked(apps, list(entries.values()))
        held = self.directory.held_keys()  # an account that did not answer: its apps stay as they are
        for app in listed.values():
            self._sync(app, entries)
        for key in [key for key in entries if key not in listed and key not in held]:
            self.journal.forgotten(key, "idle", "the provider no longer lists it (or a renamed key holds it)")
            del entries[key]
        self._formation_known &= set(entries)  # a stopped app's next run may have another formation
        holders = self._holders(entries)  # held apps still hold what they link to
        idle = [listed[key] for key in self._idle_keys(entries, holders) if key in listed]
        for app in idle:
            self._queue_stop(app, holders.get(app.key, set()))
        self._report(len(apps), len(entries), len(idle))

    def _idle_keys(self, entries: dict[str, RunningApp], holders: dict[str, set[str]]) -> list[str]:
        """Cheapest tests first: managed and not already stopping, then the clock (theirs and their
        holders'), and only then requests in flight, asked for all remaining apps at once."""
        now = utcnow()
        expired = {key for key, entry in entries.items() if self._expired(key, entry, now)}
        candidates = [
            key
            for key in entries
            if key in expired
            and self.rules.policy(key).managed
            and key not in self._stopping
            and not self.flights.busy(key)
            and all(holder in expired for holder in holders.get(key, ()) if holder in entries)
        ]
        asked = sorted({k for key in candidates for k in (key, *holders.get(key, ())) if k in entries})
        busy = {key for key, count in self.registry.in_flight_many(asked).items() if count > 0}
        return [key for key in candidates if key not in busy and not (holders.get(key, set()) & busy)]

    def _expired(self, key: str, entry: RunningApp, now: datetime) -> bool:
        """Unused for longer than its idle time, and outside its ``awake_during`` windows."""
        policy = self.rules.policy(key)
        if policy.schedule is not None and policy.schedule.keeps_awake(now):
            return False  # inside an awake_during window
        return entry.idle_seconds(now) > policy.max_idle_time * 60

    def _holders(self, entries: dict[str, RunningApp]) -> dict[str, set[str]]:
        """For each app, the registered apps that link to it (transitively): they keep it awake."""
        holders: dict[str, set[str]] = defaultdict(set)
        for key in entries:
            for linked in self.lookup.links_of(key):
                if linked != key:
                    holders[linked].add(key)
        return holders

    def _sync(self, app: AppInfo, entries: dict[str, RunningApp]) -> None:
        """Register running apps we did not know; forget those found stopped."""
        if self.flights.busy(app.key) or app.key in self._stopping:
            return  # unmanaged apps are registered too (so requests reach them), but never stopped
        try:
            status = app.status or self.provider.status(app)
        except ProviderError as error:
            log.warning("idle check: no status for %s: %s", app.key, error)
            return
        known = app.key in entries
        if status == RUNNING and not known:
            entries[app.key] = self.journal.registered(app, "discovered", ev.APP_REGISTERED)  # found running
        elif status in (STOPPED, FAILED) and known and not self._woken_since_listed(app, entries[app.key]):
            # crashed: forgotten, so the next request wakes it
            self.journal.forgotten(app.key, "idle", f"found {status}")
            del entries[app.key]

    def _woken_since_listed(self, app: AppInfo, entry: RunningApp) -> bool:
        """Registered after its listing was asked for: the listing's "stopped" is older than the wake.

        (A status asked for just now, when the listing did not tell, is never older.)
        """
        began = self.directory.listing_began(app) if app.status is not None else None
        return began is not None and entry.started_at > began

    def _report(self, listed: int, running: int, idle: int) -> None:
        self.metrics.registry_size.set(running)
        counts = {"listed": listed, "running": running, "idle": idle, "stopping": len(self._stopping)}
        for state, count in counts.items():
            self.metrics.idle_check_apps.labels(state).set(count)

    # -- stops, on the pool -------------------------------------------------------

    def _queue_stop(self, app: AppInfo, holders: set[str]) -> None:
        with self._lock:
            if app.key in self._stopping:
                return
            self._stopping.add(app.key)
            try:
                future = self._pool(app).submit(self._stop, app, holders)
            except RuntimeError:  # shutting down
                self._stopping.discard(app.key)
                return
            self._futures.add(future)
        future.add_done_callback(self._forget_future)

    def _forget_future(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _stop(self, app: AppInfo, holders: set[str]) -> None:
        try:
            self.stopper.stop(app, "idle", still_idle=lambda app: self._still_idle(app.key, holders))
        except Exception:  # noqa: BLE001 - one failed stop must not stop the pool
            log.exception("idle stop of %s failed", app.key)
        finally:
            with self._lock:
                self._stopping.discard(app.key)

    def _still_idle(self, key: str, holders: set[str]) -> bool:
        """Asked again under the cluster lock, fresh from the registry at one instant (entries, last
        accesses, requests in flight): another instance may have served it. Raises Degraded when
        Redis cannot answer: a stop never acts on a local view."""
        looks = self.registry.last_look(sorted({key, *holders}))
        if looks[key].entry is None:
            return False
        now = utcnow()
        if not all(self._expired(k, look.entry, now) for k, look in looks.items() if look.entry is not None):
            return False
        return not any(look.in_flight for look in looks.values())

    # -- formations read ahead, while the budget has room ----------------------------

    def _read_ahead(self) -> None:
        """Queue one read-ahead round, unless one is under way or the provider has nothing to read."""
        if getattr(self.provider, "read_ahead", None) is None or self.provider.scheduler is None:
            return
        with self._lock:
            if self._reading:
                return
            self._reading = True
        try:
            self._reader.submit(self._read_round)
        except RuntimeError:  # closed
            self._reading = False

    def _read_round(self) -> None:
        """Read the formations of running apps whose formation paastis does not know, soonest idle first,
        for as long as the budget has room (a wake, an operator or a stop waiting ends the round)."""
        try:
            with calls_as(CallClass.BACKGROUND):
                for entry in sorted(self.registry.all(), key=lambda e: e.last_accessed_at):
                    if not self.provider.scheduler.has_room(2):
                        return
                    self._read_one(entry.key)
        except Exception:  # noqa: BLE001 - the next tick tries again
            log.exception("reading formations ahead failed")
        finally:
            with self._lock:
                self._reading = False

    def _read_one(self, key: str) -> None:
        if key in self._formation_known or key in self._stopping or self.flights.busy(key):
            return
        if not self.rules.policy(key).managed:
            return
        if self.registry.recall(key) is not None:
            self._formation_known.add(key)
            return
        app = self.directory.cached(key)
        if app is None or app.provider in getattr(self.directory, "unanswered", ()):
            return  # (an account whose API did not answer the listing would hold the one reader too)
        try:
            memo = self.provider.read_ahead(app)
        except ProviderError as error:
            log.info("could not read the formation of %s ahead: %s", key, error)
            return
        if memo and self.registry.get(key) is not None and self.registry.recall(key) is None:
            self.registry.remember(key, memo)  # (a start or stop meanwhile remembered a fresher one)
        self._formation_known.add(key)
