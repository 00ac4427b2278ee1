"""The settings and the rule field of issue 8: defaults, validation naming the variable, per-app override."""

from __future__ import annotations

import pytest

from paastis.config import ConfigError, Settings
from paastis.rules import Rules


def settings(**env: str) -> Settings:
    return Settings.from_env(env, dotenv=False)


def test_defaults():
    s = settings()
    assert (s.client_header_timeout, s.client_body_timeout) == (10, 30)
    assert (s.upstream_connect_timeout, s.upstream_read_timeout) == (5, 300)
    assert s.max_in_flight_per_app == 16  # half of the 32 default threads
    assert (s.queue_timeout, s.max_queued_per_app) == (30, 1000)


def test_the_share_follows_the_threads_unless_set():
    assert settings(PAASTIS_THREADS="8").max_in_flight_per_app == 4
    assert settings(PAASTIS_THREADS="1").max_in_flight_per_app == 1
    assert settings(PAASTIS_THREADS="8", MAX_IN_FLIGHT_PER_APP="8").max_in_flight_per_app == 8


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"CLIENT_HEADER_TIMEOUT": "0"}, "CLIENT_HEADER_TIMEOUT='0' must be a number > 0"),
        ({"CLIENT_BODY_TIMEOUT": "soon"}, "CLIENT_BODY_TIMEOUT='soon' is not a number"),
        ({"UPSTREAM_CONNECT_TIMEOUT": "-1"}, "UPSTREAM_CONNECT_TIMEOUT='-1'"),
        ({"UPSTREAM_READ_TIMEOUT": "inf"}, "UPSTREAM_READ_TIMEOUT='inf' is not a finite number"),
        ({"MAX_IN_FLIGHT_PER_APP": "0"}, "MAX_IN_FLIGHT_PER_APP='0' must be a whole number >= 1"),
        ({"MAX_IN_FLIGHT_PER_APP": "2.5"}, "MAX_IN_FLIGHT_PER_APP='2.5' is not a whole number"),
        ({"PAASTIS_THREADS": "many"}, "PAASTIS_THREADS='many' is not a whole number"),
        ({"QUEUE_TIMEOUT": "0"}, "QUEUE_TIMEOUT='0' must be a number > 0"),
        ({"QUEUE_TIMEOUT": "later"}, "QUEUE_TIMEOUT='later' is not a number"),
        ({"MAX_QUEUED_PER_APP": "0"}, "MAX_QUEUED_PER_APP='0' must be a whole number >= 1"),
    ],
)
def test_bad_values_stop_start_up_naming_the_variable(env, fragment):
    with pytest.raises(ConfigError) as raised:
        settings(**env)
    assert fragment in str(raised.value)


def test_a_rule_sets_the_read_timeout_of_its_apps_only():
    rules = Rules(settings(UPSTREAM_READ_TIMEOUT="60"), [{"pattern": "poll-.*", "upstream_read_timeout": 900}])
    assert rules.policy("poll-chat").upstream_read_timeout == 900
    assert rules.policy("shop").upstream_read_timeout == 60


@pytest.mark.parametrize("value", [0, -5, "long", True, float("inf")])
def test_a_bad_rule_read_timeout_is_refused(value):
    raw = [{"pattern": "x", "upstream_read_timeout": value}]
    with pytest.raises(ConfigError, match="upstream_read_timeout must be a number of seconds > 0"):
        Rules(settings(), raw)


def test_a_rule_sets_the_queue_timeout_of_its_apps_only():
    rules = Rules(settings(QUEUE_TIMEOUT="10"), [{"pattern": "report-.*", "queue_timeout": 120}])
    assert rules.policy("report-q1").queue_timeout == 120
    assert rules.policy("shop").queue_timeout == 10


@pytest.mark.parametrize("value", [0, -5, "long", True])
def test_a_bad_rule_queue_timeout_is_refused(value):
    with pytest.raises(ConfigError, match="queue_timeout must be a number of seconds > 0"):
        Rules(settings(), [{"pattern": "x", "queue_timeout": value}])
