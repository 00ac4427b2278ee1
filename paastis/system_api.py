"""The admin API: look inside paastis and drive it, as a Flask blueprint behind a token.

It is only registered when ``ROUTING_SYSTEM_API_ENABLED=true``, and a request only reaches
it when it says ``PaastisProxyTarget: system`` (every other request is proxied before
routing, see :func:`paastis.proxy.is_system_request`). The token comes in
``PaastisProxySystemApiToken`` (the original header) or ``Authorization: Bearer``; it is
compared in constant time and never logged. Manual starts and stops go through the same
lifecycle as automatic ones, so they run the same hooks and record the same events.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException

from . import deadlines, startup
from . import events as ev
from .events import EventStoreUnavailable, instance_id
from .lifecycle import WakeError
from .providers import RUNNING, UNKNOWN, AppInfo, ProviderError, account_of
from .providers.priority import CallClass, calls_as
from .proxy import is_system_request
from .registry import utcnow
from .reloads import Outcome
from .routing import is_valid_app_key
from .sessions import SessionsUnavailable

log = logging.getLogger(__name__)

bp = Blueprint("system_api", __name__)

PROCESS_STARTED = time.time()
MAX_EVENTS = 1000
STOP_GRACE = 1.0  # seconds past the operation's deadline an admin stop gives the provider to say why it failed


class ApiError(Exception):
    """An answer other than 200, with a message for the operator."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(message)


def _paastis() -> Any:
    return current_app.extensions["paastis"]


def error(status: int, message: str) -> Response:
    response = jsonify(error=message, status=status)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def presented_token() -> str | None:
    token = request.headers.get("PaastisProxySystemApiToken")
    if token:
        return token
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


