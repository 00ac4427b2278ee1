"""End to end: several real gunicorn instances sharing one Redis registry, local provider apps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.redis_support import SHARED_URL, RedisServer
from tests.support import (
    PYTHON,
    UPSTREAM_APP,
    free_port,
    local_app,
    port_open,
    starts,
    wait_until,
    write_config,
)

LEADING = "now leading the idle checks"
FAST_IDLE = {"START_AND_STOP_MAX_IDLE_TIME": "0.02", "START_AND_STOP_CHECKING_INTERVAL": "0.3"}


@pytest.fixture
def shared(prefix):
    """The environment of an instance on the shared Redis, under this test's prefix."""
    return {"REGISTRY_TYPE": "redis", "REGISTRY_REDIS_URL": SHARED_URL, "REGISTRY_REDIS_PREFIX": prefix}


@pytest.fixture
def raw():
    client = redis.Redis.from_url(SHARED_URL, decode_responses=True)
    yield client
    client.close()


def leaders(instances) -> list:
    return [instance for instance in instances if LEADING in instance.logs()]


def test_one_registry_and_one_start_for_40_requests_over_two_instances(tmp_path, gunicorn_factory, shared, raw, prefix):
    app, _ = local_app(tmp_path, BOOT_DELAY=1)
    write_config(tmp_path, [app])
    one, two = gunicorn_factory(shared, name="one"), gunicorn_factory(shared, name="two")  # default settings
    with ThreadPoolExecutor(40) as pool:
        codes = list(pool.map(lambda i: (one, two)[i % 2].get("/echo").status_code, range(40)))
    assert codes == [200] * 40
    assert starts(tmp_path) == 1
    assert one.logs().count("starting demo (") + two.logs().count("starting demo (") == 1  # one provider call
    stored = json.loads(raw.hget(f"{prefix}registry:apps", "demo"))
    assert stored["key"] == "demo" and stored["started_at"].endswith("+00:00")
    assert two.get("/echo").status_code == 200 and one.get("/echo").status_code == 200
    assert starts(tmp_path) == 1


def test_exactly_one_stop_with_three_instances_and_foreign_keys_untouched(
    tmp_path, gunicorn_factory, shared, raw, prefix
):
    foreign = {"someone-else:session": "keep me", prefix.rstrip(":"): "keep me too"}
    for key, value in foreign.items():
        raw.set(key, value, ex=120)
    app, port = local_app(tmp_path)
    write_config(tmp_path, [app])
    env = {**shared, **FAST_IDLE}
    instances = [gunicorn_factory(env, name="one"), gunicorn_factory(env, name="two")]
    instances.append(gunicorn_factory({**env, "WEB_CONCURRENCY": "2"}, name="three"))
    try:
        wait_until(lambda: len(instances[2].worker_pids()) == 2, 10, what="two workers (allowed with Redis)")
        assert instances[1].get("/echo").status_code == 200
        wait_until(lambda: not port_open(port), 15, what="the idle app to be stopped")
        time.sleep(1.0)  # three more checking intervals: nobody else may stop it again
        stops = sum(instance.logs().count("stopping demo (idle)") for instance in instances)
        assert stops == 1
        assert len(leaders(instances)) == 1
        assert raw.hget(f"{prefix}registry:apps", "demo") is None
        for key, value in foreign.items():
            assert raw.get(key) == value and raw.ttl(key) > 0
    finally:
        raw.delete(*foreign)


def test_a_request_during_a_stop_on_another_instance_waits_and_wakes_the_app(tmp_path, gunicorn_factory, shared):
    port = free_port()
    pid_file, stopping, stopped = tmp_path / "svc.pid", tmp_path / "stopping", tmp_path / "stopped"
    log = tmp_path / "svc-starts.log"
    app = {
        "name": "svc",
        "url": f"http://127.0.0.1:{port}",
        "start": f"START_LOG={log} nohup {PYTHON} {UPSTREAM_APP} >/dev/null 2>&1 & echo $! > {pid_file}",
        "stop": f"touch {stopping}; sleep 1.5; kill $(cat {pid_file}); touch {stopped}",  # a slow stop
    }
    write_config(tmp_path, [app])
    env = {**shared, **FAST_IDLE}
    instances = [gunicorn_factory(env, name="one"), gunicorn_factory(env, name="two")]
    try:
        leader = wait_until(lambda: leaders(instances), 10, what="a leader")[0]
        other = next(instance for instance in instances if instance is not leader)
        assert other.get(host="svc.localhost").status_code == 200
        wait_until(stopping.exists, 15, what="the leader to begin stopping the idle app")
        asked_at = time.monotonic()
        assert other.get("/echo", host="svc.localhost").status_code == 200
        assert time.monotonic() - asked_at > 0.5  # it waited for the stop to end
        assert stopped.exists()
        assert port_open(port)  # and woke the app again, after the stop
        assert starts(tmp_path, "svc") == 2
    finally:
        subprocess.run(f"kill $(cat {pid_file})", shell=True, check=False, capture_output=True)


