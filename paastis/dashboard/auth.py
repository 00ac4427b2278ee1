"""Who may use the dashboard: sessions and CSRF tokens (the brake on guessing the token is :mod:`paastis.throttle`).

Sessions are Flask's signed cookies (``PAASTIS_SECRET_KEY``), opened only on the
dashboard's host so that apps' own cookies are never parsed. The cookie carries a session id
that the registry must still hold (:mod:`paastis.sessions`): sign-out, ``paastis sessions
revoke --all`` and a new admin token or secret key end a session for good, copies included. The cookie is ``HttpOnly``,
``SameSite=Strict``, and ``Secure`` when the request came over HTTPS: ``request.is_secure``,
which is true when gunicorn saw TLS itself or when a front proxy listed in gunicorn's
``FORWARDED_ALLOW_IPS`` said ``X-Forwarded-Proto: https`` (from anyone else that header is
ignored, so a client cannot talk its way into or out of the flag).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time

from flask import Flask, Request, current_app, g, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from ..proxy import is_dashboard_request
from ..sessions import Sessions, SessionsUnavailable

log = logging.getLogger(__name__)

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


class DashboardSessions(SecureCookieSessionInterface):
    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not is_dashboard_request(request):
            return None  # a null session: requests for apps carry their own cookies, never ours
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


def sessions() -> Sessions:
    return current_app.extensions["paastis"].sessions


def signed_in() -> bool:
    """A session from a sign-in less than ``PAASTIS_DASHBOARD_SESSION_HOURS`` ago, that the registry still holds.

    The signature's own age check covers the cookie; this covers the session inside it,
    so that no request can stretch it past its hours; and the registry's record, so that a
    session ended by sign-out or revocation stays ended (asked once per request).
    """
    if "paastis_signed_in" not in g:
        g.paastis_signed_in = _session_alive()
    return g.paastis_signed_in


def _session_alive() -> bool:
    at, sid = session.get("signed_in_at"), session.get("sid")
    if not isinstance(at, int | float) or not isinstance(sid, str):
        return False
    lifetime = current_app.permanent_session_lifetime.total_seconds()
    return 0 <= time.time() - at < lifetime and sessions().valid(sid)


def sign_in_session() -> None:
    """A new session: a new id in the registry, a new CSRF token (one seen before sign-in is worthless)."""
    lifetime = current_app.permanent_session_lifetime.total_seconds()
    sid = sessions().open(lifetime)
    session.clear()
    session.permanent = True  # the cookie expires with the session, not with the browser
    session["signed_in_at"] = time.time()
    session["sid"] = sid
    session["csrf"] = secrets.token_urlsafe(32)
    g.paastis_signed_in = True


def sign_out_session() -> None:
    """End this session in the registry, so that no copy of its cookie opens the dashboard again."""
    sid = session.get("sid")
    if isinstance(sid, str):
        try:
            sessions().revoke(sid)
        except SessionsUnavailable as error:
            log.error("dashboard: sign-out could not end the session in the registry (%s)", error)
    session.clear()


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
