"""The ``paastis`` command: check a configuration, run the service, and drive a running instance.

One click group serves both ``paastis …`` (the console script) and ``flask --app app paastis …``
(it is registered on the app's CLI and as a ``flask.commands`` plugin). ``check`` and ``serve``
work on this machine's settings; the other commands talk to a running paastis through its admin
API (``PAASTIS_URL``, ``ROUTING_SYSTEM_API_TOKEN``), exactly as ``curl`` would, so they work
against any instance the token opens. Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import requests
from dotenv import dotenv_values

from .config import ConfigError, Settings
from .secrecy import mask_url

EXIT_CONFIG = 2  # `paastis check`: the configuration is wrong
EXIT_REMOTE = 1  # a remote command failed (unreachable, refused, or the operation failed)


class Failure(click.ClickException):
    """One line on stderr, prefixed with the command name, and a non-zero exit."""

    def __init__(self, message: str, exit_code: int = EXIT_REMOTE, status: int | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status  # the admin API's HTTP status, when it answered

    def show(self, file: Any = None) -> None:
        click.echo(f"paastis: {self.format_message()}", err=True)


def dotenv_value(name: str) -> str | None:
    """A value from the environment, else from ``./.env`` (as the service reads its settings)."""
    value = os.environ.get(name)
    if value:
        return value
    if Path(".env").is_file():
        return dotenv_values(".env", interpolate=False).get(name) or None  # as the service reads it
    return None


# -- the admin API client ------------------------------------------------------


class AdminApi:
    """A running paastis seen through its admin API (``PaastisProxyTarget: system``)."""

    def __init__(self, url: str, token: str | None, timeout: float):
        if not token:
            raise Failure("ROUTING_SYSTEM_API_TOKEN is not set (the admin API token of the paastis at " + url + ")")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers.update({"PaastisProxyTarget": "system", "PaastisProxySystemApiToken": token})

    def call(self, method: str, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        try:
            response = self.session.request(method, self.url + path, params=query, timeout=self.timeout)
        except requests.Timeout:
            raise Failure(f"{self.url} did not answer {method} {path} within {self.timeout:g}s") from None
        except requests.ConnectionError as error:
            raise Failure(f"cannot reach paastis at {self.url}: {_reason(error)}") from None
        except requests.RequestException as error:
            raise Failure(f"{method} {self.url}{path} failed: {_reason(error)}") from None
        return _answer(response, method, path)


def _answer(response: requests.Response, method: str, path: str) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.ok and body is not None:
        return body
    if isinstance(body, dict) and body.get("error"):
        message = body["error"]
    elif response.status_code == 404:
        message = "not found (is the admin API on? ROUTING_SYSTEM_API_ENABLED=true)"
    else:
        message = (response.text or response.reason or "no answer").strip().splitlines()[0][:200]
    raise Failure(f"{method} {path}: {response.status_code}: {message}", status=response.status_code)


def _reason(error: Exception) -> str:
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return str(reason or error).split(": ")[-1][:200]


# -- output --------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns aligned on the widest cell; empty values shown as ``-``."""
    cells = [[str(h) for h in headers]] + [["-" if v in (None, "") else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else render(data))


def when(iso: str | None) -> str | None:
    """An ISO date from the API as ``2026-01-31 12:00:05`` (UTC), short enough for a table."""
    if not iso:
        return None
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")


def seconds(value: float | None) -> str | None:
    if value is None:
        return None
    value = float(value)
    if value < 60:
        return f"{value:.1f}s"
    minutes, rest = divmod(int(value), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def render_apps(data: dict) -> str:
    """One row per app; a PROVIDER column once apps of several providers are listed."""
    several = len({a.get("provider") for a in data["apps"]}) > 1
    rows = [
        (
            a["name"],
            *([a.get("provider")] if several else []),
            ("starting" if a.get("starting") else a["status"])
            + ("" if a.get("managed", True) else " (unmanaged)")
            + (" (stop queued)" if a.get("stop_queued") else ""),
            when(a.get("started_at")),
            seconds(a.get("idle_seconds")),
            f"{a['max_idle_time']:g}m" if a.get("max_idle_time") is not None else None,
            ",".join(a.get("linked_apps") or []),
        )
        for a in data["apps"]
    ]
    headers = ("NAME", *(["PROVIDER"] if several else []), "STATUS", "AWAKE SINCE (UTC)", "IDLE", "MAX IDLE", "LINKED")
    return table(headers, rows)


def render_events(data: dict) -> str:
    rows = [
        (when(e["timestamp"]), e["type"], e["app"], e["reason"], seconds(e.get("duration")), e.get("message"))
        for e in data["events"]
    ]
    return table(("TIME (UTC)", "TYPE", "APP", "REASON", "DURATION", "MESSAGE"), rows)


# -- commands ------------------------------------------------------------------


def remote_options(command: Callable) -> Callable:
    """``--url``, ``--token``, ``--timeout`` and ``--json``, shared by every remote command."""
    for option in reversed(
        [
            click.option(
                "--url", envvar="PAASTIS_URL", help="paastis to talk to [env PAASTIS_URL; else http://HOST:PORT]"
            ),
            click.option(
                "--token",
                envvar="ROUTING_SYSTEM_API_TOKEN",
                help="admin API token [env ROUTING_SYSTEM_API_TOKEN, or .env]",
            ),
            click.option("--timeout", type=float, default=300.0, show_default=True, help="seconds to wait for paastis"),
            click.option("--json", "as_json", is_flag=True, help="print the admin API's JSON (for scripts)"),
        ]
    ):
        command = option(command)
    return command


def admin(url: str | None, token: str | None, timeout: float) -> AdminApi:
    token = token or dotenv_value("ROUTING_SYSTEM_API_TOKEN")
    return AdminApi(url or dotenv_value("PAASTIS_URL") or local_url(), token, timeout)


def local_url() -> str:
    """The paastis of this directory: ``HOST`` and ``PORT`` as the service reads them (environment, then ``.env``)."""
    host = dotenv_value("HOST") or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{dotenv_value('PORT') or 3000}"


def known_app(api: AdminApi, name: str | None, found: list[Any]) -> None:
    """``--app NAME`` that paastis does not know, with nothing recorded for it: a typo, said so (exit 1)."""
    if name is None or found:
        return
    try:
        api.call("GET", f"/apps/{name}")
    except Failure as failure:
        if failure.status in (400, 404):
            raise Failure(f"unknown app {name!r}: paastis lists no such app and has nothing recorded for it") from None
        raise


@click.group(help="paastis: puts idle PaaS apps to sleep and wakes them on the first request.")
def cli() -> None:
    pass


@cli.command()
@click.option("--online", is_flag=True, help="also list each provider's apps (calls their APIs) and names found twice")
def check(online: bool) -> None:
    """Validate the settings and paastis.yml as start-up does; print the summary (exit 2 on error)."""
    from . import startup
    from .wiring import create_app  # late: the wiring imports this module

    try:
        settings = Settings.from_env()
        checked = startup.check(settings)  # what gunicorn's master checks
        quiet = replace(settings, log_level="warning")  # warnings, but no "paastis ready": nothing will serve
        paastis = create_app(quiet).extensions["paastis"]  # what each worker builds (it logs the warnings)
    except ConfigError as error:
        raise Failure(f"configuration error: {error}", EXIT_CONFIG) from None
    try:
        rows = summary(paastis, checked.apps)
        if online:
            rows = online_rows(paastis, rows)
        click.echo(table(("SETTING", "VALUE"), rows))
        click.echo("configuration OK")
    finally:
        paastis.close()


def summary(paastis: Any, apps: tuple[str, ...] | None) -> list[tuple[str, str]]:
    """What this configuration will run, as an operator would check it before deploying."""
    settings = paastis.settings
    checks = f"cron {settings.checking_cron}" if settings.checking_cron else f"every {settings.checking_interval:g} s"
    accounts = list(paastis.provider)
    names = ", ".join(account.name for account in accounts)
    return [
        *provider_rows(accounts),
        ("config file", f"{settings.config_file} ({'found' if settings.config_file.is_file() else 'absent'})"),
        ("apps", ", ".join(apps) if apps is not None else f"listed by {names} at the first check"),
        ("rules", str(len(paastis.rules.rules))),
        *route_rows(paastis.routes),
        ("domains", ", ".join(settings.domains) or "any (PAASTIS_DOMAINS is not set)"),
        ("registry", settings.registry_type),
        ("events store", settings.events_store_type),
        *store_rows(settings),
        ("wake strategy", settings.wake_strategy),
        ("max idle time", f"{settings.max_idle_time:g} min"),
        ("idle checks", checks),
        ("workers", f"{settings.workers} x {settings.threads} threads on {settings.host}:{settings.port}"),
        ("admin API", "on" if settings.system_api_enabled else "off"),
        ("dashboard", settings.dashboard_host or "off"),
        ("dry run", "on: nothing is stopped" if settings.dry_run else "off"),
    ]


def provider_rows(accounts: list[Any]) -> list[tuple[str, str]]:
    """One ``provider`` row per account (``paris: scalingo (osc-fr1)``); as before with one from the environment."""
    if len(accounts) == 1 and accounts[0].name == accounts[0].type:
        return [("provider", accounts[0].name)]
    return [("provider", account.spec.describe()) for account in accounts]


def online_rows(paastis: Any, rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``--online``: how many apps each provider lists (its API asked now), and any name two of them list."""
    listed: dict[str, list[str]] = {}
    counts: list[tuple[str, str]] = []
    for account in paastis.provider:
        try:
            keys = [app.key for app in account.list_apps()]
        except Exception as error:  # noqa: BLE001 - one provider's failure is a line of the report
            counts.append(("apps listed", f"{account.name}: could not list: {error}"))
            continue
        listed[account.name] = keys
        counts.append(("apps listed", f"{account.name}: {len(keys)}"))
    owners: dict[str, list[str]] = {}
    for name, keys in listed.items():
        for key in keys:
            owners.setdefault(key, []).append(name)
    twice = [(key, names) for key, names in sorted(owners.items()) if len(names) > 1]
    doubles = [
        ("on two providers", f"{key}: {', '.join(names)} ({served_by(paastis, key, names)} serves it)")
        for key, names in twice
    ]
    at = next((i for i, row in enumerate(rows) if row[0] == "apps"), len(rows))
    return rows[: at + 1] + counts + (doubles or [("on two providers", "none")]) + rows[at + 1 :]


def served_by(paastis: Any, key: str, names: list[str]) -> str:
    """The account a name found twice goes to: a rule's provider:, else the first in providers: order."""
    return paastis.rules.policy(key).provider or names[0]


def store_rows(settings: Settings) -> list[tuple[str, str]]:
    """Where Redis and PostgreSQL are, their URLs' passwords masked."""
    rows = []
    if "redis" in (settings.registry_type, settings.events_store_type) and settings.redis_url:
        rows.append(("redis", mask_url(settings.redis_url) or ""))
    if settings.events_store_type == "postgres" and settings.database_url:
        rows.append(("database", mask_url(settings.database_url) or ""))
    return rows


def route_rows(routes: Any) -> list[tuple[str, str]]:
    """One row per route of paastis.yml, in file order (the order does not decide: exact beats wildcard)."""
    if not routes:
        return [("routes", "none (first label of the host name)")]
    return [("route", route.describe()) for route in routes.routes]


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("gunicorn_options", nargs=-1, type=click.UNPROCESSED)
def serve(gunicorn_options: tuple[str, ...]) -> None:
    """Run the service as `gunicorn app:app` does; GUNICORN_OPTIONS go to gunicorn.

    The settings are paastis's own gunicorn configuration (paastis/gunicorn_conf.py), the same
    that `gunicorn app:app` reads from a checkout, so an installed paastis runs the same way.
    """
    config = Path(__file__).with_name("gunicorn_conf.py")
    argv = [sys.executable, "-m", "gunicorn", "--config", str(config), *gunicorn_options, "paastis.wsgi:app"]
    os.execv(sys.executable, argv)  # gunicorn becomes this process: signals and exit status are its own


@cli.command()
@click.option("--pid", type=int, help="gunicorn master's pid [default: from PAASTIS_STATE_DIR/paastis-PORT.master]")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="seconds to wait for the outcome")
def reload(pid: int | None, timeout: float) -> None:
    """Apply changed settings (.env) and paastis.yml to the paastis running here, without a restart.

    Sends SIGHUP to its gunicorn master, which checks the new configuration first: a broken one
    is refused (exit 1, the reason printed) and paastis keeps serving with the previous one.
    """
    from .reloads import files

    state_dir = Path(dotenv_value("PAASTIS_STATE_DIR") or ".paastis")
    port = dotenv_value("PORT") or "3000"
    pid_file, status_file = files(state_dir, int(port) if port.isdigit() else 3000)
    if pid is None:
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            raise Failure(f"no paastis runs here on port {port}: {pid_file} is missing (or give --pid)") from None
    before = read_status(status_file).get("generation", 0)
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as error:
        raise Failure(f"cannot signal paastis (pid {pid}): {error.strerror}") from None
    deadline = time.monotonic() + timeout
    while (outcome := read_status(status_file)).get("generation", 0) == before:
        if time.monotonic() > deadline:
            raise Failure(f"sent SIGHUP to {pid}, but {status_file} did not change within {timeout:g}s")
        time.sleep(0.1)
    if outcome.get("result") != "applied":
        raise Failure(f"reload refused, paastis keeps the previous configuration: {outcome.get('error')}")
    click.echo("configuration reloaded (connections in flight are kept)")


def read_status(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@cli.command()
@click.option("--refresh", is_flag=True, help="list the provider's apps first (POST /apps/refresh, rate-limited)")
@remote_options
@click.option("--provider", "provider", metavar="NAME", help="only the apps of this provider (a name in providers:)")
def apps(
    refresh: bool, url: str | None, token: str | None, timeout: float, as_json: bool, provider: str | None
) -> None:
    """List the apps of a running paastis, with their provider and status (its copy of the providers' lists:
    no API call)."""
    api = admin(url, token, timeout)
    if refresh:
        api.call("POST", "/apps/refresh")
    emit(api.call("GET", "/apps", provider=provider), as_json, render_apps)


@cli.command()
@click.argument("name")
@remote_options
def start(name: str, url: str | None, token: str | None, timeout: float, as_json: bool) -> None:
    """Wake NAME (and its linked apps); show progress until it is ready."""
    operate(admin(url, token, timeout), name, "start", as_json)


@cli.command()
@click.argument("name")
@remote_options
def stop(name: str, url: str | None, token: str | None, timeout: float, as_json: bool) -> None:
    """Put NAME to sleep now (runs its hooks, records APP_STOPPED)."""
    operate(admin(url, token, timeout), name, "stop", as_json)


def operate(api: AdminApi, name: str, operation: str, as_json: bool) -> None:
    """``POST /apps/NAME/start`` or ``/stop``, with progress while it runs, then the app's new state."""
    doing = {"start": "waking", "stop": "stopping"}[operation]
    app, took = with_progress(f"{doing} {name}", lambda: api.call("POST", f"/apps/{name}/{operation}"))
    after = "ready after" if operation == "start" else "after"
    emit(app, as_json, lambda a: f"{a['name']} is {a['status']} ({after} {seconds(took)})")


@cli.group()
def sessions() -> None:
    """The dashboard's sessions."""


@sessions.command("revoke")
@click.option("--all", "everyone", is_flag=True, help="every session (required: sessions are not listed)")
@remote_options
def revoke(everyone: bool, url: str | None, token: str | None, timeout: float, as_json: bool) -> None:
    """End dashboard sessions at once: copies of their cookies open nothing any more."""
    if not everyone:
        raise click.UsageError("say --all: paastis sessions revoke --all")
    data = admin(url, token, timeout).call("DELETE", "/sessions")
    emit(data, as_json, lambda d: f"{d['revoked']} dashboard session(s) revoked")


@cli.command()
@click.option("--app", help="only this app's events")
@click.option("--type", "kind", help="only events of this type (e.g. APP_STARTED)")
@click.option("--since", help="only events after this ISO 8601 date")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@remote_options
def events(app, kind, since, limit, url, token, timeout, as_json) -> None:  # type: ignore[no-untyped-def]
    """Show what paastis did, newest first."""
    api = admin(url, token, timeout)
    data = api.call("GET", "/events", app=app, type=kind, since=since, limit=limit)
    known_app(api, app, data["events"])
    emit(data, as_json, render_events)


@cli.command()
@click.option("--app", help="only this app")
@click.option("--since", help="from this ISO 8601 date (default: 30 days ago)")
@click.option("--until", help="to this ISO 8601 date (default: now)")
@remote_options
def savings(app, since, until, url, token, timeout, as_json) -> None:  # type: ignore[no-untyped-def]
    """What paastis saved: hours asleep and awake, and money, per app and in total."""
    api = admin(url, token, timeout)
    try:
        data = api.call("GET", "/savings", app=app, since=since, until=until)
    except Failure as failure:
        if failure.status == 404:
            raise Failure("this paastis has no savings report (GET /savings answers 404)") from None
        raise
    known_app(api, app, [a for a in data["apps"] if a.get("awake_hours") or a.get("asleep_hours")])
    emit(data, as_json, render_savings)


def render_savings(data: dict) -> str:
    currency = data.get("currency", "")
    dry_run = bool(data.get("dry_run"))

    def money(value: float | None) -> str | None:
        return None if value is None else f"{value:.2f}"

    def hours(value: float | None) -> str | None:
        return None if value is None else f"{value:.1f}h"

    headers = ["APP", "ASLEEP", "AWAKE", f"PRICE/H ({currency})", f"SAVED ({currency})"]
    if dry_run:
        headers += ["WOULD SLEEP", f"WOULD SAVE ({currency})"]
    rows = []
    for a in data["apps"]:
        price = None if a.get("price_per_hour") is None else f"{a['price_per_hour']:.4f}"
        cells = [a["app"], hours(a["asleep_hours"]), hours(a["awake_hours"]), price, money(a.get("money_saved"))]
        if dry_run:
            cells += [hours(a.get("would_sleep_hours")), money(a.get("money_would_save"))]
        rows.append(cells)
    total = data["total"]
    cells = ["TOTAL", hours(total["asleep_hours"]), hours(total["awake_hours"]), None, money(total["money_saved"])]
    if dry_run:
        cells += [hours(total.get("would_sleep_hours")), money(total.get("money_would_save"))]
    rows.append(cells)
    period = f"from {when(data['since'])} to {when(data['until'])} (UTC)"
    unpriced = total.get("apps_without_price") or []
    note = f"\nno price known for: {', '.join(unpriced)} (set cost_per_month in a rule)" if unpriced else ""
    return f"{period}\n{table(headers, rows)}{note}"


def with_progress(what: str, call: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``call`` in a thread; meanwhile say on stderr how long it has been running."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = error

    started = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    tty = sys.stderr.isatty()
    reported = 0.0
    while worker.is_alive():
        worker.join(0.2)
        elapsed = time.monotonic() - started
        if worker.is_alive() and tty:
            click.echo(f"\r{what}… {elapsed:.0f}s ", nl=False, err=True)
        elif worker.is_alive() and elapsed - reported >= 5:  # logs and CI: a line every 5 s
            reported = elapsed
            click.echo(f"{what}… {elapsed:.0f}s", err=True)
    if tty and time.monotonic() - started >= 0.2:
        click.echo("\r\033[K", nl=False, err=True)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"], time.monotonic() - started


def main() -> None:
    """The ``paastis`` console script."""
    cli(prog_name="paastis")