def test_a_killed_leader_is_replaced_within_the_lock_ttl(tmp_path, gunicorn_factory, shared):
    app, port = local_app(tmp_path)
    write_config(tmp_path, [app])
    env = {**shared, **FAST_IDLE, "SUPERVISOR_LOCK_TTL": "2"}
    instances = [gunicorn_factory(env, name=name) for name in ("one", "two", "three")]
    leader = wait_until(lambda: leaders(instances), 10, what="a leader")[0]
    assert len(leaders(instances)) == 1
    leader.stop(signal.SIGKILL)  # no clean release
    survivors = [instance for instance in instances if instance is not leader]
    wait_until(lambda: leaders(survivors), 10, interval=0.05, what="another instance to lead (TTL 2 s)")
    assert len(leaders(survivors)) == 1
    assert survivors[0].get("/echo").status_code == 200
    wait_until(lambda: not port_open(port), 15, what="the new leader to stop the idle app")


def test_redis_stopped_and_restarted_under_traffic(tmp_path, gunicorn_factory, prefix):
    server = RedisServer(tmp_path).start()
    demo, _ = local_app(tmp_path)
    other, _ = local_app(tmp_path, "other")
    write_config(tmp_path, [demo, other])
    env = {
        "REGISTRY_TYPE": "redis",
        "REGISTRY_REDIS_URL": server.url,
        "REGISTRY_REDIS_PREFIX": prefix,
        "REGISTRY_REDIS_SOCKET_TIMEOUT": "0.3",
        "START_AND_STOP_CHECKING_INTERVAL": "0.3",
    }
    instances = [gunicorn_factory(env, name="one"), gunicorn_factory(env, name="two")]
    codes: list[int] = []
    done = threading.Event()

    def traffic() -> None:
        i = 0
        while not done.is_set():
            codes.append(instances[i % 2].get("/echo", timeout=10).status_code)
            i += 1

    try:
        assert instances[0].get("/echo").status_code == 200
        thread = threading.Thread(target=traffic, daemon=True)
        thread.start()
        wait_until(lambda: len(codes) > 20, 10, what="traffic")
        server.stop()
        seen = len(codes)
        wait_until(lambda: len(codes) > seen + 100, 20, what="traffic during the outage")
        assert instances[1].get(host="other.localhost").status_code == 200  # sleeping apps still wake
        server.start()  # it comes back empty
        client = server.client()
        wait_until(lambda: client.hget(f"{prefix}registry:apps", "demo"), 10, what="re-registration")
        seen = len(codes)
        wait_until(lambda: len(codes) > seen + 20, 10, what="traffic after the outage")
        done.set()
        thread.join(timeout=15)
        assert set(codes) == {200}
        assert starts(tmp_path) == 1 and starts(tmp_path, "other") == 1
        for instance in instances:
            logs = instance.logs()
            assert logs.count("redis: unreachable") == 1, logs  # once per outage, not per request
            assert "redis: reachable again" in logs
        client.close()
    finally:
        done.set()
        server.stop()


def test_redis_url_falls_back_to_redis_url_then_scalingo_redis_url(tmp_path, gunicorn_factory, prefix, raw):
    write_config(tmp_path, [local_app(tmp_path)[0]])
    common = {"REGISTRY_TYPE": "redis", "REGISTRY_REDIS_PREFIX": prefix, "REGISTRY_REDIS_URL": ""}
    scalingo = gunicorn_factory({**common, "REDIS_URL": "", "SCALINGO_REDIS_URL": SHARED_URL}, name="scalingo")
    assert scalingo.get("/echo").status_code == 200
    assert raw.hget(f"{prefix}registry:apps", "demo") is not None
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    plain = gunicorn_factory({**common, "REDIS_URL": SHARED_URL, "SCALINGO_REDIS_URL": unreachable}, name="plain")
    assert plain.get("/echo").status_code == 200
    assert starts(tmp_path) == 1  # it found the app in the same registry
    assert "redis: unreachable" not in plain.logs()


