"""``paastis.yml``: per-app policies (rules) and, for the local provider, the apps themselves.

A rule's ``pattern`` must match the whole app key; every matching rule applies in file
order, later ones overriding earlier ones field by field, and ``$1``…``$9`` in
``app_name``, ``linked_apps`` and ``upstream_url`` are replaced by the pattern's groups.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .config import WAKE_STRATEGIES, ConfigError, Settings
from .passive import PassivePatternError, compile_paths
from .schedules import AppSchedule, ScheduleError, Windows, parse_windows, zone

HOOK_NAMES = ("before_start", "after_start", "before_stop", "after_stop")
RULE_FIELDS = {
    "pattern",
    "app_max_idle_time",
    "app_name",
    "linked_apps",
    "upstream_url",
    "wake_strategy",
    "hooks",
    "ignore",
    # The sleep policy (docs/sleep-policy.md):
    "awake_during",
    "asleep_during",
    "wake_during_sleep",
    "timezone",
    "passive_paths",
    "passive_answer",
    "cost_per_month",
    "upstream_read_timeout",
    "queue_timeout",
    "provider",  # the account (a name in providers:) that serves the apps the rule matches
    # The original's, read as a migration path: they pick the one account of that type (and region).
    "provider_name",
    "provider_zone",
}
PASSIVE_ANSWERS = (503, 200)
# Keys of the original paastis's sample file that never had an effect there: accepted, with a warning.
INERT_RULE_FIELDS = {"group_name", "app_group"}
TOP_LEVEL_KEYS = {"rules", "apps", "routes", "hooks_env", "providers"}
# The original's provider_name values that differ from a type here.
PROVIDER_NAME_ALIASES = {"clever": "clever-cloud", "clevercloud": "clever-cloud"}
GROUP_REF = re.compile(r"\$([1-9])")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppPolicy:
    """Everything paastis decides about one app key, resolved from settings and rules."""

    key: str
    app_name: str
    max_idle_time: float  # minutes
    wake_strategy: str
    linked_apps: tuple[str, ...] = ()
    upstream_url: str | None = None
    hooks: dict[str, str] = field(default_factory=dict)
    managed: bool = True
    schedule: AppSchedule | None = None  # None: no window applies
    passive_paths: re.Pattern[str] | None = None
    passive_answer: int = 503
    cost_per_month: float | None = None  # in PAASTIS_CURRENCY; None: from the price table
    upstream_read_timeout: float = 300.0  # seconds: the app's first byte, and each further chunk
    queue_timeout: float = 30.0  # seconds a request may wait in the app's queue for a thread
    provider: str | None = None  # the account a rule pins these apps to; None: the first that lists them


@dataclass(frozen=True)
class Rule:
    index: int
    pattern: re.Pattern[str]
    values: dict[str, Any]

    def describe(self) -> str:
        return f"rule #{self.index} (pattern {self.pattern.pattern!r})"


def load_config_file(path: Path) -> dict[str, Any]:
    """Read ``paastis.yml``; a missing default file is an empty config, a broken one stops start-up."""
    if not path.is_file():
        return {}
    try:
        with path.open(encoding="utf-8") as stream:  # an open file: YAML's errors then name it, not "<unicode string>"
            data = yaml.safe_load(stream) or {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read: {error.strerror}") from None
    except yaml.YAMLError as error:
        detail = " ".join(str(error).split())  # one line
        raise ConfigError(f"{path}: not valid YAML: {detail}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping (rules:, apps:, hooks_env:)")
    unknown = sorted(set(data) - TOP_LEVEL_KEYS, key=str)
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {', '.join(_with_hint(k, TOP_LEVEL_KEYS) for k in unknown)}"
        )
    return data


def _with_hint(key: Any, known: set[str]) -> str:
    """``'rule' (did you mean 'rules'?)``: a typo should not cost a search through the docs."""
    close = difflib.get_close_matches(str(key), sorted(known), n=1)
    return f"{key!r} (did you mean {close[0]!r}?)" if close else f"{key!r} (known: {', '.join(sorted(known))})"


@dataclass(frozen=True)
class AccountName:
    """What a rule may pin: an account's name, type and regions (see :class:`~paastis.providers.ProviderSpec`)."""

    name: str
    type: str
    regions: tuple[str, ...] = ()