@bp.before_app_request
def authenticate() -> Response | None:
    """Runs after the proxy's hook, which only lets system requests through to routing.

    Guessing is braked by the instance's one :class:`~paastis.throttle.TokenThrottle`, shared
    with the dashboard's sign-in: a wrong token is answered late, and an address with too many
    failures in a row gets 429 without its token being looked at.
    """
    if not is_system_request(request):
        return None
    paastis = _paastis()
    address = paastis.proxy.trusted.client_address(request.environ) or "-"
    wait = paastis.throttle.retry_after(address)
    if wait is not None:
        log.warning("system API: refused %s %s from %s: too many failures (%.0fs left)", request.method,
                    request.path, address, wait)  # fmt: skip
        response = error(429, f"too many wrong tokens from your address: try again in {wait:.0f} seconds")
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    expected = paastis.settings.system_api_token or ""
    token = presented_token()
    if token is None or not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        log.warning(
            "system API: refused %s %s from %s: %s token",
            request.method,
            request.path,
            address,
            "missing" if token is None else "wrong",
        )
        paastis.throttle.failed(address)  # answers late: guessing is slow
        response = error(401, "wrong or missing system API token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="paastis"'
        return response
    paastis.throttle.succeeded(address)
    return None


class RetryLater(ApiError):
    """429: asked again too soon; ``Retry-After`` says when."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(429, message)
        self.retry_after = retry_after


@bp.app_errorhandler(ApiError)
def api_error(exc: ApiError) -> Response:
    response = error(exc.status, exc.message)
    if isinstance(exc, RetryLater):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


@bp.app_errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    """Unknown routes and methods answer JSON too (only system requests ever reach routing)."""
    return error(exc.code or 500, exc.description or exc.name)


# -- apps ---------------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def app_name(raw: str) -> str:
    name = raw.lower()
    if not is_valid_app_key(name):
        raise ApiError(400, "app name must be a DNS label (letters, digits, hyphens)")
    return name


def resolve(name: str) -> AppInfo:
    try:
        return _paastis().lifecycle.resolve(app_name(name))
    except WakeError as exc:
        raise ApiError(exc.status, exc.message) from None


def status_of(app: AppInfo) -> str:
    """The listing's status (plus what paastis did since), never an API call.

    A provider without an API (local) is asked: that is a local connect, not budget. For the
    others, an app the listing says nothing about is ``running`` while paastis tracks it awake.
    """
    if app.status:
        return app.status
    paastis = _paastis()
    if account_of(paastis.provider, app).scheduler is not None:
        return RUNNING if paastis.registry.get(app.key) is not None else UNKNOWN
    try:
        return paastis.provider.status(app)
    except ProviderError as exc:
        log.warning("system API: no status for %s: %s", app.key, exc)
        return UNKNOWN


def fresh(app: AppInfo) -> AppInfo:
    """``app`` as the directory knows it now (after a start or a stop it noted), without listing."""
    return _paastis().directory.cached(app.key) or app


def describe(app: AppInfo, status: str | None = None) -> dict[str, Any]:
    paastis = _paastis()
    policy = paastis.rules.policy(app.key)
    entry = paastis.registry.get(app.key)
    return {
        "name": app.key,
        "provider": paastis.metrics.provider_of(app),
        "provider_app_name": app.name,
        "region": app.region,
        "status": status or status_of(app),
        "managed": policy.managed,
        "monitored": entry is not None,
        "started_at": iso(entry.started_at) if entry else None,
        "last_accessed_at": iso(entry.last_accessed_at) if entry else None,
        "idle_seconds": round(entry.idle_seconds(utcnow()), 3) if entry else None,
        "max_idle_time": policy.max_idle_time,
        "linked_apps": list(policy.linked_apps),
        "wake_strategy": policy.wake_strategy,
        "requests_in_flight": paastis.registry.in_flight(app.key),
        "websockets": paastis.upgrades.open(app.key),
        "starting": paastis.lifecycle.starting(app.key),
        "stop_queued": paastis.lifecycle.stop_queued(app.key),
        **schedule_fields(policy),
    }


def schedule_fields(policy: Any) -> dict[str, Any]:
    """``schedule`` (windows, time zone, the state now) and ``next_change`` (when a window next opens or closes)."""
    if policy.schedule is None:
        return {"schedule": None, "next_change": None}
    now = utcnow()
    return {"schedule": policy.schedule.to_json(now), "next_change": iso(policy.schedule.next_change(now))}


def listed_apps() -> list[AppInfo]:
    """The directory's apps (never a listing but the very first), plus registered keys a rule renames onto one."""
    paastis = _paastis()
    apps = paastis.directory.apps()
    if not apps and paastis.directory.last_error is not None:
        raise ApiError(502, f"could not list apps: {paastis.directory.last_error}")
    keys = {app.key for app in apps}
    for entry in paastis.registry.all():
        if entry.key not in keys:
            alias = paastis.directory.cached(entry.key)
            if alias is not None:
                apps.append(alias)
    return sorted(apps, key=lambda app: app.key)


def listing_fields() -> dict[str, Any]:
    """When the list shown was made, and why it may be old (``listing_error``)."""
    directory = _paastis().directory
    return {"listed_at": iso(directory.listed_at_wall), "listing_error": directory.last_error}


@bp.get("/apps")
def list_apps() -> Response:
    """From the directory's cache: reading costs no API call (``POST /apps/refresh`` lists on purpose).

    ``?provider=NAME``: only that provider's apps (a name in ``providers:``).
    """
    wanted = request.args.get("provider")
    paastis = _paastis()
    if wanted is not None and wanted not in paastis.provider.accounts:
        known = ", ".join(paastis.provider.accounts)
        raise ApiError(400, f"provider {wanted[:100]!r} is not one of this paastis's providers ({known})")
    apps = listed_apps()
    if wanted is not None:
        apps = [app for app in apps if paastis.metrics.provider_of(app) == wanted]
    return jsonify(apps=[describe(app) for app in apps], **listing_fields())


@bp.post("/apps/refresh")
def refresh_apps() -> Response:
    """List the provider now, at the lowest class of its API budget; 429 while the last listing is too recent."""
    refreshed = refresh_listing("system API")
    return jsonify(apps=len(refreshed), **listing_fields())


def refresh_listing(via: str) -> list[AppInfo]:
    """An explicit refresh (admin API, dashboard): rate-limited, and it waits behind every other API call."""
    paastis = _paastis()
    interval = paastis.settings.refresh_interval
    budget = paastis.provider.operation_timeout
    try:
        with deadlines.deadline_at(time.monotonic() + budget), calls_as(CallClass.BACKGROUND):
            apps = paastis.directory.refresh_unless_fresh(interval)
    except ProviderError as exc:
        raise ApiError(exc.status if exc.status != 404 else 502, f"could not list apps: {exc}") from None
    except deadlines.DeadlinePassed:
        raise ApiError(504, f"could not list apps within {budget:g}s (the API budget is busy)") from None
    if apps is None:
        wait = max(1, round(interval - paastis.directory.age()))
        raise RetryLater(f"the apps were listed less than {interval:g}s ago: try again in {wait}s", wait)
    log.info("%s: apps listed on request (%d)", via, len(apps))
    return apps


@bp.get("/apps/<name>")
def show_app(name: str) -> Response:
    return jsonify(describe(resolve(name)))


@bp.delete("/apps")
def forget_apps() -> Response:
    """Forget the registry (paastis relearns what runs at the next idle check); no app is touched."""
    count = _paastis().lifecycle.forget_all("manual")
    log.info("system API: registry cleared (%d app(s) forgotten)", count)
    return jsonify(forgotten=count)


@bp.post("/apps/<name>/start")
def start_app(name: str) -> Response:
    app = resolve(name)
    wake(app, "system API")
    return jsonify(describe(fresh(app)))


@bp.post("/apps/<name>/stop")
def stop_app(name: str) -> Response:
    app = resolve(name)
    put_to_sleep(app, "system API")
    return jsonify(describe(fresh(app)))


def wake(app: AppInfo, via: str) -> None:
    """A manual start (the admin API's or the dashboard's): the same lifecycle, hooks and events as any."""
    paastis = _paastis()
    log.info("%s: start %s requested", via, app.key)
    try:
        paastis.lifecycle.ensure_awake(app, reason="manual")
    except WakeError as exc:
        raise ApiError(exc.status, exc.message) from None
    paastis.registry.touch(app.key)


def put_to_sleep(app: AppInfo, via: str) -> None:
    """A manual stop; :class:`ApiError` says why not (unmanaged, failed, or busy with another operation)."""
    paastis = _paastis()
    if not paastis.rules.policy(app.key).managed:
        raise ApiError(409, f"app {app.key!r} is not managed by paastis: it is never stopped")
    log.info("%s: stop %s requested", via, app.key)
    if paastis.settings.dry_run:
        recorded = paastis.lifecycle.stop(app, "manual")
        raise ApiError(
            409,
            f"PAASTIS_DRY_RUN=true: {app.key!r} is not stopped" + (" (APP_WOULD_STOP recorded)" if recorded else ""),
        )
    asked_at = utcnow()
    budget = paastis.provider.timeout_of(app)  # its own account's
    started = time.monotonic()
    try:  # the stop runs under the operation's deadline; the answer never waits much longer
        stopped = deadlines.call_within(budget, STOP_GRACE, lambda: paastis.lifecycle.stop(app, "manual"))
    except deadlines.DeadlinePassed:
        raise ApiError(504, f"could not stop {app.key!r} within {budget:g}s; it goes on in the background") from None
    if stopped:
        return
    failure = _stop_failure(app.key, asked_at)
    if failure is not None:
        status = 504 if time.monotonic() - started >= budget else 502
        raise ApiError(status, f"could not stop {app.key!r}: {failure}")
    raise ApiError(409, f"another start or stop of {app.key!r} is under way; try again")


def _stop_failure(key: str, since: datetime) -> str | None:
    """Why our stop failed, as the lifecycle recorded it (its only report of the failure)."""
    try:
        failed = _paastis().events.query(app=key, type=ev.APP_STOP_FAILED, since=since, limit=1)
    except EventStoreUnavailable:
        return None
    return (failed[0].message or "stop failed") if failed else None


# -- events, health, metrics -------------------------------------------------------


def since_param(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.strip().replace(" ", "+"))  # an unencoded "+" arrives as a space
    except ValueError:
        raise ApiError(400, "since must be an ISO 8601 date, e.g. 2026-01-31T12:00:00Z") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def limit_param(raw: str | None) -> int:
    if raw is None:
        return 100
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_EVENTS:
        raise ApiError(400, f"limit must be a whole number from 1 to {MAX_EVENTS}")
    return int(raw)


def type_param(raw: str | None) -> str | None:
    if raw is None:
        return None
    if raw.upper() not in ev.EVENT_TYPES:
        raise ApiError(400, f"type must be one of {', '.join(ev.EVENT_TYPES)}")
    return raw.upper()


@bp.delete("/sessions")
def revoke_sessions() -> Response:
    """End every dashboard session (``paastis sessions revoke --all``): copies of their cookies open nothing."""
    sessions = _paastis().sessions
    try:
        count = sessions.revoke_all() if sessions is not None else 0
    except SessionsUnavailable as exc:
        raise ApiError(503, f"sessions could not be revoked: {exc}") from None
    log.warning("system API: every dashboard session revoked (%d)", count)
    return jsonify(revoked=count)


@bp.get("/events")
def list_events() -> Response:
    args = request.args
    app = app_name(args["app"]) if "app" in args else None
    kind, since, limit = type_param(args.get("type")), since_param(args.get("since")), limit_param(args.get("limit"))
    try:
        found = _paastis().events.query(app=app, type=kind, since=since, limit=limit)
    except EventStoreUnavailable as exc:
        raise ApiError(503, f"event history unavailable: {exc}") from None
    return jsonify(events=[event.to_json() for event in found], count=len(found))


def until_param(raw: str | None, name: str = "until") -> datetime | None:
    try:
        return since_param(raw)
    except ApiError:
        raise ApiError(400, f"{name} must be an ISO 8601 date, e.g. 2026-01-31T12:00:00Z") from None


@bp.get("/savings")
def savings() -> Response:
    """Asleep and awake hours, money saved and (dry run) the projection, per app and in total."""
    args = request.args
    app = app_name(args["app"]) if "app" in args else None
    since, until = since_param(args.get("since")), until_param(args.get("until"))
    if since is not None and until is not None and since >= until:
        raise ApiError(400, "since must be before until")
    try:
        report = _paastis().savings.report(since, until, app)
    except EventStoreUnavailable as exc:
        raise ApiError(503, f"event history unavailable: {exc}") from None
    return jsonify(report)


def _redis_state(paastis: Any) -> str:
    settings = paastis.settings
    if "redis" not in (settings.registry_type, settings.events_store_type):
        return "not_used"
    healthy = paastis.registry.healthy() and paastis.events.healthy()
    return "ok" if healthy else "unreachable"


def _provider_state(paastis: Any) -> dict[str, Any]:
    """From the directory: the last listing's outcome (the idle check lists every interval); no API call."""
    apps = paastis.directory.apps()  # lists only if nothing was ever listed
    if paastis.directory.last_error is not None:
        state = {"name": paastis.provider.name, "status": "unreachable", "error": paastis.directory.last_error[:300]}
    else:
        state = {"name": paastis.provider.name, "status": "ok", "apps": len(apps)}
    return _with_accounts(paastis, state, apps)


def _with_accounts(paastis: Any, state: dict[str, Any], apps: list[AppInfo]) -> dict[str, Any]:
    """With several providers: each one's state (``providers``), from its own last listing."""
    if not paastis.provider.several:
        return state
    counts: dict[str, int] = {}
    for app in apps:
        counts[paastis.metrics.provider_of(app)] = counts.get(paastis.metrics.provider_of(app), 0) + 1
    providers = {}
    for name, account in paastis.provider.accounts.items():
        error = paastis.directory.members[name].last_error
        if error is not None or name in paastis.directory.unanswered:
            providers[name] = {"type": account.type, "status": "unreachable", "error": (error or "no answer")[:300]}
        else:
            providers[name] = {"type": account.type, "status": "ok", "apps": counts.get(name, 0)}
    state["providers"] = providers
    return state


@bp.get("/health")
def health() -> Response:
    paastis = _paastis()
    redis_state = _redis_state(paastis)
    provider = _provider_state(paastis)
    healthy = redis_state != "unreachable" and provider["status"] == "ok"
    response = jsonify(
        status="ok" if healthy else "degraded",
        process={
            "pid": os.getpid(),
            "instance": instance_id(),
            "started_at": datetime.fromtimestamp(PROCESS_STARTED, UTC).isoformat(),
            "uptime_seconds": round(time.time() - PROCESS_STARTED, 3),
        },
        redis=redis_state,
        provider=provider,
        leader=paastis.supervisor.leading,
        registry_size=len(paastis.registry.all()),
        config_reload=last_reload().to_json(),
    )
    response.status_code = 200 if healthy else 503
    return response


def last_reload() -> Outcome:
    """The last configuration reload, as gunicorn's master recorded it (none outside gunicorn)."""
    status = startup.reload_status
    return status.read() if status is not None else Outcome()


@bp.get("/metrics")
def metrics() -> Response:
    paastis = _paastis()
    paastis.metrics.registry_size.set(len(paastis.registry.all()))  # fresh, not as of the last idle check
    paastis.metrics.last_reload_successful.set(0 if last_reload().result == "failed" else 1)
    return Response(paastis.metrics.render(), mimetype=None, headers={"Content-Type": CONTENT_TYPE_LATEST})
