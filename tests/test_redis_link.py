"""One Redis connection state per instance: an outage is noticed once and logged once, whoever meets it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from paastis import create_app
from paastis.config import Settings
from paastis.events import Event
from tests.fakes.platform import closing_factory
from tests.fakes.scalingo_api import ScalingoPlatform
from tests.redis_support import RedisServer
from tests.support import wait_until, write_config

platforms = closing_factory(ScalingoPlatform)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis_server = RedisServer(tmp_path).start()
    yield redis_server
    redis_server.stop()


@pytest.fixture
def paastis(tmp_path: Path, server: RedisServer, platforms: Any) -> Iterator[Any]:
    """Registry, locks, leadership, events and the Scalingo API budget all in one Redis."""
    platform = platforms()
    platform.add_app("shop", running=True)
    write_config(tmp_path)
    env = {
        **platform.paastis_env(),
        "PAASTIS_CONFIG_FILE": str(tmp_path / "paastis.yml"),
        "REGISTRY_TYPE": "redis",
        "EVENTS_STORE_TYPE": "redis",
        "REGISTRY_REDIS_URL": server.url,
        "REGISTRY_REDIS_SOCKET_TIMEOUT": "0.3",
    }
    graph = create_app(Settings.from_env(env, dotenv=False)).extensions["paastis"]
    yield graph
    graph.close()


def lines(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for record in caplog.records if text in record.getMessage())


def test_an_outage_met_by_every_component_is_logged_once_and_so_is_the_recovery(paastis, server, paastis_caplog):
    assert paastis.supervisor.leadership.hold()
    paastis.lifecycle.check_idle()  # lists through the shared budget, registers shop, records an event
    assert paastis.registry.get("shop") is not None
    assert paastis.redis_link is not None
    for component in (paastis.registry.link, paastis.events.store.link, paastis.provider.limiter.link):
        assert component is paastis.redis_link  # one connection state

    server.stop()
    assert paastis.registry.get("shop") is not None  # served from the local view
    paastis.events.add(Event(type="APP_STOPPED", app="shop", reason="manual"))  # spooled, not lost
    assert paastis.events.spooled() == 1
    assert [app.key for app in paastis.provider.list_apps()] == ["shop"]  # the budget falls back to this process
    assert paastis.supervisor.leadership.hold() is False  # nobody leads while Redis is away
    paastis.lifecycle.check_idle()
    assert paastis.redis_link.down
    assert lines(paastis_caplog, "redis: unreachable") == 1

    server.start()
    wait_until(lambda: not paastis.redis_link.down, 10, what="the link's probe to find Redis back")
    assert lines(paastis_caplog, "redis: reachable again") == 1
    wait_until(lambda: paastis.events.spooled() == 0, 10, what="the spooled event to be replayed")
    paastis.events.add(Event(type="APP_STARTED", app="shop", reason="request"))
    # a fresh server: what the outage spooled, then what came after
    assert [event.type for event in paastis.events.query()] == ["APP_STARTED", "APP_STOPPED"]
    assert lines(paastis_caplog, "redis: unreachable") == 1
