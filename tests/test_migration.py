"""Coming from the JavaScript paastis: its settings and paastis.yml keys work, or say why not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from paastis import create_app
from paastis.config import ConfigError, Settings
from paastis.supervisor import CronTimes
from tests.fakes.scalingo_api import ScalingoPlatform
from tests.support import local_app, port_open, starts, wait_until, write_config


def settings(**env: str) -> Settings:
    return Settings.from_env(env, dotenv=False)


CLEVER = {
    "PROVIDER_CLEVER_OAUTH_CONSUMER_KEY": "key",
    "PROVIDER_CLEVER_OAUTH_CONSUMER_SECRET": "secret",
    "PROVIDER_CLEVER_TOKEN": "token",
    "PROVIDER_CLEVER_SECRET": "token-secret",
}


@pytest.mark.parametrize(
    ("env", "provider"),
    [
        ({}, "local"),
        ({"PROVIDER_SCALINGO_API_TOKEN": "tk-us-x"}, "scalingo"),
        ({"PROVIDER_HEROKU_API_TOKEN": "HRKU-x"}, "heroku"),
        (CLEVER, "clever-cloud"),
        ({"PROVIDER_CLEVER_TOKEN": "token"}, "clever-cloud"),  # then the provider names what is missing
        ({"PROVIDER_NAME": "local", "PROVIDER_HEROKU_API_TOKEN": "HRKU-x"}, "local"),  # said, so not inferred
    ],
)
def test_provider_is_inferred_from_the_only_credentials_set(env, provider):
    s = settings(**env)
    assert s.provider_name == provider
    assert (s.provider_inferred_from is not None) == (provider != "local")


def test_credentials_of_several_providers_need_provider_name():
    with pytest.raises(ConfigError) as caught:
        settings(PROVIDER_SCALINGO_API_TOKEN="tk-us-x", **CLEVER)
    message = str(caught.value)
    assert "PROVIDER_NAME is not set and credentials for several providers are" in message
    assert "PROVIDER_SCALINGO_API_TOKEN" in message and "set PROVIDER_NAME to one of scalingo, clever-cloud" in message
    assert "tk-us-x" not in message  # names, never values


def test_inferred_provider_is_used_and_logged_once(tmp_path, gunicorn_factory):
    platform = ScalingoPlatform()
    try:
        platform.add_app("shop")
        write_config(tmp_path)
        env = {k: v for k, v in platform.paastis_env().items() if k != "PROVIDER_NAME"}
        paastis = gunicorn_factory(env)
        wait_until(lambda: "paastis ready:" in paastis.logs(), 20, what="the summary line")
        logs = paastis.logs()
        assert "provider=scalingo" in logs
        line = "PROVIDER_NAME is not set: using scalingo, the only provider whose credentials are set"
        assert logs.count(line) == 1
        assert paastis.get(host="shop.localhost").status_code == 200  # it really manages the Scalingo apps
    finally:
        platform.close()


def test_per_provider_operation_timeouts_win_over_the_common_one(tmp_path):
    s = settings(
        PROVIDER_OPERATION_TIMEOUT="45",
        PROVIDER_SCALINGO_OPERATION_TIMEOUT="120",
        PROVIDER_HEROKU_OPERATION_TIMEOUT="90",
        PROVIDER_CLEVER_OPERATION_TIMEOUT="150",
    )
    assert s.provider_operation_timeout("scalingo") == 120
    assert s.provider_operation_timeout("heroku") == 90
    assert s.provider_operation_timeout("clever-cloud") == 150
    assert s.provider_operation_timeout("local") == 45
    platform = ScalingoPlatform()
    write_config(tmp_path)
    try:
        env = {**platform.paastis_env(), "PAASTIS_CONFIG_FILE": str(tmp_path / "paastis.yml")}
        app = create_app(settings(**env, PROVIDER_SCALINGO_OPERATION_TIMEOUT="120"))
        assert app.extensions["paastis"].lifecycle.waker.operation_timeout == 120
        app.extensions["paastis"].close()
    finally:
        platform.close()


def test_cron_expressions_as_node_cron_reads_them():
    assert settings(START_AND_STOP_CHECKING_INTERVAL_CRON="*/5 * * * *").checking_cron == "*/5 * * * *"
    every_two_seconds = CronTimes("*/2 * * * * *")  # six fields: seconds first
    first = every_two_seconds.next_at
    assert first.second % 2 == 0
    assert not every_two_seconds.due(first - timedelta(milliseconds=1))
    assert every_two_seconds.due(first)
    assert every_two_seconds.next_at == first + timedelta(seconds=2)
    assert every_two_seconds.due(first + timedelta(seconds=10))  # missed times: one check, not five
    assert every_two_seconds.next_at == first + timedelta(seconds=12)
    minutely = CronTimes("* * * * *")
    assert minutely.next_at.second == 0 and minutely.next_at > datetime.now(UTC)


def test_cron_setting_drives_the_idle_check_and_idle_time_zero_stops_at_the_next_one(tmp_path, gunicorn_factory):
    app, port = local_app(tmp_path)
    write_config(tmp_path, [app], [{"pattern": "demo", "app_max_idle_time": 0, "group_name": "demos"}])
    paastis = gunicorn_factory({"START_AND_STOP_CHECKING_INTERVAL_CRON": "* * * * * *"})  # every second
    assert paastis.get("/echo").status_code == 200
    assert starts(tmp_path) == 1
    # The default interval (60 s) would not come round before this deadline; the cron does, every second.
    wait_until(lambda: not port_open(port), 20, what="the idle check to stop the app")
    logs = paastis.logs()
    assert "stopping demo (idle)" in logs
    assert "idle_checks=cron '* * * * * *'" in logs
    assert logs.count("group_name (rule(s) #0) have no effect") == 1  # once per instance, not per worker
