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
        ({"EVENTS_SPOOL_MAX": "0"}, "EVENTS_SPOOL_MAX='0' must be a whole number >= 1"),
        ({"EVENTS_SPOOL_MAX": "1e5"}, "EVENTS_SPOOL_MAX='1e5' is not a whole number"),
    ],
)
def test_bad_values_name_variable_value_and_expectation(env, fragment):
    with pytest.raises(ConfigError) as error:
        settings(**env)
    assert fragment in str(error.value)
    assert "\n" not in str(error.value)


def test_the_event_spool_holds_100000_events_unless_told_otherwise():
    assert settings().events_spool_max == 100_000
    assert settings(EVENTS_SPOOL_MAX="500").events_spool_max == 500


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


def test_a_misspelled_setting_is_refused_with_the_closest_name(tmp_path, monkeypatch):
    from paastis.config import check_setting_names

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("START_AND_STOP_MAX_IDLE_TIM=5\nOTHER_PROGRAM_SETTING=1\n")
    with pytest.raises(ConfigError) as refused:
        check_setting_names(Path(".env"), {})
    assert "START_AND_STOP_MAX_IDLE_TIM (did you mean START_AND_STOP_MAX_IDLE_TIME?)" in str(refused.value)
    assert str(tmp_path / ".env") in str(refused.value) and "OTHER_PROGRAM" not in str(refused.value)

    (tmp_path / ".env").write_text("PAASTIS_DRY_RUN=true\n")
    with pytest.raises(ConfigError, match=r"in the environment: PAASTIS_DRYRUN \(did you mean PAASTIS_DRY_RUN\?\)"):
        check_setting_names(Path(".env"), {"PAASTIS_DRYRUN": "true"})
    check_setting_names(Path(".env"), {"PAASTIS_DRYRUN": "true", "PAASTIS_ALLOW_UNKNOWN_SETTINGS": "true"})
    (tmp_path / ".env").write_text("PAASTIS_DRYRUN=true\n")  # .env is paastis's own: never let through
    with pytest.raises(ConfigError, match="PAASTIS_DRYRUN"):
        check_setting_names(Path(".env"), {"PAASTIS_ALLOW_UNKNOWN_SETTINGS": "true"})


def test_every_setting_the_code_reads_is_known():
    """Known settings come from the code itself: whatever a component reads (now or later) is never refused."""
    import re

    from paastis.config import SETTING_PREFIXES, known_settings
    from tests.test_docs import READS

    read = {name for path in (ROOT / "paastis").rglob("*.py") for name in READS.findall(path.read_text())}
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", (ROOT / "docs" / "settings.md").read_text(), re.M))
    assert len(read) > 40
    prefixed = {name for name in read | documented if name.startswith(SETTING_PREFIXES)}
    assert sorted(name for name in prefixed if name not in known_settings()) == []
    assert "PROVIDER_HEROKU_OPERATION_TIMEOUT" in known_settings() and "HOOKS_BEFORE_STOP" in known_settings()
