"""Per-app cluster locks that live as long as their work: two in-process instances on one Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from paastis import create_app
from paastis.config import Settings
from paastis.leader import ClusterLocks
from paastis.redis_link import RedisLink
from tests.fakes.platform import closing_factory
from tests.fakes.scalingo_api import ScalingoPlatform
from tests.redis_support import SHARED_URL
from tests.support import wait_until, write_config

platforms = closing_factory(ScalingoPlatform)


@pytest.fixture
def instances(tmp_path: Path, prefix: str) -> Iterator[Callable[..., Any]]:
    """paastis instances built in this process (no supervisor), closed after the test."""
    made: list[Any] = []
    write_config(tmp_path)

    def build(platform: ScalingoPlatform, **env: str) -> Any:
        settings = Settings.from_env(
            {
                **platform.paastis_env(),
                "PAASTIS_CONFIG_FILE": str(tmp_path / "paastis.yml"),
                "REGISTRY_TYPE": "redis",
                "REGISTRY_REDIS_URL": SHARED_URL,
                "REGISTRY_REDIS_PREFIX": prefix,
                "EVENTS_STORE_TYPE": "redis",
                "PROVIDER_OPERATION_TIMEOUT": "30",
                **env,
            },
            dotenv=False,
        )
        made.append(create_app(settings).extensions["paastis"])
        return made[-1]

    yield build
    for paastis in made:
        paastis.close()


@pytest.fixture
def locks(prefix: str) -> Iterator[Callable[[float], ClusterLocks]]:
    links: list[RedisLink] = []

    def build(ttl: float) -> ClusterLocks:
        links.append(RedisLink(SHARED_URL, prefix, 0.5))
        return ClusterLocks(links[-1], ttl)

    yield build
    for link in links:
        link.close()


def test_a_held_lock_outlives_its_ttl_and_frees_up_when_released(locks, prefix):
    one, two = locks(0.3), locks(0.3)
    raw = redis.Redis.from_url(SHARED_URL, decode_responses=True)
    try:
        with one("demo") as first:
            assert first is True
            held_until = time.monotonic() + 1.0  # more than three TTLs of work
            while time.monotonic() < held_until:
                with two("demo") as second:
                    assert second is False
                time.sleep(0.05)
        assert raw.exists(f"{prefix}lock:demo") == 0  # released by its holder, not left to expire
        with two("demo") as after:
            assert after is True
    finally:
        raw.close()


def test_a_stop_longer_than_the_lock_ttl_is_not_overtaken_by_a_start(platforms, instances, prefix):
    platform = platforms()
    app = platform.add_app("shop", running=True)
    slow_stop = {"HOOKS_BEFORE_STOP": "sleep 3", "CLUSTER_LOCK_TTL": "1"}  # the stop outlives 3 lock TTLs
    leader, other = instances(platform, **slow_stop), instances(platform, **slow_stop)
    shop = leader.lifecycle.resolve("shop")
    leader.lifecycle.ensure_awake(shop)  # registered, running

    stopping = threading.Thread(target=leader.lifecycle.stop, args=(shop, "manual"))
    stopping.start()
    raw = redis.Redis.from_url(SHARED_URL, decode_responses=True)
    try:
        wait_until(lambda: raw.exists(f"{prefix}lock:shop"), 10, 0.01, "the leader to take the lock")
    finally:
        raw.close()
    # Its upstream refused us: another instance wakes the app, and must wait for the stop to end.
    other.lifecycle.ensure_awake(other.lifecycle.resolve("shop"), recheck=True)
    stopping.join(30)

    history = [(e.type, e.instance) for e in reversed(leader.events.query(app="shop"))]
    types = [kind for kind, _ in history]
    assert types.index("APP_STOPPED") < types.index("APP_STARTED"), history
    assert types.count("APP_REGISTERED") == 1  # the first wake only: the other instance did not find it running
    assert app.amounts() == {"web": 1}
    assert other.registry.get("shop") is not None