def _check_rule(index: int, raw: Any, source: str, accounts: list[Any]) -> Rule:
    if not isinstance(raw, dict) or "pattern" not in raw:
        raise ConfigError(f"{source} rule #{index} must be a mapping with a 'pattern'")
    where = f"{source} rule #{index} (pattern {raw['pattern']!r})"
    unknown = set(raw) - RULE_FIELDS - INERT_RULE_FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(_with_hint(k, RULE_FIELDS) for k in sorted(unknown))}")
    try:
        pattern = re.compile(str(raw["pattern"]))
    except re.error as error:
        raise ConfigError(f"{where}: invalid pattern: {error}") from None
    values = {k: v for k, v in raw.items() if k != "pattern" and k not in INERT_RULE_FIELDS}
    _check_provider(where, values, accounts)
    idle = values.get("app_max_idle_time")
    if idle is not None and (isinstance(idle, bool) or not isinstance(idle, int | float) or not 0 <= idle < 1e9):
        raise ConfigError(f"{where}: app_max_idle_time must be a number of minutes >= 0 (0: stop at the next check)")
    read_timeout = values.get("upstream_read_timeout")
    if read_timeout is not None and not _positive_number(read_timeout):
        raise ConfigError(f"{where}: upstream_read_timeout must be a number of seconds > 0")
    queue_timeout = values.get("queue_timeout")
    if queue_timeout is not None and not _positive_number(queue_timeout):
        raise ConfigError(f"{where}: queue_timeout must be a number of seconds > 0")
    linked = values.get("linked_apps")
    if linked is not None and not (isinstance(linked, list) and all(isinstance(x, str) for x in linked)):
        raise ConfigError(f"{where}: linked_apps must be a list of app names")
    strategy = values.get("wake_strategy")
    if strategy is not None and strategy not in WAKE_STRATEGIES:
        raise ConfigError(f"{where}: wake_strategy must be one of {', '.join(WAKE_STRATEGIES)}")
    hooks = values.get("hooks")
    if hooks is not None:
        if not isinstance(hooks, dict) or set(hooks) - set(HOOK_NAMES):
            raise ConfigError(f"{where}: hooks takes only {', '.join(HOOK_NAMES)}")
        if not all(isinstance(v, str) for v in hooks.values()):
            raise ConfigError(f"{where}: each hook must be a shell command string")
    for name in ("app_name", "upstream_url"):
        if name in values and not isinstance(values[name], str):
            raise ConfigError(f"{where}: {name} must be a string")
    url = values.get("upstream_url")
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: upstream_url must start with http:// or https://")
    if "ignore" in values and not isinstance(values["ignore"], bool):
        raise ConfigError(f"{where}: ignore must be true or false")
    _check_group_refs(where, pattern, values)
    _check_sleep_policy(where, values)
    return Rule(index, pattern, values)


def _check_provider(where: str, values: dict[str, Any], accounts: list[Any]) -> None:
    """``provider`` must name an account; the original's ``provider_name``/``provider_zone`` become one (in place)."""
    names = [account.name for account in accounts]
    pinned = values.get("provider")
    if pinned is not None:
        if "provider_name" in values or "provider_zone" in values:
            raise ConfigError(f"{where}: provider and provider_name/provider_zone both set: keep provider")
        if pinned not in names:
            raise ConfigError(f"{where}: provider {pinned!r} is not one of the providers ({', '.join(names)})")
        return
    if "provider_zone" in values and "provider_name" not in values:
        raise ConfigError(f"{where}: provider_zone needs provider_name (or write provider: <name>)")
    if "provider_name" not in values:
        return
    kind = str(values.pop("provider_name")).lower()
    kind = PROVIDER_NAME_ALIASES.get(kind, kind)
    zone_ = values.pop("provider_zone", None)
    zone_ = str(zone_).lower() if zone_ is not None else None
    found = [a.name for a in accounts if a.type == kind and (zone_ is None or zone_ in a.regions)]
    what = f"provider_name {kind!r}" + (f" and provider_zone {zone_!r}" if zone_ is not None else "")
    if not found:
        have = ", ".join(f"{a.name} ({a.type}{' ' + ','.join(a.regions) if a.regions else ''})" for a in accounts)
        raise ConfigError(f"{where}: no provider matches {what} (this paastis has {have})")
    if len(found) > 1:
        raise ConfigError(f"{where}: several providers match {what} ({', '.join(found)}): write provider: <name>")
    values["provider"] = found[0]


