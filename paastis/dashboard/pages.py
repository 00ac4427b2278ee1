"""The dashboard's pages: apps (with wake and stop), events, savings."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, abort, current_app, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from .. import events as ev
from ..events import Event, EventStoreUnavailable
from ..providers import AppInfo
from ..routing import is_valid_app_key
from ..system_api import (
    ApiError,
    describe,
    fresh,
    listed_apps,
    listing_fields,
    put_to_sleep,
    refresh_listing,
    resolve,
    wake,
)
from . import bp, dashboard, page_error, savings, wants_fragment
from .charts import daily_chart

log = logging.getLogger(__name__)

EVENTS_PER_PAGE = 50
MAX_EVENT_PAGES = 200
SAVINGS_PERIODS = (7, 14, 30)


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    return page_error(exc.code or 500, exc.description or exc.name)


# -- apps -----------------------------------------------------------------------


@bp.get("/")
def apps() -> str | Response:
    rows, error = all_rows()
    interval = f"{current_app.extensions['paastis'].settings.checking_interval:g} s"
    return render_template("dashboard/apps.html", rows=rows, error=error, interval=interval, **listing_fields())


@bp.post("/apps/refresh")
def refresh_apps() -> Response:
    """The refresh button: one listing at the lowest class of the API budget, rate-limited like the admin API's."""
    try:
        count = len(refresh_listing("dashboard"))
    except ApiError as error:
        flash(f"Could not refresh: {error.message}", "error")
    else:
        flash(f"Listed {count} apps from the provider.", "info")
    return redirect(url_for("dashboard.apps"), code=303)


@bp.get("/apps/rows")
def app_rows() -> str | Response:
    """Every row, for the page's periodic refresh."""
    rows, error = all_rows()
    if error:
        return page_error(502, error)
    return render_template("dashboard/_rows.html", rows=rows)


@bp.get("/apps/<name>/row")
def app_row(name: str) -> str | Response:
    return render_row(found(name))


@bp.post("/apps/<name>/wake")
def wake_app(name: str) -> Response | str:
    app = found(name)
    started = time.monotonic()
    try:
        wake(app, "dashboard")
    except ApiError as error:
        return done(app, f"Could not wake {app.key}: {error.message}", error.status)
    return done(app, f"{app.key} is awake (after {time.monotonic() - started:.1f} s).")


@bp.post("/apps/<name>/stop")
def stop_app(name: str) -> Response | str:
    app = found(name)
    if request.form.get("confirmed") != "yes":  # without JavaScript, the confirmation is a page
        return render_template("dashboard/confirm_stop.html", app=app.key)
    try:
        put_to_sleep(app, "dashboard")
    except ApiError as error:
        return done(app, f"Could not stop {app.key}: {error.message}", error.status)
    return done(app, f"{app.key} is stopped.")


def found(name: str) -> AppInfo:
    if not is_valid_app_key(name.lower()):
        abort(404, "No app has that name.")
    try:
        return resolve(name)
    except ApiError as error:
        abort(error.status, error.message)


def done(app: AppInfo, message: str, status: int = 200) -> Response | str:
    """The script gets the app's fresh row; a plain form post goes back to the list with a message."""
    if wants_fragment():
        return render_row(fresh(app), message if status != 200 else None), status
    flash(message, "error" if status != 200 else "info")
    return redirect(url_for("dashboard.apps"), code=303)


def render_row(app: AppInfo, error: str | None = None) -> str:
    return render_template("dashboard/_row.html", row=row(app, latest_wakes()), row_error=error)


def all_rows() -> tuple[list[dict[str, Any]], str | None]:
    try:
        apps = listed_apps()
    except ApiError as error:
        return [], error.message
    latest = latest_wakes()
    return [row(app, latest) for app in apps], None


def latest_wakes() -> dict[str, Event]:
    try:
        return dashboard().wake_times.latest()
    except EventStoreUnavailable:
        return {}


