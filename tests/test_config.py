"""Every setting is validated at start-up with a one-line message naming the variable."""

import subprocess
from pathlib import Path

import pytest

from paastis.config import ConfigError, Settings
from tests.support import PYTHON, ROOT


def settings(**env):
    return Settings.from_env(env, dotenv=False)


def test_defaults_match_the_original_paastis():
    s = settings()
    assert s.provider_name == "local"
    assert s.max_idle_time == 15
    assert s.checking_interval == 60
    assert s.operation_timeout == 60
    assert s.wake_strategy == "auto"
    assert s.registry_type == "in-memory"
    assert s.config_file == Path("paastis.yml")


def test_decimal_idle_time_and_original_logging_name():
    s = settings(START_AND_STOP_MAX_IDLE_TIME="0.05", LOGGING_LEVEL="DEBUG")
    assert s.max_idle_time == 0.05
    assert s.log_level == "debug"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"START_AND_STOP_MAX_IDLE_TIME": "ten"}, "START_AND_STOP_MAX_IDLE_TIME='ten' is not a number"),
        ({"START_AND_STOP_MAX_IDLE_TIME": "-1"}, "START_AND_STOP_MAX_IDLE_TIME='-1' must be a number"),
        ({"START_AND_STOP_CHECKING_INTERVAL": "0"}, "START_AND_STOP_CHECKING_INTERVAL='0'"),
        ({"PROVIDER_OPERATION_TIMEOUT": "nan"}, "PROVIDER_OPERATION_TIMEOUT='nan'"),
        ({"PROVIDER_NAME": "aws"}, "PROVIDER_NAME='aws' must be one of: local, scalingo, heroku, clever-cloud"),
        ({"WAKE_STRATEGY": "lazy"}, "WAKE_STRATEGY='lazy' must be one of"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud'"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT='xml'"),
        ({"REGISTRY_TYPE": "redis"}, "REGISTRY_REDIS_URL"),
        ({"HOOKS_STRICT": "maybe"}, "HOOKS_STRICT='maybe' must be true or false"),
        ({"ROUTING_SYSTEM_API_ENABLED": "true", "ROUTING_SYSTEM_API_TOKEN": "short"}, "ROUTING_SYSTEM_API_TOKEN"),
        ({"WEBSOCKET_IDLE_TIMEOUT": "0"}, "WEBSOCKET_IDLE_TIMEOUT='0' must be a number > 0"),
        ({"MAX_WEBSOCKETS": "lots"}, "MAX_WEBSOCKETS='lots' is not a whole number"),
    ],
)
def test_bad_values_name_variable_value_and_expectation(env, fragment):
    with pytest.raises(ConfigError) as error:
        settings(**env)
    assert fragment in str(error.value)
    assert "\n" not in str(error.value)


def test_websocket_settings_default_to_the_apps_idle_time_and_ten_thousand():
    assert settings().websocket_idle_timeout is None and settings().max_websockets == 10_000
    tuned = settings(WEBSOCKET_IDLE_TIMEOUT="2.5", MAX_WEBSOCKETS="500")
    assert tuned.websocket_idle_timeout == 2.5 and tuned.max_websockets == 500


def test_secret_values_never_appear_in_the_settings_repr():
    s = settings(ROUTING_SYSTEM_API_ENABLED="true", ROUTING_SYSTEM_API_TOKEN="s3cret-token-0123456789")
    assert "s3cret" not in repr(s)


def test_dotenv_file_is_read(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("START_AND_STOP_MAX_IDLE_TIME=7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("START_AND_STOP_MAX_IDLE_TIME", raising=False)
    assert Settings.from_env().max_idle_time == 7


@pytest.mark.e2e
def test_gunicorn_refuses_to_start_with_one_clear_line(tmp_path):
    result = subprocess.run(
        [PYTHON, "-m", "gunicorn", "app:app"],
        check=False,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "START_AND_STOP_MAX_IDLE_TIME": "soon", "PORT": "0"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "paastis: configuration error: START_AND_STOP_MAX_IDLE_TIME='soon' is not a number" in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_paastis_yml_names_the_app(tmp_path):
    from paastis import create_app

    config = tmp_path / "paastis.yml"
    config.write_text("apps:\n  - name: demo\n    url: ftp://nope\n    command: x\n")
    with pytest.raises(ConfigError, match=r"apps\[0\] \('demo'\): url must be an http\(s\) URL"):
        create_app(settings(PAASTIS_CONFIG_FILE=str(config), PAASTIS_STATE_DIR=str(tmp_path / "s")))
