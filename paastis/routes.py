"""``routes:`` in ``paastis.yml``: full host names mapped to apps, looked at before first-label routing.

Apps often live behind their own domains (``shop.client.com``, ``pr-42.preview.client.com``)
rather than ``<app>.<paastis domain>``. A route is either an exact host name or ``*.suffix``,
which matches exactly one label in front of ``suffix``; ``$1`` in its app is that label.

Exact names win over wildcards. Since a wildcard matches one label only, a host has at most
one wildcard candidate (its own name without its first label): a longer suffix wins over a
shorter one by construction (``*.preview.client.test`` takes ``pr-1.preview.client.test``,
``*.client.test`` does not match it at all). Both lookups are dictionary reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .config import ConfigError
from .routing import LABEL, is_valid_app_key

HOST_NAME = re.compile(rf"{LABEL}(?:\.{LABEL})*")
APP_TEMPLATE = re.compile(r"(?:[A-Za-z0-9-]|\$1)+")
ROUTE_FIELDS = {"host", "app"}


@dataclass(frozen=True)
class Route:
    """One entry of ``routes:``; ``host`` is lower-case, ``*.`` included for a wildcard."""

    host: str
    app: str

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*.")

    def describe(self) -> str:
        return f"{self.host} -> {self.app}"


class Routes:
    """Which app a full host name stands for, if a route names it."""

    def __init__(self, raw: Any, source: str = "paastis.yml"):
        if raw is not None and not isinstance(raw, list):
            raise ConfigError(f"{source}: 'routes' must be a list of {{host: ..., app: ...}}")
        self.routes = [_check_route(index, entry, source) for index, entry in enumerate(raw or [])]
        self.exact: dict[str, str] = {}
        self.wildcards: dict[str, str] = {}  # suffix (without "*.") -> app template
        for route in self.routes:
            table, name = (self.wildcards, route.host[2:]) if route.wildcard else (self.exact, route.host)
            if name in table:
                raise ConfigError(f"{source}: routes: host {route.host!r} is routed twice: keep one")
            table[name] = route.app

    def __bool__(self) -> bool:
        return bool(self.routes)

    def app_for(self, name: str) -> str | None:
        """The app key ``name`` (a lower-case host name without port) is routed to, or None."""
        app = self.exact.get(name)
        if app is not None:
            return app
        label, dot, suffix = name.partition(".")
        if not dot:
            return None
        template = self.wildcards.get(suffix)
        return template.replace("$1", label).lower() if template is not None else None

    def names(self, name: str) -> bool:
        """Whether a route covers this host name (the host is then served, whatever the domains)."""
        return self.app_for(name) is not None

    def static_apps(self) -> list[str]:
        """Apps named without ``$1``: start-up checks can tell whether they exist."""
        return [route.app for route in self.routes if "$1" not in route.app]


def _check_route(index: int, raw: Any, source: str) -> Route:
    where = f"{source}: routes #{index}"
    if not isinstance(raw, dict) or not {"host", "app"} <= set(raw):
        raise ConfigError(f"{where} must be a mapping with 'host' and 'app'")
    unknown = sorted(set(raw) - ROUTE_FIELDS, key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} (known: app, host)")
    host, app = raw["host"], raw["app"]
    if not isinstance(host, str) or not isinstance(app, str):
        raise ConfigError(f"{where}: host and app must be strings")
    host = host.strip().lower().rstrip(".")
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if not HOST_NAME.fullmatch(name) or len(name) > 253:
        raise ConfigError(
            f"{where}: host {raw['host']!r} must be a host name (shop.client.com) or '*.' and one "
            "(*.preview.client.com: one label in front); no port, no other '*'"
        )
    if "$1" in app and not wildcard:
        raise ConfigError(f"{where}: app {app!r} uses $1 but host {host!r} is not a wildcard ('*.suffix')")
    if not APP_TEMPLATE.fullmatch(app) or ("$1" not in app and not is_valid_app_key(app)):
        raise ConfigError(f"{where}: app {app!r} must be an app name (letters, digits, '-'; '$1' for the label)")
    return Route(host, app.lower())
