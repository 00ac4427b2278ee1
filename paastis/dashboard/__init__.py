"""The dashboard: paastis's own web pages, on their own host (``PAASTIS_DASHBOARD_HOST``).

A request whose ``Host`` is the dashboard's never reaches an app: the proxy lets it through
to routing (see :func:`paastis.proxy.is_dashboard_request`), and :func:`guard` lets it reach
only this blueprint's pages, signed in, with a CSRF token on anything that changes state.
Everything it loads (CSS, script) is served from here: no CDN, no build step. The pages are
complete without JavaScript; the script only adds live updates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Flask, Response, current_app, redirect, render_template, request, url_for

from ..config import Settings
from ..proxy import is_dashboard_request
from ..throttle import TokenThrottle
from ..wake_times import WakeTimes
from .auth import DashboardSessions, csrf_ok, csrf_token, signed_in

log = logging.getLogger(__name__)

bp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

PUBLIC = {"dashboard.sign_in", "dashboard.static"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass
class Dashboard:
    """The dashboard's own collaborators, in the Paastis graph."""

    throttle: TokenThrottle  # the instance's one brake on guessing the admin token
    wake_times: WakeTimes


def init_dashboard(app: Flask, settings: Settings, wake_times: WakeTimes, throttle: TokenThrottle) -> Dashboard:
    """Sessions signed with ``PAASTIS_SECRET_KEY``, valid ``PAASTIS_DASHBOARD_SESSION_HOURS`` from sign-in."""
    app.secret_key = settings.secret_key
    app.config.update(
        SESSION_COOKIE_NAME="paastis_dashboard",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_REFRESH_EACH_REQUEST=False,  # the lifetime counts from sign-in, not from the last click
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.dashboard_session_hours),
    )
    app.session_interface = DashboardSessions()
    from . import auth_views, pages  # noqa: F401 - their routes join the blueprint

    app.register_blueprint(bp)
    return Dashboard(throttle, wake_times)


def dashboard() -> Dashboard:
    return current_app.extensions["paastis"].dashboard


@bp.before_app_request
def guard() -> Response | None:
    """Runs after the proxy's and the admin API's hooks: only dashboard requests get this far."""
    if not is_dashboard_request(request):
        return page_error(404, "Not found") if request.blueprint == "dashboard" else None
    if request.path == "/":
        return redirect(url_for("dashboard.apps"))
    if request.blueprint != "dashboard":  # never the admin API's routes, whatever the path
        return page_error(404, "There is no such page on the dashboard.")
    if request.method not in SAFE_METHODS and not csrf_ok():
        log.warning("dashboard: refused %s %s from %s: no valid CSRF token", request.method, request.path, client())
        return page_error(403, "This form is out of date or did not come from the dashboard: reload the page.")
    if request.endpoint in PUBLIC or signed_in():
        return None
    if wants_fragment():
        return page_error(401, "Your session has ended: sign in again.")
    return redirect(url_for("dashboard.sign_in", next=request.full_path.rstrip("?")))


@bp.after_app_request
def security_headers(response: Response) -> Response:
    if is_dashboard_request(request):
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if request.endpoint != "dashboard.static":
            response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_context_processor
def template_helpers() -> dict[str, Any]:
    if not is_dashboard_request(request):
        return {}
    return {"csrf_token": csrf_token, "signed_in": signed_in(), "has_savings": savings() is not None}


@bp.app_template_filter("since")
def since(iso: str | None) -> str:
    """``12 s ago``, ``4 min ago``, ``2 h 05 min ago``, ``3 d ago`` from an ISO date."""
    if not iso:
        return "–"
    seconds = max(0, int((datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min ago"
    return f"{seconds // 86400} d ago"


@bp.app_template_filter("until")
def until(iso: str) -> str:
    """``in 3 h 05 min (Sat 17:00 UTC)`` from an ISO date in the future."""
    at = datetime.fromisoformat(iso)
    seconds = (at - datetime.now(UTC)).total_seconds()
    return f"in {left(seconds)} ({at.astimezone(UTC).strftime('%a %H:%M')} UTC)"


@bp.app_template_filter("left")
def left(seconds: float) -> str:
    """A countdown as the script shows it: ``42 s``, ``4 min 05 s``, ``1 h 10 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def client() -> str:
    """The client's address, as the trusted fronts name it (``FORWARDED_ALLOW_IPS``)."""
    return current_app.extensions["paastis"].proxy.trusted.client_address(request.environ) or "-"


def savings() -> Any:
    """The sleep-policy work's savings report, when this paastis has it."""
    return getattr(current_app.extensions["paastis"], "savings", None)


def wants_fragment() -> bool:
    """The page's script asks for a table row, not a whole page (it says so with this header)."""
    return request.headers.get("X-Requested-With") == "paastis-dashboard"


def page_error(status: int, message: str) -> Response:
    if wants_fragment():
        response = current_app.response_class(message, status=status, mimetype="text/plain")
    else:
        response = current_app.response_class(
            render_template("dashboard/error.html", status=status, message=message), status=status
        )
    return response
