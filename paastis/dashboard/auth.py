"""Who may use the dashboard: sessions, CSRF tokens, and a brake on guessing the token.

Sessions are Flask's signed cookies (``PAASTIS_SECRET_KEY``), opened only on the
dashboard's host so that apps' own cookies are never parsed. The cookie is ``HttpOnly``,
``SameSite=Strict``, and ``Secure`` when the request came over HTTPS: ``request.is_secure``,
which is true when gunicorn saw TLS itself or when a front proxy listed in gunicorn's
``FORWARDED_ALLOW_IPS`` said ``X-Forwarded-Proto: https`` (from anyone else that header is
ignored, so a client cannot talk its way into or out of the flag).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict

from flask import Flask, Request, current_app, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from ..proxy import is_dashboard_request

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


class DashboardSessions(SecureCookieSessionInterface):
    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not is_dashboard_request(request):
            return None  # a null session: requests for apps carry their own cookies, never ours
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


def signed_in() -> bool:
    """A session from a sign-in less than ``PAASTIS_DASHBOARD_SESSION_HOURS`` ago.

    The signature's own age check covers the cookie; this covers the session inside it,
    so that no request can stretch it past its hours.
    """
    at = session.get("signed_in_at")
    if not isinstance(at, int | float):
        return False
    lifetime = current_app.permanent_session_lifetime.total_seconds()
    return 0 <= time.time() - at < lifetime


def sign_in_session() -> None:
    session.clear()
    session.permanent = True  # the cookie expires with the session, not with the browser
    session["signed_in_at"] = time.time()
    session["csrf"] = secrets.token_urlsafe(32)  # a new token: one seen before sign-in is worthless


def csrf_token() -> str:
    """This session's token, for forms (hidden field) and the script (a meta tag it sends back as a header)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok() -> bool:
    """The form field or header matches the session's token, and no foreign ``Origin`` says otherwise."""
    expected = session.get("csrf")
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
    if not isinstance(expected, str) or not sent:
        return False
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null" and origin.split("://", 1)[-1] != request.host:
        return False
    return hmac.compare_digest(sent.encode(), expected.encode())


def token_ok(presented: str) -> bool:
    expected = current_app.extensions["paastis"].settings.system_api_token or ""
    return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())


class SignInThrottle:
    """Failed sign-ins slow down whoever makes them, per client address.

    Each failure is answered after ``delay`` seconds. After ``free`` failures in a row, the
    address is refused outright (429, no token check) for ``lockout`` seconds, doubling at
    each further failure up to ``max_lockout``. A success clears the address's record. The
    record lives in this process (each gunicorn worker keeps its own) and holds at most
    ``max_clients`` addresses, forgetting the oldest.
    """

    def __init__(
        self,
        delay: float = 1.0,
        free: int = 5,
        lockout: float = 30.0,
        max_lockout: float = 900.0,
        max_clients: int = 10_000,
    ):
        self.delay = delay
        self.free = free
        self.lockout = lockout
        self.max_lockout = max_lockout
        self.max_clients = max_clients
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address -> (count, locked until)
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> float | None:
        """Seconds this address must wait before its next try, or None when it may try now."""
        with self._lock:
            _, until = self._failures.get(address, (0, 0.0))
        left = until - time.monotonic()
        return left if left > 0 else None

    def failed(self, address: str) -> None:
        with self._lock:
            count, _ = self._failures.pop(address, (0, 0.0))
            count += 1
            until = 0.0
            if count >= self.free:
                until = time.monotonic() + min(self.max_lockout, self.lockout * 2 ** (count - self.free))
            self._failures[address] = (count, until)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        if self.delay:
            time.sleep(self.delay)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)
