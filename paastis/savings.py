"""What paastis saved: time each app spent asleep because of paastis, time it was awake, and money.

Time comes from paastis's own events, so it is as durable as the events store (keep months
of it with ``EVENTS_STORE_TYPE=postgres``):

- asleep: from ``APP_STOPPED`` (paastis stopped it) to the next ``APP_STARTED`` or ``APP_REGISTERED``;
- awake: from ``APP_STARTED`` or ``APP_REGISTERED`` to the next ``APP_STOPPED`` or ``APP_UNREGISTERED``
  (an app found stopped by someone else, or forgotten, is in neither state until paastis sees it again);
- would have slept (``PAASTIS_DRY_RUN``): from ``APP_WOULD_STOP`` to the next ``APP_WOULD_START``, or to
  anything that really starts, stops or forgets the app.

Money is time multiplied by a price per hour: a rule's ``cost_per_month`` (in ``PAASTIS_CURRENCY``), else
the built-in table of public prices below applied to the formation the provider returned at the app's
last stop. An app with neither has no price: its hours are reported, its money is ``null``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client.core import CounterMetricFamily

from . import events as ev
from .events import Event, EventStore, EventStoreUnavailable
from .marks import Marks, MarksUnavailable
from .registry import Registry, utcnow
from .rules import Rules
from .schedules import zone

log = logging.getLogger(__name__)

HOURS_PER_MONTH = 730  # 365 days * 24 hours / 12 months, as cloud price pages count
PRICES_DATE = "2025-06"
# Public monthly list prices per container or dyno, by provider and size (docs/sleep-policy.md#prices).
PRICES: dict[str, tuple[str, dict[str, float]]] = {
    "scalingo": ("EUR", {"xs": 3.60, "s": 7.20, "m": 14.40, "l": 28.80, "xl": 57.60, "2xl": 115.20}),
    "heroku": (
        "USD",
        {
            "eco": 5.0,
            "basic": 7.0,
            "standard-1x": 25.0,
            "standard-2x": 50.0,
            "performance-m": 250.0,
            "performance-l": 500.0,
            "performance-l-ram": 500.0,
            "performance-xl": 750.0,
            "performance-2xl": 1500.0,
        },
    ),
}
STATE_TYPES = (ev.APP_STARTED, ev.APP_REGISTERED, ev.APP_STOPPED, ev.APP_UNREGISTERED)
WOULD_TYPES = (ev.APP_WOULD_STOP, ev.APP_WOULD_START)
WOULD_ENDS = (ev.APP_WOULD_START, ev.APP_STARTED, ev.APP_STOPPED, ev.APP_UNREGISTERED)
DEFAULT_PERIOD = timedelta(days=30)
METRICS_CACHE = 30.0  # seconds a computation of all-time totals serves Prometheus scrapes
DAILY_BOOK = "savings"


@dataclass
class AppTime:
    asleep: float = 0.0  # seconds
    awake: float = 0.0
    would_sleep: float = 0.0


def measure(events: list[Event], since: datetime, until: datetime) -> dict[str, AppTime]:
    """Seconds asleep, awake and would-have-slept per app over ``[since, until)``.

    ``events`` come oldest first; those before ``since`` only set each app's state at ``since``.
    """
    times: dict[str, AppTime] = {}
    state: dict[str, tuple[str | None, datetime]] = {}  # app -> (asleep/awake/None, since when)
    would: dict[str, datetime] = {}  # app -> would be asleep since
    for event in events:
        at = min(max(event.timestamp, since), until)
        app = times.setdefault(event.app, AppTime())
        current, began = state.get(event.app, (None, at))
        new = {
            ev.APP_STOPPED: "asleep",
            ev.APP_STARTED: "awake",
            ev.APP_REGISTERED: "awake",
            ev.APP_UNREGISTERED: None,
        }.get(event.type, current)
        if new != current or event.app not in state:
            _add(app, current, (at - began).total_seconds())
            state[event.app] = (new, at)
        if event.type == ev.APP_WOULD_STOP:
            would.setdefault(event.app, at)
        elif event.app in would and event.type in WOULD_ENDS:
            app.would_sleep += (at - would.pop(event.app)).total_seconds()
    for name, (current, began) in state.items():
        _add(times[name], current, (until - began).total_seconds())
    for name, began in would.items():
        times[name].would_sleep += (until - began).total_seconds()
    return times


def _add(app: AppTime, state: str | None, seconds: float) -> None:
    if state == "asleep":
        app.asleep += seconds
    elif state == "awake":
        app.awake += seconds


def price_per_hour(provider: str, memo: dict[str, Any] | None, currency: str) -> tuple[float | None, str | None]:
    """The table's price of the formation in ``memo``, and where it came from (or why there is none)."""
    listed = PRICES.get(provider)
    if listed is None:
        return None, f"no built-in prices for {provider}: set cost_per_month in a rule"
    table_currency, sizes = listed
    if table_currency != currency:
        return None, f"{provider} prices are in {table_currency}, not {currency}: set cost_per_month in a rule"
    formation = _formation(memo)
    if not formation:
        return None, "formation unknown (paastis has not stopped this app yet): set cost_per_month in a rule"
    total, parts = 0.0, []
    for size, amount in formation:
        monthly = sizes.get(size.lower())
        if monthly is None:
            return None, f"no built-in price for {provider} size {size!r}: set cost_per_month in a rule"
        total += amount * monthly / HOURS_PER_MONTH
        parts.append(f"{amount}x{size}")
    return total, f"{provider} {' + '.join(parts)} (list prices of {PRICES_DATE})"


