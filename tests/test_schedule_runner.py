"""The leader's window openings on a clock of the test's choosing, with two instances sharing Redis marks.

The runner is paastis's own, wired to a real registry in Redis and real local apps; only
its clock is set by the test, so a day of openings takes seconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from paastis import build_marks, create_app
from paastis.config import Settings
from paastis.schedule_runner import ScheduleRunner
from tests.redis_support import SHARED_URL
from tests.support import local_app, port_open, starts, wait_until, write_config

PARIS = ZoneInfo("Europe/Paris")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 8, 59, tzinfo=PARIS)  # a Tuesday

    def set(self, *args: int) -> None:
        self.now = datetime(*args, tzinfo=PARIS)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def fleet(tmp_path, prefix):
    """Two wired instances on one Redis registry, each with a schedule runner on the test's clock."""
    app, port = local_app(tmp_path)
    rule = {
        "pattern": "demo",
        "timezone": "Europe/Paris",
        "awake_during": "mon-fri 09:00-17:00",
        "asleep_during": "mon-fri 18:00-19:00",
    }
    config = write_config(tmp_path, [app], [rule])
    env = {
        "PAASTIS_CONFIG_FILE": str(config),
        "PAASTIS_STATE_DIR": str(tmp_path / "state"),
        "REGISTRY_TYPE": "redis",
        "REGISTRY_REDIS_URL": SHARED_URL,
        "REGISTRY_REDIS_PREFIX": prefix,
        "EVENTS_STORE_TYPE": "redis",
    }
    clock = Clock()
    graphs, runners = [], []
    for _ in range(2):
        paastis = create_app(Settings.from_env(env, dotenv=False)).extensions["paastis"]
        paastis.lifecycle.stopper.leading = lambda: True  # ticked by hand as the leader (see test_redis_registry)
        graphs.append(paastis)
        runners.append(
            ScheduleRunner(
                paastis.lifecycle,
                paastis.provider,
                paastis.directory,
                paastis.rules,
                paastis.registry,
                build_marks(paastis.registry),
                clock,
            )
        )
    yield clock, graphs, runners, port
    for paastis in graphs:
        demo = paastis.directory.resolve("demo")
        if demo is not None and port_open(port):
            paastis.provider.stop(demo)
        paastis.close()


def reasons(paastis) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in reversed(paastis.events.query(app="demo"))]


def test_openings_are_acted_on_once_even_when_missed_and_across_leaders(tmp_path, fleet):
    clock, (one, two), (first, second), port = fleet
    first.tick()  # 08:59: nothing is open
    assert not port_open(port) and starts(tmp_path) == 0

    clock.set(2026, 12, 1, 10, 30)  # no leader lived at 09:00: the next one acts at its first tick
    second.tick()
    assert port_open(port) and starts(tmp_path) == 1
    assert reasons(two) == [("APP_STARTED", "schedule")]
    clock.set(2026, 12, 1, 10, 31)
    first.tick()  # the old leader comes back: the opening is noted in Redis, nothing is repeated
    assert one.lifecycle.stop(one.directory.resolve("demo"), "manual")  # someone stops it by hand
    clock.set(2026, 12, 1, 11, 0)
    first.tick()
    second.tick()
    assert not port_open(port) and starts(tmp_path) == 1  # the 09:00 opening was handled once

    clock.set(2026, 12, 1, 17, 30)  # a person wakes it between the windows
    one.lifecycle.ensure_awake(one.directory.resolve("demo"))
    token = one.registry.begin_request("demo")  # a request in flight when the asleep window opens
    clock.set(2026, 12, 1, 18, 0, 5)
    first.tick()
    assert port_open(port)  # the stop waits for the request
    one.registry.end_request("demo", token)
    clock.set(2026, 12, 1, 18, 1)

    def tick_and_look() -> bool:  # the request's in-flight entry lingers about a second after it ends
        second.tick()
        return not port_open(port)

    wait_until(tick_and_look, 10, interval=0.3, what="the asleep window's stop")
    clock.set(2026, 12, 1, 18, 30)
    first.tick()
    second.tick()

    clock.set(2026, 12, 2, 9, 0, 30)  # Wednesday: a new opening
    first.tick()
    assert port_open(port) and starts(tmp_path) == 3
    assert reasons(one) == [
        ("APP_STARTED", "schedule"),
        ("APP_STOPPED", "manual"),
        ("APP_STARTED", "request"),
        ("APP_STOPPED", "schedule"),
        ("APP_STARTED", "schedule"),
    ]


def test_inside_an_awake_window_an_app_is_never_stopped_for_idleness(tmp_path):
    zone = ZoneInfo("Asia/Kolkata")
    now = datetime.now(zone)
    window = f"{(now - timedelta(minutes=1)):%H:%M:%S}-{(now + timedelta(minutes=10)):%H:%M:%S}"
    kept, kept_port = local_app(tmp_path, "kept")
    plain, plain_port = local_app(tmp_path, "plain")
    rules = [
        {"pattern": "kept|plain", "app_max_idle_time": 0.001},  # idle after 60 ms
        {"pattern": "kept", "awake_during": window, "timezone": "Asia/Kolkata"},
    ]
    config = write_config(tmp_path, [kept, plain], rules)
    env = {"PAASTIS_CONFIG_FILE": str(config), "PAASTIS_STATE_DIR": str(tmp_path / "state")}
    paastis = create_app(Settings.from_env(env, dotenv=False)).extensions["paastis"]
    try:
        for name in ("kept", "plain"):
            paastis.lifecycle.ensure_awake(paastis.directory.resolve(name))
        entries = [paastis.registry.get(name) for name in ("kept", "plain")]
        wait_until(lambda: all(e.idle_seconds(datetime.now(zone)) > 0.2 for e in entries), 5, what="both apps idle")
        paastis.lifecycle.check_idle()  # decides, and queues the stop on the stop pool
        idle = paastis.lifecycle.idle
        wait_until(lambda: not port_open(plain_port) and not idle.stopping, 10, what="the idle app to be stopped")
        assert port_open(kept_port)  # idle too, but inside its awake window
        paastis.lifecycle.check_idle()
        assert not idle.stopping  # nothing queued
        assert port_open(kept_port) and paastis.registry.get("kept") is not None
    finally:
        for name in ("kept", "plain"):
            paastis.provider.stop(paastis.directory.resolve(name))
        paastis.close()