def test_redis_without_any_url_stops_start_up(tmp_path, gunicorn_factory):
    write_config(tmp_path, [local_app(tmp_path)[0]])
    env = {"REGISTRY_TYPE": "redis", "REGISTRY_REDIS_URL": "", "REDIS_URL": "", "SCALINGO_REDIS_URL": ""}
    server = gunicorn_factory(env, wait=False)
    wait_until(lambda: server.process.poll() is not None, 20, what="gunicorn to refuse to start")
    assert server.process.returncode != 0
    assert "REGISTRY_TYPE/EVENTS_STORE_TYPE=redis needs a Redis URL" in server.logs()


def test_a_restarted_instance_neither_wakes_nor_stops_apps(tmp_path, gunicorn_factory, shared, raw, prefix):
    app, port = local_app(tmp_path)
    write_config(tmp_path, [app])
    env = {**shared, "START_AND_STOP_CHECKING_INTERVAL": "0.3"}
    first = gunicorn_factory(env, name="first")
    assert first.get("/echo").status_code == 200
    before = json.loads(raw.hget(f"{prefix}registry:apps", "demo"))
    first.stop()
    second = gunicorn_factory(env, name="second")
    wait_until(lambda: LEADING in second.logs(), 10, what="the new instance to lead")
    time.sleep(0.9)  # three idle checks by the new leader
    assert port_open(port)
    assert second.get("/echo").status_code == 200
    assert starts(tmp_path) == 1
    assert json.loads(raw.hget(f"{prefix}registry:apps", "demo"))["started_at"] == before["started_at"]


def test_a_long_download_on_one_instance_keeps_the_app_awake_for_the_leader(tmp_path, gunicorn_factory, shared):
    app, port = local_app(tmp_path)
    write_config(tmp_path, [app])
    # Idle after 0.6 s, checked every 0.3 s, while one response takes 4 s to stream through the other instance.
    env = {**shared, "START_AND_STOP_MAX_IDLE_TIME": "0.01", "START_AND_STOP_CHECKING_INTERVAL": "0.3"}
    instances = [gunicorn_factory(env, name="one"), gunicorn_factory(env, name="two")]
    leader = wait_until(lambda: leaders(instances), 10, what="a leader")[0]
    other = next(instance for instance in instances if instance is not leader)
    response = other.get("/stream?chunks=8&delay=0.5", stream=True)
    lines = [line for line in response.iter_lines() if line]
    assert lines == [f"chunk {i}".encode() for i in range(8)]
    assert starts(tmp_path) == 1
    assert "stopping demo" not in leader.logs()
    wait_until(lambda: not port_open(port), 15, what="the app to be stopped once idle")


def test_a_request_arriving_as_the_leader_begins_a_stop_abandons_it(tmp_path, gunicorn_factory, shared):
    app, port = local_app(tmp_path)
    write_config(tmp_path, [app])
    hook_ran = tmp_path / "before-stop"
    # The leader decides the app is idle, then its before_stop hook takes 1.5 s: a request comes in meanwhile.
    env = {**shared, **FAST_IDLE, "HOOKS_BEFORE_STOP": f"touch {hook_ran}; sleep 1.5"}
    instances = [gunicorn_factory(env, name="one"), gunicorn_factory(env, name="two")]
    leader = wait_until(lambda: leaders(instances), 10, what="a leader")[0]
    other = next(instance for instance in instances if instance is not leader)
    assert other.get("/echo").status_code == 200
    wait_until(hook_ran.exists, 15, what="the leader to begin stopping the idle app")
    response = other.get("/stream?chunks=6&delay=0.5", stream=True)  # outlasts the hook
    lines = [line for line in response.iter_lines() if line]
    assert lines == [f"chunk {i}".encode() for i in range(6)]
    assert "not stopping demo: a request arrived" in leader.logs()
    assert starts(tmp_path) == 1
    wait_until(lambda: not port_open(port), 15, what="the app to be stopped once really idle")


def test_an_app_that_died_is_woken_once_for_requests_on_both_instances(tmp_path, gunicorn_factory, shared):
    app, port = local_app(tmp_path, BOOT_DELAY=0.5)
    write_config(tmp_path, [app])
    one, two = gunicorn_factory(shared, name="one"), gunicorn_factory(shared, name="two")
    assert one.get("/echo").status_code == 200 and two.get("/echo").status_code == 200
    pid = int((tmp_path / "state" / "demo.pid").read_text())
    assert pid > 1
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not port_open(port), 5, what="the app to die")
    with ThreadPoolExecutor(20) as pool:  # both instances still believe it awake: every request is refused first
        codes = list(pool.map(lambda i: (one, two)[i % 2].get("/echo").status_code, range(20)))
    assert codes == [200] * 20
    assert starts(tmp_path) == 2
