"""End to end: real gunicorn, real upstream processes managed by the local provider."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

from tests.support import (
    PYTHON,
    UPSTREAM_APP,
    filed_details,
    free_port,
    local_app,
    port_open,
    starts,
    wait_until,
    write_config,
)

FAST_FAIL = {"PROVIDER_OPERATION_TIMEOUT": "15"}


def test_wake_on_request_then_proxy(tmp_path, gunicorn_factory):
    app, port = local_app(tmp_path, BOOT_DELAY=0.5)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    assert not port_open(port)
    response = paastis.get("/echo?a=1&b=%2F", host=f"demo.localhost:{paastis.port}")
    assert response.status_code == 200
    seen = response.json()
    assert seen["path"] == "/echo?a=1&b=%2F"
    assert starts(tmp_path) == 1


def test_coalesced_wake_one_start_for_100_requests(tmp_path, gunicorn_factory):
    app, _ = local_app(tmp_path, BOOT_DELAY=1)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory({"PAASTIS_THREADS": "128", "MAX_IN_FLIGHT_PER_APP": "100"})  # all 100 may wait
    with ThreadPoolExecutor(100) as pool:
        codes = list(pool.map(lambda _: paastis.get("/echo").status_code, range(100)))
    assert codes == [200] * 100
    assert starts(tmp_path) == 1


def test_bad_host_gets_400_and_unknown_app_404(tmp_path, gunicorn_factory):
    write_config(tmp_path, [local_app(tmp_path)[0]])
    paastis = gunicorn_factory()
    bad = paastis.get(host="demo_app.localhost")
    assert bad.status_code == 400
    assert "not a valid hostname" in bad.json()["error"]
    unknown = paastis.get(host="ghost.localhost")
    assert unknown.status_code == 404
    assert "ghost" in unknown.json()["error"]
    assert paastis.get(host="demo.localhost").status_code == 200  # still serving


def test_start_failure_is_a_quick_502_and_other_apps_still_work(tmp_path, gunicorn_factory):
    broken, _ = local_app(tmp_path, "broken", EXIT_CODE=3)
    healthy, _ = local_app(tmp_path, "healthy")
    write_config(tmp_path, [broken, healthy])
    paastis = gunicorn_factory({"PROVIDER_OPERATION_TIMEOUT": "30"})
    response = paastis.get(host="broken.localhost", timeout=10)
    assert response.status_code == 502
    assert "broken" in response.json()["error"]
    assert paastis.get(host="healthy.localhost").status_code == 200
    assert "local: broken exited with code 3" in paastis.logs()


def test_failing_start_command_reports_its_exit_code(tmp_path, gunicorn_factory):
    app = {"name": "svc", "url": f"http://127.0.0.1:{free_port()}", "start": "echo nope >&2; exit 7", "stop": "true"}
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    response = paastis.get(host="svc.localhost")
    assert response.status_code == 502
    assert response.json()["error"].startswith("app 'svc' could not be started (event ")
    assert "start command exited with code 7: nope" in filed_details(paastis, response)


def test_start_and_stop_commands_manage_an_app(tmp_path, gunicorn_factory):
    port = free_port()
    pid_file = tmp_path / "svc.pid"
    log = tmp_path / "svc-starts.log"
    start = f"START_LOG={log} nohup {PYTHON} {UPSTREAM_APP} >/dev/null 2>&1 & echo $! > {pid_file}"
    app = {"name": "svc", "url": f"http://127.0.0.1:{port}", "start": start, "stop": f"kill $(cat {pid_file})"}
    write_config(tmp_path, [app])
    paastis = gunicorn_factory(
        {"START_AND_STOP_MAX_IDLE_TIME": "0.01", "START_AND_STOP_CHECKING_INTERVAL": "0.3", **FAST_FAIL}
    )
    assert paastis.get(host="svc.localhost").status_code == 200
    wait_until(lambda: not port_open(port), 15, what="the stop command to stop the idle app")
    assert paastis.get(host="svc.localhost").status_code == 200
    assert starts(tmp_path, "svc") == 2
    subprocess.run(f"kill $(cat {pid_file})", shell=True, check=False)


def test_start_timeout_is_a_504_naming_the_app(tmp_path, gunicorn_factory):
    slow, _ = local_app(tmp_path, "slow", BOOT_DELAY=30)
    write_config(tmp_path, [slow])
    paastis = gunicorn_factory({"PROVIDER_OPERATION_TIMEOUT": "1.5"})
    response = paastis.get(host="slow.localhost")
    assert response.status_code == 504
    assert response.json()["error"].startswith("app 'slow' did not become ready in time (event ")
    assert "app 'slow' did not become ready within 1.5s" in filed_details(paastis, response)


def test_idle_app_is_stopped_then_woken_again(tmp_path, gunicorn_factory):
    app, port = local_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory({"START_AND_STOP_MAX_IDLE_TIME": "0.02", "START_AND_STOP_CHECKING_INTERVAL": "0.3"})
    assert paastis.get("/echo").status_code == 200
    wait_until(lambda: not port_open(port), 15, what="the idle app to be stopped")
    assert paastis.get("/echo").status_code == 200
    assert starts(tmp_path) == 2
    assert "stopping demo (idle)" in paastis.logs()


def test_a_request_in_flight_keeps_the_app_awake(tmp_path, gunicorn_factory):
    app, port = local_app(tmp_path)
    write_config(tmp_path, [app])
    # Idle after 0.6 s, checked every 0.3 s, while one response takes 4 s to stream.
    paastis = gunicorn_factory({"START_AND_STOP_MAX_IDLE_TIME": "0.01", "START_AND_STOP_CHECKING_INTERVAL": "0.3"})
    response = paastis.get("/stream?chunks=8&delay=0.5", stream=True)
    lines = [line for line in response.iter_lines() if line]
    assert lines == [f"chunk {i}".encode() for i in range(8)]
    assert starts(tmp_path) == 1
    wait_until(lambda: not port_open(port), 15, what="the app to be stopped once idle")


def test_app_that_died_behind_our_back_is_woken_again(tmp_path, gunicorn_factory):
    app, port = local_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    assert paastis.get("/echo").status_code == 200
    pid = int((tmp_path / "state" / "demo.pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not port_open(port), 5, what="the app to die")
    response = paastis.get("/echo")
    assert response.status_code == 200
    assert starts(tmp_path) == 2


def test_waiting_page_for_browsers_while_api_calls_wait(tmp_path, gunicorn_factory):
    app, _ = local_app(tmp_path, BOOT_DELAY=2)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    page = paastis.get(headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 503
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Cache-Control"] == "no-store"
    assert "demo is starting" in page.text and 'http-equiv="refresh"' in page.text
    body = b"payload" * 1000
    posted = paastis.request("POST", "/upload", data=body, headers={"Accept": "text/html"})
    assert posted.status_code == 200
    assert posted.json()["body_size"] == len(body)
    api = paastis.get("/echo", headers={"Accept": "application/json"})
    assert api.status_code == 200 and api.json()["method"] == "GET"
    assert wait_until(lambda: paastis.get(headers={"Accept": "text/html"}).status_code == 200, 10)
    assert starts(tmp_path) == 1


def test_waiting_page_shows_a_failed_start(tmp_path, gunicorn_factory):
    app, _ = local_app(tmp_path, EXIT_CODE=1)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    assert paastis.get(headers={"Accept": "text/html"}).status_code == 503

    def failure_page() -> str | None:
        page = paastis.get(headers={"Accept": "text/html"})
        return page.text if page.status_code == 502 else None

    text = wait_until(failure_page, 15, what="the failure page")
    assert "demo could not start" in text
    assert "app &#39;demo&#39; could not be started (event " in text  # one sentence and the event id
    assert "exited with code" not in text and str(tmp_path) not in text and "upstream_app" not in text  # no details


def test_blocking_strategy_never_answers_html(tmp_path, gunicorn_factory):
    app, _ = local_app(tmp_path, BOOT_DELAY=0.5)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory({"WAKE_STRATEGY": "blocking"})
    response = paastis.get("/echo", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert response.json()["path"] == "/echo"


def test_in_memory_registry_runs_one_worker_and_says_why(tmp_path, gunicorn_factory):
    write_config(tmp_path, [local_app(tmp_path)[0]])
    paastis = gunicorn_factory({"WEB_CONCURRENCY": "3"})
    assert paastis.get("/echo").status_code == 200
    assert len(paastis.worker_pids()) == 1
    assert "WEB_CONCURRENCY=3 ignored: the in-memory registry lives in one process" in paastis.logs()


def test_json_logs_are_one_object_per_line(tmp_path, gunicorn_factory):
    write_config(tmp_path, [local_app(tmp_path)[0]])
    paastis = gunicorn_factory({"LOG_FORMAT": "json"})
    assert paastis.get("/echo").status_code == 200
    records = [json.loads(line) for line in paastis.logs().splitlines() if line.startswith("{")]
    messages = [record["message"] for record in records]
    assert any(message.startswith("demo is ready after") for message in messages)
    assert all(record["time"].endswith("+00:00") and record["level"] for record in records)


def test_spawned_apps_get_only_the_base_their_env_and_their_name(tmp_path, gunicorn_factory):
    app, _ = local_app(tmp_path)
    app["env"] = {"APP_SETTING": "visible"}
    write_config(tmp_path, [app])
    paastis = gunicorn_factory({"LOG_FORMAT": "text", "SHARED_SETTING": "not for apps"})
    names = ["LOG_FORMAT", "SHARED_SETTING", "APP_SETTING", "PAASTIS_APP_NAME", "PATH"]
    seen = paastis.get("/env?" + "&".join(f"name={name}" for name in names)).json()
    assert seen["LOG_FORMAT"] is None and seen["SHARED_SETTING"] is None  # not named: not given
    assert seen["APP_SETTING"] == "visible" and seen["PAASTIS_APP_NAME"] == "demo" and seen["PATH"]
