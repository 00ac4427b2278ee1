"""Start-up through a real gunicorn: mistakes stop it in one line, .env reaches gunicorn, one summary line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from tests.redis_support import SHARED_URL
from tests.support import PYTHON, ROOT, free_port, local_app, port_open, wait_until, write_config

pytestmark = pytest.mark.e2e  # every test here starts gunicorn

GOOD_APP = "  - name: demo\n    url: http://127.0.0.1:{port}\n    command: sleep 60\n"


def clean_env(**extra: str) -> dict[str, str]:
    """The test runner's environment minus paastis settings, so only what a test sets counts."""
    prefixes = ("PROVIDER_", "REGISTRY_", "HOOKS_", "PAASTIS_", "START_AND_STOP_", "WEB_CONCURRENCY", "LOG_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and k not in ("PORT", "HOST")}
    env.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra})
    return env


def gunicorn_args() -> list[str]:
    """``gunicorn app:app`` as the README runs it, from a directory of the test's own (its .env, its paastis.yml)."""
    return [PYTHON, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "app:app"]


def refused_start(tmp_path: Path, env: dict[str, str], files: dict[str, str]) -> subprocess.CompletedProcess:
    for name, text in files.items():
        (tmp_path / name).write_text(text.format(port=free_port()))
    return subprocess.run(
        gunicorn_args(),
        cwd=tmp_path,
        env=clean_env(**{"PORT": str(free_port()), "HOST": "127.0.0.1", **env}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "files", "line"),
    [
        ({"PAASTIS_THREADS": "0"}, {}, "PAASTIS_THREADS='0' must be a whole number >= 1"),
        ({"HOST": "not a host!"}, {}, "HOST='not a host!' must be an IP address"),
        ({}, {".env": "WEB_CONCURRENCY=two\n"}, "WEB_CONCURRENCY='two' is not a whole number"),
        ({}, {".env": "PAASTIS_THREADS=lots\n"}, "PAASTIS_THREADS='lots' is not a whole number"),
        (
            {"REGISTRY_TYPE": "redis", "REGISTRY_REDIS_URL": "http://user:pw@cache:6379"},
            {},
            "REGISTRY_REDIS_URL must be a redis://, rediss:// or unix:// URL (it has a http:// URL)",
        ),
        ({"PAASTIS_CONFIG_FILE": "nowhere.yml"}, {}, "PAASTIS_CONFIG_FILE='nowhere.yml': no such file"),
        ({"PAASTIS_STATE_DIR": "/proc/paastis-state"}, {}, "PAASTIS_STATE_DIR='/proc/paastis-state' cannot be created"),
        ({}, {"paastis.yml": "apps: [\n"}, "paastis.yml: not valid YAML: while parsing"),
        ({}, {"paastis.yml": "rule:\n  - pattern: demo\n"}, "unknown top-level key(s) 'rule' (did you mean 'rules'?)"),
        (
            {},
            {"paastis.yml": "apps:\n" + GOOD_APP + "    stop_timeout: soon\n"},
            "apps[0] ('demo'): stop_timeout must be seconds (> 0, at most 3600), not 'soon'",
        ),
        (
            {},
            {"paastis.yml": "apps:\n  - name: demo\n    url: http://127.0.0.1:1\n    command: [python3, app.py]\n"},
            "apps[0] ('demo'): command must be one shell command string, not a list",
        ),
        (
            {},
            {"paastis.yml": "apps:\n" + GOOD_APP + "    ready_path: health\n"},
            "apps[0] ('demo'): ready_path must be a path starting with '/'",
        ),
        (
            {},
            {"paastis.yml": "rules:\n  - pattern: demo\n    provider_name: heroku\n"},
            "rule #0 (pattern 'demo'): no provider matches provider_name 'heroku' (this paastis has local (local))",
        ),
        (
            {"START_AND_STOP_CHECKING_INTERVAL": "30", "START_AND_STOP_CHECKING_INTERVAL_CRON": "* * * * *"},
            {},
            "START_AND_STOP_CHECKING_INTERVAL and START_AND_STOP_CHECKING_INTERVAL_CRON are both set",
        ),
        ({"START_AND_STOP_CHECKING_INTERVAL_CRON": "every minute"}, {}, "is not a cron expression"),
        (
            {"PROVIDER_SCALINGO_API_TOKEN": "tk-us-x", "PROVIDER_HEROKU_API_TOKEN": "HRKU-x"},
            {},
            "PROVIDER_NAME is not set and credentials for several providers are",
        ),
        ({"PROVIDER_LOCAL_OPERATION_TIMEOUT": "soon"}, {}, "PROVIDER_LOCAL_OPERATION_TIMEOUT='soon' is not a number"),
        (
            {"START_AND_STOP_MAX_IDLE_TIM": "5"},
            {},
            "in the environment: START_AND_STOP_MAX_IDLE_TIM (did you mean START_AND_STOP_MAX_IDLE_TIME?)",
        ),
        ({}, {".env": "PAASTIS_DRYRUN=true\n"}, "PAASTIS_DRYRUN (did you mean PAASTIS_DRY_RUN?)"),
        (
            {"PAASTIS_ALLOW_UNKNOWN_SETTINGS": "true"},
            {".env": "PAASTIS_DRYRUN=true\n"},
            "PAASTIS_DRYRUN (did you mean PAASTIS_DRY_RUN?)",  # .env is paastis's own: never let through
        ),
        (
            {},
            {"paastis.yml": "apps:\n" + GOOD_APP + GOOD_APP.replace("demo", "blog")},
            "apps: demo and blog share http://127.0.0.1:",
        ),
    ],
)
def test_a_mistake_stops_gunicorn_with_one_line_naming_it(tmp_path, env, files, line):
    result = refused_start(tmp_path, env, files)
    assert result.returncode != 0
    lines = [text for text in result.stderr.splitlines() if text.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("paastis: configuration error: ")
    assert line in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "pw@" not in result.stderr  # a Redis URL's password is never echoed


def test_an_unknown_setting_of_a_shared_environment_may_be_let_through(tmp_path, instance):
    port = free_port()
    env = {"PORT": str(port), "HOST": "127.0.0.1", "PAASTIS_STATE_DIR": str(tmp_path / "state")}
    paastis = instance({**env, "MAX_CONNECTIONS_OF_SOMETHING_ELSE": "3", "PAASTIS_ALLOW_UNKNOWN_SETTINGS": "true"})
    wait_until(lambda: "paastis ready:" in paastis.text(), 30, what="the summary line")


def test_a_rule_matching_no_app_and_a_missing_file_are_said_once(tmp_path, instance):
    port = free_port()
    blog, _ = local_app(tmp_path, "blog")
    write_config(tmp_path, [blog], [{"pattern": "blgo", "app_max_idle_time": 5}, {"pattern": "blog"}])
    env = {"PORT": str(port), "HOST": "127.0.0.1", "PAASTIS_STATE_DIR": str(tmp_path / "state")}
    paastis = instance(env)
    wait_until(lambda: "paastis ready:" in paastis.text(), 30, what="the summary line")
    warned = [line for line in paastis.text().splitlines() if "matches none of the apps" in line]
    assert len(warned) == 1 and "rule #0 (pattern 'blgo')" in warned[0] and "(blog)" in warned[0]
    paastis.stop()
    wait_until(lambda: not port_open(port), 10, what="the port to close")

    (tmp_path / "paastis.yml").unlink()
    bare = instance(env)
    wait_until(lambda: "paastis ready:" in bare.text(), 30, what="the summary line")
    said = [line for line in bare.text().splitlines() if "running with no rules" in line]
    assert len(said) == 1 and f"looked for {tmp_path / 'paastis.yml'}" in said[0]


def test_errors_name_the_actual_config_file(tmp_path):
    result = refused_start(tmp_path, {"PAASTIS_CONFIG_FILE": "rules/prod.yml"}, {})
    assert "rules/prod.yml" in result.stderr
    (tmp_path / "rules").mkdir()
    result = refused_start(tmp_path, {"PAASTIS_CONFIG_FILE": "rules/prod.yml"}, {"rules/prod.yml": "rulez: []\n"})
    assert "paastis: configuration error: rules/prod.yml: unknown top-level key(s) 'rulez'" in result.stderr


def test_configuration_errors_are_json_when_logs_are(tmp_path):
    result = refused_start(tmp_path, {"LOG_FORMAT": "json", "PAASTIS_THREADS": "none"}, {})
    record = json.loads(result.stderr.strip())
    assert record["level"] == "error" and "PAASTIS_THREADS='none'" in record["message"]


def test_an_old_python_gets_one_line_naming_the_version_needed():
    code = (
        "import sys, runpy; sys.version_info = (3, 10, 14, 'final', 0); sys.version = '3.10.14 (main)'; "
        f"runpy.run_path({str(ROOT / 'gunicorn.conf.py')!r})"
    )
    result = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("paastis: needs Python 3.11 or later; this is Python 3.10.14")
    assert "Traceback" not in result.stderr


class Instance:
    """gunicorn started from ``tmp_path`` (its .env, its paastis.yml), stopped at the end of the test."""

    def __init__(self, tmp_path: Path, env: dict[str, str]):
        self.log = tmp_path / "gunicorn.log"
        with open(self.log, "wb") as output:
            self.process = subprocess.Popen(
                gunicorn_args(),
                cwd=tmp_path,
                env=clean_env(**env),
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False)
        return [int(pid) for pid in out.stdout.split()]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


@pytest.fixture
def instance(tmp_path):
    started: list[Instance] = []

    def start(env: dict[str, str] | None = None) -> Instance:
        started.append(Instance(tmp_path, env or {}))
        return started[-1]

    yield start
    for each in started:
        each.stop()
    for pid_file in (tmp_path / "state").glob("*.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def test_dotenv_reaches_gunicorn_and_the_process_environment_wins(tmp_path, instance, prefix):
    dotenv_port, real_port = free_port(), free_port()
    app, _ = local_app(tmp_path)
    write_config(tmp_path, [app])
    (tmp_path / ".env").write_text(
        f"HOST=127.0.0.1\nPORT={dotenv_port}\nWEB_CONCURRENCY=2\nPAASTIS_THREADS=3\n"
        f"PAASTIS_ACCESS_LOG={tmp_path / 'access.log'}\nPAASTIS_STATE_DIR={tmp_path / 'state'}\n"
        f"REGISTRY_TYPE=redis\nREGISTRY_REDIS_URL={SHARED_URL}\nREGISTRY_REDIS_PREFIX={prefix}\n"
        f'HOOKS_AFTER_START=echo "$PAASTIS_APP_NAME ${{PAASTIS_HOOK}}" > {tmp_path / "hook.out"}\n'
    )
    paastis = instance({"PORT": str(real_port)})  # the process environment wins over .env
    wait_until(lambda: port_open(real_port) or paastis.process.poll() is not None, 30, what="gunicorn to listen")
    assert port_open(real_port), paastis.text()
    assert not port_open(dotenv_port)
    wait_until(lambda: len(paastis.workers()) == 2, 20, what="the two workers of WEB_CONCURRENCY=2")
    response = requests.get(f"http://127.0.0.1:{real_port}/echo", headers={"Host": "demo.localhost"}, timeout=60)
    assert response.status_code == 200
    wait_until(lambda: "/echo" in (tmp_path / "access.log").read_text(), 10, what="an access log line")
    # $NAME and ${NAME} were kept for the hook's shell, which gets PAASTIS_APP_NAME at run time:
    hook_out = tmp_path / "hook.out"
    wait_until(lambda: hook_out.exists() and hook_out.read_text().strip(), 10, what="the after_start hook")
    assert hook_out.read_text().strip() == "demo after_start"
    assert "workers=2x3 threads" in paastis.text()


def test_one_summary_line_per_instance_and_no_warning_nobody_asked_for(tmp_path, instance, prefix):
    port = free_port()
    app, _ = local_app(tmp_path)
    write_config(tmp_path, [app], [{"pattern": "demo", "app_max_idle_time": 5}])
    paastis = instance(
        {
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "PAASTIS_STATE_DIR": str(tmp_path / "state"),
            "REGISTRY_TYPE": "redis",
            "REGISTRY_REDIS_URL": SHARED_URL,
            "REGISTRY_REDIS_PREFIX": prefix,
            "WEB_CONCURRENCY": "3",
        }
    )
    wait_until(lambda: len(paastis.workers()) == 3 and port_open(port), 30, what="three workers")
    wait_until(lambda: paastis.text().count("Booting worker") == 3, 10, what="three workers booted")
    summaries = [line for line in paastis.text().splitlines() if "paastis ready:" in line]
    assert len(summaries) == 1, paastis.text()
    summary = summaries[0]
    for fragment in (
        "provider=local",
        f"config={tmp_path / 'paastis.yml'}",
        "apps=1",
        "rules=1",
        "registry=redis",
        "events=in-memory",
        "admin_api=off",
        f"try: curl -H 'Host: demo.localhost:{port}' http://127.0.0.1:{port}/",
    ):
        assert fragment in summary
    assert "WEB_CONCURRENCY" not in paastis.text()  # honoured, so nothing to warn about


def test_web_concurrency_warning_only_when_the_user_set_it(tmp_path, instance):
    port = free_port()
    env = {"PORT": str(port), "HOST": "127.0.0.1", "PAASTIS_STATE_DIR": str(tmp_path / "state")}
    quiet = instance(env)
    wait_until(lambda: "paastis ready:" in quiet.text(), 30, what="the summary line")
    assert "WEB_CONCURRENCY" not in quiet.text()
    quiet.stop()
    wait_until(lambda: not port_open(port), 10, what="the port to close")
    loud = instance({**env, "WEB_CONCURRENCY": "4"})
    wait_until(lambda: "paastis ready:" in loud.text(), 30, what="the summary line")
    assert loud.text().count("WEB_CONCURRENCY=4 ignored: the in-memory registry lives in one process") == 1


def test_a_host_without_an_app_key_gets_a_404_that_explains_routing(tmp_path, instance):
    port = free_port()
    app, _ = local_app(tmp_path)
    write_config(tmp_path, [app])
    instance({"PORT": str(port), "HOST": "127.0.0.1", "PAASTIS_STATE_DIR": str(tmp_path / "state")})
    wait_until(lambda: port_open(port), 30, what="gunicorn to listen")
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]"):
        response = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": host}, timeout=30)
        assert response.status_code == 404
        error = response.json()["error"]
        assert f"no app in Host {host!r}" in error
        assert "<app>.<your domain>" in error
        assert "demo.localhost" in error  # an example with an app this paastis knows
        assert "unknown app" not in error


def test_json_logs_cover_gunicorn_lines_with_pid_and_app(tmp_path, instance):
    port = free_port()
    app, _ = local_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = instance(
        {
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "PAASTIS_STATE_DIR": str(tmp_path / "state"),
            "LOG_FORMAT": "json",
            "PAASTIS_ACCESS_LOG": "-",
            "HOOKS_AFTER_START": "echo warmed",
        }
    )
    wait_until(lambda: port_open(port), 30, what="gunicorn to listen")
    response = requests.get(f"http://127.0.0.1:{port}/echo", headers={"Host": "demo.localhost"}, timeout=60)
    assert response.status_code == 200
    wait_until(lambda: "/echo" in paastis.text() and "warmed" in paastis.text(), 10, what="access and hook lines")
    paastis.stop()
    lines = [line for line in paastis.text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON: any other fails here
    assert all(isinstance(record["pid"], int) for record in records)
    loggers = {record["logger"] for record in records}
    assert {"gunicorn.error", "gunicorn.access", "paastis.lifecycle"} <= loggers
    access = [record for record in records if record["logger"] == "gunicorn.access"]
    assert access and all(record["app"] == "demo" for record in access)
    ready = [record for record in records if record["message"].startswith("demo is ready after")]
    assert ready and ready[0]["app"] == "demo"
    hook = [record for record in records if record["message"].endswith("] warmed")]
    assert hook and hook[0]["app"] == "demo"