def _formation(memo: dict[str, Any] | None) -> list[tuple[str, int]]:
    """(size, amount) pairs from a Scalingo (``containers``) or Heroku (``formation``) memo.

    Empty when unknown, or when a process type that runs has no size (a partial price would lie).
    """
    if not isinstance(memo, dict):
        return []
    entries = [(e.get("size"), e.get("amount")) for e in memo.get("containers") or [] if isinstance(e, dict)]
    entries += [(e.get("size"), e.get("quantity")) for e in memo.get("formation") or [] if isinstance(e, dict)]
    running = [(size, amount) for size, amount in entries if isinstance(amount, int) and amount > 0]
    if not all(isinstance(size, str) and size for size, _ in running):
        return []
    return running


class Savings:
    """Reports from the events store; the dashboard and ``GET /savings`` call :meth:`report`."""

    def __init__(
        self,
        events: EventStore,
        registry: Registry,
        rules: Rules,
        provider: str,
        currency: str,
        timezone: str,
        dry_run: bool,
        marks: Marks,
        accounts: dict[str, str] | None = None,
        provider_of_key: Callable[[str], str] | None = None,
    ):
        """``provider``: the one account's type; ``accounts``: each account's type by name (``providers:``);
        ``provider_of_key``: an app's account from the cached listings (for apps no event names one)."""
        self.events = events
        self.registry = registry
        self.rules = rules
        self.provider = provider
        self.accounts = accounts or {provider: provider}
        self.provider_of_key = provider_of_key or (lambda key: provider)
        self.currency = currency
        self.zone = zone(timezone)
        self.dry_run = dry_run
        self.marks = marks
        self._totals: tuple[float, dict[str, AppTime]] | None = None
        self._providers: dict[str, str] = {}  # each app's account, from the same history as the totals
        self._lock = threading.Lock()

    def report(self, since: datetime | None = None, until: datetime | None = None, app: str | None = None) -> dict:
        """Per app and in total: asleep and awake hours, money saved, and the dry run's projection.

        Raises :class:`~paastis.events.EventStoreUnavailable` when the history cannot be read.
        """
        until = min(until or utcnow(), utcnow())
        since = since or until - DEFAULT_PERIOD
        history = self.history(since, until, app)
        times = measure(history, since, until)
        providers = self.providers_of(history)
        apps = [self._app_report(name, t, providers.get(name)) for name, t in sorted(times.items())]
        by_provider: dict[str, list[dict]] = {}
        for entry in apps:
            by_provider.setdefault(entry["provider"], []).append(entry)
        return {
            "since": since.isoformat(),
            "until": until.isoformat(),
            "currency": self.currency,
            "dry_run": self.dry_run,
            "prices_date": PRICES_DATE,
            "apps": apps,
            "total": _total(apps),
            "providers": {name: _total(entries) for name, entries in sorted(by_provider.items())},
        }

    def providers_of(self, history: list[Event]) -> dict[str, str]:
        """Each app's account: the last event that names one (apps move between accounts rarely)."""
        return {event.app: event.provider for event in history if event.provider}

    def _app_report(self, name: str, times: AppTime, provider: str | None = None) -> dict:
        provider = provider or self.provider_of_key(name)
        price, source = self.price(name, provider)
        asleep, awake, would = times.asleep / 3600, times.awake / 3600, times.would_sleep / 3600
        return {
            "app": name,
            "provider": provider,
            "asleep_hours": _round(asleep),
            "awake_hours": _round(awake),
            "would_sleep_hours": _round(would),
            "price_per_hour": None if price is None else round(price, 6),
            "price_source": source,
            "money_saved": None if price is None else _round(asleep * price, 2),
            "money_would_save": None if price is None else _round(would * price, 2),
        }

    def history(self, since: datetime, until: datetime, app: str | None = None) -> list[Event]:
        """The events that change an app's state, and apart those of the dry run, oldest first.

        Asked apart so that each app's state *and* its dry-run state when the period begins are known.
        """
        found = [e for types in (STATE_TYPES, WOULD_TYPES) for e in self.events.history(since, until, types, app)]
        return sorted(found, key=lambda event: event.timestamp)

    def price(self, key: str, provider: str | None = None) -> tuple[float | None, str | None]:
        """A rule's ``cost_per_month`` wins; else the built-in table (of the app's account's type) and the
        formation remembered at the last stop."""
        monthly = self.rules.policy(key).cost_per_month
        if monthly is not None:
            return monthly / HOURS_PER_MONTH, f"cost_per_month {monthly:g} {self.currency}"
        kind = self.accounts.get(provider or self.provider_of_key(key), self.provider)
        return price_per_hour(kind, self.registry.recall(key), self.currency)

    # -- all-time totals for Prometheus ---------------------------------------------

    def totals(self) -> dict[str, AppTime]:
        """Seconds per app over the whole history, recomputed at most every ``METRICS_CACHE`` seconds."""
        with self._lock:
            if self._totals is None or time.monotonic() - self._totals[0] >= METRICS_CACHE:
                until = utcnow()
                epoch = datetime.fromtimestamp(0, until.tzinfo)
                history = self.history(epoch, until)
                self._providers = self.providers_of(history)
                self._totals = (time.monotonic(), measure(history, epoch, until))
            return self._totals[1]

    def collect(self) -> Iterator[CounterMetricFamily]:
        """A Prometheus collector: paastis_app_asleep_seconds_total and friends, per app."""
        try:
            totals = self.totals()
        except EventStoreUnavailable as error:
            log.warning("savings: no metrics this scrape: %s", error)
            return
        labels = ["app", "provider"]
        families = {
            "asleep": CounterMetricFamily(
                "paastis_app_asleep_seconds", "Time apps spent asleep because paastis stopped them", labels=labels
            ),
            "awake": CounterMetricFamily("paastis_app_awake_seconds", "Time apps spent awake", labels=labels),
            "would_sleep": CounterMetricFamily(
                "paastis_app_would_sleep_seconds", "PAASTIS_DRY_RUN: time apps would have slept", labels=labels
            ),
        }
        for name, times in sorted(totals.items()):
            provider = self._providers.get(name) or self.provider_of_key(name)
            for field, family in families.items():
                family.add_metric([name, provider], getattr(times, field))
        yield from families.values()

    # -- the daily summary (leader only) ----------------------------------------------

    def log_daily_summary(self, now: datetime | None = None) -> None:
        """Once per day in ``PAASTIS_TIMEZONE``: one log line about the day before."""
        now = now or utcnow()
        today = now.astimezone(self.zone).date()
        try:
            last = self.marks.get(DAILY_BOOK, "daily_summary")
            if last == today.isoformat():
                return
            self.marks.set(DAILY_BOOK, "daily_summary", today.isoformat())
        except MarksUnavailable as error:
            log.debug("savings: daily summary skipped: %s", error)
            return
        if last is None:
            return  # first run: the day before was not watched by this deployment's marks
        day = today - timedelta(days=1)
        since = datetime.combine(day, datetime.min.time(), tzinfo=self.zone)
        try:
            total = self.report(since, since + timedelta(days=1))["total"]
        except EventStoreUnavailable as error:
            log.warning("savings: no daily summary for %s: %s", day, error)
            return
        log.info(
            "savings for %s (%s): asleep %.1f h, awake %.1f h, saved %.2f %s%s",
            day,
            self.zone.key,
            total["asleep_hours"],
            total["awake_hours"],
            total["money_saved"],
            self.currency,
            f"; dry run: would have slept {total['would_sleep_hours']:.1f} h, saving {total['money_would_save']:.2f}"
            if self.dry_run
            else "",
        )


def _total(apps: list[dict]) -> dict:
    """The sums of app reports (all of them, or one account's)."""
    priced = [a for a in apps if a["price_per_hour"] is not None]
    return {
        "asleep_hours": _round(sum(a["asleep_hours"] for a in apps)),
        "awake_hours": _round(sum(a["awake_hours"] for a in apps)),
        "money_saved": _round(sum(a["money_saved"] for a in priced), 2),
        "would_sleep_hours": _round(sum(a["would_sleep_hours"] for a in apps)),
        "money_would_save": _round(sum(a["money_would_save"] for a in priced), 2),
        "apps_without_price": [a["app"] for a in apps if a["price_per_hour"] is None],
    }


def _round(value: float, digits: int = 6) -> float:
    return round(value, digits)