def _check_sleep_policy(where: str, values: dict[str, Any]) -> None:
    """Validate (and pre-parse, in place) the schedule, passive and cost fields of a rule."""
    for name in ("awake_during", "asleep_during"):
        if name in values:
            try:
                values[name] = parse_windows(values[name])
            except ScheduleError as error:
                raise ConfigError(f"{where}: {name}: {error}") from None
    if "timezone" in values:
        try:
            zone(str(values["timezone"]))
        except ScheduleError as error:
            raise ConfigError(f"{where}: timezone: {error}") from None
    if "wake_during_sleep" in values and not isinstance(values["wake_during_sleep"], bool):
        raise ConfigError(f"{where}: wake_during_sleep must be true or false")
    paths = values.get("passive_paths")
    if paths is not None:
        if isinstance(paths, str):
            paths = [paths]
        if not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
            raise ConfigError(f"{where}: passive_paths must be a list of path patterns such as /health")
        try:
            values["passive_paths"] = compile_paths(tuple(paths))
        except PassivePatternError as error:
            raise ConfigError(f"{where}: passive_paths: {error}") from None
    if "passive_answer" in values and values["passive_answer"] not in PASSIVE_ANSWERS:
        raise ConfigError(f"{where}: passive_answer must be 503 (the default) or 200")
    cost = values.get("cost_per_month")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float) or not 0 <= cost < 1e9):
        raise ConfigError(f"{where}: cost_per_month must be a number >= 0 (in PAASTIS_CURRENCY)")


def _positive_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 < value < float("inf")


def _inert_field_warnings(source: str, raw_rules: list[Any]) -> list[str]:
    """One warning for every rule carrying keys that never did anything (the original's sample had them)."""
    found = {
        index: sorted(set(raw) & INERT_RULE_FIELDS)
        for index, raw in enumerate(raw_rules)
        if isinstance(raw, dict) and set(raw) & INERT_RULE_FIELDS
    }
    if not found:
        return []
    fields = sorted({name for names in found.values() for name in names})
    rules = ", ".join(f"#{index}" for index in found)
    return [
        f"{source}: {' and '.join(fields)} (rule(s) {rules}) have no effect, as in the original paastis: "
        "they are ignored; remove them (linked_apps wakes apps together)"
    ]


def _check_group_refs(where: str, pattern: re.Pattern[str], values: dict[str, Any]) -> None:
    """A ``$N`` beyond the pattern's groups would fail on some request: refuse it at start-up."""
    texts = [values.get("app_name"), values.get("upstream_url"), *(values.get("linked_apps") or [])]
    for text in filter(None, texts):
        for ref in GROUP_REF.findall(text):
            if int(ref) > pattern.groups:
                raise ConfigError(f"{where}: ${ref} in {text!r} but the pattern has {pattern.groups} group(s)")


def _name_matcher(items: tuple[str, ...], variable: str) -> re.Pattern[str] | None:
    """Comma-separated names or full-match patterns, as one regular expression."""
    if not items:
        return None
    try:
        return re.compile("|".join(f"(?:{item})" for item in items))
    except re.error as error:
        raise ConfigError(f"{variable}={','.join(items)!r} holds an invalid pattern: {error}") from None


POLICY_CACHE_SIZE = 10_000


