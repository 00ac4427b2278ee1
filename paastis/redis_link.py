"""The boundary of cluster state: one instance's connection to Redis, and what it knows about Redis being down.

Everything that talks to Redis goes through it: the registry, the leader lock, the per-app
locks, the leader's marks, the event stream and the provider's shared rate limiter. So an
outage is noticed once and logged once (not once per request or per component), and
recovery is logged once; no request waits on a Redis that is known to be down: while it is
down, callers skip Redis, and a background thread probes it until it answers again.

Callers never guess whether what they got is the cluster's truth. :meth:`RedisLink.must`
answers fresh or raises :class:`~paastis.registry.Degraded`; :meth:`RedisLink.ask` answers an
:class:`Answer` that says whether it is fresh or the caller's local fallback (degraded);
:meth:`RedisLink.attempt` says whether a write reached Redis (write-behind keeps the rest).
Anything that stops an app uses :meth:`must`: it never acts on degraded data.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .registry import Degraded
from .secrecy import mask_passwords

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["Answer", "Degraded", "RedisLink", "redis_client"]

RETRY_AFTER = 1.0  # seconds between probes while Redis is down


def redis_client(url: str, socket_timeout: float) -> redis.Redis:
    """A client that fails fast: one attempt, short socket and connect timeouts.

    redis-py retries three times by default, which would multiply the timeout a
    request may spend on a Redis that is down.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        client_name="paastis",
    )


@dataclass(frozen=True)
class Answer(Generic[T]):
    """What the cluster state said: ``fresh`` from Redis, or the local fallback while it is degraded."""

    value: T
    fresh: bool

    @property
    def degraded(self) -> bool:
        return not self.fresh


class RedisLink:
    """A Redis client under a key prefix, with outage bookkeeping: the only place that catches Redis errors."""

    def __init__(self, url: str, prefix: str, socket_timeout: float, retry_after: float = RETRY_AFTER):
        self.client = redis_client(url, socket_timeout)
        self.prefix = prefix
        self.retry_after = retry_after
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._on_reconnect: list[Callable[[], None]] = []
        self._closed = threading.Event()

    def key(self, *parts: str) -> str:
        """A key in our namespace; nothing outside ``prefix`` is ever read or written."""
        return self.prefix + ":".join(parts)

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def must(self, operation: Callable[[], T]) -> T:
        """Run ``operation`` against Redis: its fresh answer, or :class:`Degraded` (Redis is down or failed now)."""
        if self.down:
            raise Degraded("redis is unreachable")
        try:
            return operation()
        except redis.RedisError as error:
            self.failed(error)
            raise Degraded(f"redis: {_describe(error)}") from None

    def ask(self, operation: Callable[[], T], fallback: Callable[[], T]) -> Answer[T]:
        """The fresh answer of ``operation``, or ``fallback()`` marked degraded: callers know which they got."""
        try:
            return Answer(self.must(operation), True)
        except Degraded:
            return Answer(fallback(), False)

    def attempt(self, operation: Callable[[], object]) -> bool:
        """Run a write; False if it did not reach Redis (the caller keeps it for later, or it expires there)."""
        try:
            self.must(operation)
        except Degraded:
            return False
        return True

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when Redis answers again after an outage (to re-sync state)."""
        self._on_reconnect.append(callback)

    def failed(self, error: Exception) -> None:
        """Record a failed command; only the first failure of an outage is logged, and starts the prober."""
        with self._lock:
            if self._down_since is not None or self._closed.is_set():
                return
            self._down_since = time.monotonic()
        log.warning(
            "redis: unreachable (%s): serving from this instance's local view until it answers again",
            _describe(error),
        )
        threading.Thread(target=self._probe_until_back, name="paastis-redis-probe", daemon=True).start()

    def succeeded(self) -> None:
        """Record a command that worked; ends an outage (logged once) and re-syncs."""
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            lasted = time.monotonic() - self._down_since
            self._down_since = None
        log.info("redis: reachable again after %.1fs: re-syncing this instance's state", lasted)
        for callback in self._on_reconnect:
            try:
                callback()
            except Degraded:
                return  # it failed again (already noted): the next probe re-syncs
            except redis.RedisError as error:
                self.failed(error)
                return

    def probe(self) -> bool:
        """Ping Redis (from a background thread, even while it is known down); True if it answers."""
        try:
            self.client.ping()
        except redis.RedisError as error:
            self.failed(error)
            return False
        self.succeeded()
        return True

    def now(self) -> float:
        """Redis's own clock (``TIME``), in seconds: one clock for the whole cluster; :class:`Degraded` if down."""
        seconds, micros = self.must(self.client.time)
        return seconds + micros / 1_000_000

    def close(self) -> None:
        self._closed.set()
        self.client.close()

    def _probe_until_back(self) -> None:
        while not self._closed.wait(self.retry_after) and self.down:
            self.probe()


def _describe(error: Exception) -> str:
    """redis-py's messages name host and port, never the URL's password."""
    text = mask_passwords(str(error))  # a URL quoted in an error keeps its host, never its password
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
