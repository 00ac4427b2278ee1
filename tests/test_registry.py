"""The in-memory registry: what is awake, since when, and what is being served right now."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from paastis.registry import InMemoryRegistry, RunningApp


def an_app(key="demo", minutes_ago=0):
    when = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return RunningApp(key=key, started_at=when, last_accessed_at=when)


def test_register_get_unregister():
    registry = InMemoryRegistry()
    registry.register(an_app("a"))
    registry.register(an_app("b"))
    assert {app.key for app in registry.all()} == {"a", "b"}
    registry.unregister("a")
    assert registry.get("a") is None
    assert registry.get("b").key == "b"


def test_touch_refreshes_last_access_with_aware_dates():
    registry = InMemoryRegistry()
    registry.register(an_app("a", minutes_ago=30))
    registry.touch("a")
    app = registry.get("a")
    assert app.last_accessed_at.tzinfo is not None
    assert app.idle_seconds(datetime.now(UTC)) < 5
    assert app.started_at < app.last_accessed_at


def test_idle_time_over_several_hours_is_not_taken_modulo_an_hour():
    app = an_app("a", minutes_ago=185)
    assert app.idle_seconds(datetime.now(UTC)) > 3 * 3600


def test_in_flight_counts_concurrent_requests_and_ends_refresh_activity():
    registry = InMemoryRegistry()
    registry.register(an_app("a", minutes_ago=60))
    with ThreadPoolExecutor(16) as pool:
        tokens = list(pool.map(lambda _: registry.begin_request("a"), range(50)))
    assert registry.in_flight("a") == 50
    for token in tokens:
        registry.end_request("a", token)
    assert registry.in_flight("a") == 0
    assert registry.get("a").idle_seconds(datetime.now(UTC)) < 5


def test_json_round_trip_gives_equal_objects():
    app = an_app("a", minutes_ago=3)
    assert RunningApp.from_json(app.to_json()) == app


def test_memos_outlive_the_app_and_clear_keeps_them():
    registry = InMemoryRegistry()
    registry.register(an_app("a"))
    registry.remember("a", {"web": 3})
    registry.unregister("a")
    registry.clear()
    assert registry.recall("a") == {"web": 3}
    assert registry.all() == []
