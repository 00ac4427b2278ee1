"""Settings read from the environment (and a ``.env`` file), validated once at start-up.

Names follow the original paastis so that existing deployments keep working. Every
reader raises :class:`ConfigError` with one line naming the variable, the value and
what was expected, so that a typo stops the process before it serves anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from .passive import DEFAULT_USER_AGENTS, PassivePatternError, compile_paths, compile_user_agents
from .schedules import ScheduleError, Window, parse_windows, zone


class ConfigError(ValueError):
    """A setting is missing or malformed; the message is meant for the operator."""


TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


class Env:
    """Typed, validating access to a snapshot of environment variables.

    Providers and other components read their own variables through it, so every
    value in the process is checked the same way and errors read the same.
    """

    def __init__(self, values: Mapping[str, str]):
        self.values = dict(values)

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self.values.get(name)
        if value is None or value.strip() == "":
            return default
        return value.strip()

    def required(self, name: str, why: str = "") -> str:
        value = self.get(name)
        if value is None:
            suffix = f" ({why})" if why else ""
            raise ConfigError(f"{name} is required but not set{suffix}")
        return value

    def secret(self, name: str, why: str = "") -> str:
        """Like :meth:`required`, named apart so reviewers see which values must never be logged."""
        return self.required(name, why)

    def number(self, name: str, default: float, *, minimum: float = 0, allow_zero: bool = False) -> float:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{name}={raw!r} is not a finite number")
        if value < minimum or (value == 0 and not allow_zero):
            bound = f">= {minimum}" if allow_zero else f"> {minimum}"
            raise ConfigError(f"{name}={raw!r} must be a number {bound}")
        return value

    def integer(self, name: str, default: int, *, minimum: int = 1) -> int:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number") from None
        if value < minimum:
            raise ConfigError(f"{name}={raw!r} must be a whole number >= {minimum}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.get(name)
        if raw is None:
            return default
        word = raw.lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ConfigError(f"{name}={raw!r} must be true or false")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self.get(name)
        if raw is None:
            return default
        if raw.lower() not in choices:
            raise ConfigError(f"{name}={raw!r} must be one of: {', '.join(choices)}")
        return raw.lower()

    def csv(self, name: str) -> list[str]:
        raw = self.get(name)
        if raw is None:
            return []
        return [item.strip() for item in raw.split(",") if item.strip()]


PROVIDERS = ("local", "scalingo", "heroku", "clever-cloud")
WAKE_STRATEGIES = ("auto", "blocking", "waiting-page")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
STORE_TYPES = ("in-memory", "redis")
EVENTS_STORE_TYPES = (*STORE_TYPES, "postgres")


@dataclass(frozen=True)
class Settings:
    """The validated settings every component is built from."""

    provider_name: str = "local"
    config_file: Path = Path("paastis.yml")
    max_idle_time: float = 15.0  # minutes
    checking_interval: float = 60.0  # seconds
    operation_timeout: float = 60.0  # seconds
    wake_strategy: str = "auto"
    log_level: str = "info"
    log_format: str = "text"
    state_dir: Path = Path(".paastis")
    registry_type: str = "in-memory"
    redis_url: str | None = None
    redis_prefix: str = "paastis:"
    redis_socket_timeout: float = 0.5
    supervisor_lock_ttl: float = 30.0
    directory_ttl: float = 30.0
    ignored_apps: tuple[str, ...] = ()
    allowed_apps: tuple[str, ...] = ()
    hooks: Mapping[str, str] = field(default_factory=dict)
    hooks_timeout: float = 60.0
    hooks_strict: bool = False
    events_store_type: str = "in-memory"
    events_max: int = 10_000
    system_api_enabled: bool = False
    system_api_token: str | None = field(default=None, repr=False)
    database_url: str | None = field(default=None, repr=False)
    timezone: str = "UTC"
    awake_during: tuple[Window, ...] = ()
    asleep_during: tuple[Window, ...] = ()
    passive_user_agents: tuple[str, ...] = DEFAULT_USER_AGENTS
    passive_paths: tuple[str, ...] = ()
    dry_run: bool = False
    currency: str = "EUR"
    dashboard_host: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    dashboard_session_hours: float = 12.0
    threads: int = 32  # PAASTIS_THREADS: gunicorn threads per worker, which the bulkhead default follows
    client_header_timeout: float = 10.0  # seconds to send a whole request head
    client_body_timeout: float = 30.0  # seconds of silence while a request body is read
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 300.0  # first byte, and each further chunk, of an app's answer
    max_in_flight_per_app: int = 16  # requests of one app in a worker at once (the bulkhead)
    env: Env = field(default_factory=lambda: Env({}), repr=False, compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
        """Build settings from ``environ`` (default: the process environment plus ``.env``)."""
        if environ is None:
            values: dict[str, str] = {}
            if dotenv and Path(".env").is_file():
                values.update({k: v for k, v in dotenv_values(".env").items() if v is not None})
            values.update(os.environ)
        else:
            values = dict(environ)
        return cls.from_reader(Env(values))

    @classmethod
    def from_reader(cls, env: Env) -> Settings:
        registry_type = env.choice("REGISTRY_TYPE", "in-memory", STORE_TYPES)
        events_store_type = env.choice("EVENTS_STORE_TYPE", "in-memory", EVENTS_STORE_TYPES)
        redis_url = env.get("REGISTRY_REDIS_URL") or env.get("REDIS_URL") or env.get("SCALINGO_REDIS_URL")
        if "redis" in (registry_type, events_store_type) and not redis_url:
            raise ConfigError(
                "REGISTRY_TYPE/EVENTS_STORE_TYPE=redis needs a Redis URL: "
                "set REGISTRY_REDIS_URL (or REDIS_URL, or SCALINGO_REDIS_URL)"
            )
        database_url = env.get("DATABASE_URL")
        if events_store_type == "postgres" and not database_url:
            raise ConfigError(
                "EVENTS_STORE_TYPE=postgres needs DATABASE_URL (postgresql://user:password@host/database)"
            )
        api_enabled = env.boolean("ROUTING_SYSTEM_API_ENABLED", False)
        api_token = env.get("ROUTING_SYSTEM_API_TOKEN")
        if api_enabled and (api_token is None or len(api_token) < 16):
            raise ConfigError(
                "ROUTING_SYSTEM_API_ENABLED=true needs ROUTING_SYSTEM_API_TOKEN of at least 16 characters"
            )
        level = env.get("LOG_LEVEL") or env.get("LOGGING_LEVEL") or "info"
        if level.lower() not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL={level!r} must be one of: {', '.join(LOG_LEVELS)}")
        threads = env.integer("PAASTIS_THREADS", 32)
        return cls(
            provider_name=env.choice("PROVIDER_NAME", "local", PROVIDERS),
            config_file=Path(env.get("PAASTIS_CONFIG_FILE", "paastis.yml")),
            max_idle_time=env.number("START_AND_STOP_MAX_IDLE_TIME", 15.0),
            checking_interval=env.number("START_AND_STOP_CHECKING_INTERVAL", 60.0),
            operation_timeout=env.number("PROVIDER_OPERATION_TIMEOUT", 60.0),
            wake_strategy=env.choice("WAKE_STRATEGY", "auto", WAKE_STRATEGIES),
            log_level=level.lower(),
            log_format=env.choice("LOG_FORMAT", "text", ("text", "json")),
            state_dir=Path(env.get("PAASTIS_STATE_DIR", ".paastis")),
            registry_type=registry_type,
            redis_url=redis_url,
            redis_prefix=env.get("REGISTRY_REDIS_PREFIX", "paastis:"),
            redis_socket_timeout=env.number("REGISTRY_REDIS_SOCKET_TIMEOUT", 0.5),
            supervisor_lock_ttl=env.number("SUPERVISOR_LOCK_TTL", 30.0),
            directory_ttl=env.number("PROVIDER_DIRECTORY_TTL", 30.0, allow_zero=True),
            ignored_apps=tuple(env.csv("REGISTRY_IGNORED_APPS")),
            allowed_apps=tuple(env.csv("REGISTRY_ALLOWED_APPS")),
            hooks={
                hook: command
                for hook in ("before_start", "after_start", "before_stop", "after_stop")
                if (command := env.get(f"HOOKS_{hook.upper()}"))
            },
            hooks_timeout=env.number("HOOKS_TIMEOUT", 60.0),
            hooks_strict=env.boolean("HOOKS_STRICT", False),
            events_store_type=events_store_type,
            events_max=env.integer("EVENTS_MAX", 10_000),
            system_api_enabled=api_enabled,
            system_api_token=api_token,
            database_url=database_url,
            **sleep_policy(env),
            **dashboard_settings(env, api_token),
            threads=threads,
            client_header_timeout=env.number("CLIENT_HEADER_TIMEOUT", 10.0),
            client_body_timeout=env.number("CLIENT_BODY_TIMEOUT", 30.0),
            upstream_connect_timeout=env.number("UPSTREAM_CONNECT_TIMEOUT", 5.0),
            upstream_read_timeout=env.number("UPSTREAM_READ_TIMEOUT", 300.0),
            max_in_flight_per_app=env.integer("MAX_IN_FLIGHT_PER_APP", max(1, threads // 2)),
            env=env,
        )

    def provider_operation_timeout(self, provider: str) -> float:
        """A provider's own ``PROVIDER_<NAME>_OPERATION_TIMEOUT`` wins over the common one."""
        name = provider.upper().replace("-CLOUD", "").replace("-", "_")
        return self.env.number(f"PROVIDER_{name}_OPERATION_TIMEOUT", self.operation_timeout)