def row(app: AppInfo, latest: dict[str, Event]) -> dict[str, Any]:
    """What the admin API says of the app, plus what a person watching it wants to know."""
    data = describe(app)
    data["status_label"] = "starting" if data["starting"] else data["status"]
    data["stops_in"] = stops_in(data)
    data["deadline_ms"] = None if data["stops_in"] is None else int((time.time() + data["stops_in"]) * 1000)
    data["last_wake"] = latest.get(app.key)
    data["schedule_lines"] = schedule_lines(data.get("schedule"))
    data["several_providers"] = current_app.extensions["paastis"].provider.several  # then each row says which
    return data


def schedule_lines(schedule: dict[str, Any] | None) -> list[str]:
    """The sleep-policy schedule (``schedule`` in ``GET /apps/<name>``) as people read it."""
    if not schedule:
        return []
    lines = [f"awake {'; '.join(schedule['awake_during'])}"] if schedule.get("awake_during") else []
    if schedule.get("asleep_during"):
        wakes = "" if schedule.get("wake_during_sleep", True) else " (requests do not wake it)"
        lines.append(f"asleep {'; '.join(schedule['asleep_during'])}{wakes}")
    state = {"awake": "now in an awake window", "asleep": "now in an asleep window"}.get(schedule.get("state") or "")
    lines.append(f"{schedule.get('timezone', 'UTC')}" + (f", {state}" if state else ""))
    return lines


def stops_in(data: dict[str, Any]) -> float | None:
    """Seconds before the idle check may stop the app (it runs every checking interval), or None."""
    if data["status"] != "running" or not data["managed"] or not data["monitored"] or data["starting"]:
        return None
    if data["requests_in_flight"] or data["idle_seconds"] is None:
        return None  # held by a request: the countdown starts when it ends
    if (data.get("schedule") or {}).get("state") == "awake":
        return None  # never stopped for idleness inside an awake window
    return max(0.0, data["max_idle_time"] * 60 - data["idle_seconds"])


# -- events ---------------------------------------------------------------------


@bp.get("/events")
def events_page() -> str:
    app = (request.args.get("app") or "").strip().lower() or None
    kind = (request.args.get("type") or "").strip().upper() or None
    page = request.args.get("page", "1")
    page = min(int(page), MAX_EVENT_PAGES) if page.isdigit() and int(page) >= 1 else 1
    problems = []
    if app is not None and not is_valid_app_key(app):
        problems.append("The app filter must be an app name (letters, digits, hyphens).")
        app = None
    if kind is not None and kind not in ev.EVENT_TYPES:
        problems.append(f"Unknown event type {kind!r}.")
        kind = None
    found: list[Event] = []
    try:
        found = current_app.extensions["paastis"].events.query(app=app, type=kind, limit=page * EVENTS_PER_PAGE + 1)
    except EventStoreUnavailable as error:
        problems.append(f"The event history cannot be read right now: {error}")
    shown = found[(page - 1) * EVENTS_PER_PAGE : page * EVENTS_PER_PAGE]
    return render_template(
        "dashboard/events.html",
        events=shown,
        app=app or "",
        kind=kind or "",
        types=ev.EVENT_TYPES,
        page=page,
        has_next=len(found) > page * EVENTS_PER_PAGE and page < MAX_EVENT_PAGES,
        problems=problems,
        several_providers=current_app.extensions["paastis"].provider.several,
    )


# -- savings ----------------------------------------------------------------------


@bp.get("/savings")
def savings_page() -> str | Response:
    report_source = savings()
    if report_source is None:
        return page_error(404, "This paastis has no savings report.")
    days = request.args.get("days", "14")
    days = int(days) if days.isdigit() and int(days) in SAVINGS_PERIODS else 14
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    starts = [today - timedelta(days=n) for n in range(days - 1, -1, -1)]
    try:
        per_day = [(day, report_source.report(since=day, until=day + timedelta(days=1))) for day in starts]
        whole = report_source.report(since=starts[0])
    except EventStoreUnavailable as error:
        return page_error(503, f"The event history cannot be read right now: {error}")
    chart = daily_chart(
        [(day.strftime("%m-%d"), r["total"]["asleep_hours"], r["total"]["money_saved"]) for day, r in per_day]
    )
    return render_template("dashboard/savings.html", chart=chart, report=whole, days=days, periods=SAVINGS_PERIODS)
