"""Events: what the lifecycle records, in memory or in a Redis stream shared by every instance."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from paastis import build_event_store, create_app
from paastis.config import Settings
from paastis.events import EVENT_TYPES, Event, EventStoreUnavailable, InMemoryEventStore
from paastis.registry import utcnow
from tests.redis_support import SHARED_URL, RedisServer
from tests.support import PYTHON, UPSTREAM_APP, free_port, port_open, upstream_command, wait_until, write_config


def redis_store(prefix: str, maximum: int = 10_000, url: str = SHARED_URL):
    env = {"EVENTS_STORE_TYPE": "redis", "REGISTRY_REDIS_URL": url, "REGISTRY_REDIS_PREFIX": prefix}
    return build_event_store(Settings.from_env({**env, "EVENTS_MAX": str(maximum)}, dotenv=False))


def _stores(request, prefix):
    stores = []

    def make(maximum: int = 10_000):
        if request.param == "postgres":
            url = request.getfixturevalue("database_url")
            store = build_event_store(Settings.from_env({"EVENTS_STORE_TYPE": "postgres", "DATABASE_URL": url}))
        else:
            store = InMemoryEventStore(maximum) if request.param == "in-memory" else redis_store(prefix, maximum)
        stores.append(store)
        return store

    return make, stores


@pytest.fixture(params=["in-memory", "redis", "postgres"])
def make_store(request, prefix):
    make, stores = _stores(request, prefix)
    yield make
    for store in stores:
        store.close()


@pytest.fixture(params=["in-memory", "redis"])
def make_bounded_store(request, prefix):
    """The stores that keep only the newest ``EVENTS_MAX`` events (PostgreSQL keeps them all)."""
    make, stores = _stores(request, prefix)
    yield make
    for store in stores:
        store.close()


def event(type="APP_STARTED", app="demo", seconds_ago=0.0, **details) -> Event:
    return Event(type=type, app=app, reason="request", timestamp=utcnow() - timedelta(seconds=seconds_ago), **details)


def test_queries_filter_by_app_type_and_date_newest_first(make_store):
    store = make_store()
    store.add(event("APP_STARTED", "a", seconds_ago=30, duration=1.5))
    store.add(event("APP_STOPPED", "a", seconds_ago=20))
    store.add(event("APP_STARTED", "b", seconds_ago=10))
    store.add(event("APP_STOPPED", "b", seconds_ago=0))
    assert [(e.type, e.app) for e in store.query()] == [
        ("APP_STOPPED", "b"),
        ("APP_STARTED", "b"),
        ("APP_STOPPED", "a"),
        ("APP_STARTED", "a"),
    ]
    assert [e.type for e in store.query(app="a")] == ["APP_STOPPED", "APP_STARTED"]
    assert [e.app for e in store.query(type="APP_STARTED")] == ["b", "a"]
    assert [e.app for e in store.query(since=utcnow() - timedelta(seconds=15))] == ["b", "b"]
    assert len(store.query(limit=3)) == 3
    first = store.query(app="a", type="APP_STARTED")[0]
    assert first.duration == 1.5 and first.timestamp.tzinfo is not None and first.instance


def test_the_history_is_bounded_to_the_newest_events(make_bounded_store):
    store = make_bounded_store(maximum=5)
    for i in range(12):
        store.add(event(app=f"app-{i}"))
    assert [e.app for e in store.query(limit=100)] == [f"app-{i}" for i in range(11, 6, -1)]


def test_redis_stream_is_trimmed_under_the_registry_prefix_and_shared(prefix):
    one, two = redis_store(prefix, maximum=3), redis_store(prefix, maximum=3)
    try:
        for i in range(5):
            (one if i % 2 else two).add(event(app=f"app-{i}", duration=0.25))
        raw = redis.Redis.from_url(SHARED_URL, decode_responses=True)
        assert raw.xlen(prefix + "events") == 3
        assert [key for key in raw.scan_iter(match=prefix + "*")] == [prefix + "events"]
        entry = json.loads(raw.xrevrange(prefix + "events", count=1)[0][1]["event"])
        assert entry["app"] == "app-4" and entry["duration"] == 0.25 and entry["timestamp"].endswith("+00:00")
        raw.close()
        assert [e.app for e in one.query()] == [e.app for e in two.query()] == ["app-4", "app-3", "app-2"]
    finally:
        one.close()
        two.close()


def test_a_long_redis_history_is_read_page_by_page(prefix):
    store = redis_store(prefix)
    store.PAGE = 7
    try:
        for i in range(30):
            store.add(event(app="busy" if i % 3 else "rare"))
        assert len(store.query(app="rare", limit=100)) == 10
        assert len(store.query(app="busy", limit=15)) == 15
    finally:
        store.close()


def test_a_redis_outage_fails_fast_and_the_store_recovers(tmp_path, prefix):
    server = RedisServer(tmp_path).start()
    store = redis_store(prefix, url=server.url)
    try:
        store.add(event(app="before"))
        server.stop()
        with pytest.raises(EventStoreUnavailable):
            store.add(event(app="lost"))
        with pytest.raises(EventStoreUnavailable, match="redis is unreachable: event not recorded"):
            store.add(event(app="lost-too"))  # known to be down: Redis is not even tried
        with pytest.raises(EventStoreUnavailable):
            store.query()
        assert not store.healthy()
        server.start()
        wait_until(lambda: _added(store, event(app="after")), 10, what="the store to write again")
        assert [e.app for e in store.query()] == ["after"]  # a fresh server: the old history went with it
    finally:
        store.close()
        server.stop()


def _added(store, item) -> bool:
    try:
        store.add(item)
    except EventStoreUnavailable:
        return False
    return True


# -- what the lifecycle records ------------------------------------------------------


def wired(tmp_path: Path, apps: list[dict], **env: str):
    config_file = write_config(tmp_path, apps)
    base = {"PAASTIS_CONFIG_FILE": str(config_file), "PAASTIS_STATE_DIR": str(tmp_path / "state")}
    app = create_app(Settings.from_env({**base, **env}, dotenv=False))
    return app, app.extensions["paastis"]


def local_app(tmp_path: Path, name: str, **env) -> dict:
    return {"name": name, "url": f"http://127.0.0.1:{free_port()}", "command": upstream_command(**env)}


def test_the_lifecycle_records_each_kind_of_event(tmp_path):
    demo = local_app(tmp_path, "demo")
    broken = local_app(tmp_path, "broken", EXIT_CODE=2)
    stubborn_port = free_port()
    stubborn = {"name": "stubborn", "url": f"http://127.0.0.1:{stubborn_port}", "start": "true", "stop": "exit 4"}
    _, paastis = wired(tmp_path, [demo, broken, stubborn], PROVIDER_OPERATION_TIMEOUT="10")
    lifecycle = paastis.lifecycle
    outside = None
    try:
        lifecycle.ensure_awake(lifecycle.resolve("demo"))
        assert lifecycle.stop(lifecycle.resolve("demo"), "manual")
        with pytest.raises(Exception, match="broken"):
            lifecycle.ensure_awake(lifecycle.resolve("broken"))
        outside = _serve_outside(tmp_path, stubborn_port)  # running without us: registered at the next check
        lifecycle.check_idle()
        assert not lifecycle.stop(lifecycle.resolve("stubborn"), "manual")
        outside.kill()
        outside.wait()
        wait_until(lambda: not port_open(stubborn_port), 5)
        lifecycle.check_idle()  # found stopped: unregistered
        seen = {(e.type, e.app, e.reason) for e in paastis.events.query()}
        assert seen == {
            ("APP_STARTED", "demo", "request"),
            ("APP_STOPPED", "demo", "manual"),
            ("APP_START_FAILED", "broken", "request"),
            ("APP_REGISTERED", "stubborn", "discovered"),
            ("APP_STOP_FAILED", "stubborn", "manual"),
            ("APP_UNREGISTERED", "stubborn", "idle"),
        }
        dry_run_only = {"APP_WOULD_STOP", "APP_WOULD_START"}  # see tests/test_e2e_sleep_policy.py
        assert {e.type for e in paastis.events.query()} == set(EVENT_TYPES) - dry_run_only
        started = paastis.events.query(type="APP_STARTED")[0]
        assert started.duration > 0 and started.timestamp.utcoffset() == timedelta(0)
        assert "exit" in paastis.events.query(type="APP_STOP_FAILED")[0].message
    finally:
        if outside is not None and outside.poll() is None:
            outside.kill()
        paastis.close()


def _serve_outside(tmp_path: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen([PYTHON, str(UPSTREAM_APP)], env={"PORT": str(port)})
    wait_until(lambda: port_open(port), 10)
    return process


def test_requests_are_served_while_the_event_store_is_down(tmp_path, prefix):
    server = RedisServer(tmp_path).start()
    server.stop()
    demo = local_app(tmp_path, "demo")
    app, paastis = wired(
        tmp_path, [demo], EVENTS_STORE_TYPE="redis", REGISTRY_REDIS_URL=server.url, REGISTRY_REDIS_PREFIX=prefix
    )
    try:
        response = app.test_client().get("/echo", headers={"Host": "demo.localhost"})
        assert response.status_code == 200
        assert response.get_json()["path"] == "/echo"
    finally:
        paastis.lifecycle.stop(paastis.lifecycle.resolve("demo"), "manual")
        paastis.close()


def test_history_starts_with_each_apps_state_before_the_period(make_store):
    store = make_store()
    store.add(event("APP_STOPPED", "a", seconds_ago=50))
    store.add(event("APP_STARTED", "a", seconds_ago=40))  # a's state when the period begins
    store.add(event("APP_STOPPED", "b", seconds_ago=35))  # b's
    store.add(event("APP_START_FAILED", "b", seconds_ago=32))  # not a state change
    store.add(event("APP_STOPPED", "a", seconds_ago=20))
    store.add(event("APP_STARTED", "b", seconds_ago=10))
    store.add(event("APP_STOPPED", "b", seconds_ago=1))  # after the period
    now = utcnow()
    types = ("APP_STARTED", "APP_STOPPED")
    found = store.history(now - timedelta(seconds=30), now - timedelta(seconds=5), types)
    assert [(e.type, e.app) for e in found] == [
        ("APP_STARTED", "a"),
        ("APP_STOPPED", "b"),
        ("APP_STOPPED", "a"),
        ("APP_STARTED", "b"),
    ]
    only_b = store.history(now - timedelta(seconds=30), now, types, app="b")
    assert [e.type for e in only_b] == ["APP_STOPPED", "APP_STARTED", "APP_STOPPED"]
