"""Orderly ending: shutdown waits for running stops; a failing background job shows its traceback once."""

from __future__ import annotations

import logging

from paastis import create_app
from paastis.config import Settings
from paastis.logs import JobErrors
from tests.support import kill_local_apps, local_app, port_open, wait_until, write_config


def test_shutdown_waits_for_a_stop_under_way_before_closing_provider_and_registry(tmp_path):
    app, port = local_app(tmp_path)
    config = write_config(tmp_path, [app])
    hook_ran = tmp_path / "before-stop"
    env = {
        "PAASTIS_CONFIG_FILE": str(config),
        "PAASTIS_STATE_DIR": str(tmp_path / "state"),
        "START_AND_STOP_MAX_IDLE_TIME": "0.01",
        "START_AND_STOP_CHECKING_INTERVAL": "0.3",
        "HOOKS_BEFORE_STOP": f"touch {hook_ran}; sleep 2",  # the stop is under way for 2 s
    }
    flask_app = create_app(Settings.from_env(env, dotenv=False), start_supervisor=True)
    paastis = flask_app.extensions["paastis"]
    try:
        response = flask_app.test_client().get("/echo", headers={"Host": "demo.localhost"})
        assert response.status_code == 200
        response.close()  # the request ends
        wait_until(hook_ran.exists, 20, what="the idle stop to begin")
        paastis.close()
        assert not port_open(port)  # the stop ended before the provider and the registry were closed
        assert [event.type for event in paastis.events.query(app="demo", type="APP_STOPPED")] == ["APP_STOPPED"]
    finally:
        kill_local_apps(tmp_path / "state")


def test_a_failing_job_logs_its_traceback_once_then_a_line_a_minute(caplog):
    now = [0.0]
    errors = JobErrors(logging.getLogger("paastis.test-jobs"), every=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="paastis.test-jobs"):
        for second in range(0, 150, 1):  # failing every second for two and a half minutes
            now[0] = float(second)
            try:
                raise RuntimeError(f"provider down ({second})")
            except RuntimeError as error:
                errors.failed("idle check", error)
        errors.succeeded("idle check")
    lines = [(r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert lines[0] == ("idle check failed: provider down (0)", True)  # with its traceback
    assert lines[1:] == [
        ("idle check failed again: provider down (60) (59 failure(s) not logged since)", False),
        ("idle check failed again: provider down (120) (59 failure(s) not logged since)", False),
        ("idle check works again", False),
    ]
