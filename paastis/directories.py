"""One directory per account, asked as one: which account serves an app key, without one slow account delaying another.

Each account keeps its own :class:`~paastis.directory.Directory` (its cached listing, TTL and
listing gate). :class:`SeveralDirectories` answers what the lifecycle asks of a directory:

- **A rule's** ``provider: <name>`` pins the keys it matches to that account alone.
- **Otherwise** the first account, in ``providers:`` order, whose listing has the key serves it;
  when two list it, one warning names the app and both accounts.
- **A hung or failing account delays nobody else.** A key is looked up in the cached listings
  first (no call at all). Only a key no cache has makes the accounts list, each in its own
  threads; an account that has not answered after :data:`LOOKUP_PATIENCE` while a later one
  has the app loses its turn. The idle check waits :data:`LISTING_PATIENCE` at most for each
  account's listing; the apps of an account that did not answer are left as they are (neither
  forgotten nor stopped) until it answers again.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime

from . import deadlines
from .directory import Directory
from .providers import AppInfo, ProviderError
from .providers.accounts import Accounts
from .rules import Rules

log = logging.getLogger(__name__)

LISTING_PATIENCE = 10.0  # seconds an idle check waits for one account's listing before going on without it
LOOKUP_PATIENCE = 2.0  # seconds a request waits on an earlier account while a later one has its app
THREADS_PER_ACCOUNT = 4
MAX_WARNED = 10_000  # names found on two accounts remembered (so warned once), at most


class SeveralDirectories:
    """The directory of several accounts (see the module); the interface of :class:`~paastis.directory.Directory`."""

    def __init__(self, accounts: Accounts, rules: Rules, ttl: float):
        self.rules = rules
        self.members = {account.name: Directory(account, rules, ttl) for account in accounts}
        self.order = list(self.members)
        self._pools = {
            name: ThreadPoolExecutor(THREADS_PER_ACCOUNT, thread_name_prefix=f"paastis-{name}") for name in self.order
        }
        self._listings: dict[str, Future] = {}  # the listing under way (or last done) of each account
        self._lock = threading.Lock()
        self._warned: set[tuple[str, str, str]] = set()
        self.unanswered: frozenset[str] = frozenset()  # accounts whose last listing failed or did not answer

    # -- what the idle check asks ------------------------------------------------

    def refresh(self) -> list[AppInfo]:
        """Every account's apps now, merged; an account that fails or hangs is left out (see :meth:`held_keys`)."""
        futures = {name: self._listing(name) for name in self.order}
        wait(futures.values(), timeout=LISTING_PATIENCE)
        answered: dict[str, list[AppInfo]] = {}
        errors: dict[str, BaseException] = {}
        for name, future in futures.items():
            if not future.done():
                errors[name] = ProviderError(name, None, f"list_apps: no answer after {LISTING_PATIENCE:g}s")
            elif future.exception() is not None:
                errors[name] = future.exception()  # type: ignore[assignment]
            else:
                answered[name] = future.result()
        self.unanswered = frozenset(errors)
        for name, error in errors.items():
            log.warning("directory: could not list %s's apps (left as they are until it answers): %s", name, error)
        if not answered:
            raise next(iter(errors.values()))
        return self._merge(answered)

    def refresh_unless_fresh(self, min_age: float) -> list[AppInfo] | None:
        """An explicit refresh (admin API, dashboard): every account, unless all were listed under ``min_age`` ago."""
        if self.age() < min_age:
            return None
        return self.refresh()

    def age(self) -> float:
        """Seconds since the oldest of the accounts' last listings began (infinite if one was never listed)."""
        return max(member.age() for member in self.members.values())

    @property
    def ttl(self) -> float:
        return next(iter(self.members.values())).ttl

    @property
    def listed_at_wall(self) -> datetime | None:
        """When the oldest of the accounts' listings shown began (None while one was never listed)."""
        dates = [member.listed_at_wall for member in self.members.values()]
        return None if any(d is None for d in dates) else min(dates)  # type: ignore[type-var]

    def note(self, app: AppInfo, status: str) -> None:
        """paastis brought ``app`` to ``status``: its account's list says so until its next listing."""
        member = self.members.get(app.provider)
        if member is not None:
            member.note(app, status)

    def cached(self, key: str) -> AppInfo | None:
        """The app ``key`` stands for in the current lists, never listing (the pinned account's, else the first's)."""
        pinned = self.rules.pinned(key)
        if pinned is not None:
            return self.members[pinned].cached(key)
        for name in self.order:
            app = self.members[name].cached(key)
            if app is not None:
                return app
        return None

    def held_keys(self) -> set[str]:
        """Keys of the accounts that did not answer the last listing: the idle check leaves them alone."""
        return {app.key for name in self.unanswered for app in self.members[name].cached_apps()}

    def listing_began(self, app: AppInfo) -> datetime | None:
        """When the listing of ``app``'s account was asked for (listings of a tick may be seconds apart)."""
        member = self.members.get(app.provider)
        return member.listed_at_wall if member is not None else None

    def apps(self) -> list[AppInfo]:
        """The cached listings, merged (an account never listed is listed first, with patience)."""
        never = [name for name in self.order if self.members[name].never_listed()]
        if never:
            wait([self._listing(name) for name in never], timeout=LISTING_PATIENCE)
        return self._merge({name: member.cached_apps() for name, member in self.members.items()})

    # -- what a request asks -------------------------------------------------------

    def resolve(self, key: str) -> AppInfo | None:
        """The app ``key`` stands for: its pinned account's, else the first account's that lists it."""
        pinned = self.rules.pinned(key)
        if pinned is not None:
            return self.members[pinned].resolve(key)
        app = self.cached(key)  # what is known first: no call at all
        if app is not None or not any(member.would_list() for member in self.members.values()):
            return app
        return self._resolve_everywhere(key)

    def knows(self, key: str) -> bool:
        pinned = self.rules.pinned(key)
        if pinned is not None:
            return self.members[pinned].knows(key)
        return any(member.knows(key) for member in self.members.values())

    def unsure(self) -> bool:
        return any(member.unsure() for member in self.members.values())

    def forget(self, key: str) -> None:
        for member in self.members.values():
            member.forget(key)

    @property
    def last_error(self) -> str | None:
        """Why accounts could not be listed, each named (None when every last listing worked)."""
        errors = [f"{name}: {member.last_error}" for name, member in self.members.items() if member.last_error]
        return "; ".join(errors) or None

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    # -- internals -------------------------------------------------------------------

    def _listing(self, name: str) -> Future:
        """The account's listing under way, or a new one (never two at once for one account)."""
        with self._lock:
            current = self._listings.get(name)
            if current is None or current.done():
                # In the caller's context: its API call class (an idle listing is background) and deadline.
                current = self._pools[name].submit(contextvars.copy_context().run, self.members[name].refresh)
                self._listings[name] = current
            return current

    def _resolve_everywhere(self, key: str) -> AppInfo | None:
        """Ask every account at once; answer in ``providers:`` order, skipping one that keeps a later one waiting."""
        futures = [
            (name, self._pools[name].submit(contextvars.copy_context().run, self.members[name].resolve, key))
            for name in self.order
        ]
        patient_until = time.monotonic() + LOOKUP_PATIENCE
        while futures:
            name, future = futures[0]
            if future.done():
                futures.pop(0)
                app = _result(future)
                if app is not None:
                    return app
                continue
            later_has_it = any(f.done() and _result(f) is not None for _, f in futures[1:])
            if later_has_it and time.monotonic() >= patient_until:
                log.warning(
                    "directory: %s is slow to answer for %s: the next provider that has it serves it", name, key
                )
                futures.pop(0)
                continue
            pending = [f for _, f in futures if not f.done()]
            patience = patient_until - time.monotonic()
            limit = deadlines.current()
            if limit is not None and time.monotonic() >= limit:
                return None  # the request's deadline: the caller tells "cannot tell" from the accounts' state
            timeout = patience if patience > 0 else None
            if limit is not None:
                timeout = min(timeout if timeout is not None else float("inf"), limit - time.monotonic())
            wait(pending, timeout=max(0.0, timeout) if timeout is not None else None, return_when=FIRST_COMPLETED)
        return None

    def _merge(self, listings: dict[str, list[AppInfo]]) -> list[AppInfo]:
        """One app per key: the pinned account's, else the first account's in order (warned once per pair)."""
        chosen: dict[str, AppInfo] = {}
        for name in self.order:
            for app in listings.get(name, ()):
                pinned = self.rules.pinned(app.key)
                if pinned is not None:
                    if pinned == name:
                        chosen[app.key] = app
                    continue
                first = chosen.get(app.key)
                if first is None:
                    chosen[app.key] = app
                else:
                    self._warn_twice(app.key, first.provider, name)
        return list(chosen.values())

    def _warn_twice(self, key: str, first: str, second: str) -> None:
        if (key, first, second) in self._warned:
            return
        if len(self._warned) >= MAX_WARNED:  # review apps come and go: the memory of warnings stays bounded
            self._warned.clear()
        self._warned.add((key, first, second))
        log.warning(
            "app %s is listed by providers %s and %s: %s serves it (first in providers:); "
            "a rule's provider: picks the other",
            key,
            first,
            second,
            first,
        )

    def twice(self) -> list[tuple[str, str, str]]:
        """The names found on two accounts so far (app, the account serving it, the other)."""
        return sorted(self._warned)


def _result(future: Future) -> AppInfo | None:
    try:
        return future.result(timeout=0)
    except Exception:  # noqa: BLE001 - a failing account's error is in its last_error
        return None
