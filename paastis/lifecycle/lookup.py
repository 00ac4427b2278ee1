"""Which app a request key stands for, which apps come with it, and where its requests go.

Owns lookups only: the directory (the provider's cached listing) and the rules answer
them, so no lookup ever calls the provider's API except to list it.
"""

from __future__ import annotations

from ..directory import Directory
from ..providers import AppInfo, Provider
from ..registry import RunningApp
from ..rules import Rules
from .errors import UnknownApp, WakeError


class AppLookup:
    def __init__(self, provider: Provider, directory: Directory, rules: Rules):
        self.provider = provider
        self.directory = directory
        self.rules = rules

    def resolve(self, key: str) -> AppInfo:
        """The app a request key stands for, or :class:`UnknownApp` (404).

        While the provider cannot be listed, an app missing from the cache may exist:
        that is a 502 naming the provider, not a 404.
        """
        app = self.directory.resolve(key)
        if app is None and self.directory.last_error is not None:
            raise WakeError(
                key, f"cannot tell whether app {key!r} exists: {self.directory.last_error}", unsure_public(key)
            )
        if app is None and self.directory.unsure():  # we do not wait for someone else's listing
            raise WakeError(
                key, f"cannot tell whether app {key!r} exists: the provider's apps are being listed", unsure_public(key)
            )
        if app is None:
            raise UnknownApp(key, f"unknown app {key!r}")
        return app

    def upstream_url(self, app: AppInfo) -> str:
        """Where requests for ``app`` go: a rule's ``upstream_url``, else the provider's URL."""
        policy = self.rules.policy(app.key)
        return (policy.upstream_url or app.upstream_url or self.provider.upstream_url(app)).rstrip("/")

    def group(self, app: AppInfo) -> list[AppInfo]:
        """``app`` (first) and every app it links to, transitively; cycles end, each app once."""
        seen: dict[str, AppInfo] = {app.key: app}
        queue = [app]
        while queue:
            current = queue.pop()
            for name in self.rules.policy(current.key).linked_apps:
                linked = self.directory.resolve(name)
                if linked is None:
                    unknown = f"linked app {name!r} (of {current.key!r}) is unknown"
                    raise WakeError(name, unknown, unknown)  # the configuration's fault, nothing of the machine
                if linked.key not in seen:
                    seen[linked.key] = linked
                    queue.append(linked)
        return list(seen.values())

    def links_of(self, key: str) -> set[str]:
        """The keys ``key`` links to, transitively (from the rules alone: no provider lookup)."""
        seen: set[str] = set()
        queue = [key]
        while queue:
            for linked in self.rules.policy(queue.pop()).linked_apps:
                if linked not in seen:
                    seen.add(linked)
                    queue.append(linked)
        return seen

    def tracked(self, apps: list[AppInfo], entries: list[RunningApp]) -> dict[str, AppInfo]:
        """Listed apps by key, where a registered key renamed by a rule (``app_name``) stands for its app.

        The renamed key carries the rule (idle time, links, hooks), so it alone tracks the app.
        """
        tracked = {app.key: app for app in apps}
        by_name = {app.name: app for app in apps}
        for entry in entries:
            if entry.key in tracked or self.rules.policy(entry.key).app_name == entry.key:
                continue
            target = self.directory.resolve(entry.key)  # by name, key or alias, as for requests
            if target is not None:
                listed = by_name.get(target.name)
                tracked.pop(listed.key if listed else target.key, None)
                tracked[entry.key] = target
        return tracked


def unsure_public(key: str) -> str:
    """What a visitor is told while the provider cannot be listed (its error is for operators)."""
    return f"paastis cannot tell whether app {key!r} exists right now: try again shortly"
