"""The provider's app list, cached, so that routing a request costs no API call.

The idle check refreshes it once per tick; the proxy reads it. A key missing from it
triggers at most one refresh per ``PROVIDER_DIRECTORY_TTL``, so a flood of requests for
random names cannot spend a provider's API quota: they get 404 from the cache.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

from .providers import AppInfo, Provider
from .rules import Rules

log = logging.getLogger(__name__)


class Directory:
    def __init__(self, provider: Provider, rules: Rules, ttl: float):
        self.provider = provider
        self.rules = rules
        self.ttl = ttl
        self._by_key: dict[str, AppInfo] = {}
        self._by_name: dict[str, AppInfo] = {}
        self._refreshed_at: float | None = None
        self.last_error: str | None = None  # why the last listing failed, while it is the latest word
        self._lock = threading.Lock()
        self._gate = threading.Lock()

    def refresh(self) -> list[AppInfo]:
        """List the provider's apps now (raises the provider's error, keeping the old list)."""
        with self._lock:
            try:
                apps = self.provider.list_apps()
            except Exception as error:
                self.last_error = str(error)
                raise
            self.last_error = None
            self._by_key = {app.key: app for app in apps}
            for app in apps:  # other labels an app answers to; a key always wins over another app's alias
                for alias in app.aliases:
                    self._by_key.setdefault(alias, app)
            self._by_name = {app.name: app for app in apps}
            self._refreshed_at = time.monotonic()
            return apps

    def apps(self) -> list[AppInfo]:
        """The cached list, listing once if it was never filled."""
        if self._refreshed_at is None:
            self._refresh_quietly()
        return [app for key, app in self._by_key.items() if key == app.key]

    def resolve(self, key: str) -> AppInfo | None:
        """The app a request key stands for: a rule's ``app_name``, else the key itself."""
        target = self.rules.policy(key).app_name
        app = self._find(key, target)
        if app is None and (self._stale() or self._gate.locked()):  # a refresh under way may bring it
            self._refresh_quietly()
            app = self._find(key, target)
        return app

    def forget(self, key: str) -> None:
        """The provider said 404 for this app: drop it until the next listing brings it back."""
        with self._lock:
            app = self._by_key.pop(key, None)
            if app is not None:
                self._by_name.pop(app.name, None)
                for alias in app.aliases:
                    if self._by_key.get(alias) is app:
                        del self._by_key[alias]

    def _find(self, key: str, target: str) -> AppInfo | None:
        """A key renamed by a rule keeps its own key (its policy, its registry entry) over the target app."""
        if target != key:
            app = self._by_name.get(target) or self._by_key.get(target)
            return replace(app, key=key) if app is not None else None
        return self._by_key.get(key)

    def _stale(self) -> bool:
        return self._refreshed_at is None or time.monotonic() - self._refreshed_at >= self.ttl

    def _refresh_quietly(self) -> None:
        """One refresh at a time; callers that queued behind it reuse its answer."""
        with self._gate:
            if not self._stale():
                return
            self._refreshed_at = time.monotonic()  # a failed attempt counts too: no retry storm
            try:
                self.refresh()
            except Exception as error:  # noqa: BLE001 - logged; the cache stays as it was
                log.warning("directory: could not list %s apps: %s", self.provider.name, error)
