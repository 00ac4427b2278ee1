"""Savings arithmetic: time asleep/awake/would-sleep from events, prices from the table or the rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from paastis.events import Event, InMemoryEventStore
from paastis.marks import InMemoryMarks
from paastis.registry import InMemoryRegistry
from paastis.savings import HOURS_PER_MONTH, Savings, measure, price_per_hour
from tests.test_rules import rules

DAY = datetime(2026, 11, 2, tzinfo=UTC)


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


def ev(type: str, app: str, hours: float, reason: str = "idle") -> Event:
    return Event(type=type, app=app, reason=reason, timestamp=at(hours))


SCRIPT = [
    ev("APP_STOPPED", "shop", -5),  # asleep since before the day
    ev("APP_STARTED", "shop", 8, "request"),
    ev("APP_STOPPED", "shop", 12.5),
    ev("APP_STARTED", "shop", 14, "schedule"),
    ev("APP_STOPPED", "shop", 20, "schedule"),
    ev("APP_REGISTERED", "api", 2),  # found running
    ev("APP_UNREGISTERED", "api", 6),  # found stopped by someone else: in neither state
    ev("APP_REGISTERED", "api", 9),
]


def test_a_scripted_day_adds_up():
    times = measure(sorted(SCRIPT, key=lambda e: e.timestamp), at(0), at(24))
    assert times["shop"].asleep == pytest.approx((8 + 1.5 + 4) * 3600)
    assert times["shop"].awake == pytest.approx((4.5 + 6) * 3600)
    assert times["api"].awake == pytest.approx((4 + 15) * 3600) and times["api"].asleep == 0


def test_the_dry_run_counts_what_would_have_slept():
    script = [
        ev("APP_STARTED", "shop", 1, "request"),
        ev("APP_WOULD_STOP", "shop", 2),
        ev("APP_WOULD_STOP", "shop", 3),  # recorded again: the first one counts
        ev("APP_WOULD_START", "shop", 5, "request"),
        ev("APP_WOULD_STOP", "shop", 20, "schedule"),
    ]
    times = measure(script, at(0), at(24))
    assert times["shop"].would_sleep == pytest.approx((3 + 4) * 3600)
    assert times["shop"].awake == pytest.approx(23 * 3600) and times["shop"].asleep == 0


def test_the_price_table_follows_the_remembered_formation():
    memo = {"containers": [{"name": "web", "amount": 2, "size": "M"}, {"name": "worker", "amount": 1, "size": "S"}]}
    price, source = price_per_hour("scalingo", memo, "EUR")
    assert price == pytest.approx((2 * 14.40 + 7.20) / HOURS_PER_MONTH)
    assert "2xM + 1xS" in source
    heroku = {"formation": [{"type": "web", "quantity": 1, "size": "Standard-1X"}]}
    assert price_per_hour("heroku", heroku, "USD")[0] == pytest.approx(25 / HOURS_PER_MONTH)
    assert price_per_hour("heroku", heroku, "EUR") == (None, price_per_hour("heroku", heroku, "EUR")[1])
    assert "not EUR" in price_per_hour("heroku", heroku, "EUR")[1]
    assert price_per_hour("scalingo", None, "EUR")[0] is None
    assert "no built-in prices for local" in price_per_hour("local", memo, "EUR")[1]


def test_the_report_uses_cost_per_month_and_totals_priced_apps():
    store = InMemoryEventStore()
    for event in SCRIPT:
        store.add(event)
    engine = rules([{"pattern": "shop", "cost_per_month": 73}])
    savings = Savings(store, InMemoryRegistry(), engine, "local", "EUR", "UTC", False, InMemoryMarks())
    report = savings.report(at(0), at(24))
    shop = next(a for a in report["apps"] if a["app"] == "shop")
    assert shop["asleep_hours"] == 13.5 and shop["awake_hours"] == 10.5
    assert shop["price_per_hour"] == pytest.approx(0.1) and shop["money_saved"] == pytest.approx(1.35)
    assert report["total"]["money_saved"] == pytest.approx(1.35)
    assert report["total"]["apps_without_price"] == ["api"]
    assert report["total"]["asleep_hours"] == 13.5 and report["total"]["awake_hours"] == 10.5 + 19
    only_api = savings.report(at(0), at(24), app="api")
    assert [a["app"] for a in only_api["apps"]] == ["api"]


def test_the_daily_summary_is_logged_once_per_day(paastis_caplog):
    store = InMemoryEventStore()
    for event in SCRIPT:
        store.add(event)
    marks = InMemoryMarks()
    savings = Savings(store, InMemoryRegistry(), rules([]), "local", "EUR", "UTC", False, marks)
    savings.log_daily_summary(at(23))  # first run: only remembers the day
    savings.log_daily_summary(at(25))
    savings.log_daily_summary(at(30))
    lines = [r.getMessage() for r in paastis_caplog.records if "savings for" in r.getMessage()]
    assert lines == ["savings for 2026-11-02 (UTC): asleep 13.5 h, awake 29.5 h, saved 0.00 EUR"]


def test_a_formation_with_a_size_missing_has_no_price():
    memo = {"containers": [{"name": "web", "amount": 1, "size": "M"}, {"name": "worker", "amount": 2}]}
    assert price_per_hour("scalingo", memo, "EUR")[0] is None
    stopped_worker = {"containers": [{"name": "web", "amount": 1, "size": "M"}, {"name": "worker", "amount": 0}]}
    assert price_per_hour("scalingo", stopped_worker, "EUR")[0] == pytest.approx(14.40 / HOURS_PER_MONTH)


def test_a_period_starting_while_an_app_is_awake_and_held_asleep_by_a_dry_run_counts_both():
    store = InMemoryEventStore()
    store.add(ev("APP_STARTED", "shop", -3, "request"))
    store.add(ev("APP_WOULD_STOP", "shop", -2))  # the latest event before the period: the app is still awake
    store.add(ev("APP_WOULD_START", "shop", 6, "request"))
    savings = Savings(store, InMemoryRegistry(), rules([]), "local", "EUR", "UTC", True, InMemoryMarks())
    (shop,) = savings.report(at(0), at(10))["apps"]
    assert shop["awake_hours"] == pytest.approx(10) and shop["would_sleep_hours"] == pytest.approx(6)


def test_each_provider_has_its_totals_and_each_app_its_own_provider_s_prices():
    store = InMemoryEventStore()
    for event in [
        Event(type="APP_STOPPED", app="shop", reason="idle", timestamp=at(0), provider="paris"),
        Event(type="APP_STARTED", app="shop", reason="request", timestamp=at(6), provider="paris"),
        Event(type="APP_STOPPED", app="front", reason="idle", timestamp=at(0), provider="us"),
        Event(type="APP_STOPPED", app="tool", reason="idle", timestamp=at(0), provider="here"),
    ]:
        store.add(event)
    registry = InMemoryRegistry()
    registry.remember("shop", {"containers": [{"name": "web", "amount": 1, "size": "M"}]})
    registry.remember("front", {"formation": [{"type": "web", "quantity": 1, "size": "Standard-1X"}]})
    accounts = {"paris": "scalingo", "us": "heroku", "here": "local"}
    savings = Savings(store, registry, rules([]), "scalingo", "EUR", "UTC", False, InMemoryMarks(), accounts=accounts)
    report = savings.report(at(0), at(12))
    by_app = {a["app"]: a for a in report["apps"]}
    assert {name: a["provider"] for name, a in by_app.items()} == {"shop": "paris", "front": "us", "tool": "here"}
    assert by_app["shop"]["price_per_hour"] == pytest.approx(14.40 / HOURS_PER_MONTH, abs=1e-6)  # Scalingo's table
    assert "not EUR" in by_app["front"]["price_source"]  # Heroku's table is in USD
    assert report["providers"]["paris"]["asleep_hours"] == 6 and report["providers"]["paris"]["awake_hours"] == 6
    assert report["providers"]["us"]["asleep_hours"] == 12 and report["providers"]["us"]["apps_without_price"] == [
        "front"
    ]
    assert report["providers"]["here"]["asleep_hours"] == 12
    assert report["total"]["asleep_hours"] == 30
