"""End to end through real gunicorn: linked apps, renamed keys, ignored apps."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.support import PYTHON, UPSTREAM_APP, free_port, port_open, starts, upstream_command, wait_until, write_config

FAST_IDLE = {"START_AND_STOP_MAX_IDLE_TIME": "0.03", "START_AND_STOP_CHECKING_INTERVAL": "0.3"}


def local_app(tmp_path: Path, name: str, **env) -> tuple[dict, int]:
    port = free_port()
    env.setdefault("START_LOG", tmp_path / f"{name}-starts.log")
    return {"name": name, "url": f"http://127.0.0.1:{port}", "command": upstream_command(**env)}, port


def test_a_front_wakes_its_back_in_parallel_and_the_request_waits_for_both(tmp_path, gunicorn_factory):
    front, _ = local_app(tmp_path, "front", BOOT_DELAY=1.5)
    back, back_port = local_app(tmp_path, "back", BOOT_DELAY=1.5)
    write_config(tmp_path, [front, back], [{"pattern": "front", "linked_apps": ["back"]}])
    paastis = gunicorn_factory()
    response = paastis.get("/echo", host="front.localhost")
    assert response.status_code == 200
    assert port_open(back_port), "the request was answered before its linked app was ready"
    lines = paastis.logs().splitlines()
    first_ready = next(i for i, line in enumerate(lines) if "is ready after" in line)
    starting = [
        i for i, line in enumerate(lines) if "starting front (request)" in line or "starting back (linked)" in line
    ]
    assert len(starting) == 2 and max(starting) < first_ready, "the two boots did not overlap"
    assert (starts(tmp_path, "front"), starts(tmp_path, "back")) == (1, 1)
    assert "starting back (linked)" in paastis.logs()


def test_a_failed_linked_app_fails_the_request_with_502_naming_it(tmp_path, gunicorn_factory):
    front, _ = local_app(tmp_path, "front")
    back, _ = local_app(tmp_path, "back", EXIT_CODE=1)
    write_config(tmp_path, [front, back], [{"pattern": "front", "linked_apps": ["back"]}])
    paastis = gunicorn_factory({"PROVIDER_OPERATION_TIMEOUT": "15"})
    response = paastis.get("/echo", host="front.localhost")
    assert response.status_code == 502
    assert "'back'" in response.json()["error"]
    missing = [{"pattern": "front", "linked_apps": ["ghost"]}]
    write_config(tmp_path, [front], missing)
    other = gunicorn_factory(name="second")
    response = other.get("/echo", host="front.localhost")
    assert response.status_code == 502 and "linked app 'ghost' (of 'front') is unknown" in response.json()["error"]


def test_a_back_is_never_stopped_under_its_front(tmp_path, gunicorn_factory):
    front, front_port = local_app(tmp_path, "front")
    back, back_port = local_app(tmp_path, "back")
    write_config(tmp_path, [front, back], [{"pattern": "front", "linked_apps": ["back"]}])
    paastis = gunicorn_factory(FAST_IDLE)  # idle after 1.8 s, checked every 0.3 s
    deadline = time.monotonic() + 4.5
    while time.monotonic() < deadline:  # only the front is ever requested
        assert paastis.get("/echo", host="front.localhost").status_code == 200
        time.sleep(0.3)
    assert port_open(back_port) and starts(tmp_path, "back") == 1
    wait_until(lambda: not port_open(front_port) and not port_open(back_port), 15, what="both to idle out")
    assert "stopping back (idle)" in paastis.logs()


def test_a_back_that_died_is_woken_again_by_its_front(tmp_path, gunicorn_factory):
    front, _ = local_app(tmp_path, "front")
    back, back_port = local_app(tmp_path, "back")
    write_config(tmp_path, [front, back], [{"pattern": "front", "linked_apps": ["back"]}])
    paastis = gunicorn_factory({"START_AND_STOP_CHECKING_INTERVAL": "0.3"})
    assert paastis.get("/echo", host="front.localhost").status_code == 200
    os.killpg(int((tmp_path / "state" / "back.pid").read_text()), signal.SIGKILL)
    wait_until(lambda: "forgetting back: found failed" in paastis.logs(), 15, what="the idle check to see it")
    assert paastis.get("/echo", host="front.localhost").status_code == 200
    assert port_open(back_port) and starts(tmp_path, "back") == 2 and starts(tmp_path, "front") == 1


def test_a_renamed_review_app_wakes_and_sleeps_with_its_linked_front(tmp_path, gunicorn_factory):
    back, back_port = local_app(tmp_path, "renamed-app-pr7-back")
    front, front_port = local_app(tmp_path, "renamed-app-pr7-front")
    rules = [
        {
            "pattern": r"app-review-pr(\d+)-(back|front)",
            "app_name": "renamed-app-pr$1-$2",
            "app_max_idle_time": 0.03,
            "linked_apps": ["app-review-pr$1-front"],
        }
    ]
    write_config(tmp_path, [back, front], rules)
    paastis = gunicorn_factory({"START_AND_STOP_CHECKING_INTERVAL": "0.3"})  # default idle time: 15 minutes
    assert paastis.get("/echo", host="app-review-pr7-back.localhost").status_code == 200
    assert port_open(back_port) and port_open(front_port)
    wait_until(lambda: not port_open(back_port) and not port_open(front_port), 15, what="the rule's idle time")
    logs = paastis.logs()
    assert "stopping app-review-pr7-back (idle)" in logs and "stopping app-review-pr7-front (idle)" in logs
    assert "renamed-app-pr7-back (idle)" not in logs  # the provider's name is never tracked twice
    assert starts(tmp_path, "renamed-app-pr7-back") == starts(tmp_path, "renamed-app-pr7-front") == 1


def test_the_infinite_cycle_wakes_each_app_once(tmp_path, gunicorn_factory):
    back, _ = local_app(tmp_path, "infinite-app-back")
    front, _ = local_app(tmp_path, "infinite-app-front")
    rules = [{"pattern": "infinite-app-(back|front)", "linked_apps": ["infinite-app-back", "infinite-app-front"]}]
    write_config(tmp_path, [back, front], rules)
    paastis = gunicorn_factory()
    assert paastis.get("/echo", host="infinite-app-front.localhost").status_code == 200
    assert paastis.get("/echo", host="infinite-app-back.localhost").status_code == 200
    assert starts(tmp_path, "infinite-app-back") == starts(tmp_path, "infinite-app-front") == 1


def test_an_ignored_app_is_proxied_if_it_runs_and_never_started_or_stopped(tmp_path, gunicorn_factory):
    legacy, port = local_app(tmp_path, "legacy")
    demo, demo_port = local_app(tmp_path, "demo")  # a managed app, to see idle checks at work
    write_config(tmp_path, [legacy, demo])
    paastis = gunicorn_factory({"REGISTRY_IGNORED_APPS": "paastis,legacy", **FAST_IDLE})
    refused = paastis.get("/echo", host="legacy.localhost")
    assert refused.status_code == 503
    assert refused.json()["error"] == "app 'legacy' is not running and is not managed by paastis"
    assert not port_open(port) and starts(tmp_path, "legacy") == 0
    outside = subprocess.Popen([PYTHON, str(UPSTREAM_APP)], env={"PORT": str(port)})
    try:
        wait_until(lambda: port_open(port), 10)
        assert paastis.get("/echo", host="legacy.localhost").status_code == 200
        assert paastis.get("/echo", host="demo.localhost").status_code == 200
        wait_until(lambda: not port_open(demo_port), 15, what="the managed app, used at the same time, to idle out")
        assert outside.poll() is None and port_open(port)
        assert "stopping legacy" not in paastis.logs()
    finally:
        outside.kill()
        outside.wait()


def test_with_an_allow_list_other_apps_are_not_managed(tmp_path, gunicorn_factory):
    demo, _ = local_app(tmp_path, "demo")
    other, other_port = local_app(tmp_path, "other")
    write_config(tmp_path, [demo, other])
    paastis = gunicorn_factory({"REGISTRY_ALLOWED_APPS": "dem.*"})
    assert paastis.get("/echo", host="demo.localhost").status_code == 200
    assert paastis.get("/echo", host="other.localhost").status_code == 503
    assert not port_open(other_port)


def test_a_long_request_to_the_front_keeps_its_back_awake(tmp_path, gunicorn_factory):
    front, front_port = local_app(tmp_path, "front")
    back, back_port = local_app(tmp_path, "back")
    write_config(tmp_path, [front, back], [{"pattern": "front", "linked_apps": ["back"]}])
    # Both idle after 0.6 s, checked every 0.3 s, while one response from the front takes 4 s.
    paastis = gunicorn_factory({"START_AND_STOP_MAX_IDLE_TIME": "0.01", "START_AND_STOP_CHECKING_INTERVAL": "0.3"})
    response = paastis.get("/stream?chunks=8&delay=0.5", host="front.localhost", stream=True)
    for index, line in enumerate(line for line in response.iter_lines() if line):
        assert line == f"chunk {index}".encode()
        if index >= 3:
            assert port_open(back_port), f"the back was stopped under its busy front (chunk {index})"
    assert starts(tmp_path, "back") == 1
    wait_until(lambda: not port_open(front_port) and not port_open(back_port), 15, what="both to idle out after")
