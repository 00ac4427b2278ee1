"""Several provider accounts in one paastis: ``providers:`` in ``paastis.yml``, each account its own world.

Without ``providers:``, the environment variables define one account exactly as before
(``PROVIDER_NAME``, ``PROVIDER_<TYPE>_*``). With it, each entry names an account::

    providers:
      paris:  {type: scalingo, region: osc-fr1, api_token_env: SCALINGO_PARIS_TOKEN}
      us:     {type: heroku, api_token_env: HEROKU_API_TOKEN}

An entry takes the settings of its type's environment variables, in lower case and without the
``PROVIDER_<TYPE>_`` prefix. Its provider is built exactly as from the environment: from a
snapshot of the environment without any ``PROVIDER_*`` variable, plus the entry's settings
under their variable names. So each account gets its own credentials, rate limiter, sessions,
deadlines and outage handling, and validation stays in one place (the provider's
``from_settings``); errors are translated back to the entry's key names.

Secrets are never written in the file: ``api_token_env: NAME`` names the variable that holds
one. A literal secret is refused at start-up, naming the ``_env`` key and never echoing the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib import import_module
from typing import TYPE_CHECKING, Any

from ..config import PROVIDERS, ConfigError, Env, Settings
from .base import AppInfo, Provider

if TYPE_CHECKING:
    from ..metrics import Metrics

MODULES = {
    "local": "local:LocalProvider",
    "scalingo": "scalingo:ScalingoProvider",
    "heroku": "heroku:HerokuProvider",
    "clever-cloud": "clever_cloud:CleverCloudProvider",
}
# The variable prefix of each type's settings (Clever Cloud's variables say CLEVER only).
PREFIXES = {
    "local": "PROVIDER_LOCAL_",
    "scalingo": "PROVIDER_SCALINGO_",
    "heroku": "PROVIDER_HEROKU_",
    "clever-cloud": "PROVIDER_CLEVER_",
}
# What an entry may set, per type (besides ``type`` and ``region``), and which of it is secret.
SETTINGS = {
    "local": {"operation_timeout"},
    "scalingo": {"api_url", "auth_url", "rate_limit", "operation_timeout"},
    "heroku": {"api_url", "rate_limit", "rate_limit_bucket", "rate_limit_reserve", "page_size", "operation_timeout"},
    "clever-cloud": {"api_host", "organisation_id", "upstream_scheme", "operation_timeout"},
}
SECRETS = {
    "local": set(),
    "scalingo": {"api_token"},
    "heroku": {"api_token"},
    "clever-cloud": {"oauth_consumer_key", "oauth_consumer_secret", "token", "secret"},
}
NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,38}[a-z0-9])?")
VARIABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ProviderSpec:
    """One account as configured: enough to pin rules to it and to build it (no network)."""

    name: str  # the user's name for it (the key in providers:), or the type without providers:
    type: str  # one of config.PROVIDERS
    regions: tuple[str, ...]
    settings: Settings  # the instance's settings, with this account's own environment
    variables: dict[str, str]  # variable name -> the entry's key, to translate error messages
    secret_variables: tuple[str, ...] = ()  # the variables its *_env keys name: kept from child processes

    def describe(self) -> str:
        where = f" ({', '.join(self.regions)})" if self.regions else ""
        return f"{self.name}: {self.type}{where}"


def read_specs(settings: Settings, config: dict[str, Any]) -> list[ProviderSpec]:
    """The accounts of this instance, in ``providers:`` order; one from the environment without it."""
    raw = config.get("providers")
    source = str(settings.config_file)
    if raw is None:
        regions = tuple(region.lower() for region in settings.env.csv("PROVIDER_REGION"))
        return [ProviderSpec(settings.provider_name, settings.provider_name, regions, settings, {})]
    if settings.env.is_set("PROVIDER_NAME"):
        raise ConfigError(
            f"PROVIDER_NAME is set and {source} has providers: keep one (providers: lists every account; "
            "unset PROVIDER_NAME)"
        )
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: 'providers' must be a mapping of names to {{type: ..., ...}}")
    specs = [_spec(str(name), entry, settings, source) for name, entry in raw.items()]
    locals_ = [spec.name for spec in specs if spec.type == "local"]
    if len(locals_) > 1:
        raise ConfigError(f"{source}: providers {', '.join(locals_)} are both local: the apps: section is one")
    return specs


def _spec(name: str, entry: Any, settings: Settings, source: str) -> ProviderSpec:
    where = f"{source}: providers.{name}"
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}: a provider name is lower-case letters, digits, '-' or '_' (such as paris)")
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping such as {{type: scalingo, api_token_env: SCALINGO_TOKEN}}")
    kind = entry.get("type")
    if kind not in PROVIDERS:
        raise ConfigError(f"{where}: type must be one of {', '.join(PROVIDERS)}")
    prefix = PREFIXES[kind]
    values = {k: v for k, v in settings.env.values.items() if not k.startswith("PROVIDER_")}
    variables: dict[str, str] = {}
    secrets: list[str] = []
    for key, value in entry.items():
        if key == "type":
            continue
        variable, text = _setting(where, kind, str(key), value, settings.env)
        values[variable] = text
        variables[variable] = str(key)
        if str(key).endswith("_env"):
            secrets.append(str(value))
    for secret in SECRETS[kind]:  # a missing one is reported under the key to write
        variables.setdefault(prefix + secret.upper(), f"{secret}_env")
    regions = tuple(r.strip().lower() for r in values.get("PROVIDER_REGION", "").split(",") if r.strip())
    own = replace(settings, provider_name=kind, env=Env(values))
    return ProviderSpec(name, kind, regions, own, variables, tuple(secrets))


def _setting(where: str, kind: str, key: str, value: Any, env: Env) -> tuple[str, str]:
    """The variable an entry's key stands for, and its value (a secret read from the variable it names)."""
    prefix = PREFIXES[kind]
    if key in SECRETS[kind]:  # never echo the value: it is a secret written where it must not be
        raise ConfigError(
            f"{where}: {key} is a secret and is never written in the file: set {key}_env to the name of "
            "the environment variable that holds it"
        )
    if key.endswith("_env") and key[: -len("_env")] in SECRETS[kind]:
        secret = key[: -len("_env")]
        if not isinstance(value, str) or not VARIABLE_RE.fullmatch(value):
            raise ConfigError(f"{where}: {key} must name an environment variable (such as SCALINGO_PARIS_TOKEN)")
        found = env.get(value)
        if found is None:
            raise ConfigError(f"{where}: {key} names {value}, which is not set")
        return prefix + secret.upper(), found
    if key == "region":
        if isinstance(value, list) and all(isinstance(r, str) for r in value):
            return "PROVIDER_REGION", ",".join(value)
        if isinstance(value, str):
            return "PROVIDER_REGION", value
        raise ConfigError(f"{where}: region must be a region name or a list of them")
    if key not in SETTINGS[kind]:
        known = sorted({"type", "region", *SETTINGS[kind], *(f"{s}_env" for s in SECRETS[kind])})
        raise ConfigError(f"{where}: unknown setting {key!r} for {kind} (known: {', '.join(known)})")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: {key} must be a single value")
    return prefix + key.upper(), str(value)


