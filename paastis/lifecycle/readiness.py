"""Is an app ready to serve? Asks the platform, then the app's own URL through the platform's router.

Owns the probing session and the memory of recent "is it down?" checks, which keeps an
app that answers 503 by itself from spending the provider's API quota.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import requests

from .. import deadlines
from ..providers import FAILED, RUNNING, STOPPED, AppInfo, Provider, ProviderError, account_of
from .errors import WakeError, wake_timeout
from .lookup import AppLookup

log = logging.getLogger("paastis.lifecycle")

ROUTER_ERRORS = {502, 503, 504}  # what a PaaS router answers while an app is down or booting
DOWN_STATUSES = {502, 503}  # what it answers for an app that is not running (504: running, but slow)
PROBE_INTERVAL = 0.1
DOWN_CHECK_INTERVAL = 30.0  # seconds between provider checks of an app whose router says it is down


class Readiness:
    def __init__(
        self,
        provider: Provider,
        lookup: AppLookup,
        operation_timeout: float,
        timeout_of: Callable[[AppInfo], float] | None = None,
    ):
        self.provider = provider
        self.lookup = lookup
        self.operation_timeout = operation_timeout
        self.timeout_of = timeout_of or (lambda app: operation_timeout)
        self._down_checks: dict[str, float] = {}
        self._probe = requests.Session()

    def ready(self, app: AppInfo, status: str) -> bool:
        """Running for the platform, and (where the provider wants it) answering through its router."""
        if status != RUNNING:
            return False
        provider = account_of(self.provider, app)
        if not provider.probe_upstream:
            return True
        url = self.lookup.upstream_url(app) + (provider.ready_path(app) or "/")
        try:
            response = self._probe.get(url, timeout=deadlines.timeout(5), allow_redirects=False, stream=True)
            response.close()
        except (requests.RequestException, deadlines.DeadlinePassed):
            return False
        return response.status_code not in ROUTER_ERRORS

    def wait_ready(self, app: AppInfo, deadline: float) -> None:
        """Poll the provider (at its own pace) and the upstream until the app answers."""
        provider = account_of(self.provider, app)  # its own account's pace
        next_status_at = 0.0
        platform_running = False
        while True:
            now = time.monotonic()
            if now >= next_status_at:
                status = provider.status(app)
                next_status_at = now + provider.poll_interval
                if status == FAILED:
                    detail = provider.failure(app)
                    why = f": {detail}" if detail else ""
                    raise WakeError(app.key, f"{provider.name} reports that app {app.key!r} failed to start{why}")
                platform_running = status == RUNNING
            if self.ready(app, RUNNING if platform_running else STOPPED):
                return
            if time.monotonic() >= deadline:
                raise wake_timeout(app.key, self.timeout_of(app))
            time.sleep(min(PROBE_INTERVAL, provider.poll_interval))

    def router_says_down(self, app: AppInfo, status: int) -> bool:
        """A PaaS router answered 502/503 for an app we believe awake: was it stopped behind our back?

        Asks the provider at most once per app every ``DOWN_CHECK_INTERVAL`` seconds, so an
        app that answers 503 itself cannot spend the API quota.
        """
        if status not in DOWN_STATUSES or not account_of(self.provider, app).probe_upstream:
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

    def prune(self, known: Callable[[str], bool]) -> None:
        """Forget down checks that no longer hold anything back, or of apps that are gone."""
        now = time.monotonic()
        for key, at in list(self._down_checks.items()):
            if now - at >= DOWN_CHECK_INTERVAL or not known(key):
                self._down_checks.pop(key, None)

    def close(self) -> None:
        self._probe.close()
