"""Sleep-policy settings and rule fields: defaults, validation naming the culprit, passive matching."""

from __future__ import annotations

import pytest

from paastis.config import ConfigError, Settings
from paastis.passive import DEFAULT_USER_AGENTS, PassiveVisitors, compile_paths
from tests.support import free_port, wait_until, write_config
from tests.test_rules import rules


def settings(**env: str) -> Settings:
    return Settings.from_env(env, dotenv=False)


def test_defaults():
    s = settings()
    assert (s.timezone, s.awake_during, s.asleep_during, s.dry_run, s.currency) == ("UTC", (), (), False, "EUR")
    assert s.passive_user_agents == DEFAULT_USER_AGENTS and s.passive_paths == ()


def test_global_windows_and_their_errors_name_the_variable():
    s = settings(PAASTIS_ASLEEP_DURING="mon-fri 20:00-07:00; sat-sun", PAASTIS_TIMEZONE="Europe/Paris")
    assert [w.text for w in s.asleep_during] == ["mon-fri 20:00-07:00", "sat-sun"]
    with pytest.raises(ConfigError, match=r"^PAASTIS_AWAKE_DURING: 'mon-fri 8h-19h': '8h-19h' is not a time range"):
        settings(PAASTIS_AWAKE_DURING="mon-fri 8h-19h")
    with pytest.raises(ConfigError, match=r"^PAASTIS_TIMEZONE: 'Paris' is not an IANA time zone"):
        settings(PAASTIS_TIMEZONE="Paris")
    with pytest.raises(ConfigError, match="PAASTIS_CURRENCY='euros' must be a three-letter"):
        settings(PAASTIS_CURRENCY="euros")
    with pytest.raises(ConfigError, match="PAASTIS_DRY_RUN='maybe' must be true or false"):
        settings(PAASTIS_DRY_RUN="maybe")


def test_passive_settings():
    assert settings(PAASTIS_PASSIVE_USER_AGENTS="none").passive_user_agents == ()
    assert settings(PAASTIS_PASSIVE_USER_AGENTS="MyProbe/\\d, kube-probe").passive_user_agents == (
        "MyProbe/\\d",
        "kube-probe",
    )
    with pytest.raises(ConfigError, match=r"^PAASTIS_PASSIVE_USER_AGENTS: '\(oops' is not a valid regular expression"):
        settings(PAASTIS_PASSIVE_USER_AGENTS="(oops")
    with pytest.raises(ConfigError, match=r"^PAASTIS_PASSIVE_PATHS: '\[' is not a valid regular expression"):
        settings(PAASTIS_PASSIVE_PATHS="/health,[")


@pytest.mark.parametrize(
    ("agent", "passive"),
    [
        ("Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)", True),
        ("Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)", True),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", True),
        ("kube-probe/1.29", True),
        ("Better Stack Better Uptime Bot Mozilla/5.0", True),
        ("Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0", False),
        ("curl/8.5.0", False),
        (None, False),
    ],
)
def test_the_default_user_agents(agent, passive):
    assert PassiveVisitors(DEFAULT_USER_AGENTS).is_passive(agent, "/", None) is passive


def test_passive_paths_match_the_whole_path():
    visitors = PassiveVisitors(())
    paths = compile_paths(("/health", "/robots\\.txt"))
    assert visitors.is_passive("curl/8", "/health", paths)
    assert not visitors.is_passive("curl/8", "/health/deep", paths)
    assert not visitors.is_passive("curl/8", "/robotsXtxt", paths)
    assert not visitors.is_passive("UptimeRobot", "/", paths)  # no user-agent patterns at all


def test_rule_fields_override_the_globals():
    engine = rules(
        [
            {"pattern": "shop", "awake_during": "mon-fri 08:00-18:00", "timezone": "Asia/Tokyo"},
            {"pattern": "api", "passive_paths": ["/ping"], "passive_answer": 200, "cost_per_month": 25},
            {"pattern": "quiet", "asleep_during": [], "wake_during_sleep": False},
        ],
        PAASTIS_ASLEEP_DURING="sat-sun",
        PAASTIS_PASSIVE_PATHS="/health",
    )
    shop = engine.policy("shop")
    assert shop.schedule.awake.describe() == ["mon-fri 08:00-18:00"] and shop.schedule.awake.zone.key == "Asia/Tokyo"
    assert shop.schedule.asleep.describe() == ["sat-sun"]  # the global window still applies
    assert shop.passive_paths.fullmatch("/health") and shop.passive_answer == 503 and shop.cost_per_month is None
    api = engine.policy("api")
    assert api.passive_paths.fullmatch("/ping") and not api.passive_paths.fullmatch("/health")
    assert api.passive_answer == 200 and api.cost_per_month == 25
    assert engine.policy("quiet").schedule is None  # its rule cleared the global window
    assert engine.policy("other").schedule.asleep.describe() == ["sat-sun"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("asleep_during", "mon-fry", "asleep_during: 'mon-fry': 'fry' is not a day"),
        ("awake_during", 7, "awake_during: a window must be a string"),
        ("timezone", "Moon/Base", "timezone: 'Moon/Base' is not an IANA time zone"),
        ("wake_during_sleep", "no", "wake_during_sleep must be true or false"),
        ("passive_paths", "(", "passive_paths: '\\(' is not a valid regular expression"),
        ("passive_answer", 204, "passive_answer must be 503"),
        ("cost_per_month", -3, "cost_per_month must be a number >= 0"),
    ],
)
def test_a_malformed_rule_field_names_the_rule(field, value, message):
    with pytest.raises(ConfigError, match=rf"^paastis.yml rule #0 \(pattern 'shop'\): {message}"):
        rules([{"pattern": "shop", field: value}])


def test_a_malformed_window_stops_start_up(tmp_path, gunicorn_factory):
    app = {"name": "shop", "url": f"http://127.0.0.1:{free_port()}", "command": "sleep 60"}
    write_config(tmp_path, [app], [{"pattern": "shop", "asleep_during": "mon-fri 25:00-07:00"}])
    server = gunicorn_factory(wait=False)
    wait_until(lambda: server.process.poll() is not None, 20, what="gunicorn to refuse to start")
    assert server.process.returncode != 0
    assert "rule #0 (pattern 'shop'): asleep_during: 'mon-fri 25:00-07:00'" in server.logs()