class _AccountMetrics:
    """The instance's metrics, with this account's name as the ``provider`` of its API calls and budget."""

    RELABELLED = frozenset({"provider_calls_by_class", "provider_budget_remaining"})

    def __init__(self, metrics: Metrics, name: str):
        self._metrics = metrics
        self._name = name

    def provider_call(self, provider: str, operation: str, outcome: str) -> None:
        self._metrics.provider_call(self._name, operation, outcome)

    def __getattr__(self, attribute: str) -> Any:
        metric = getattr(self._metrics, attribute)
        return _Relabelled(metric, self._name) if attribute in self.RELABELLED else metric


class _Relabelled:
    """A metric whose first label (``provider``) is the account's name, whatever the provider says."""

    def __init__(self, metric: Any, name: str):
        self._metric = metric
        self._name = name

    def labels(self, provider: str, *rest: str) -> Any:
        return self._metric.labels(self._name, *rest)


class Account:
    """One account: a provider whose listed apps carry its name (``AppInfo.provider``)."""

    def __init__(self, spec: ProviderSpec, provider: Provider):
        self.spec = spec
        self.name = spec.name
        self.type = spec.type
        self.provider = provider
        self.poll_interval = provider.poll_interval
        self.probe_upstream = provider.probe_upstream
        self.operation_timeout = spec.settings.provider_operation_timeout(spec.type)
        self.region = spec.regions[0] if spec.regions else None  # what hooks see when the app has none
        self.scheduler = getattr(provider, "scheduler", None)  # the account's API budget, spent by priority

    def read_ahead(self, app: AppInfo) -> dict | None:
        """The formation of a running app, when the provider can read one ahead (None otherwise)."""
        read = getattr(self.provider, "read_ahead", None)
        return read(app) if read is not None else None

    def list_apps(self) -> list[AppInfo]:
        """The provider's listing, each app stamped with this account's name (built directly: ``replace`` is
        several times slower, and large accounts list thousands of apps at every idle check)."""
        name = self.name
        return [
            AppInfo(app.key, app.name, app.upstream_url, app.status, app.region, app.aliases, name)
            for app in self.provider.list_apps()
        ]

    def status(self, app: AppInfo) -> str:
        return self.provider.status(app)

    def start(self, app: AppInfo, memo: dict | None) -> dict | None:
        return self.provider.start(app, memo)

    def stop(self, app: AppInfo, memo: dict | None = None) -> dict | None:
        return self.provider.stop(app, memo)

    def failure(self, app: AppInfo) -> str | None:
        return self.provider.failure(app)

    def abandon_start(self, app: AppInfo) -> str | None:
        return self.provider.abandon_start(app)

    def upstream_url(self, app: AppInfo) -> str:
        return self.provider.upstream_url(app)

    def ready_path(self, app: AppInfo) -> str | None:
        return self.provider.ready_path(app)

    def close(self) -> None:
        self.provider.close()


