"""Per-app state stays bounded: what paastis keeps of an app goes when the app leaves the provider's listing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from paastis import create_app
from paastis.config import Settings
from paastis.rules import POLICY_CACHE_SIZE, Rules
from tests.fakes.platform import closing_factory
from tests.fakes.scalingo_api import ScalingoPlatform
from tests.redis_support import SHARED_URL
from tests.support import write_config

platforms = closing_factory(ScalingoPlatform)


@pytest.fixture
def instance(tmp_path: Path, prefix: str) -> Iterator[Callable[..., Any]]:
    """One paastis built in this process on the Redis registry (no supervisor thread), closed after the test."""
    made: list[Any] = []
    write_config(tmp_path)

    def build(platform: ScalingoPlatform) -> Any:
        env = {
            **platform.paastis_env(),
            "PAASTIS_CONFIG_FILE": str(tmp_path / "paastis.yml"),
            "REGISTRY_TYPE": "redis",
            "REGISTRY_REDIS_URL": SHARED_URL,
            "REGISTRY_REDIS_PREFIX": prefix,
            "PROVIDER_OPERATION_TIMEOUT": "30",
        }
        made.append(create_app(Settings.from_env(env, dotenv=False)))
        return made[-1]

    yield build
    for app in made:
        app.extensions["paastis"].close()


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(SHARED_URL, decode_responses=True)
    yield client
    client.close()


def series_of(paastis: Any, app: str) -> list[str]:
    """The label sets paastis's own metrics hold for ``app`` (what would grow without pruning).

    Series computed at scrape time from the event history (savings) are bounded by ``EVENTS_MAX``.
    """
    lines = paastis.metrics.render().decode().splitlines()
    return [line for line in lines if f'app="{app}"' in line and not line.startswith("paastis_app_")]


def test_an_app_that_leaves_the_listing_leaves_nothing_behind(platforms, instance, prefix, raw):
    platform = platforms()
    platform.add_app("review-1", running=False)
    platform.add_app("stays", running=False)
    app = instance(platform)
    paastis = app.extensions["paastis"]
    client = app.test_client()
    for name in ("review-1", "stays"):
        with client.get("/", headers={"Host": f"{name}.localhost"}) as response:  # closing it ends the request
            assert response.status_code == 200
    paastis.lifecycle.stop(paastis.lifecycle.resolve("review-1"), "manual")
    assert raw.hexists(f"{prefix}registry:memos", "review-1")  # its formation, for the next start
    assert series_of(paastis, "review-1")

    del platform.apps["review-1"]  # the review app is deleted
    paastis.lifecycle.check_idle()

    assert not raw.hexists(f"{prefix}registry:memos", "review-1")
    assert raw.hexists(f"{prefix}registry:memos", "stays")
    assert series_of(paastis, "review-1") == []
    assert series_of(paastis, "stays")
    assert "review-1" not in paastis.registry._memos and "review-1" not in paastis.registry._local


def test_the_policy_cache_keeps_its_recent_keys_under_a_flood_of_random_hosts():
    rules = Rules(Settings.from_env({}, dotenv=False), [{"pattern": "shop", "app_max_idle_time": 5}])
    shop = rules.policy("shop")
    for i in range(3 * POLICY_CACHE_SIZE):
        rules.policy(f"random-{i}")
        if i % 1000 == 0:
            assert rules.policy("shop") is shop  # used recently: never evicted, never recomputed
    assert rules._cached.cache_info().currsize == POLICY_CACHE_SIZE
