"""Visitors that do not count: uptime monitors, crawlers and health paths.

A passive request neither wakes a sleeping app nor keeps an awake one from sleeping. It is
recognised by its ``User-Agent`` (``PAASTIS_PASSIVE_USER_AGENTS``: regular expressions
searched case-insensitively) or by its path (``PAASTIS_PASSIVE_PATHS`` and a rule's
``passive_paths``: patterns that must match the whole path, query string excluded).

To an awake app it is proxied without touching the registry: no in-flight entry, no last
access, so the idle timer runs on. A sleeping app is not woken: paastis answers itself,
``503`` with ``Retry-After`` by default, or ``200 {"status": "asleep", "app": ...}`` where a
rule says ``passive_answer: 200`` (for monitors that should stay green while the app sleeps).
"""

from __future__ import annotations

import re
from datetime import datetime

# Common uptime monitors, load-balancer and orchestrator probes, and search-engine and AI
# crawlers (docs/sleep-policy.md lists them). Matched anywhere in the User-Agent, ignoring case.
# Plain words on purpose: they are looked for as substrings, much faster than a regex.
DEFAULT_USER_AGENTS: tuple[str, ...] = (
    r"UptimeRobot",
    r"Pingdom",
    r"StatusCake",
    r"Site24x7",
    r"Better Uptime",
    r"BetterUptime",
    r"Better Stack",
    r"BetterStack",
    r"Uptime-Kuma",
    r"Freshping",
    r"HetrixTools",
    r"updown",
    r"Oh Dear",
    r"OhDear",
    r"Checkly",
    r"Cronitor",
    r"DatadogSynthetics",
    r"Datadog Agent",
    r"NewRelicPinger",
    r"GoogleStackdriverMonitoring",
    r"Amazon-Route53-Health-Check",
    r"ELB-HealthChecker",
    r"kube-probe",
    r"Pulsetic",
    r"Montastic",
    r"UptimeMonitor",
    r"Googlebot",
    r"Google-InspectionTool",
    r"bingbot",
    r"Slurp",
    r"DuckDuckBot",
    r"Baiduspider",
    r"YandexBot",
    r"Applebot",
    r"facebookexternalhit",
    r"AhrefsBot",
    r"SemrushBot",
    r"MJ12bot",
    r"DotBot",
    r"PetalBot",
    r"GPTBot",
    r"CCBot",
    r"ClaudeBot",
    r"Bytespider",
)
SLEEPING_RETRY_AFTER = 300  # seconds, when nothing says when a sleeping app will wake


class PassivePatternError(ValueError):
    """A pattern does not compile; the message names it."""


def _compile(patterns: tuple[str, ...], flags: int) -> re.Pattern[str] | None:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise PassivePatternError(f"{pattern!r} is not a valid regular expression: {error}") from None
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns), flags)


def compile_user_agents(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    return _compile(patterns, re.IGNORECASE)


def compile_paths(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    return _compile(patterns, 0)


REGEX_SYNTAX = set(".^$*+?{}[]\\|()")


class PassiveVisitors:
    """Tells passive requests apart; per-app path patterns come from the app's policy.

    Every request asks, so plain words (the whole default list) are looked for in the
    lower-cased ``User-Agent`` as one alternation of lower-case literals, and only patterns
    with regular-expression syntax go through a case-insensitive search: with forty
    case-insensitive branches that costs about a hundred microseconds per request, the
    literals a few (see BENCHMARKS.md).
    """

    def __init__(self, user_agents: tuple[str, ...]):
        compile_user_agents(user_agents)  # refuses an invalid pattern, naming it
        words = [p.lower() for p in user_agents if not REGEX_SYNTAX & set(p)]
        self.words = re.compile("|".join(map(re.escape, words))) if words else None
        self.patterns = compile_user_agents(tuple(p for p in user_agents if REGEX_SYNTAX & set(p)))

    def is_passive(self, user_agent: str | None, path: str, paths: re.Pattern[str] | None) -> bool:
        if paths is not None and paths.fullmatch(path):
            return True
        if not user_agent:
            return False
        if self.words is not None and self.words.search(user_agent.lower()):
            return True
        return self.patterns is not None and self.patterns.search(user_agent) is not None


def retry_after(now: datetime, wakes_at: datetime | None) -> int:
    """Seconds until ``wakes_at`` (at least one), or :data:`SLEEPING_RETRY_AFTER` when unknown."""
    if wakes_at is None:
        return SLEEPING_RETRY_AFTER
    return max(1, int((wakes_at - now).total_seconds() + 0.999))