class Rules:
    """Resolves an :class:`AppPolicy` for any app key."""

    def __init__(self, settings: Settings, raw_rules: list[Any] | None, accounts: list[Any] | None = None):
        """``accounts``: the providers rules may pin (name, type, regions); default: the one of the environment."""
        if raw_rules is not None and not isinstance(raw_rules, list):
            raise ConfigError(f"{settings.config_file}: 'rules' must be a list")
        self.settings = settings
        source = str(settings.config_file)
        if accounts is None:
            regions = tuple(r.lower() for r in settings.env.csv("PROVIDER_REGION"))
            accounts = [AccountName(settings.provider_name, settings.provider_name, regions)]
        self.rules = [_check_rule(i, raw, source, accounts) for i, raw in enumerate(raw_rules or [])]
        # The patterns of rules that pin apps to a provider: most keys match none, and need no policy to merge.
        pinning = [rule.pattern.pattern for rule in self.rules if "provider" in rule.values]
        self.pinning = re.compile("|".join(f"(?:{p})" for p in pinning)) if pinning else None
        self.warnings = _inert_field_warnings(source, raw_rules or [])
        self.ignored = _name_matcher(settings.ignored_apps, "REGISTRY_IGNORED_APPS")
        self.allowed = _name_matcher(settings.allowed_apps, "REGISTRY_ALLOWED_APPS")
        self.passive_paths = compile_paths(settings.passive_paths)
        # Keys come from request Hosts: a flood of random names must neither grow the cache
        # nor empty it, so the least recently used policies make room (thread-safe, in C).
        self._cached = lru_cache(maxsize=POLICY_CACHE_SIZE)(self._resolve)

    def unmatched(self, keys: list[str] | tuple[str, ...]) -> list[str]:
        """One warning for each rule whose pattern matches none of ``keys`` (a typo leaves its apps the defaults)."""
        listed = f"{len(keys)} app(s)" if len(keys) > 10 else ", ".join(keys) or "no app"
        return [
            f"{self.settings.config_file}: {rule.describe()} matches none of the apps the provider lists "
            f"({listed}): its apps get the defaults; check the pattern (it must match the whole app name)"
            for rule in self.rules
            if not any(rule.pattern.fullmatch(key) for key in keys)
        ]

    def pinned(self, key: str) -> str | None:
        """The provider a rule pins ``key`` to (None: the first that lists it); cheap when no rule pins."""
        if self.pinning is None or not self.pinning.fullmatch(key):
            return None
        return self.policy(key).provider

    def policy(self, key: str) -> AppPolicy:
        """Policies are computed once per key (while they stay in the cache): the proxy asks on every request."""
        return self._cached(key)

    def _resolve(self, key: str) -> AppPolicy:
        merged: dict[str, Any] = {}
        for rule in self.rules:
            match = rule.pattern.fullmatch(key)
            if match:
                values = _substitute(rule.values, match)
                values["hooks"] = {**merged.get("hooks", {}), **values.get("hooks", {})}  # field by field
                merged.update(values)
        hooks = {**self.settings.hooks, **merged.get("hooks", {})}
        return AppPolicy(
            key=key,
            app_name=merged.get("app_name", key),
            max_idle_time=float(merged.get("app_max_idle_time", self.settings.max_idle_time)),
            wake_strategy=merged.get("wake_strategy", self.settings.wake_strategy),
            linked_apps=tuple(merged.get("linked_apps", ())),
            upstream_url=merged.get("upstream_url"),
            hooks=hooks,
            managed=self._managed(key) and not merged.get("ignore", False),
            schedule=self._schedule(merged),
            passive_paths=merged.get("passive_paths", self.passive_paths),
            passive_answer=merged.get("passive_answer", 503),
            cost_per_month=merged.get("cost_per_month"),
            upstream_read_timeout=float(merged.get("upstream_read_timeout", self.settings.upstream_read_timeout)),
            queue_timeout=float(merged.get("queue_timeout", self.settings.queue_timeout)),
            provider=merged.get("provider"),
        )

    def _schedule(self, merged: dict[str, Any]) -> AppSchedule | None:
        """A rule's windows replace the global ones (``[]`` or ``none`` clears them for its apps)."""
        awake = merged.get("awake_during", self.settings.awake_during)
        asleep = merged.get("asleep_during", self.settings.asleep_during)
        if not awake and not asleep:
            return None
        tz = zone(str(merged.get("timezone", self.settings.timezone)))
        return AppSchedule(Windows(awake, tz), Windows(asleep, tz), merged.get("wake_during_sleep", True))

    def _managed(self, key: str) -> bool:
        if self.ignored and self.ignored.fullmatch(key):
            return False
        return not self.allowed or bool(self.allowed.fullmatch(key))


def _substitute(values: dict[str, Any], match: re.Match[str]) -> dict[str, Any]:
    """Replace ``$N`` by the N-th group in the fields that may refer to the key."""

    def fill(text: str) -> str:
        return GROUP_REF.sub(lambda m: match.group(int(m.group(1))) or "", text)

    out = dict(values)
    for name in ("app_name", "upstream_url"):
        if name in out:
            out[name] = fill(out[name])
    if "linked_apps" in out:
        out["linked_apps"] = [fill(name) for name in out["linked_apps"]]
    return out
