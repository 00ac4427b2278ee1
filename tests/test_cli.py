"""The installed ``paastis`` command, run as a user would, against a real gunicorn instance."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support import ROOT, free_port, kill_local_apps, local_app, port_open, starts, wait_until, write_config

TOKEN = "cli-token-0123456789abcdef"
PAASTIS = Path(sys.executable).parent / "paastis"
FLASK = Path(sys.executable).parent / "flask"

pytestmark = pytest.mark.e2e


def run(*args: str, cwd: Path = ROOT, command: Path = PAASTIS, **env: str) -> subprocess.CompletedProcess:
    """The console script with a clean environment: only what the test gives it (plus PATH)."""
    assert command.exists(), f"{command} is missing: install the repo into the venv (pip install -e .)"
    environ = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env}
    argv = [str(command), *args]
    return subprocess.run(argv, check=False, cwd=cwd, env=environ, capture_output=True, text=True, timeout=120)


@pytest.fixture
def served(tmp_path, gunicorn_factory):
    """A paastis with the admin API on and a sleeping local app ``demo`` that takes a moment to boot."""
    app, port = local_app(tmp_path, BOOT_DELAY=0.5)
    write_config(tmp_path, [app], [{"pattern": "demo", "app_max_idle_time": 7}])
    server = gunicorn_factory({"ROUTING_SYSTEM_API_ENABLED": "true", "ROUTING_SYSTEM_API_TOKEN": TOKEN})
    server.app_port = port
    server.cli_env = {"PAASTIS_URL": server.url, "ROUTING_SYSTEM_API_TOKEN": TOKEN}
    return server


def test_apps_start_stop_and_events_drive_a_running_instance(served, tmp_path):
    listed = run("apps", **served.cli_env)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "STATUS", "AWAKE", "SINCE", "(UTC)", "IDLE", "MAX", "IDLE", "LINKED"]
    assert row.split()[:2] == ["demo", "stopped"] and "7m" in row
    assert header.index("STATUS") == row.index("stopped")  # aligned columns
    too_soon = run("apps", "--refresh", **served.cli_env)  # the list above was made a moment ago
    assert too_soon.returncode == 1
    assert "POST /apps/refresh: 429: the apps were listed less than 10s ago: try again in" in too_soon.stderr

    started = run("start", "demo", **served.cli_env)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("demo is running (ready after ")
    assert port_open(served.app_port) and starts(tmp_path) == 1

    as_json = json.loads(run("apps", "--json", **served.cli_env).stdout)
    demo = as_json["apps"][0]
    assert demo["name"] == "demo" and demo["status"] == "running" and demo["started_at"]

    stopped = run("stop", "demo", **served.cli_env)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("demo is stopped")
    wait_until(lambda: not port_open(served.app_port), what="demo to be down")

    events = run("events", "--app", "demo", **served.cli_env)
    assert events.returncode == 0, events.stderr
    lines = events.stdout.splitlines()
    assert lines[0].split()[:4] == ["TIME", "(UTC)", "TYPE", "APP"]
    assert [line.split()[2] for line in lines[1:3]] == ["APP_STOPPED", "APP_STARTED"]  # newest first
    assert all(line.split()[4] == "manual" for line in lines[1:3])
    only_starts = json.loads(run("events", "--type", "APP_STARTED", "--json", **served.cli_env).stdout)
    assert [e["type"] for e in only_starts["events"]] == ["APP_STARTED"] and only_starts["events"][0]["duration"] > 0


def test_savings_shows_what_sleeping_saved(served):
    assert run("start", "demo", **served.cli_env).returncode == 0
    assert run("stop", "demo", **served.cli_env).returncode == 0
    result = run("savings", **served.cli_env)
    assert result.returncode == 0, result.stderr
    period, header, *rows = result.stdout.splitlines()
    assert period.startswith("from ") and period.endswith(" (UTC)")
    assert header.split()[:3] == ["APP", "ASLEEP", "AWAKE"] and "SAVED (EUR)" in header
    assert rows[0].split()[0] == "demo" and rows[1].split()[0] == "TOTAL"
    assert rows[-1] == "no price known for: demo (set cost_per_month in a rule)"
    data = json.loads(run("savings", "--app", "demo", "--json", **served.cli_env).stdout)
    assert [a["app"] for a in data["apps"]] == ["demo"] and data["apps"][0]["awake_hours"] > 0
    bad = run("savings", "--since", "yesterday", **served.cli_env)
    assert bad.returncode == 1 and "400" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_start_shows_progress_on_stderr_while_waiting(tmp_path, gunicorn_factory):
    app, _ = local_app(tmp_path, BOOT_DELAY=6)
    write_config(tmp_path, [app])
    server = gunicorn_factory({"ROUTING_SYSTEM_API_ENABLED": "true", "ROUTING_SYSTEM_API_TOKEN": TOKEN})
    started = run("start", "demo", PAASTIS_URL=server.url, ROUTING_SYSTEM_API_TOKEN=TOKEN)
    assert started.returncode == 0, started.stderr
    assert re.search(r"^waking demo… \d+s$", started.stderr, re.M)  # not a terminal: one line every 5 s
    assert started.stdout.startswith("demo is running")


def test_errors_are_one_line_with_a_non_zero_exit(served):
    cases = [
        (dict(served.cli_env, ROUTING_SYSTEM_API_TOKEN="wrong" + TOKEN), ("apps",), "401: wrong or missing"),
        (served.cli_env, ("start", "ghost"), "404: unknown app 'ghost'"),
        (served.cli_env, ("events", "--type", "NOPE"), "400: type must be one of"),
        (served.cli_env, ("events", "--app", "nope"), "unknown app 'nope'"),
        (served.cli_env, ("savings", "--app", "nope"), "unknown app 'nope'"),
        ({"PAASTIS_URL": served.url}, ("apps",), "ROUTING_SYSTEM_API_TOKEN is not set"),
        ({"PAASTIS_URL": "http://127.0.0.1:9", "ROUTING_SYSTEM_API_TOKEN": TOKEN}, ("apps",), "cannot reach paastis"),
    ]
    for env, args, message in cases:
        result = run(*args, **env)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("paastis: "), result.stderr
        assert message in result.stderr
    assert run("apps", **served.cli_env).returncode == 0  # the instance still serves


def test_the_token_may_come_from_a_dotenv_file(served, tmp_path):
    (tmp_path / ".env").write_text(f"ROUTING_SYSTEM_API_TOKEN={TOKEN}\nPAASTIS_URL={served.url}\n")
    result = run("apps", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].startswith("demo")


def test_host_and_port_come_from_the_dotenv_file_like_the_token(served, tmp_path):
    (tmp_path / ".env").write_text(f"ROUTING_SYSTEM_API_TOKEN={TOKEN}\nHOST=0.0.0.0\nPORT={served.port}\n")
    result = run("apps", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].startswith("demo")


def test_an_instance_without_the_admin_api_says_it_is_off(tmp_path, gunicorn_factory):
    app, _ = local_app(tmp_path)
    write_config(tmp_path, [app])
    server = gunicorn_factory()
    for args in (("apps",), ("events",), ("start", "demo")):
        result = run(*args, PAASTIS_URL=server.url, ROUTING_SYSTEM_API_TOKEN=TOKEN)
        assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
        assert "the admin API is off (ROUTING_SYSTEM_API_ENABLED)" in result.stderr
    assert server.get("/echo").status_code == 200  # apps are still served, and were never reached by the CLI


def test_check_validates_like_start_up_and_prints_the_summary(tmp_path):
    app, _ = local_app(tmp_path)
    config = write_config(tmp_path, [app], [{"pattern": "demo", "app_max_idle_time": 3}])
    env = {"PAASTIS_CONFIG_FILE": str(config), "PAASTIS_STATE_DIR": str(tmp_path / "state")}
    env["PAASTIS_DOMAINS"] = "localhost"  # else start-up warns that any domain routes
    good = run("check", cwd=tmp_path, **env)
    assert good.returncode == 0, good.stderr
    summary = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in good.stdout.splitlines()[1:-1])
    assert summary["provider"] == "local" and summary["apps"] == "demo" and summary["rules"] == "1"
    assert summary["dashboard"] == "off" and summary["admin API"] == "off" and summary["idle checks"] == "every 60 s"
    assert good.stdout.splitlines()[-1] == "configuration OK" and good.stderr == ""
    assert not (tmp_path / "demo-starts.log").exists()  # nothing was started

    warned = run("check", cwd=tmp_path, PAASTIS_CONFIG_FILE=str(config), PAASTIS_DRY_RUN="true")
    assert warned.returncode == 0 and "PAASTIS_DRY_RUN=true: no app will be stopped" in warned.stderr

    config.write_text("rules:\n  - pattern: demo\n    app_max_idle_time: soon\n")
    bad = run("check", cwd=tmp_path, PAASTIS_CONFIG_FILE=str(config))
    assert bad.returncode == 2
    assert bad.stderr.startswith("paastis: configuration error: ") and len(bad.stderr.splitlines()) == 1
    assert "app_max_idle_time" in bad.stderr and "Traceback" not in bad.stderr

    dashboard = run("check", cwd=tmp_path, PAASTIS_CONFIG_FILE=str(config), PAASTIS_DASHBOARD_HOST="paastis.localhost")
    assert dashboard.returncode == 2 and "ROUTING_SYSTEM_API_TOKEN" in dashboard.stderr


def test_flask_cli_runs_the_same_commands(served):
    result = run("paastis", "apps", command=FLASK, FLASK_APP="app", **served.cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[:2] == ["demo", "stopped"]
    bad = run("paastis", "check", command=FLASK, FLASK_APP="app", PROVIDER_NAME="nope")
    assert bad.returncode != 0 and "PROVIDER_NAME='nope'" in bad.stderr


def test_pip_install_gives_the_command_and_the_dashboard_files(tmp_path):
    """``pip install .`` as a user runs it (a wheel, not this checkout): templates and static files included."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("paastis-*.whl"))
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)]
    assert subprocess.run(install, check=False, capture_output=True, timeout=300).returncode == 0
    assert (target / "paastis" / "dashboard" / "static" / "dashboard.js").is_file()
    entry_points = next(target.glob("paastis-*.dist-info")).joinpath("entry_points.txt").read_text()
    assert "paastis = paastis.cli:main" in entry_points and "[flask.commands]" in entry_points
    probe = (
        "import paastis, sys; from paastis import create_app; from paastis.config import Settings;"
        "app = create_app(Settings.from_env({'PAASTIS_DASHBOARD_HOST': 'p.localhost', 'PAASTIS_SECRET_KEY': 'k' * 32,"
        " 'ROUTING_SYSTEM_API_TOKEN': 't' * 16, 'PAASTIS_STATE_DIR': 'state'}, dotenv=False));"
        "c = app.test_client(); r = c.get('/dashboard/sign-in', headers={'Host': 'p.localhost'});"
        "s = c.get('/dashboard/static/dashboard.css', headers={'Host': 'p.localhost'});"
        "print(paastis.__file__, r.status_code, s.status_code)"
    )
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(target)}
    ran = subprocess.run(
        [sys.executable, "-c", probe], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    where, sign_in, css = ran.stdout.split()
    assert where.startswith(str(target)) and sign_in == "200" and css == "200"

    # `paastis serve` from that installed copy, in a folder with neither app.py nor gunicorn.conf.py
    app, app_port = local_app(tmp_path, "demo")
    write_config(tmp_path, [app])
    port = free_port()
    serve_env = {**env, "PORT": str(port), "HOST": "127.0.0.1", "PAASTIS_STATE_DIR": str(tmp_path / "state")}
    serve = "import sys; from paastis.cli import main; sys.argv = ['paastis', 'serve', '--access-logfile', '-']; main()"
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-c", serve],
        cwd=tmp_path,
        env=serve_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: port_open(port) or server.poll() is not None, 30, what="paastis serve listening")
        response = requests.get(f"http://127.0.0.1:{port}/echo", headers={"Host": "demo.localhost"}, timeout=30)
        assert response.status_code == 200 and response.json()["path"] == "/echo"
        served_log = tmp_path / "serve.log"  # the worker writes its access line after answering: wait for it
        wait_until(lambda: '"GET /echo HTTP/1.1" 200' in served_log.read_text(), what="the access log line")
        assert "paastis ready: provider=local" in served_log.read_text()  # and --access-logfile reached gunicorn
        argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")  # gunicorn replaced the command
        assert f"{target}/paastis/gunicorn_conf.py".encode() in argv and b"paastis.wsgi:app" in argv
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
        kill_local_apps(tmp_path / "state")
    wait_until(lambda: not port_open(app_port), what="the app paastis serve woke to be stopped")


def test_the_container_health_check_tells_a_serving_paastis_from_none(served):
    command = [sys.executable, "-m", "paastis.healthcheck"]
    up = subprocess.run(command, check=False, env={"PORT": str(served.port)}, capture_output=True, text=True)
    assert up.returncode == 0 and up.stdout.startswith("paastis answers on 127.0.0.1:"), up.stderr
    assert not port_open(served.app_port)  # it woke nothing
    down = subprocess.run(command, check=False, env={"PORT": "9"}, capture_output=True, text=True)
    assert down.returncode == 1 and down.stderr.startswith("no answer from 127.0.0.1:9")
