"""The provider's app list, cached, so that routing a request costs no API call.

The idle check refreshes it once per tick; the proxy reads it. A key missing from it
triggers at most one refresh per ``PROVIDER_DIRECTORY_TTL``, so a flood of requests for
random names cannot spend a provider's API quota: they get 404 from the cache.

The maps are built aside and swapped in with one assignment: a reader sees the old list or
the new one, never half of one, and takes no lock. A reader never waits on a listing another
thread started (except for the very first one): while one is under way, a missing key is
answered from the current list.

The list also carries what paastis itself did since it was listed (:meth:`Directory.note`):
an app paastis stopped reads ``stopped`` in it at once, and stays so in a listing that began
before the stop. So the idle check can skip listings while the API budget goes to a crowd of
stops, and still decide from "the last listing plus what paastis did" (see
:mod:`paastis.lifecycle.idle`); the admin API, the dashboard and the CLI read this list too,
and never list the provider to answer (an explicit refresh does).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from .providers import AppInfo, Provider
from .rules import Rules

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listing:
    """One listing, indexed; never changed once published (edits publish a new one)."""

    by_key: dict[str, AppInfo] = field(default_factory=dict)  # keys and aliases
    by_name: dict[str, AppInfo] = field(default_factory=dict)

    @classmethod
    def of(cls, apps: list[AppInfo]) -> Listing:
        by_key = {app.key: app for app in apps}
        for app in apps:  # other labels an app answers to; a key always wins over another app's alias
            for alias in app.aliases:
                by_key.setdefault(alias, app)
        return cls(by_key, {app.name: app for app in apps})

    def with_status(self, name: str, status: str) -> Listing:
        """The same listing, where the app named ``name`` (the provider's name) has ``status``."""
        app = self.by_name.get(name)
        if app is None or app.status == status:
            return self
        changed = replace(app, status=status)
        by_key = {k: changed if a is app else a for k, a in self.by_key.items()}
        by_name = {n: changed if a is app else a for n, a in self.by_name.items()}
        return Listing(by_key, by_name)

    def without(self, key: str) -> Listing:
        app = self.by_key.get(key)
        if app is None:
            return self
        labels = {key, app.key, *app.aliases}
        by_key = {k: a for k, a in self.by_key.items() if not (k in labels and a is app)}
        by_name = {n: a for n, a in self.by_name.items() if a is not app}
        return Listing(by_key, by_name)


class Directory:
    def __init__(self, provider: Provider, rules: Rules, ttl: float):
        self.provider = provider
        self.rules = rules
        self.ttl = ttl
        self._listing = Listing()
        self._refreshed_at: float | None = None  # when the last listing began (a failed one counts)
        self._listed_at: float | None = None  # when the last successful listing began
        self.listed_at_wall: datetime | None = None  # the same, as a date for people (GET /apps, the dashboard)
        self._notes: dict[str, tuple[str, float]] = {}  # provider app name -> (status paastis brought it to, when)
        self._answered = False  # a listing has ended (listed or failed): before that, readers wait for it
        self.last_error: str | None = None  # why the last listing failed, while it is the latest word
        self._gate = threading.Lock()  # one listing at a time
        self._edit = threading.Lock()  # publishing a listing vs. forgetting an app (no provider call under it)

    def refresh(self) -> list[AppInfo]:
        """List the provider's apps now (raises the provider's error, keeping the old list)."""
        with self._gate:
            try:
                return self._list()
            finally:
                self._answered = True

    def refresh_unless_fresh(self, min_age: float) -> list[AppInfo] | None:
        """An explicit refresh: list now, unless a listing began less than ``min_age`` seconds ago (None)."""
        with self._gate:
            if self.age() < min_age:
                return None
            try:
                return self._list()
            finally:
                self._answered = True

    def apps(self) -> list[AppInfo]:
        """The cached list, listing once if it was never filled."""
        if self._refreshed_at is None:
            self._refresh_quietly()
        return [app for key, app in self._listing.by_key.items() if key == app.key]

    def cached_apps(self) -> list[AppInfo]:
        """The current list, as it is (never lists)."""
        return [app for key, app in self._listing.by_key.items() if key == app.key]

    def would_list(self) -> bool:
        """Whether :meth:`resolve` of a name missing from the list would list (stale, or never answered)."""
        return self._stale() or not self._answered

    def never_listed(self) -> bool:
        return self._refreshed_at is None

    def listing_began(self, app: AppInfo) -> datetime | None:
        """When the listing ``app`` comes from was asked for: what it says is true as of then."""
        return self.listed_at_wall

    def held_keys(self) -> set[str]:
        """Keys the idle check must leave alone this tick: none (one account either listed or failed the tick)."""
        return set()

    def close(self) -> None:
        pass

    def unsure(self) -> bool:
        """The list is past its TTL and another thread's listing is under way: a missing key may exist."""
        return self._stale() and self._gate.locked()

    def knows(self, key: str) -> bool:
        """Whether ``key`` stands for a listed app, without listing (before the first listing: assume so)."""
        if self._refreshed_at is None:
            return True
        return self._find(self._listing, key, self.rules.policy(key).app_name) is not None

    def cached(self, key: str) -> AppInfo | None:
        """The app ``key`` stands for in the current list, never listing (None if it is not there)."""
        return self._find(self._listing, key, self.rules.policy(key).app_name)

    def resolve(self, key: str) -> AppInfo | None:
        """The app a request key stands for: a rule's ``app_name``, else the key itself."""
        target = self.rules.policy(key).app_name
        app = self._find(self._listing, key, target)
        if app is None and (self._stale() or not self._answered):
            self._refresh_quietly()
            app = self._find(self._listing, key, target)
        return app

    def age(self) -> float:
        """Seconds since the last successful listing began (infinite before the first)."""
        return float("inf") if self._listed_at is None else time.monotonic() - self._listed_at

    def note(self, app: AppInfo, status: str) -> None:
        """paastis itself just brought ``app`` to ``status`` (started, stopped): the list says so until the
        next listing that began after now, which tells the platform's own word."""
        with self._edit:
            self._notes[app.name] = (status, time.monotonic())
            self._listing = self._listing.with_status(app.name, status)

    def forget(self, key: str) -> None:
        """The provider said 404 for this app: drop it until the next listing brings it back."""
        with self._edit:
            self._listing = self._listing.without(key)

    def _list(self) -> list[AppInfo]:
        began = time.monotonic()
        began_wall = datetime.now(UTC)
        try:
            apps = self.provider.list_apps()
        except Exception as error:
            self.last_error = str(error)
            raise
        with self._edit:
            # What paastis did while the platform was listing is newer than what the listing says.
            self._notes = {name: note for name, note in self._notes.items() if note[1] >= began}
            notes = self._notes
            apps = [replace(app, status=notes[app.name][0]) if app.name in notes else app for app in apps]
            self._listing = Listing.of(apps)
        self.last_error = None
        self._refreshed_at = time.monotonic()
        self._listed_at = began
        self.listed_at_wall = began_wall
        return apps

    def _find(self, listing: Listing, key: str, target: str) -> AppInfo | None:
        """A key renamed by a rule keeps its own key (its policy, its registry entry) over the target app."""
        if target != key:
            app = listing.by_name.get(target) or listing.by_key.get(target)
            return replace(app, key=key) if app is not None else None
        return listing.by_key.get(key)

    def _stale(self) -> bool:
        return self._refreshed_at is None or time.monotonic() - self._refreshed_at >= self.ttl

    def _refresh_quietly(self) -> None:
        """List once, unless a listing is already under way: then answer from the current list.

        Only before the first listing does a reader wait for another's: an empty list knows
        nothing, and would turn every app into a 404.
        """
        if not self._gate.acquire(blocking=not self._answered):
            return
        try:
            if not self._stale():
                return
            self._refreshed_at = time.monotonic()  # a failed attempt counts too: no retry storm
            try:
                self._list()
            except Exception as error:  # noqa: BLE001 - logged; the cache stays as it was
                log.warning("directory: could not list %s apps: %s", self.provider.name, error)
        finally:
            self._answered = True
            self._gate.release()
