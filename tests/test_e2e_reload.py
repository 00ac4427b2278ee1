"""End to end: configuration changes applied to a running gunicorn (SIGHUP), never taking paastis down."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import requests

from tests.support import Gunicorn, local_app, port_open, starts, wait_until, write_config
from tests.test_e2e_websockets import ws_app

pytestmark = pytest.mark.e2e

TOKEN = "reload-admin-token-0123456789"
ADMIN = {"ROUTING_SYSTEM_API_ENABLED": "true", "ROUTING_SYSTEM_API_TOKEN": TOKEN}


def admin(paastis: Gunicorn, path: str) -> requests.Response:
    headers = {"PaastisProxyTarget": "system", "Authorization": f"Bearer {TOKEN}"}
    return requests.get(paastis.url + path, headers=headers, timeout=30)


def last_reload(paastis: Gunicorn) -> dict:
    return admin(paastis, "/health").json()["config_reload"]


def hup(paastis: Gunicorn) -> int:
    """SIGHUP to the master; returns the reload generation to wait past."""
    before = last_reload(paastis)["generation"]
    os.kill(paastis.process.pid, signal.SIGHUP)
    return before


def reloaded(paastis: Gunicorn, before: int) -> dict:
    return wait_until(
        lambda: (outcome := last_reload(paastis))["generation"] > before and outcome, 60, what="the reload's outcome"
    )


def test_a_hup_with_a_broken_file_keeps_serving_with_the_old_configuration_and_logs_why(tmp_path, gunicorn_factory):
    app, port = local_app(tmp_path)
    config = write_config(tmp_path, [app], [{"pattern": "demo", "app_max_idle_time": 7}])
    paastis = gunicorn_factory(ADMIN)
    assert paastis.get("/echo").status_code == 200
    workers = paastis.worker_pids()
    assert last_reload(paastis)["result"] == "none"

    config.write_text(config.read_text() + "  - pattern: [broken\n")
    outcome = reloaded(paastis, hup(paastis))

    assert outcome["result"] == "failed" and "not valid YAML" in outcome["error"] and str(config) in outcome["error"]
    refused = [line for line in paastis.logs().splitlines() if "reload refused" in line]
    assert len(refused) == 1 and str(config) in refused[0]
    assert "still serving the previous configuration" in refused[0]
    assert paastis.process.poll() is None and paastis.worker_pids() == workers  # nothing restarted
    assert paastis.get("/echo").status_code == 200 and starts(tmp_path) == 1  # the app was never touched
    apps = admin(paastis, "/apps").json()["apps"]
    assert [(a["name"], a["max_idle_time"]) for a in apps] == [("demo", 7)]  # the old rules
    assert "paastis_config_last_reload_successful 0.0" in admin(paastis, "/metrics").text

    write_config(tmp_path, [app], [{"pattern": "demo", "app_max_idle_time": 9}])  # fixed: the next HUP applies it
    assert reloaded(paastis, hup(paastis))["result"] == "applied"
    wait_until(lambda: admin(paastis, "/apps").json()["apps"][0]["max_idle_time"] == 9, 30, what="the new rule")
    assert "paastis_config_last_reload_successful 1.0" in admin(paastis, "/metrics").text
    assert paastis.get("/echo").status_code == 200 and starts(tmp_path) == 1
    assert "paastis reloaded: provider=local" in paastis.logs()


def test_a_hup_with_a_good_file_keeps_requests_waits_and_websockets_in_flight(tmp_path, gunicorn_factory):
    demo, demo_port = local_app(tmp_path)
    slow, _ = local_app(tmp_path, "slow", BOOT_DELAY=6)
    chat, _ = ws_app(tmp_path, "chat")
    write_config(tmp_path, [demo, slow, chat])
    paastis = gunicorn_factory(ADMIN)
    assert paastis.get("/echo").status_code == 200
    old_workers = paastis.worker_pids()

    with open_chat(paastis) as chat_ws:
        chat_ws.send("before")
        assert chat_ws.recv(timeout=30) == "before"
        streaming = paastis.get("/stream?chunks=20&delay=0.3", stream=True)
        lines = streaming.iter_lines()
        assert next(lines) == b"chunk 0"  # a response under way
        waiting: dict[str, requests.Response] = {}
        waker = threading.Thread(target=lambda: waiting.update(r=paastis.get("/echo", host="slow.localhost")))
        waker.start()  # a request waiting for its app to wake

        extra, _ = local_app(tmp_path, "extra")
        write_config(tmp_path, [demo, slow, chat, extra])
        assert reloaded(paastis, hup(paastis))["result"] == "applied"
        wait_until(lambda: paastis.get("/echo", host="extra.localhost").status_code == 200, 60, what="the new app")

        assert [line for line in lines] == [f"chunk {i}".encode() for i in range(1, 20)]
        waker.join(60)
        assert waiting["r"].status_code == 200 and waiting["r"].json()["path"] == "/echo"
        chat_ws.send("after")
        assert chat_ws.recv(timeout=30) == "after"  # the WebSocket outlived its worker's replacement
        assert set(old_workers) <= set(paastis.worker_pids())  # its worker still drains
    wait_until(lambda: not set(old_workers) & set(paastis.worker_pids()), 30, what="the old worker to finish")
    assert starts(tmp_path) == 1 and port_open(demo_port)  # the apps paastis manages were never touched
    assert starts(tmp_path, "slow") == 1 and starts(tmp_path, "chat") == 1
    assert "drained" in paastis.logs()


def waking(paastis: Gunicorn, name: str) -> bool:
    return any(a["name"] == name and a.get("starting") for a in admin(paastis, "/apps").json()["apps"])


def open_chat(paastis: Gunicorn):
    from tests.test_e2e_websockets import open_ws

    return open_ws(paastis, app="chat")


def test_paastis_reload_applies_or_refuses_and_says_which(tmp_path, gunicorn_factory):
    from tests.test_cli import run

    app, _ = local_app(tmp_path)
    config = write_config(tmp_path, [app])
    paastis = gunicorn_factory(ADMIN)
    env = {"PORT": str(paastis.port), "PAASTIS_STATE_DIR": str(tmp_path / "state")}
    pid_file = Path(tmp_path / "state" / f"paastis-{paastis.port}.master")  # written once gunicorn is ready
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, what="the master's pid file")
    assert pid_file.read_text().strip() == str(paastis.process.pid)

    applied = run("reload", cwd=tmp_path, **env)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith("configuration reloaded")

    config.write_text("apps: [\n")
    refused = run("reload", cwd=tmp_path, **env)
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1
    assert "reload refused" in refused.stderr and "not valid YAML" in refused.stderr
    assert paastis.get("/echo").status_code == 200

    nobody = run("reload", cwd=tmp_path, PORT="9", PAASTIS_STATE_DIR=str(tmp_path / "state"))
    assert nobody.returncode == 1 and "no paastis runs here on port 9" in nobody.stderr
