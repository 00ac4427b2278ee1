"""A replay of idle stops across three instances sharing Redis: no app is stopped before its idle time ran out.

Traffic is shaped to hit the race the issue measured (1 stop in 140 came 0.23 s after a request ended):
requests through random instances, each gap just under the idle time, so the leader's ticks keep
falling near a request's end. Every stop is then checked against the requests the test made.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest

from paastis import create_app
from paastis.config import Settings
from tests.redis_support import SHARED_URL
from tests.support import close_in_process, local_app, port_open, wait_until, write_config

pytestmark = pytest.mark.e2e

IDLE = 1.2  # seconds (START_AND_STOP_MAX_IDLE_TIME=0.02 minutes)
APPS = 4
REPLAY = 30.0  # seconds of traffic


@pytest.fixture
def instances(tmp_path, prefix) -> Iterator[tuple[list, dict[str, int]]]:
    apps = [local_app(tmp_path, f"app{i}") for i in range(APPS)]
    config = write_config(tmp_path, [app for app, _ in apps])
    env = {
        "PAASTIS_CONFIG_FILE": str(config),
        "PAASTIS_STATE_DIR": str(tmp_path / "state"),
        "REGISTRY_TYPE": "redis",
        "REGISTRY_REDIS_URL": SHARED_URL,
        "REGISTRY_REDIS_PREFIX": prefix,
        "EVENTS_STORE_TYPE": "redis",
        "START_AND_STOP_MAX_IDLE_TIME": "0.02",
        "START_AND_STOP_CHECKING_INTERVAL": "0.2",
        "MAX_IN_FLIGHT_PER_APP": "50",
    }
    flasks = [create_app(Settings.from_env(env, dotenv=False), start_supervisor=True) for _ in range(3)]
    yield flasks, {app["name"]: port for app, port in apps}
    for flask_app in flasks:
        close_in_process(flask_app.extensions["paastis"])


def test_three_instances_never_stop_an_app_before_its_idle_time_ran_out(instances):
    flasks, ports = instances
    clients = [flask_app.test_client() for flask_app in flasks]
    requests: dict[str, list[tuple[float, float, int]]] = {name: [] for name in ports}  # (began, ended, status)

    def user(name: str, seed: int) -> None:
        rng = random.Random(seed)
        until = time.monotonic() + REPLAY
        while time.monotonic() < until:
            for _ in range(rng.randint(1, 4)):  # a burst, each gap just under the idle time
                began = time.time()
                response = rng.choice(clients).get("/echo", headers={"Host": f"{name}.localhost"})
                status = response.status_code
                response.close()  # the request ends here (its last access)
                requests[name].append((began, time.time(), status))
                time.sleep(rng.uniform(0.8, 1.15))
            wait_until(lambda: not port_open(ports[name]), 20, interval=0.02, what=f"{name} to be put to sleep")

    users = [threading.Thread(target=user, args=(name, i)) for i, name in enumerate(ports)]
    for thread in users:
        thread.start()
    for thread in users:
        thread.join()

    events = flasks[0].extensions["paastis"].events
    stops = events.query(type="APP_STOPPED", limit=10_000)
    assert len(stops) >= 3 * APPS  # the replay exercised the idle stop many times
    for stop in stops:
        began_stopping = stop.timestamp.timestamp() - (stop.duration or 0.0)
        ended = [end for _, end, _ in requests[stop.app] if end <= began_stopping]
        assert ended, f"{stop.app} was stopped before any request"
        quiet = began_stopping - max(ended)
        assert quiet >= IDLE - 0.05, f"{stop.app} was stopped {quiet:.2f}s after a request ended (idle time {IDLE}s)"
    assert {status for calls in requests.values() for _, _, status in calls} == {200}