class Schedulers:
    """The API budgets of several accounts, as the idle check asks one: room only while every account has room.

    Each account's calls still wait in their own account's queue (:mod:`paastis.providers.scheduler`);
    this only tells the idle check whether to list now or decide from the last lists.
    """

    def __init__(self, schedulers: list[Any]):
        self.schedulers = schedulers

    def has_room(self, calls: float = 1.0) -> bool:
        return all(scheduler.has_room(calls) for scheduler in self.schedulers)

    def room(self) -> float:
        return min(scheduler.room() for scheduler in self.schedulers)

    def remaining(self) -> float:
        return min(scheduler.remaining() for scheduler in self.schedulers)


class Accounts:
    """Every account of the instance, as one :class:`~paastis.providers.Provider` that calls the app's own.

    An app's account is ``app.provider`` (stamped by its account's listing); an app that carries
    none belongs to the first (the only one, without ``providers:``). Attributes a caller reads
    from a single provider (its ``apps``, its ``limiter``) reach it when there is only one.
    """

    def __init__(self, accounts: list[Account]):
        if not accounts:
            raise ValueError("at least one account")
        self.accounts = {account.name: account for account in accounts}
        self.first = accounts[0]
        self.name = self.first.name if len(accounts) == 1 else "several"
        self.poll_interval = min(a.poll_interval for a in accounts)
        self.probe_upstream = any(a.probe_upstream for a in accounts)
        self.operation_timeout = max(a.operation_timeout for a in accounts)
        # Variables that hold the accounts' secrets (named by *_env keys): redacted from hooks' output.
        self.secret_variables = frozenset(v for a in accounts for v in a.spec.secret_variables)
        schedulers = [a.scheduler for a in accounts if a.scheduler is not None]
        if len(accounts) == 1:
            self.scheduler = self.first.scheduler
        else:
            self.scheduler = Schedulers(schedulers) if schedulers else None

    def __iter__(self) -> Iterator[Account]:
        return iter(self.accounts.values())

    def __len__(self) -> int:
        return len(self.accounts)

    @property
    def several(self) -> bool:
        return len(self.accounts) > 1

    def of(self, app: AppInfo) -> Account:
        """The account ``app`` belongs to."""
        return self.accounts.get(app.provider or "", self.first)

    def name_of(self, app: AppInfo) -> str:
        return self.of(app).name

    def timeout_of(self, app: AppInfo) -> float:
        """The app's account's operation timeout (``operation_timeout`` of its entry)."""
        return self.of(app).operation_timeout

    def list_apps(self) -> list[AppInfo]:
        """Every account's apps, in order; a key listed twice is the first account's (see the directories)."""
        apps: dict[str, AppInfo] = {}
        for account in self.accounts.values():
            for app in account.list_apps():
                apps.setdefault(app.key, app)
        return list(apps.values())

    def status(self, app: AppInfo) -> str:
        return self.of(app).status(app)

    def read_ahead(self, app: AppInfo) -> dict | None:
        return self.of(app).read_ahead(app)

    def start(self, app: AppInfo, memo: dict | None) -> dict | None:
        return self.of(app).start(app, memo)

    def stop(self, app: AppInfo, memo: dict | None = None) -> dict | None:
        return self.of(app).stop(app, memo)

    def failure(self, app: AppInfo) -> str | None:
        return self.of(app).failure(app)

    def abandon_start(self, app: AppInfo) -> str | None:
        return self.of(app).abandon_start(app)

    def upstream_url(self, app: AppInfo) -> str:
        return self.of(app).upstream_url(app)

    def ready_path(self, app: AppInfo) -> str | None:
        return self.of(app).ready_path(app)

    def close(self) -> None:
        for account in self.accounts.values():
            account.close()

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__") or "accounts" not in self.__dict__ or len(self.accounts) != 1:
            raise AttributeError(attribute)
        return getattr(self.first.provider, attribute)


