"""The idle check spends the account's API budget last: listings yield to queued stops, formations are read ahead.

In-process paastis (``create_app``) against the fake Scalingo; the end-to-end tests of the
priority order through gunicorn are in ``test_e2e_api_budget.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from paastis import create_app
from paastis.config import Settings
from paastis.providers.http import WindowLimiter
from paastis.providers.priority import CallClass
from tests.fakes.scalingo_api import ScalingoPlatform
from tests.support import wait_until, write_config


@pytest.fixture
def platform() -> Iterator[ScalingoPlatform]:
    platform = ScalingoPlatform(rate_limit=12, window=5.0)  # 12 calls in any 5 s: a minute in seconds
    yield platform
    platform.close()


@pytest.fixture
def paastis_of(tmp_path: Path) -> Iterator[Any]:
    built: list[Any] = []

    def build(platform: ScalingoPlatform, **env: str) -> Any:
        write_config(tmp_path)
        settings = {**platform.paastis_env(), "PAASTIS_CONFIG_FILE": str(tmp_path / "paastis.yml"), **env}
        paastis = create_app(Settings.from_env(settings, dotenv=False)).extensions["paastis"]
        paastis.provider.scheduler.limiter = WindowLimiter(12, window=5.0, margin=0.2)  # as the fake counts
        built.append(paastis)
        return paastis

    yield build
    for paastis in built:
        paastis.close()


def idle_stops(paastis: Any) -> int:
    return int(sum(s.value for s in paastis.metrics.idle_stops.collect()[0].samples if s.name.endswith("_total")))


def test_formations_are_read_ahead_so_that_a_found_running_app_stops_in_one_call(platform, paastis_of):
    for name in ("one", "two", "three"):
        platform.add_app(name, formation={"web": (2, "M"), "worker": (1, "S")}, running=True)
    paastis = paastis_of(platform, START_AND_STOP_MAX_IDLE_TIME="60")
    paastis.lifecycle.check_idle()  # registers them (found running: formation unknown), then reads ahead
    wait_until(lambda: all(paastis.registry.recall(k) is not None for k in ("one", "two", "three")), 30)
    assert platform.calls("GET", "/v1/apps/[^/]+/containers") == 3
    assert paastis.provider.scheduler.granted[CallClass.BACKGROUND] >= 4  # the listing and the three reads

    reads, scales = platform.calls("GET", "/v1/apps/two/containers"), platform.calls("POST", "/v1/apps/two/scale")
    assert paastis.lifecycle.stopper.stop(paastis.directory.cached("two"), "idle")
    assert platform.calls("POST", "/v1/apps/two/scale") == scales + 1
    assert platform.calls("GET", "/v1/apps/two/containers") == reads  # the stop was the scale alone
    assert platform.apps["two"].amounts() == {"web": 0, "worker": 0}
    assert paastis.registry.recall("two")["containers"] == [
        {"name": "web", "amount": 2, "size": "M"},
        {"name": "worker", "amount": 1, "size": "S"},
    ]


def test_listings_yield_while_stops_are_queued_and_return_when_the_budget_is_idle(platform, paastis_of):
    crowd = [f"idle-{i}" for i in range(10)]
    for name in crowd:
        platform.add_app(name, running=True)
    paastis = paastis_of(platform, START_AND_STOP_MAX_IDLE_TIME="0.001", PROVIDER_DIRECTORY_TTL="3600")
    idle, scheduler = paastis.lifecycle.idle, paastis.provider.scheduler
    paastis.lifecycle.check_idle()  # registers the crowd
    wait_until(lambda: all(paastis.registry.get(k) is not None for k in crowd), 10)
    wait_until(lambda: paastis.lifecycle.check_idle() or idle.stopping, 10, what="stops to be queued")
    wait_until(lambda: scheduler.waiting(CallClass.STOP) > 0, 30, what="a stop to wait for the budget")

    listings, skipped = platform.calls("GET", "/v1/apps"), idle.listings["skipped"]
    for _ in range(3):
        paastis.lifecycle.check_idle()
    assert idle.listings["skipped"] == skipped + 3  # decided from the last list and paastis's own notes
    assert platform.calls("GET", "/v1/apps") == listings  # not one listing while the stops wait
    assert any(paastis.lifecycle.stop_queued(key) for key in crowd)

    wait_until(lambda: idle_stops(paastis) == len(crowd), 120, what="the crowd to be stopped")
    for _ in range(3):
        paastis.lifecycle.check_idle()
        assert all(paastis.registry.get(key) is None for key in crowd)  # a stopped app is never relearnt as running
    listed = idle.listings["listed"]
    wait_until(scheduler.has_room, 30, what="the budget to have room again")
    paastis.lifecycle.check_idle()
    assert idle.listings["listed"] == listed + 1  # the budget is idle: every check lists again
    assert platform.limit.rejected == 0
