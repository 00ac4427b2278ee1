"""Stops never act on degraded cluster state; wakes and an operator's stop still work while Redis is down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from paastis import create_app
from paastis.config import Settings
from tests.redis_support import RedisServer
from tests.support import close_in_process, local_app, port_open, wait_until, write_config

pytestmark = pytest.mark.e2e  # a private redis-server and a real app process


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis_server = RedisServer(tmp_path).start()
    yield redis_server
    redis_server.stop()


@pytest.fixture
def paastis(tmp_path: Path, server: RedisServer) -> Iterator[Any]:
    app, _ = local_app(tmp_path)
    config = write_config(tmp_path, [app])
    env = {
        "PAASTIS_CONFIG_FILE": str(config),
        "PAASTIS_STATE_DIR": str(tmp_path / "state"),
        "REGISTRY_TYPE": "redis",
        "REGISTRY_REDIS_URL": server.url,
        "REGISTRY_REDIS_SOCKET_TIMEOUT": "0.3",
        "START_AND_STOP_MAX_IDLE_TIME": "0.01",  # idle after 0.6 s
    }
    graph = create_app(Settings.from_env(env, dotenv=False)).extensions["paastis"]
    yield graph
    close_in_process(graph)


def test_idle_and_schedule_stops_refuse_while_redis_is_down_and_an_operator_stop_does_not(
    paastis, server, paastis_caplog
):
    demo = paastis.directory.resolve("demo")
    port = int(paastis.provider.upstream_url(demo).rsplit(":", 1)[1])
    assert paastis.supervisor.leadership.hold()
    paastis.lifecycle.ensure_awake(demo)
    wait_until(lambda: paastis.lifecycle.idle.is_idle(demo), 10, what="the app to be idle")

    server.stop()
    assert paastis.lifecycle.stop(demo, "idle") is False  # the idle check's own stop: refused
    assert paastis.lifecycle.stop(demo, "schedule") is False  # an asleep window opening: refused
    assert port_open(port) and paastis.registry.get("demo") is not None
    assert "not stopping demo: cluster state is degraded" in paastis_caplog.text

    assert paastis.lifecycle.stop(demo, "manual") is True  # an operator's order goes on
    assert not port_open(port)
    paastis.lifecycle.ensure_awake(demo)  # and so do wakes
    assert port_open(port)


def test_a_leader_that_lost_its_lock_does_not_stop(paastis, server, paastis_caplog):
    demo = paastis.directory.resolve("demo")
    port = int(paastis.provider.upstream_url(demo).rsplit(":", 1)[1])
    assert paastis.supervisor.leadership.hold()
    paastis.lifecycle.ensure_awake(demo)
    wait_until(lambda: paastis.lifecycle.idle.is_idle(demo), 10, what="the app to be idle")
    client = server.client()
    try:
        client.set(paastis.supervisor.leadership.key, "another-instance")  # the lock lapsed and was taken
    finally:
        client.close()
    assert paastis.lifecycle.stop(demo, "idle") is False
    assert port_open(port)
    assert "not stopping demo: this instance no longer leads" in paastis_caplog.text