def sleep_policy(env: Env) -> dict[str, object]:
    """Schedules, passive visitors, dry run and currency (see docs/sleep-policy.md)."""
    timezone = env.get("PAASTIS_TIMEZONE", "UTC")
    try:
        zone(timezone)
    except ScheduleError as error:
        raise ConfigError(f"PAASTIS_TIMEZONE: {error}") from None
    windows = {}
    for name in ("PAASTIS_AWAKE_DURING", "PAASTIS_ASLEEP_DURING"):
        try:
            windows[name] = parse_windows(env.get(name))
        except ScheduleError as error:
            raise ConfigError(f"{name}: {error}") from None
    agents_raw = env.get("PAASTIS_PASSIVE_USER_AGENTS")
    agents = DEFAULT_USER_AGENTS if agents_raw is None else tuple(env.csv("PAASTIS_PASSIVE_USER_AGENTS"))
    if agents_raw is not None and agents_raw.lower() == "none":
        agents = ()
    paths = tuple(env.csv("PAASTIS_PASSIVE_PATHS"))
    try:
        compile_user_agents(agents)
    except PassivePatternError as error:
        raise ConfigError(f"PAASTIS_PASSIVE_USER_AGENTS: {error}") from None
    try:
        compile_paths(paths)
    except PassivePatternError as error:
        raise ConfigError(f"PAASTIS_PASSIVE_PATHS: {error}") from None
    raw_currency = env.get("PAASTIS_CURRENCY", "EUR")
    currency = raw_currency.upper()
    if not (len(currency) == 3 and currency.isascii() and currency.isalpha()):
        raise ConfigError(f"PAASTIS_CURRENCY={raw_currency!r} must be a three-letter ISO 4217 code such as EUR or USD")
    return {
        "timezone": timezone,
        "awake_during": windows["PAASTIS_AWAKE_DURING"],
        "asleep_during": windows["PAASTIS_ASLEEP_DURING"],
        "passive_user_agents": agents,
        "passive_paths": paths,
        "dry_run": env.boolean("PAASTIS_DRY_RUN", False),
        "currency": currency,
    }


def dashboard_settings(env: Env, api_token: str | None) -> dict[str, object]:
    """The dashboard is off unless ``PAASTIS_DASHBOARD_HOST`` is set; then it needs its two secrets.

    The admin token is what people sign in with; the secret key signs their session cookies.
    """
    host = env.get("PAASTIS_DASHBOARD_HOST")
    if host is None:
        return {}
    host = host.lower().rstrip(".")
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?", host) or ".." in host:
        raise ConfigError(f"PAASTIS_DASHBOARD_HOST={host!r} must be a host name such as paastis.example.com (no port)")
    if api_token is None or len(api_token) < 16:
        raise ConfigError("PAASTIS_DASHBOARD_HOST needs ROUTING_SYSTEM_API_TOKEN of 16+ characters (to sign in)")
    secret = env.get("PAASTIS_SECRET_KEY")
    if secret is None or len(secret) < 32:
        raise ConfigError("PAASTIS_DASHBOARD_HOST needs PAASTIS_SECRET_KEY of 32+ characters (to sign sessions)")
    return {
        "dashboard_host": host,
        "secret_key": secret,
        "dashboard_session_hours": env.number("PAASTIS_DASHBOARD_SESSION_HOURS", 12.0),
    }
