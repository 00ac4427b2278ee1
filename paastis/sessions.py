"""Dashboard sessions with a server-side identity, so that they can be ended.

A signed cookie alone cannot be taken back: a copy made before sign-out would open the
dashboard until it expired. So the cookie carries only a random session id, and the session
exists while the registry holds it: in Redis when the registry is there (every worker and
instance sees the same sessions), else in this process's memory (one worker; a restart ends
every session). Sign-out deletes it; ``paastis sessions revoke --all`` (``DELETE /sessions``)
deletes them all.

Each record holds a fingerprint of the admin token and the secret key it was opened under:
changing ``ROUTING_SYSTEM_API_TOKEN`` or ``PAASTIS_SECRET_KEY`` ends every session, even those
kept in Redis across the restart. While Redis is down, no session is valid (fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .redis_link import RedisLink

MAX_SESSIONS = 10_000  # in memory: the oldest are dropped past this many


def fingerprint(token: str | None, secret_key: str | None) -> str:
    """Names the pair of secrets a session was opened under, without revealing either."""
    return hmac.new((secret_key or "").encode(), (token or "").encode(), hashlib.sha256).hexdigest()[:32]


class Sessions(Protocol):
    def open(self, lifetime: float) -> str: ...
    def valid(self, sid: str) -> bool: ...
    def revoke(self, sid: str) -> None: ...
    def revoke_all(self) -> int: ...


class InMemorySessions:
    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def open(self, lifetime: float) -> str:
        sid = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            for old, until in list(self._expiry.items()):
                if until <= now:
                    del self._expiry[old]
            while len(self._expiry) >= MAX_SESSIONS:
                del self._expiry[next(iter(self._expiry))]
            self._expiry[sid] = now + lifetime
        return sid

    def valid(self, sid: str) -> bool:
        with self._lock:
            until = self._expiry.get(sid)
        return until is not None and until > time.time()

    def revoke(self, sid: str) -> None:
        with self._lock:
            self._expiry.pop(sid, None)

    def revoke_all(self) -> int:
        with self._lock:
            count = len(self._expiry)
            self._expiry.clear()
        return count


class RedisSessions:
    """``<prefix>sessions:<id>`` holds the fingerprint, and expires with the session."""

    def __init__(self, link: RedisLink, fingerprint: str):
        self.link = link
        self.fingerprint = fingerprint

    def open(self, lifetime: float) -> str:
        sid = secrets.token_urlsafe(32)
        self._run(lambda client: client.set(self.link.key("sessions", sid), self.fingerprint, ex=max(1, int(lifetime))))
        return sid

    def valid(self, sid: str) -> bool:
        if self.link.down:
            return False
        try:
            stored = self._run(lambda client: client.get(self.link.key("sessions", sid)))
        except SessionsUnavailable:
            return False
        return stored is not None and hmac.compare_digest(str(stored), self.fingerprint)

    def revoke(self, sid: str) -> None:
        self._run(lambda client: client.delete(self.link.key("sessions", sid)))

    def revoke_all(self) -> int:
        def delete_all(client) -> int:  # type: ignore[no-untyped-def]
            keys = list(client.scan_iter(match=self.link.key("sessions", "*"), count=500))
            return int(client.delete(*keys)) if keys else 0

        return self._run(delete_all)

    def _run(self, work):  # type: ignore[no-untyped-def]
        from .registry import Degraded

        try:
            return self.link.must(lambda: work(self.link.client))  # the cluster state's one boundary
        except Degraded as error:
            raise SessionsUnavailable(str(error)) from None


class SessionsUnavailable(Exception):
    """The sessions' registry (Redis) did not answer: nobody can sign in or out until it does."""


def build_sessions(token: str | None, secret_key: str | None, link: RedisLink | None) -> Sessions:
    """Where the registry lives: Redis when paastis has a Redis registry, else this process."""
    print_ = fingerprint(token, secret_key)
    return RedisSessions(link, print_) if link is not None else InMemorySessions(print_)
