"""The local provider reports only what happened: real stops, foreign processes, clean failed starts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from paastis import create_app
from paastis.config import Settings
from paastis.providers import AppInfo, ProviderError
from paastis.providers.local import LocalProvider, process_start_time
from tests.fakes.scalingo_api import ScalingoPlatform
from tests.support import PYTHON, free_port, local_app, port_open, starts, wait_until, write_config

TOKEN = "local-truth-token-0123456789"
SYSTEM = {"PaastisProxyTarget": "system", "Authorization": f"Bearer {TOKEN}", "Host": "paastis.localhost"}


def sleeper(marker: str, seconds: int = 300) -> str:
    """A shell command sleeping ``seconds``, findable by ``marker`` in its command line."""
    return f"{PYTHON} -c 'import time; time.sleep({seconds})' {marker}"


def processes_with(marker: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False)
    return [int(pid) for pid in out.stdout.split()]


@pytest.fixture
def wired(tmp_path):
    """A paastis instance (in-process, admin API on) over the given local apps; everything killed afterwards."""
    built = []

    def build(apps: list[dict], rules: list[dict] | None = None, **env: str):
        config = write_config(tmp_path, apps, rules)
        values = {
            "PAASTIS_CONFIG_FILE": str(config),
            "PAASTIS_STATE_DIR": str(tmp_path / "state"),
            "ROUTING_SYSTEM_API_ENABLED": "true",
            "ROUTING_SYSTEM_API_TOKEN": TOKEN,
            **env,
        }
        app = create_app(Settings.from_env(values, dotenv=False))
        built.append(app.extensions["paastis"])
        return app

    yield build
    for paastis in built:
        paastis.close()
    for pid_file in (tmp_path / "state").glob("*.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def events(client, app: str) -> list[dict]:
    return client.get(f"/events?app={app}", headers=SYSTEM).get_json()["events"]


def test_a_port_held_by_a_foreign_process_is_never_reported_stopped(wired):
    port = free_port()
    app = wired([{"name": "svc", "url": f"http://127.0.0.1:{port}", "command": "sleep 60"}])
    client = app.test_client()
    with socket.create_server(("127.0.0.1", port)):  # someone else's server on the app's port
        answer = client.post("/apps/svc/stop", headers=SYSTEM)
        assert answer.status_code == 502
        assert f"a process paastis did not start listens on 127.0.0.1:{port}" in answer.get_json()["error"]
        assert port_open(port)  # left alone
    assert [e["type"] for e in events(client, "svc")] == ["APP_STOP_FAILED"]


def test_a_stop_command_that_leaves_the_port_open_is_a_failed_stop(wired, tmp_path):
    port = free_port()
    after_stop = tmp_path / "after-stop.log"
    app = wired(
        [{"name": "svc", "url": f"http://127.0.0.1:{port}", "start": "true", "stop": "true", "stop_timeout": 0.5}],
        HOOKS_AFTER_STOP=f"echo ran >> {after_stop}",
    )
    client = app.test_client()
    with socket.create_server(("127.0.0.1", port)):
        answer = client.post("/apps/svc/stop", headers=SYSTEM)
    assert answer.status_code == 502
    assert f"its stop command succeeded, but http://127.0.0.1:{port} still accepts connections" in answer.text
    assert not after_stop.exists()  # after_stop hooks run only after a real stop
    assert [e["type"] for e in events(client, "svc")] == ["APP_STOP_FAILED"]


def test_a_stop_is_reported_once_the_processes_are_gone_and_the_port_closed(wired, tmp_path):
    marker = f"stubborn-{uuid.uuid4().hex[:8]}"
    port = free_port()
    ignores_term = (
        f"trap '' TERM; {PYTHON} -c \"import signal,socket,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"s=socket.create_server(('127.0.0.1',{port})); time.sleep(600)\" {marker}"
    )
    app = wired([{"name": "svc", "url": f"http://127.0.0.1:{port}", "command": ignores_term, "stop_timeout": 1}])
    client = app.test_client()
    assert client.post("/apps/svc/start", headers=SYSTEM).status_code == 200
    assert processes_with(marker)
    answer = client.post("/apps/svc/stop", headers=SYSTEM)
    assert answer.status_code == 200
    # Reported stopped only now: SIGTERM was ignored, SIGKILL came after stop_timeout, and all is gone.
    assert not processes_with(marker)
    assert not port_open(port)
    stopped = events(client, "svc")[0]
    assert stopped["type"] == "APP_STOPPED" and stopped["duration"] >= 1


def test_a_timed_out_start_leaves_no_process_behind(wired, tmp_path):
    marker = f"never-ready-{uuid.uuid4().hex[:8]}"
    port = free_port()
    command = f"{sleeper(marker)} & {sleeper(marker, 301)}"  # a child and the shell, neither ever listening
    app = wired(
        [{"name": "slow", "url": f"http://127.0.0.1:{port}", "command": command}], PROVIDER_OPERATION_TIMEOUT="1"
    )
    client = app.test_client()
    answer = client.get("/", headers={"Host": "slow.localhost"})
    assert answer.status_code == 504
    wait_until(lambda: not processes_with(marker), 10, what="the start's processes to be gone")
    wait_until(lambda: not (tmp_path / "state" / "slow.pid").exists(), 10, what="the pid file to go")
    wait_until(lambda: events(client, "slow"), 10, what="the failed start to be recorded")
    failed = events(client, "slow")[0]
    assert failed["type"] == "APP_START_FAILED"
    assert "did not become ready within 1s" in failed["message"]
    assert "its process group" in failed["message"] and "was stopped" in failed["message"]


def test_a_start_command_that_times_out_is_killed_with_its_children(wired):
    marker = f"start-hangs-{uuid.uuid4().hex[:8]}"
    app = wired(
        [
            {
                "name": "svc",
                "url": f"http://127.0.0.1:{free_port()}",
                "start": f"{sleeper(marker)} & {sleeper(marker, 301)}",
                "stop": "true",
            }
        ],
        PROVIDER_LOCAL_OPERATION_TIMEOUT="1",
    )
    client = app.test_client()
    answer = client.post("/apps/svc/start", headers=SYSTEM)
    assert answer.status_code == 504 and "'svc' did not become ready within 1s" in answer.get_json()["error"]
    wait_until(lambda: not processes_with(marker), 10, what="the start command's group to be gone")
    wait_until(lambda: events(client, "svc"), 10, what="the failed start to be recorded")
    assert events(client, "svc")[0]["type"] == "APP_START_FAILED"


def test_a_command_that_fails_files_its_exit_code_and_last_output_under_the_event_the_visitor_is_told(wired):
    command = "echo starting; echo 'ModuleNotFoundError: No module named flask' >&2; exit 3"
    app = wired([{"name": "broken", "url": f"http://127.0.0.1:{free_port()}", "command": command}])
    answer = app.test_client().get("/", headers={"Host": "broken.localhost"})
    assert answer.status_code == 502
    told = answer.get_json()
    assert told["error"] == f"app 'broken' could not be started (event {told['event']})"  # nothing more
    system = {"PaastisProxyTarget": "system", "Authorization": f"Bearer {TOKEN}"}
    events = app.test_client().get("/events?app=broken&type=APP_START_FAILED", headers=system).get_json()["events"]
    assert [event["id"] for event in events] == [told["event"]]
    assert "exited with code 3" in events[0]["message"]  # the details, for operators
    assert "starting | ModuleNotFoundError: No module named flask" in events[0]["message"]


def test_a_recycled_pid_is_never_signalled(tmp_path):
    """The pid file names a process that is not ours (pid reuse): stop leaves it alone."""
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        state = tmp_path / "state"
        state.mkdir()
        (state / "svc.pid").write_text(str(stranger.pid))
        started = process_start_time(stranger.pid)
        (state / "svc.identity").write_text(f"{stranger.pid} {started - 1} 0")  # written for an older process
        apps = [{"name": "svc", "url": f"http://127.0.0.1:{free_port()}", "command": "x"}]
        config = write_config(tmp_path, apps)
        settings = Settings.from_env(
            {"PAASTIS_CONFIG_FILE": str(config), "PAASTIS_STATE_DIR": str(state)}, dotenv=False
        )
        provider = LocalProvider.from_settings(settings, {"apps": apps})
        app = AppInfo(key="svc", name="svc")
        assert provider.stop(app) is None  # nothing of ours runs: nothing to stop
        assert stranger.poll() is None  # the stranger lives on
        (state / "svc.pid").write_text(str(stranger.pid))  # and without an identity file at all
        provider.stop(app)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_stopping_a_stopped_app_runs_no_hook_and_records_nothing(wired, tmp_path):
    app_config, port = local_app(tmp_path)
    hooks_log = tmp_path / "hooks.log"
    app = wired(
        [app_config],
        HOOKS_BEFORE_STOP=f'echo "before $PAASTIS_APP_NAME" >> {hooks_log}',
        HOOKS_AFTER_STOP=f'echo "after $PAASTIS_APP_NAME" >> {hooks_log}',
    )
    client = app.test_client()
    assert client.post("/apps/demo/start", headers=SYSTEM).status_code == 200
    assert client.post("/apps/demo/stop", headers=SYSTEM).status_code == 200
    assert not port_open(port)
    assert client.post("/apps/demo/stop", headers=SYSTEM).status_code == 200
    wait_until(lambda: hooks_log.exists() and "after demo" in hooks_log.read_text(), 10, what="the after_stop hook")
    assert hooks_log.read_text().split("\n").count("before demo") == 1
    assert [e["type"] for e in events(client, "demo")] == ["APP_STOPPED", "APP_STARTED"]
    assert starts(tmp_path) == 1


def test_stopping_a_stopped_paas_app_calls_no_scale_and_records_nothing(tmp_path):
    platform = ScalingoPlatform()
    platform.add_app("shop", running=True)
    write_config(tmp_path)
    env = {
        "PAASTIS_CONFIG_FILE": str(tmp_path / "paastis.yml"),
        **platform.paastis_env(),
        "ROUTING_SYSTEM_API_ENABLED": "true",
        "ROUTING_SYSTEM_API_TOKEN": TOKEN,
    }
    app = create_app(Settings.from_env(env, dotenv=False))
    client = app.test_client()
    try:
        assert client.post("/apps/shop/stop", headers=SYSTEM).status_code == 200
        scales = platform.calls("POST", r"/v1/apps/shop/scale")
        assert client.post("/apps/shop/stop", headers=SYSTEM).status_code == 200
        assert platform.calls("POST", r"/v1/apps/shop/scale") == scales
        assert [e["type"] for e in events(client, "shop")] == ["APP_STOPPED"]
    finally:
        app.extensions["paastis"].close()
        platform.close()


def test_event_durations_are_rounded_to_milliseconds(wired, tmp_path):
    app_config, _ = local_app(tmp_path)
    client = wired([app_config]).test_client()
    assert client.post("/apps/demo/start", headers=SYSTEM).status_code == 200
    duration = events(client, "demo")[0]["duration"]
    assert duration > 0 and round(duration, 3) == duration


def test_provider_error_for_a_foreign_port_at_start(tmp_path):
    port = free_port()
    apps = [{"name": "svc", "url": f"http://127.0.0.1:{port}", "command": "sleep 60"}]
    config = write_config(tmp_path, apps)
    settings = Settings.from_env(
        {"PAASTIS_CONFIG_FILE": str(config), "PAASTIS_STATE_DIR": str(tmp_path / "state")}, dotenv=False
    )
    provider = LocalProvider.from_settings(settings, {"apps": apps})
    with socket.create_server(("127.0.0.1", port)):
        with pytest.raises(ProviderError, match=f"a process paastis did not start listens on 127.0.0.1:{port}"):
            provider.start(AppInfo(key="svc", name="svc"))
    assert not Path(tmp_path / "state" / "svc.pid").exists()
