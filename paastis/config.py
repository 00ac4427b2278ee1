"""Settings read from the environment (and a ``.env`` file), validated once at start-up.

Names follow the original paastis so that existing deployments keep working. Every
reader raises :class:`ConfigError` with one line naming the variable, the value and
what was expected, so that a typo stops the process before it serves anything.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

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

    def port(self, name: str, default: int) -> int:
        value = self.integer(name, default, minimum=1)
        if value > 65535:
            raise ConfigError(f"{name}={value!r} must be a port number (1-65535)")
        return value

    def is_set(self, name: str) -> bool:
        return self.get(name) is not None

    def csv(self, name: str) -> list[str]:
        raw = self.get(name)
        if raw is None:
            return []
        return [item.strip() for item in raw.split(",") if item.strip()]


DEFAULT_FORWARDED_ALLOW_IPS = ("127.0.0.1", "::1")  # gunicorn's default for FORWARDED_ALLOW_IPS
PROVIDERS = ("local", "scalingo", "heroku", "clever-cloud")
WAKE_STRATEGIES = ("auto", "blocking", "waiting-page")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
STORE_TYPES = ("in-memory", "redis")
EVENTS_STORE_TYPES = (*STORE_TYPES, "postgres")
REDIS_SCHEMES = ("redis", "rediss", "unix")
REDIS_URL_VARIABLES = ("REGISTRY_REDIS_URL", "REDIS_URL", "SCALINGO_REDIS_URL")
# What tells a platform's credentials apart when PROVIDER_NAME is not set (the original had no local default).
PROVIDER_CREDENTIALS = {
    "scalingo": ("PROVIDER_SCALINGO_API_TOKEN",),
    "heroku": ("PROVIDER_HEROKU_API_TOKEN",),
    "clever-cloud": (
        "PROVIDER_CLEVER_OAUTH_CONSUMER_KEY",
        "PROVIDER_CLEVER_OAUTH_CONSUMER_SECRET",
        "PROVIDER_CLEVER_TOKEN",
        "PROVIDER_CLEVER_SECRET",
    ),
}


# A variable starting with one of these is meant for paastis: an unknown one is a typo, refused.
SETTING_PREFIXES = (
    "PAASTIS_",
    "START_AND_STOP_",
    "PROVIDER_",
    "ROUTING_",
    "REGISTRY_",
    "HOOKS_",
    "EVENTS_",
    "UPSTREAM_",
    "CLIENT_",
    "MAX_",
    "WEBSOCKET_",
    "WAKE_",
    "SUPERVISOR_",
    "CLUSTER_",
    "STOP_",
    "QUEUE_",
)
ALLOW_UNKNOWN = "PAASTIS_ALLOW_UNKNOWN_SETTINGS"
# Names the code builds instead of spelling them out (f"HOOKS_{hook.upper()}", a provider's own timeout).
BUILT_NAMES = (
    "HOOKS_BEFORE_START",
    "HOOKS_AFTER_START",
    "HOOKS_BEFORE_STOP",
    "HOOKS_AFTER_STOP",
    *(f"PROVIDER_{name}_OPERATION_TIMEOUT" for name in ("LOCAL", "SCALINGO", "HEROKU", "CLEVER")),
)
# Names paastis hands to hook commands and local apps: not settings, but never a typo of one.
CHILD_NAMES = (
    "PAASTIS_APP_NAME",
    "PAASTIS_HOOK",
    "PAASTIS_REASON",
    "PAASTIS_PROVIDER",
    "PAASTIS_PROVIDER_TYPE",
    "PAASTIS_REGION",
)
NAME_LITERAL = re.compile(r"""["']([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)["']""")
PACKAGE_DIR = Path(__file__).resolve().parent


@cache
def known_settings() -> frozenset[str]:
    """Every variable paastis reads, found where it is read: the names spelled in paastis's own code.

    Built from the code (and, in a checkout, from ``docs/settings.md``) rather than kept as a
    list, so a setting someone adds is known as soon as the code reads it.
    """
    names: set[str] = {*BUILT_NAMES, *CHILD_NAMES}
    for path in PACKAGE_DIR.rglob("*.py"):
        names.update(NAME_LITERAL.findall(path.read_text(encoding="utf-8")))
    table = PACKAGE_DIR.parent / "docs" / "settings.md"
    if table.is_file():
        names.update(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", table.read_text(encoding="utf-8"), re.MULTILINE))
    return frozenset(name for name in names if name.startswith(SETTING_PREFIXES))


def unknown_settings(names: Mapping[str, object]) -> list[str]:
    """The names in ``names`` that look like paastis settings (by their prefix) but are none."""
    known = known_settings()
    return sorted(name for name in names if name.startswith(SETTING_PREFIXES) and name not in known)


def refuse_unknown(names: Mapping[str, object], where: str, hint: str = "") -> None:
    """One line for every misspelled setting, each with the closest known name."""
    unknown = unknown_settings(names)
    if not unknown:
        return
    known = sorted(known_settings())

    def described(name: str) -> str:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        return f"{name} (did you mean {close[0]}?)" if close else f"{name} (no setting has a similar name)"

    listed = ", ".join(described(name) for name in unknown)
    raise ConfigError(f"unknown setting(s) in {where}: {listed}; see docs/settings.md{hint}")


def read_dotenv(dotenv_file: Path = Path(".env")) -> dict[str, str]:
    """The ``.env`` file's values (none without the file).

    ``interpolate=False`` keeps ``$NAME`` and ``${NAME}`` as written: they are meant for the
    shell that runs a hook (``$PAASTIS_APP_NAME`` exists only then), not for load time.
    """
    if not dotenv_file.is_file():
        return {}
    loaded = dotenv_values(dotenv_file, interpolate=False)
    return {k: v for k, v in loaded.items() if v is not None}


def read_environment(dotenv_file: Path = Path(".env")) -> dict[str, str]:
    """The process environment over the ``.env`` file's values."""
    return {**read_dotenv(dotenv_file), **os.environ}


def check_setting_names(dotenv_file: Path = Path(".env"), environ: Mapping[str, str] | None = None) -> None:
    """Refuse a misspelled setting: in ``.env`` always, in the process environment unless allowed.

    A shared environment may hold other programs' ``MAX_…`` or ``CLIENT_…`` variables:
    ``PAASTIS_ALLOW_UNKNOWN_SETTINGS=true`` lets those through (``.env`` is paastis's own file).
    """
    environ = os.environ if environ is None else environ
    refuse_unknown(read_dotenv(dotenv_file), str(dotenv_file.resolve()))
    if not Env({ALLOW_UNKNOWN: environ.get(ALLOW_UNKNOWN, "")}).boolean(ALLOW_UNKNOWN, False):
        refuse_unknown(environ, "the environment", f" (or set {ALLOW_UNKNOWN}=true if they belong to something else)")


def infer_provider(env: Env, config_file: Path | None = None) -> tuple[str, str | None]:
    """``PROVIDER_NAME``, or the one platform whose credentials are set, or ``local``.

    Returns the name and, when inferred, the variables it was inferred from. Nothing is inferred
    when ``config_file`` lists ``providers:`` (each entry names its own credentials' variables).
    """
    if env.is_set("PROVIDER_NAME"):
        return env.choice("PROVIDER_NAME", "local", PROVIDERS), None
    if config_file is not None and declares_providers(config_file):
        return "local", None
    present = {name: [var for var in variables if env.is_set(var)] for name, variables in PROVIDER_CREDENTIALS.items()}
    present = {name: found for name, found in present.items() if found}
    if len(present) > 1:
        found = ", ".join(var for variables in present.values() for var in variables)
        raise ConfigError(
            f"PROVIDER_NAME is not set and credentials for several providers are ({found}): "
            f"set PROVIDER_NAME to one of {', '.join(present)}"
        )
    if present:
        name, found = next(iter(present.items()))
        return name, ", ".join(found)
    return "local", None


def declares_providers(path: Path) -> bool:
    """Whether ``paastis.yml`` has a ``providers:`` mapping (read again, and checked, by the provider wiring)."""
    if not path.is_file():
        return False
    import yaml  # the master's settings check needs it only here

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False  # reported with its line when the file is loaded
    return isinstance(data, dict) and data.get("providers") is not None


def read_redis_url(env: Env) -> str | None:
    """The first Redis URL set, in ``REDIS_URL_VARIABLES`` order; never echoed (it may hold a password)."""
    for name in REDIS_URL_VARIABLES:
        url = env.get(name)
        if url is None:
            continue
        scheme = urlsplit(url).scheme
        if scheme not in REDIS_SCHEMES:
            shown = f"a {scheme}:// URL" if scheme else "no URL scheme"
            raise ConfigError(f"{name} must be a redis://, rediss:// or unix:// URL (it has {shown})")
        return url
    return None


def check_database_url(url: str) -> None:
    """A URL psycopg cannot read stops start-up with its reason, the password masked (drivers quote it)."""
    from psycopg import ProgrammingError  # only with EVENTS_STORE_TYPE=postgres
    from psycopg.conninfo import conninfo_to_dict

    from .secrecy import Redactor, mask_url, url_secrets

    try:
        conninfo_to_dict(url)
    except ProgrammingError as error:
        reason = Redactor(url_secrets(url))(str(error).strip().splitlines()[0][:300])
        raise ConfigError(
            f"DATABASE_URL={mask_url(url)!r} is not a PostgreSQL URL that psycopg can read "
            f"(postgresql://user:password@host:5432/database): {reason}"
        ) from None


def read_checking_schedule(env: Env) -> tuple[float, str | None]:
    """Seconds between idle checks, or the original's cron expression; not both."""
    cron = env.get("START_AND_STOP_CHECKING_INTERVAL_CRON")
    if cron is None:
        return env.number("START_AND_STOP_CHECKING_INTERVAL", 60.0), None
    if env.is_set("START_AND_STOP_CHECKING_INTERVAL"):
        raise ConfigError(
            "START_AND_STOP_CHECKING_INTERVAL and START_AND_STOP_CHECKING_INTERVAL_CRON are both set: keep one"
        )
    from croniter import croniter  # only with a cron expression: an idle instance does without it

    if not croniter.is_valid(cron, second_at_beginning=len(cron.split()) == 6):
        raise ConfigError(
            f"START_AND_STOP_CHECKING_INTERVAL_CRON={cron!r} is not a cron expression "
            "(5 fields, or 6 with seconds first, e.g. '*/5 * * * *')"
        )
    return 60.0, cron


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
    checking_cron: str | None = None  # START_AND_STOP_CHECKING_INTERVAL_CRON, instead of checking_interval
    provider_inferred_from: str | None = None  # the credentials PROVIDER_NAME was inferred from
    host: str = "0.0.0.0"
    port: int = 3000
    web_concurrency: int | None = None  # None: not set by the user
    access_log: str | None = None
    cluster_lock_ttl: float = 30.0
    directory_ttl: float = 30.0
    refresh_interval: float = 10.0  # PROVIDER_REFRESH_INTERVAL: explicit refreshes are at most this often
    stop_concurrency: int = 4
    ignored_apps: tuple[str, ...] = ()
    allowed_apps: tuple[str, ...] = ()
    hooks: Mapping[str, str] = field(default_factory=dict)
    hooks_timeout: float = 60.0
    hooks_strict: bool = False
    hooks_env_passthrough: tuple[str, ...] = ()  # HOOKS_ENV_PASSTHROUGH: variables hooks get on purpose
    forwarded_allow_ips: tuple[str, ...] = DEFAULT_FORWARDED_ALLOW_IPS  # gunicorn's own setting and default
    domains: tuple[str, ...] = ()  # PAASTIS_DOMAINS; empty: any domain routes by its first label
    events_store_type: str = "in-memory"
    events_max: int = 10_000
    events_spool_max: int = 100_000
    websocket_idle_timeout: float | None = None  # minutes; None: each app's max idle time
    max_websockets: int = 10_000
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
    threads: int = 32  # PAASTIS_THREADS: gunicorn threads per worker, which MAX_IN_FLIGHT_PER_APP follows
    client_header_timeout: float = 10.0  # seconds to send a whole request head
    client_body_timeout: float = 30.0  # seconds of silence while a request body is read
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 300.0  # first byte, and each further chunk, of an app's answer
    max_in_flight_per_app: int = 16  # an app's share of a worker's threads while other apps wait
    queue_timeout: float = 30.0  # seconds a request may wait in its app's queue for a thread
    max_queued_per_app: int = 1000  # requests waiting in one app's queue, per worker
    max_websockets_per_client: int = 100  # upgraded connections one client address may hold per instance
    reload_drain_timeout: float = 3600.0  # seconds a worker replaced by a reload keeps serving what it holds
    env: Env = field(default_factory=lambda: Env({}), repr=False, compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
        """Build settings from ``environ`` (default: the process environment over ``.env``)."""
        if environ is None and dotenv:
            check_setting_names()
            values = read_environment()
        elif environ is None:
            values = dict(os.environ)
        else:
            values = dict(environ)
        return cls.from_reader(Env(values))

    @classmethod
    def from_reader(cls, env: Env) -> Settings:
        registry_type = env.choice("REGISTRY_TYPE", "in-memory", STORE_TYPES)
        events_store_type = env.choice("EVENTS_STORE_TYPE", "in-memory", EVENTS_STORE_TYPES)
        redis_url = read_redis_url(env)
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
        if events_store_type == "postgres":
            check_database_url(database_url)
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
        config_file = read_config_file_name(env)
        provider_name, inferred_from = infer_provider(env, config_file)
        checking_interval, checking_cron = read_checking_schedule(env)
        return cls(
            provider_name=provider_name,
            provider_inferred_from=inferred_from,
            config_file=config_file,
            max_idle_time=env.number("START_AND_STOP_MAX_IDLE_TIME", 15.0),
            checking_interval=checking_interval,
            checking_cron=checking_cron,
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
            cluster_lock_ttl=env.number("CLUSTER_LOCK_TTL", 30.0),
            directory_ttl=env.number("PROVIDER_DIRECTORY_TTL", 30.0, allow_zero=True),
            refresh_interval=env.number("PROVIDER_REFRESH_INTERVAL", 10.0, allow_zero=True),
            stop_concurrency=env.integer("STOP_CONCURRENCY", 4),
            ignored_apps=tuple(env.csv("REGISTRY_IGNORED_APPS")),
            allowed_apps=tuple(env.csv("REGISTRY_ALLOWED_APPS")),
            hooks={
                hook: command
                for hook in ("before_start", "after_start", "before_stop", "after_stop")
                if (command := env.get(f"HOOKS_{hook.upper()}"))
            },
            hooks_timeout=env.number("HOOKS_TIMEOUT", 60.0),
            hooks_strict=env.boolean("HOOKS_STRICT", False),
            hooks_env_passthrough=read_passthrough(env),
            forwarded_allow_ips=read_forwarded_allow_ips(env),
            domains=read_domains(env),
            events_store_type=events_store_type,
            events_max=env.integer("EVENTS_MAX", 10_000),
            events_spool_max=env.integer("EVENTS_SPOOL_MAX", 100_000),
            websocket_idle_timeout=env.number("WEBSOCKET_IDLE_TIMEOUT", 0.0) or None,
            max_websockets=env.integer("MAX_WEBSOCKETS", 10_000),
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
            reload_drain_timeout=env.number("PAASTIS_RELOAD_DRAIN_TIMEOUT", 3600.0),
            queue_timeout=env.number("QUEUE_TIMEOUT", 30.0),
            max_queued_per_app=env.integer("MAX_QUEUED_PER_APP", 1000),
            max_websockets_per_client=env.integer("MAX_WEBSOCKETS_PER_CLIENT", 100),
            host=read_host(env),
            port=env.port("PORT", 3000),
            web_concurrency=env.integer("WEB_CONCURRENCY", 2) if env.is_set("WEB_CONCURRENCY") else None,
            access_log=env.get("PAASTIS_ACCESS_LOG"),
            env=env,
        )

    @property
    def bind(self) -> str:
        """gunicorn's ``bind``: ``HOST:PORT``, an IPv6 address in brackets."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    @property
    def workers(self) -> int:
        """gunicorn worker processes: ``WEB_CONCURRENCY`` (default 2), but one with the in-memory registry."""
        if self.registry_type == "in-memory":
            return 1
        return self.web_concurrency or 2

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


def read_config_file_name(env: Env) -> Path:
    """``PAASTIS_CONFIG_FILE`` must exist when set; the default ``paastis.yml`` may be absent (no rules)."""
    raw = env.get("PAASTIS_CONFIG_FILE")
    if raw is None:
        return Path("paastis.yml")
    path = Path(raw)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        what = "a directory, not a file" if path.is_dir() else "no such file"
        raise ConfigError(f"PAASTIS_CONFIG_FILE={raw!r}: {what}{where}")
    return path


def read_passthrough(env: Env) -> tuple[str, ...]:
    """``HOOKS_ENV_PASSTHROUGH``: names of variables of paastis's environment that hooks need on purpose."""
    names = env.csv("HOOKS_ENV_PASSTHROUGH")
    bad = [name for name in names if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)]
    if bad:
        raise ConfigError(
            f"HOOKS_ENV_PASSTHROUGH: {', '.join(map(repr, bad))} is not a variable name "
            "(a comma-separated list of names, such as SLACK_URL,AWS_PROFILE)"
        )
    return tuple(names)


def read_forwarded_allow_ips(env: Env) -> tuple[str, ...]:
    """``FORWARDED_ALLOW_IPS``: the fronts trusted with X-Forwarded-*, as gunicorn reads it (``*``: any)."""
    entries = env.csv("FORWARDED_ALLOW_IPS")
    if not entries:
        return DEFAULT_FORWARDED_ALLOW_IPS
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"FORWARDED_ALLOW_IPS: {entry!r} is not an IP address or network "
                "(comma-separated, such as 127.0.0.1,10.0.0.0/8, or * behind a router that always overwrites them)"
            ) from None
    return tuple(entries)


def read_domains(env: Env) -> tuple[str, ...]:
    """``PAASTIS_DOMAINS``: the domains whose first-label subdomains name apps (``apps.example.com,localhost``)."""
    domains = []
    for raw in env.csv("PAASTIS_DOMAINS"):
        domain = raw.lower().removeprefix("*.").strip(".")
        if not HOST_NAME.fullmatch(domain) or ".." in domain:
            raise ConfigError(
                f"PAASTIS_DOMAINS: {raw!r} is not a domain name (comma-separated, no port, "
                "such as apps.example.com,localhost)"
            )
        domains.append(domain)
    return tuple(dict.fromkeys(domains))


HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def read_host(env: Env) -> str:
    """``HOST``: the address gunicorn binds, an IP address or a host name."""
    host = env.get("HOST", "0.0.0.0")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if not HOST_NAME.fullmatch(host) or ".." in host:
            raise ConfigError(f"HOST={host!r} must be an IP address (0.0.0.0, 127.0.0.1, ::) or a host name") from None
    return host
