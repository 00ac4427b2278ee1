"""Once per instance, before any worker boots: check every setting, then say in one line what runs.

gunicorn runs ``gunicorn.conf.py`` in its master process. Checking there (settings, the
``paastis.yml`` file, the rules, the provider's own settings) stops a misconfigured instance
with one line and a non-zero exit, before gunicorn forks workers that would each fail
to boot and print gunicorn's own lines; and the summary and warnings are logged once per
instance rather than once per worker.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from typing import Any

from .config import ConfigError, Settings, read_environment
from .hooks import parse_hooks_env
from .logs import format_line
from .providers import build_accounts, read_specs
from .reloads import ReloadStatus
from .routes import Routes
from .rules import Rules, load_config_file
from .secrecy import mask_url

log = logging.getLogger(__name__)

# True in the master once it has logged the warnings; workers are forked from it and inherit
# the flag, so create_app() in a worker does not repeat them.
reported = False
# The gunicorn master's memory, kept here because gunicorn runs gunicorn.conf.py afresh at
# each reload: the configuration it accepted last (workers forked from it build from exactly
# that, never from files that may have changed since), and the reloads' outcome (shared with
# the workers). Both stay None outside gunicorn (tests, ``paastis check``).
accepted: Checked | None = None
reload_status: ReloadStatus | None = None


@dataclass(frozen=True)
class Checked:
    """What the master learnt while checking: enough for the summary line."""

    settings: Settings
    config: dict[str, Any]
    rules: Rules
    apps: tuple[str, ...] | None  # None: a PaaS provider lists its apps at the first idle check
    providers: tuple[str, ...] = ()  # "name: type (regions)" of each account


def check(settings: Settings | None = None) -> Checked:
    """Validate everything an instance reads at start-up; :class:`ConfigError` says what is wrong."""
    settings = settings or Settings.from_env()
    config = load_config_file(settings.config_file)
    specs = read_specs(settings, config)
    rules = Rules(settings, config.get("rules"), specs)
    Routes(config.get("routes"), str(settings.config_file))
    parse_hooks_env(config, str(settings.config_file))
    accounts = build_accounts(specs, config, None)  # no metrics: only checked here
    try:
        local = [account for account in accounts if account.type == "local"]
        apps = tuple(app.key for app in local[0].list_apps()) if local and not accounts.several else None
    finally:
        accounts.close()
    return Checked(settings, config, rules, apps, tuple(spec.describe() for spec in specs))


def accept() -> Checked:
    """In gunicorn's master, at start-up and at each reload: the configuration to serve with.

    At start-up a mistake raises (one line, non-zero exit). At a reload (``paastis.reloads``
    checked it already, but a file may change in between) a mistake keeps the previous one.
    """
    global accepted, reload_status
    try:
        checked = check()
    except ConfigError as error:
        if accepted is None or reload_status is None:
            raise
        reload_status.failed(str(error))
        log.error(reload_error_line(error))
        return accepted
    if reload_status is None:
        reload_status = ReloadStatus()
    accepted = checked
    return checked


def reload_error_line(error: Exception) -> str:
    """The one line a refused reload is logged in."""
    return f"paastis: reload refused, still serving the previous configuration: {error}"


def warnings(settings: Settings, rules: Rules, apps: tuple[str, ...] | None = None) -> list[str]:
    """What the operator should know although nothing stops paastis.

    ``apps``: the app keys the provider lists, when known at start-up (the local provider's).
    """
    found = list(rules.warnings)
    if not settings.config_file.is_file():
        no_apps = " and no apps" if settings.provider_name == "local" else ""
        found.append(
            f"no {settings.config_file} here: looked for {settings.config_file.resolve()}; running with no rules"
            f"{no_apps} (set PAASTIS_CONFIG_FILE to use another file)"
        )
    if apps is not None:
        found.extend(rules.unmatched(apps))
    if settings.provider_inferred_from:
        found.append(
            f"PROVIDER_NAME is not set: using {settings.provider_name}, the only provider whose credentials "
            f"are set ({settings.provider_inferred_from}); set PROVIDER_NAME={settings.provider_name} to say so"
        )
    if settings.web_concurrency and settings.web_concurrency > 1 and settings.registry_type == "in-memory":
        found.append(
            f"WEB_CONCURRENCY={settings.web_concurrency} ignored: the in-memory registry lives in one process, "
            "so paastis runs one worker (set REGISTRY_TYPE=redis to run several)"
        )
    if not settings.domains:
        found.append(
            "PAASTIS_DOMAINS is not set: any domain routes by its first label (a Host such as "
            "<app>.attacker.example reaches the app); set PAASTIS_DOMAINS=apps.example.com,localhost "
            "to serve only your domains"
        )
    if settings.dry_run:
        found.append("PAASTIS_DRY_RUN=true: no app will be stopped; would-be stops are recorded as APP_WOULD_STOP")
    return found


def report(
    settings: Settings, rules: Rules, logger: logging.Logger = log, apps: tuple[str, ...] | None = None
) -> None:
    """Log the warnings once per instance (see :data:`reported`)."""
    global reported
    if reported:
        return
    for warning in warnings(settings, rules, apps):
        logger.warning(warning)
    reported = True


def summary(checked: Checked, host: str, port: int) -> str:
    """The one line that says what this instance is and how to try it."""
    s = checked.settings
    names = ",".join(p.split(":")[0] for p in checked.providers) or s.provider_name
    apps = str(len(checked.apps)) if checked.apps is not None else f"listed by {names} at the first check"
    checks = f"cron {s.checking_cron!r}" if s.checking_cron else f"every {s.checking_interval:g}s"
    registry = f"redis({mask_url(s.redis_url)})" if s.registry_type == "redis" else s.registry_type
    events = s.events_store_type
    if events == "redis":
        events = f"redis({mask_url(s.redis_url)})"
    elif events == "postgres":
        events = f"postgres({mask_url(s.database_url)})"  # where, never the password
    domains = ",".join(s.domains) or "any"
    config = s.config_file.resolve() if s.config_file.is_file() else f"{s.config_file}(absent:no-rules)"
    try_host = "localhost" if host in ("0.0.0.0", "::", "") else host
    example = checked.apps[0] if checked.apps else "<app>"
    suffix = "" if port in (80, 443) else f":{port}"
    dashboard = f"dashboard=http://{s.dashboard_host}{suffix}/" if s.dashboard_host else "dashboard=off"
    try_it = f"curl -H {shlex.quote(f'Host: {example}.localhost{suffix}')} http://{try_host}{suffix}/"
    return (
        f"paastis ready: provider={names} config={config} apps={apps} "
        f"rules={len(checked.rules.rules)} domains={domains} registry={registry} events={events} "
        f"admin_api={'on' if s.system_api_enabled else 'off'} {dashboard} idle_checks={checks} "
        f"workers={s.workers}x{s.threads} threads - try: {try_it}"
    )


def error_line(error: ConfigError) -> str:
    """The one line a configuration error is reported in (JSON if ``LOG_FORMAT=json`` was readable)."""
    fmt = (read_environment().get("LOG_FORMAT") or "text").strip().lower()
    return format_line(fmt, f"paastis: configuration error: {error}")