def build_account(spec: ProviderSpec, config: dict, metrics: Metrics | None, redis_link: object = None) -> Account:
    """Instantiate one account's provider (only its module is imported); it validates its settings."""
    module_name, class_name = MODULES[spec.type].split(":")
    module = import_module(f"{__package__}.{module_name}")
    named = _AccountMetrics(metrics, spec.name) if metrics is not None and spec.name != spec.type else metrics
    try:
        provider = getattr(module, class_name).from_settings(spec.settings, config, named, redis_link=redis_link)
    except ConfigError as error:
        raise ConfigError(_translated(str(error), spec)) from None
    return Account(spec, provider)


def _translated(message: str, spec: ProviderSpec) -> str:
    """An account's error in the words of its entry: ``providers.paris.api_url`` for ``PROVIDER_SCALINGO_API_URL``."""
    if not spec.variables:
        return message
    for variable in sorted(spec.variables, key=len, reverse=True):
        message = message.replace(variable, f"providers.{spec.name}.{spec.variables[variable]}")
    return f"{spec.settings.config_file}: {message}"


def build_accounts(
    specs: list[ProviderSpec], config: dict, metrics: Metrics | None, redis_link: object = None
) -> Accounts:
    built: list[Account] = []
    try:
        for spec in specs:
            built.append(build_account(spec, config, metrics, redis_link))
    except BaseException:
        for account in built:
            account.close()
        raise
    return Accounts(built)
