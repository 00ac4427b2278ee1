"""The PostgreSQL events store against a real server: schema at start-up, durability, outages."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from paastis import build_event_store, create_app
from paastis.config import ConfigError, Settings
from paastis.events import Event, EventStoreUnavailable
from paastis.registry import utcnow
from tests.pg_support import rows
from tests.support import free_port, local_app, write_config


def store_for(url: str):
    return build_event_store(Settings.from_env({"EVENTS_STORE_TYPE": "postgres", "DATABASE_URL": url}, dotenv=False))


def test_the_schema_is_created_at_start_up_once_even_by_workers_booting_together(database_url):
    with ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(lambda _: store_for(database_url), range(6)))
    try:
        assert rows(database_url, "SELECT count(*) FROM paastis_events") == [(0,)]
        indexes = {
            name
            for (name,) in rows(database_url, "SELECT indexname FROM pg_indexes WHERE tablename = %s", "paastis_events")
        }
        assert {"paastis_events_at", "paastis_events_app_at"} <= indexes
    finally:
        for store in stores:
            store.close()


def test_events_outlive_the_process_that_wrote_them(database_url):
    first = store_for(database_url)
    first.add(Event(type="APP_STOPPED", app="shop", reason="schedule", duration=0.5, message="night"))
    first.close()
    second = store_for(database_url)
    try:
        (found,) = second.query(app="shop")
        assert (found.type, found.reason, found.duration, found.message) == ("APP_STOPPED", "schedule", 0.5, "night")
        assert found.timestamp.utcoffset() == timedelta(0)
        assert second.query(since=utcnow() + timedelta(seconds=5)) == []
    finally:
        second.close()


def test_an_unreachable_database_is_reported_not_fatal_and_the_url_never_logged(paastis_caplog):
    url = f"postgresql://postgres:s3cret-password@127.0.0.1:{free_port()}/nowhere"
    store = store_for(url)
    try:
        with pytest.raises(EventStoreUnavailable, match="postgresql"):
            store.add(Event(type="APP_STARTED", app="a", reason="request"))
        with pytest.raises(EventStoreUnavailable, match="moments ago"):  # fails fast during the outage
            store.add(Event(type="APP_STARTED", app="a", reason="request"))
        assert not store.healthy()
        with pytest.raises(EventStoreUnavailable):
            store.query()
    finally:
        store.close()
    assert "PostgreSQL unreachable at start-up" in paastis_caplog.text
    assert "s3cret-password" not in paastis_caplog.text


def test_postgres_needs_a_database_url():
    with pytest.raises(ConfigError, match="EVENTS_STORE_TYPE=postgres needs DATABASE_URL"):
        Settings.from_env({"EVENTS_STORE_TYPE": "postgres"}, dotenv=False)


def test_apps_are_woken_and_served_while_postgresql_is_unreachable(tmp_path, paastis_caplog):
    app, _ = local_app(tmp_path)
    config = write_config(tmp_path, [app])
    env = {
        "PAASTIS_CONFIG_FILE": str(config),
        "PAASTIS_STATE_DIR": str(tmp_path / "state"),
        "EVENTS_STORE_TYPE": "postgres",
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere",
    }
    flask_app = create_app(Settings.from_env(env, dotenv=False))
    paastis = flask_app.extensions["paastis"]
    try:
        response = flask_app.test_client().get("/echo", headers={"Host": "demo.localhost"})
        assert response.status_code == 200 and response.get_json()["path"] == "/echo"
        assert "spooling events to" in paastis_caplog.text  # kept for later (tests/test_e2e_outages.py replays them)
        spooled = [event.type for _, event in paastis.events.spools[0].head(10)]
        assert spooled == ["APP_STARTED"]
    finally:
        paastis.provider.stop(paastis.directory.resolve("demo"))
        paastis.close()
