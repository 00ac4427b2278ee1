"""Hooks: their environment, output, timeout, strict mode, isolation, and immunity to hostile names."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from paastis.hooks import HookFailed, HookRunner
from tests.support import filed_details, free_port, port_open, upstream_command, wait_until, write_config

ENV_DUMP = 'printf "%s|%s|%s|%s|%s\\n" "$PAASTIS_APP_NAME" "$PAASTIS_HOOK" "$PAASTIS_PROVIDER" "$PAASTIS_REGION" '
ENV_DUMP += '"$PAASTIS_REASON" >> "$HOOK_LOG"'


def runner(**options) -> HookRunner:
    defaults = {"provider": "local", "region": "osc-fr1", "timeout": 5.0, "strict": False}
    return HookRunner(**{**defaults, **options})


def test_the_app_and_occasion_reach_the_hook_as_environment(tmp_path):
    results = []
    environment = {"PATH": os.environ["PATH"], "HOOK_LOG": str(tmp_path / "hooks.log")}
    hooks = runner(on_result=lambda hook, ok: results.append((hook, ok)), environment=environment)
    assert hooks.run("before_start", ENV_DUMP, "shop", "request")
    assert hooks.run("after_stop", ENV_DUMP, "shop", "idle", region="osc-secnum-fr1")
    assert (tmp_path / "hooks.log").read_text().splitlines() == [
        "shop|before_start|local|osc-fr1|request",
        "shop|after_stop|local|osc-secnum-fr1|idle",
    ]
    assert results == [("before_start", True), ("after_stop", True)]


def test_each_app_s_hooks_name_its_own_provider_its_type_and_its_region(tmp_path):
    environment = {"PATH": os.environ["PATH"], "HOOK_LOG": str(tmp_path / "hooks.log")}
    accounts = {"paris": ("scalingo", "osc-fr1"), "us": ("heroku", None)}
    hooks = runner(provider="several", region=None, environment=environment, accounts=accounts)
    dump = ENV_DUMP.replace('"$PAASTIS_REASON"', '"$PAASTIS_PROVIDER_TYPE"')
    assert hooks.run("before_start", dump, "shop", "request", provider="paris")
    assert hooks.run("before_stop", dump, "front", "idle", region="eu", provider="us")
    assert (tmp_path / "hooks.log").read_text().splitlines() == [
        "shop|before_start|paris|osc-fr1|scalingo",  # no region of its own: its provider's
        "front|before_stop|us|eu|heroku",
    ]


def test_a_hostile_app_name_is_data_never_code(tmp_path):
    hostile = "x\"; touch pwned-1; echo '$(touch pwned-2)' `touch pwned-3` && touch pwned-4 #"
    out = tmp_path / "name.txt"
    assert runner().run("before_start", f'printf "%s" "$PAASTIS_APP_NAME" > {out}', hostile, "request")
    assert out.read_text() == hostile
    assert not list(Path.cwd().glob("pwned-*")) and not list(tmp_path.glob("pwned-*"))


def test_output_is_logged_line_by_line_tagged_with_app_and_hook(paastis_caplog):
    caplog = paastis_caplog
    assert runner().run("after_start", "echo first; echo second >&2", "shop", "manual")
    tagged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[hook")]
    assert tagged == ["[hook after_start app=shop] first", "[hook after_start app=shop] second"]


def test_a_timeout_kills_the_whole_process_group(tmp_path, paastis_caplog):
    pid_file = tmp_path / "child.pid"
    command = f"sleep 30 & echo $! > {pid_file}; wait"
    assert not runner(timeout=0.5).run("before_stop", command, "shop", "idle")
    child = int(pid_file.read_text())
    wait_until(lambda: not _alive(child), 5, what="the hook's child to be killed")
    assert "hook before_stop for app shop timed out after 0.5s and was killed" in paastis_caplog.text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_strict_mode_aborts_only_on_a_failed_before_hook(paastis_caplog):
    strict = runner(strict=True)
    with pytest.raises(HookFailed, match="before_start hook failed for app 'shop'"):
        strict.run("before_start", "exit 3", "shop", "request")
    assert not strict.run("after_start", "exit 3", "shop", "request")  # after-hooks only log
    assert not runner().run("before_start", "exit 3", "shop", "request")  # not strict: logged, goes on
    assert "hook before_start for app shop exited with code 3" in paastis_caplog.text


# -- through real gunicorn -----------------------------------------------------------


def local_app(tmp_path: Path, name: str, **env) -> tuple[dict, int]:
    port = free_port()
    env.setdefault("START_LOG", tmp_path / f"{name}-starts.log")
    return {"name": name, "url": f"http://127.0.0.1:{port}", "command": upstream_command(**env)}, port


def hook_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_hooks_run_around_starts_and_stops_with_reasons_and_rule_overrides(tmp_path, gunicorn_factory):
    log = tmp_path / "hooks.log"
    front, _ = local_app(tmp_path, "front")
    back, back_port = local_app(tmp_path, "back")
    rules = [
        {"pattern": "front", "linked_apps": ["back"]},
        {"pattern": "back", "hooks": {"before_start": ENV_DUMP.replace("$PAASTIS_HOOK", "rule-$PAASTIS_HOOK")}},
    ]
    write_config(tmp_path, [front, back], rules)
    env = {f"HOOKS_{hook.upper()}": ENV_DUMP for hook in ("before_start", "after_start", "before_stop", "after_stop")}
    paastis = gunicorn_factory(
        {
            **env,
            "HOOK_LOG": str(log),
            "HOOKS_ENV_PASSTHROUGH": "HOOK_LOG",  # hooks get it only when named on purpose
            "PROVIDER_REGION": "eu-west",
            "START_AND_STOP_MAX_IDLE_TIME": "0.02",
            "START_AND_STOP_CHECKING_INTERVAL": "0.3",
        }
    )
    assert paastis.get("/echo", host="front.localhost").status_code == 200
    wait_until(lambda: not port_open(back_port), 15, what="the linked back to be stopped once idle")
    expected = {
        "front|before_start|local|eu-west|request",
        "front|after_start|local|eu-west|request",
        "back|rule-before_start|local|eu-west|linked",  # the rule's hook, not the global one
        "back|after_start|local|eu-west|linked",
        "front|before_stop|local|eu-west|idle",
        "front|after_stop|local|eu-west|idle",
        "back|before_stop|local|eu-west|idle",
        "back|after_stop|local|eu-west|idle",
    }
    wait_until(lambda: set(hook_lines(log)) == expected, 10, what=f"all hooks to run, got {hook_lines(log)}")
    assert len(hook_lines(log)) == len(expected)


def test_strict_mode_a_failed_before_start_answers_502_and_starts_nothing(tmp_path, gunicorn_factory):
    demo, port = local_app(tmp_path, "demo")
    write_config(tmp_path, [demo])
    paastis = gunicorn_factory({"HOOKS_BEFORE_START": "echo no capacity >&2; exit 1", "HOOKS_STRICT": "true"})
    response = paastis.get("/echo")
    assert response.status_code == 502
    assert "before_start hook failed for app 'demo' (HOOKS_STRICT=true)" in filed_details(paastis, response)
    assert not port_open(port) and not (tmp_path / "demo-starts.log").exists()
    assert "[hook before_start app=demo] no capacity" in paastis.logs()


def test_without_strict_mode_a_failed_before_start_is_logged_and_the_app_starts(tmp_path, gunicorn_factory):
    demo, _ = local_app(tmp_path, "demo")
    write_config(tmp_path, [demo])
    paastis = gunicorn_factory({"HOOKS_BEFORE_START": "exit 1"})
    assert paastis.get("/echo").status_code == 200
    assert "hook before_start for app demo exited with code 1" in paastis.logs()


def test_a_slow_hook_of_one_app_never_delays_another_app(tmp_path, gunicorn_factory):
    slow, _ = local_app(tmp_path, "slow")
    fast, _ = local_app(tmp_path, "fast")
    running = tmp_path / "slow-hook-running"
    rules = [{"pattern": "slow", "hooks": {"before_start": f"touch {running}; sleep 4"}}]
    write_config(tmp_path, [slow, fast], rules)
    paastis = gunicorn_factory()
    with ThreadPoolExecutor(2) as pool:
        slow_call = pool.submit(paastis.get, "/echo", "slow.localhost")
        wait_until(running.exists, 5, what="the slow app's hook to start")
        assert paastis.get("/echo", host="fast.localhost").status_code == 200
        assert not slow_call.done(), "the fast app was served only after the slow app's hook"
        assert slow_call.result().status_code == 200


def test_a_host_full_of_shell_metacharacters_runs_nothing(tmp_path, gunicorn_factory):
    demo, _ = local_app(tmp_path, "demo")
    marker = tmp_path / "pwned"
    write_config(tmp_path, [demo], [{"pattern": ".*", "hooks": {"before_start": ENV_DUMP}}])
    log = tmp_path / "hooks.log"
    paastis = gunicorn_factory({"HOOK_LOG": str(log), "HOOKS_ENV_PASSTHROUGH": "HOOK_LOG"})
    hostile = [
        f"$(touch {marker}).localhost",
        f"`touch {marker}`.localhost",
        f"demo;touch {marker}.localhost",
        f"demo|touch {marker}",
        f"demo&&touch {marker}",
        f"demo'\"$(touch {marker})",
    ]
    for host in hostile:
        response = paastis.get("/echo", host=host)
        assert response.status_code == 400, host
    assert paastis.get("/echo", host="demo.localhost").status_code == 200  # still serving
    assert not marker.exists()
    assert hook_lines(log) == ["demo|before_start|local||request"]
