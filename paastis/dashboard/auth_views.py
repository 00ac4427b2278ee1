"""Signing in with the admin token, and out."""

from __future__ import annotations

import logging

from flask import Response, current_app, flash, redirect, render_template, request, url_for

from ..sessions import SessionsUnavailable
from . import bp, client, dashboard
from .auth import sign_in_session, sign_out_session, token_ok

log = logging.getLogger(__name__)


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Response | str:
    target = safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("dashboard/sign_in.html", next=target)
    throttle = dashboard().throttle
    address = client()
    wait = throttle.retry_after(address)
    if wait is not None:
        log.warning("dashboard: sign-in from %s refused: too many failures (%.0fs left)", address, wait)
        message = f"Too many failed sign-ins from your address: try again in {wait:.0f} seconds."
        response = current_app.response_class(
            render_template("dashboard/sign_in.html", next=target, error=message), status=429
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    if not token_ok(request.form.get("token", "")):
        log.warning("dashboard: failed sign-in from %s", address)
        throttle.failed(address)  # answers late: guessing is slow
        error = "That is not the admin token (ROUTING_SYSTEM_API_TOKEN)."
        return render_template("dashboard/sign_in.html", next=target, error=error), 401
    throttle.succeeded(address)
    try:
        sign_in_session()
    except SessionsUnavailable as error:
        log.error("dashboard: sign-in from %s could not open a session: %s", address, error)
        message = "Sessions cannot be opened right now (the registry does not answer): try again shortly."
        return render_template("dashboard/sign_in.html", next=target, error=message), 503
    log.info("dashboard: signed in from %s", address)
    return redirect(target, code=303)


@bp.post("/sign-out")
def sign_out() -> Response:
    sign_out_session()
    flash("You are signed out.")
    return redirect(url_for("dashboard.sign_in"), code=303)


def safe_next(target: str | None) -> str:
    """Only a path on the dashboard itself: never an open redirect to another site."""
    if target and target.startswith("/dashboard/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("dashboard.apps")
