"""What the three PaaS providers share: one pooled session, timeouts, retries, rate limits, errors.

The rules, per the providers' documentation and the issue:
- 429: wait for ``Retry-After`` (or a backoff with jitter) and try again; the call was not applied.
- 5xx and network errors: a few retries with backoff for reads; never a blind retry of a write
  (a scale call may have been applied even though its answer was lost).
- 401/403: one clear log line naming the provider and what to check, no retry storm.
- 404: :class:`AppNotFound`, so the caller forgets the app.
Every call is counted by provider, operation and outcome.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from .. import deadlines
from ..metrics import Metrics
from .base import AppNotFound, ProviderAuthError, ProviderError, ProviderTimeout
from .priority import in_background

log = logging.getLogger(__name__)

TIMEOUT = (5, 30)  # connect, read: every call has both
READ_RETRIES = 3
MAX_RATE_LIMIT_WAIT = 60.0


URGENT_YIELD = 0.1  # seconds a background call waits before looking again while an urgent call waits
BACKGROUND_PATIENCE = 5.0  # seconds a background call gives way before it competes like any other


class RateLimiter:
    """A token bucket shared by every call of one provider client in this process.

    Background calls (see :func:`background_calls`) leave ``reserve`` tokens in the bucket
    and give way while any urgent call waits, so a wake finds budget at once even while a
    crowd of idle stops spends the rest.
    """

    def __init__(self, per_minute: float, burst: float | None = None):
        self.rate = per_minute / 60.0
        self.capacity = burst if burst is not None else per_minute
        self.reserve = self.capacity / 2
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.lock = threading.Lock()
        self._urgent_waiting = 0

    def acquire(self, background: bool = False) -> None:
        """Block until a call fits in the budget; :class:`~paastis.deadlines.DeadlinePassed` if it would not in time."""
        patient_until = time.monotonic() + BACKGROUND_PATIENCE
        waiting = False
        try:
            while True:
                if background and time.monotonic() > patient_until:
                    background = False  # waited long enough: never starved by a busy budget
                floor = 1 + (self.reserve if background else 0)
                with self.lock:
                    now = time.monotonic()
                    self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                    self.updated = now
                    if background and self._urgent_waiting:
                        wait = URGENT_YIELD
                    elif self.tokens >= floor:
                        self.tokens -= 1
                        return
                    else:
                        wait = (floor - self.tokens) / self.rate
                    if not background and not waiting:
                        waiting = True
                        self._urgent_waiting += 1
                deadlines.sleep(wait)
        finally:
            if waiting:
                with self.lock:
                    self._urgent_waiting -= 1

    def slow_down(self, seconds: float) -> None:
        """The platform said "too many": spend the bucket so that nothing is sent for ``seconds``."""
        with self.lock:
            self.tokens = min(self.tokens, -seconds * self.rate)
            self.updated = time.monotonic()

    def close(self) -> None:
        pass


class ApiClient:
    """An HTTP client for one provider's API."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        metrics: Metrics | None,
        credentials_hint: str,
        limiter: RateLimiter | None = None,
        session: requests.Session | None = None,
    ):
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.metrics = metrics
        self.credentials_hint = credentials_hint
        self.limiter = limiter
        self.session = session or requests.Session()  # trusts REQUESTS_CA_BUNDLE and proxies as usual
        self.session.headers["User-Agent"] = "paastis"
        self._auth_logged = False
        self.on_response: Callable[[requests.Response], None] | None = None
        # Short-lived bearers (Scalingo): on a 401, renew and retry the call once if this returns True.
        self.on_unauthorized: Callable[[requests.Response], bool] | None = None

    def close(self) -> None:
        self.session.close()

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    def call(self, method: str, path: str, operation: str, app: str | None = None, **kwargs: Any) -> requests.Response:
        """Send one logical call, with the retries its kind allows; raise :class:`ProviderError` on failure."""
        try:
            return self._call(method, path, operation, app, **kwargs)
        except deadlines.DeadlinePassed:
            self._count(operation, "deadline")
            message = f"{operation}: no answer before the operation's deadline"
            raise ProviderTimeout(self.provider, app, message) from None

    def _call(self, method: str, path: str, operation: str, app: str | None, **kwargs: Any) -> requests.Response:
        """:meth:`call`, where every wait (budget, request, backoff) stops at the current deadline, if any."""
        idempotent = method.upper() in ("GET", "HEAD")
        deadline = time.monotonic() + MAX_RATE_LIMIT_WAIT
        timeout = kwargs.pop("timeout", TIMEOUT)
        attempt = 0
        renewed = False
        while True:
            attempt += 1
            if self.limiter is not None:
                self.limiter.acquire(in_background())
            try:
                response = self.session.request(method, self.url(path), timeout=deadlines.timeout(timeout), **kwargs)
            except requests.RequestException as error:
                self._count(operation, "network_error")
                deadlines.check()  # a call cut by the deadline is not retried
                if idempotent and attempt < READ_RETRIES:
                    deadlines.sleep(backoff(attempt))
                    continue
                raise ProviderError(self.provider, app, f"{operation} failed: {type(error).__name__}") from None
            if self.on_response is not None:
                self.on_response(response)
            if response.status_code == 401 and not renewed and self.on_unauthorized is not None:
                renewed = True  # a 401 means nothing was applied: retrying even a write is safe
                if self.on_unauthorized(response):
                    self._count(operation, "credentials_renewed")
                    continue
            if response.status_code == 429:
                self._count(operation, "rate_limited")
                wait = retry_after(response) or backoff(attempt)
                if self.limiter is not None:
                    self.limiter.slow_down(wait)
                if time.monotonic() + wait > deadline:
                    raise ProviderError(self.provider, app, f"{operation}: rate limited for too long")
                log.warning("%s: rate limited on %s, waiting %.1fs", self.provider, operation, wait)
                deadlines.sleep(wait)
                continue
            if response.status_code >= 500 and idempotent and attempt < READ_RETRIES:
                self._count(operation, "server_error")
                deadlines.sleep(backoff(attempt))
                continue
            return self._check(response, operation, app)

    def _check(self, response: requests.Response, operation: str, app: str | None) -> requests.Response:
        status = response.status_code
        if status < 400:
            self._count(operation, "success")
            self._auth_logged = False
            return response
        message = error_message(response)
        if status in (401, 403):
            self._count(operation, "auth_error")
            if not self._auth_logged:
                hint = self.credentials_hint
                log.error("%s refused our credentials (%d: %s): check %s", self.provider, status, message, hint)
                self._auth_logged = True
            raise ProviderAuthError(self.provider, app, f"{operation}: credentials refused ({status})")
        if status == 404:
            self._count(operation, "not_found")
            raise AppNotFound(self.provider, app, f"{operation}: not found")
        self._count(operation, "client_error" if status < 500 else "server_error")
        raise ProviderError(self.provider, app, f"{operation} failed with {status}: {message}")

    def _count(self, operation: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.provider_call(self.provider, operation, outcome)


def backoff(attempt: int) -> float:
    """Exponential backoff with full jitter, so many instances do not retry in step."""
    return random.uniform(0.5, 1.0) * min(30.0, 0.5 * 2 ** (attempt - 1))


def retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_message(response: requests.Response) -> str:
    """The platform's own words: ``error`` (Scalingo), ``message`` (Heroku, Clever), else the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason
    if isinstance(body, dict):
        for field in ("error", "message", "errors"):
            if body.get(field):
                return str(body[field])[:200]
    return str(body)[:200]
