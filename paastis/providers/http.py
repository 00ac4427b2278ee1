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
from collections import deque
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from .. import deadlines
from ..metrics import Metrics
from .base import AppNotFound, ProviderAuthError, ProviderError, ProviderTimeout
from .scheduler import CallScheduler

log = logging.getLogger(__name__)

TIMEOUT = (5, 30)  # connect, read: every call has both
READ_RETRIES = 3
MAX_RATE_LIMIT_WAIT = 60.0


class RateLimiter:
    """A token bucket: the local budget of one provider client in this process.

    Calls of the ``stop`` and ``background`` classes leave ``reserve`` tokens in the bucket,
    so that a wake finds budget at once even while a crowd of idle stops spends the rest;
    the order among waiting calls is the :class:`~paastis.providers.scheduler.CallScheduler`'s.
    """

    def __init__(self, per_minute: float, burst: float | None = None):
        self.rate = per_minute / 60.0
        self.capacity = burst if burst is not None else per_minute
        self.reserve = self.capacity / 2
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def try_take(self, background: bool = False, patient: bool = True) -> float:
        """Take a token now (0.0), or say how many seconds until one may be there for this call."""
        floor = 1 + (self.reserve if background else 0)
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= floor:
                self.tokens -= 1
                return 0.0
            return max(0.001, (floor - self.tokens) / self.rate)

    def acquire(self, background: bool = False) -> None:
        """Block until a call fits in the budget; :class:`~paastis.deadlines.DeadlinePassed` if it would not in time."""
        while (wait := self.try_take(background)) > 0:
            deadlines.sleep(wait)

    def remaining(self) -> float:
        """Calls that could go now (what ``paastis_provider_budget_remaining`` shows)."""
        with self.lock:
            now = time.monotonic()
            return max(0.0, min(self.capacity, self.tokens + (now - self.updated) * self.rate))

    def room(self) -> float:
        """Calls the lower classes (stops, background) could make now without touching the reserve."""
        return max(0.0, self.remaining() - self.reserve)

    def slow_down(self, seconds: float) -> None:
        """The platform said "too many": spend the bucket so that nothing is sent for ``seconds``."""
        with self.lock:
            self.tokens = min(self.tokens, -seconds * self.rate)
            self.updated = time.monotonic()

    def close(self) -> None:
        pass


WAKE_CALLS = 6  # what a Scalingo wake costs: status, formation, scale, operation, status, and one to spare


class WindowLimiter(RateLimiter):
    """At most ``limit`` calls in any ``window`` seconds: the rule Scalingo documents ("60 requests per minute").

    A log of the last window's calls, as the Redis :class:`~paastis.providers.shared_limiter.SharedRateLimiter`
    keeps, for one process. Unlike a bucket it lets the whole budget through over a minute, while never more
    than ``limit`` in any window; ``margin`` seconds are added to the window, for the time a call takes to
    reach the platform. Calls of the lower classes leave ``reserve`` slots free (a wake's worth).
    """

    def __init__(self, limit: int, window: float = 60.0, margin: float = 1.0, reserve: int | None = None):
        super().__init__(limit * 60 / window, limit)
        self.limit = limit
        self.window = window + margin
        wake = max(WAKE_CALLS, limit // 10)  # a wake's calls, or a tenth of a big budget
        self.reserve = min(limit // 2, reserve if reserve is not None else wake)
        self._log: deque[float] = deque()
        self._blocked_until = 0.0

    def try_take(self, background: bool = False, patient: bool = True) -> float:
        allowed = self.limit - (self.reserve if background else 0)
        with self.lock:
            now = time.monotonic()
            if now < self._blocked_until:
                return self._blocked_until - now
            while self._log and self._log[0] <= now - self.window:
                self._log.popleft()
            if len(self._log) < allowed:
                self._log.append(now)
                return 0.0
            oldest = self._log[len(self._log) - allowed]  # the slot that frees up first for this call
            return max(0.001, oldest + self.window - now)

    def remaining(self) -> float:
        with self.lock:
            now = time.monotonic()
            if now < self._blocked_until:
                return 0.0
            recent = sum(1 for at in self._log if at > now - self.window)
            return float(max(0, self.limit - recent))

    def slow_down(self, seconds: float) -> None:
        with self.lock:
            self._blocked_until = max(self._blocked_until, time.monotonic() + seconds)


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
        scheduler: CallScheduler | None = None,
    ):
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.metrics = metrics
        self.credentials_hint = credentials_hint
        self.limiter = limiter
        # The account's one scheduler (shared by a provider's clients, e.g. Scalingo's regions).
        self.scheduler = scheduler or CallScheduler(provider, limiter, metrics)
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
            self.scheduler.acquire()  # by the class of the calling context (paastis.providers.priority)
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
