"""The event spool against a real (private) Redis stream that a test stops and starts: nothing is lost."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from paastis.events import Event
from paastis.metrics import Metrics
from paastis.redis_events import RedisEventStore
from paastis.redis_link import RedisLink
from paastis.spool import FileSpool, SpooledEventStore
from tests.redis_support import RedisServer
from tests.support import wait_until


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis_server = RedisServer(tmp_path).start()
    yield redis_server
    redis_server.stop()


def build(server: RedisServer, state: Path, maximum: int = 100) -> tuple[SpooledEventStore, Metrics]:
    link = RedisLink(server.url, "p:", 0.3, retry_after=0.1)
    metrics = Metrics()
    store = RedisEventStore(link, "p:events", owns_link=True)
    return SpooledEventStore(store, [FileSpool(state)], metrics, maximum, replay_interval=0.1), metrics


def stored(server: RedisServer) -> list[str]:
    """Apps of the events in the stream, oldest first."""
    client = server.client()
    try:
        return [Event.from_json(json.loads(f["event"])).app for _, f in client.xrange("p:events")]
    finally:
        client.close()


def metric(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def test_events_of_an_outage_are_replayed_in_order_once_each(server, tmp_path):
    events, metrics = build(server, tmp_path / "state")
    try:
        events.add(Event("APP_STARTED", "before", "request"))
        server.stop()
        for i in range(5):
            events.add(Event("APP_STARTED", f"during-{i}", "request"))
        assert events.spooled() == 5 and metric(metrics, "paastis_events_spooled") == 5
        server.start()  # empty: it lost "before" (no persistence), never the spooled ones
        wait_until(lambda: events.spooled() == 0, 10, what="the spool to be replayed")
        events.add(Event("APP_STOPPED", "after", "idle"))
        assert stored(server) == [f"during-{i}" for i in range(5)] + ["after"]
        assert metric(metrics, "paastis_events_spooled") == 0
    finally:
        events.close()


def test_a_batch_replayed_twice_is_stored_once(server, tmp_path):
    """A worker killed after the store took a batch but before the spool dropped it replays it again."""
    spool = FileSpool(tmp_path / "state")
    events, _ = build(server, tmp_path / "state")
    try:
        server.stop()
        for i in range(3):
            events.add(Event("APP_STARTED", f"app-{i}", "request"))
        batch = spool.head(10)
        server.start()
        wait_until(lambda: events.spooled() == 0, 10, what="the spool to be replayed")
        for item in batch:  # as if the trim had been lost
            spool.append(item)
        wait_until(lambda: events.replay() == 0 and events.spooled() == 0, 10, what="the second replay")
        assert stored(server) == ["app-0", "app-1", "app-2"]
    finally:
        events.close()


def test_the_spool_outlives_the_process_and_a_new_one_replays_it(server, tmp_path):
    first, _ = build(server, tmp_path / "state")
    server.stop()
    first.add(Event("APP_STOPPED", "left-behind", "idle"))
    first.close()  # Redis still down: it stays on disk
    server.start()
    second, _ = build(server, tmp_path / "state")
    try:
        wait_until(lambda: stored(server) == ["left-behind"], 10, what="the new process to replay the spool")
    finally:
        second.close()


def test_past_its_bound_the_spool_drops_loudly_once_and_counts(server, tmp_path, caplog):
    events, metrics = build(server, tmp_path / "state", maximum=3)
    try:
        server.stop()
        with caplog.at_level(logging.WARNING, logger="paastis.events"):
            for i in range(5):
                events.add(Event("APP_STARTED", f"app-{i}", "request"))
        full = [r for r in caplog.records if "SPOOL FULL" in r.getMessage()]
        assert len(full) == 1 and full[0].levelno == logging.ERROR
        assert metric(metrics, "paastis_events_dropped_total") == 2
        server.start()
        wait_until(lambda: events.spooled() == 0, 10, what="the spool to be replayed")
        assert stored(server) == ["app-0", "app-1", "app-2"]
    finally:
        events.close()
