"""Rules in paastis.yml: matching, overriding, group references, links, ignore/allow lists, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from paastis import create_app
from paastis.config import ConfigError, Settings
from paastis.lifecycle import WakeError
from paastis.rules import Rules
from tests.support import free_port, port_open, upstream_command, wait_until, write_config

# The original paastis's test configuration (test/registry/config.test.yml), minus its
# ``name: titi`` rule, which used a field that does not exist (see the unknown-field test).
ORIGINAL_RULES = [
    {
        "pattern": r"app-review-pr(\d+)-(back|front)",
        "app_name": "renamed-app-pr$1-$2",
        "app_max_idle_time": 30,
        "linked_apps": ["app-review-pr$1-front"],
    },
    {"pattern": r"my-app-pr(\d+)-front", "linked_apps": ["my-app-pr$1-back"]},
    {"pattern": "infinite-app-(back|front)", "linked_apps": ["infinite-app-back", "infinite-app-front"]},
]


def rules(raw: list | None, **env: str) -> Rules:
    return Rules(Settings.from_env(env, dotenv=False), raw)


def paastis_for(tmp_path: Path, names: list[str], raw_rules: list, **env: str):
    """A wired instance whose local provider lists ``names`` (nothing is spawned)."""
    apps = [{"name": name, "url": f"http://127.0.0.1:{free_port()}", "command": "sleep 60"} for name in names]
    config_file = write_config(tmp_path, apps, raw_rules)
    settings = Settings.from_env(
        {"PAASTIS_CONFIG_FILE": str(config_file), "PAASTIS_STATE_DIR": str(tmp_path / "state"), **env}, dotenv=False
    )
    return create_app(settings).extensions["paastis"]


def test_the_original_renamed_review_app_rule():
    policy = rules(ORIGINAL_RULES).policy("app-review-pr123-back")
    assert policy.app_name == "renamed-app-pr123-back"
    assert policy.linked_apps == ("app-review-pr123-front",)
    assert policy.max_idle_time == 30


def test_an_app_no_rule_matches_gets_the_defaults():
    policy = rules(ORIGINAL_RULES, START_AND_STOP_MAX_IDLE_TIME="7", WAKE_STRATEGY="blocking").policy("hello")
    assert (policy.app_name, policy.max_idle_time, policy.wake_strategy) == ("hello", 7, "blocking")
    assert policy.linked_apps == () and policy.upstream_url is None and policy.managed


def test_a_pattern_must_match_the_whole_key():
    engine = rules([{"pattern": "shop", "app_max_idle_time": 60}])
    assert engine.policy("shop").max_idle_time == 60
    assert engine.policy("shop-staging").max_idle_time == 15
    assert engine.policy("myshop").max_idle_time == 15


def test_every_matching_rule_applies_later_ones_winning_field_by_field():
    engine = rules(
        [
            {"pattern": "review-.*", "app_max_idle_time": 5, "wake_strategy": "waiting-page"},
            {"pattern": r"review-(\d+)", "app_max_idle_time": 10, "upstream_url": "https://pr-$1.example.com"},
        ]
    )
    policy = engine.policy("review-42")
    assert policy.max_idle_time == 10
    assert policy.wake_strategy == "waiting-page"
    assert policy.upstream_url == "https://pr-42.example.com"
    assert engine.policy("review-x").max_idle_time == 5


def test_a_rule_hook_replaces_the_global_one_for_its_apps_only():
    engine = rules(
        [
            {"pattern": "api", "hooks": {"before_start": "./warm-cache"}},
            {"pattern": "a.*", "hooks": {"after_stop": ""}},
        ],
        HOOKS_BEFORE_START="./notify",
        HOOKS_AFTER_STOP="./bye",
    )
    assert engine.policy("api").hooks == {"before_start": "./warm-cache", "after_stop": ""}
    assert engine.policy("web").hooks == {"before_start": "./notify", "after_stop": "./bye"}


def test_ignored_and_allowed_apps_are_names_or_full_match_patterns():
    engine = rules([{"pattern": "legacy", "ignore": True}], REGISTRY_IGNORED_APPS="paastis, admin-.*")
    assert not engine.policy("paastis").managed
    assert not engine.policy("admin-eu").managed
    assert not engine.policy("legacy").managed
    assert engine.policy("my-paastis").managed
    allowed = rules(None, REGISTRY_ALLOWED_APPS=r"review-\d+,demo", REGISTRY_IGNORED_APPS="review-1")
    assert [allowed.policy(k).managed for k in ("review-7", "demo", "review-1", "shop")] == [True, True, False, False]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"pattern": "app-(", "app_max_idle_time": 5}, "rule #1 (pattern 'app-('): invalid pattern"),
        ({"pattern": "titi(.*)", "name": "titi"}, "rule #1 (pattern 'titi(.*)'): unknown field(s) 'name'"),
        ({"pattern": "a(b)", "app_name": "x-$2"}, "rule #1 (pattern 'a(b)'): $2 in 'x-$2' but the pattern has 1 group"),
        ({"pattern": "a", "linked_apps": "b"}, "rule #1 (pattern 'a'): linked_apps must be a list"),
        ({"pattern": "a", "app_max_idle_time": -1}, "app_max_idle_time must be a number of minutes >= 0"),
        ({"pattern": "a", "app_nam": "x"}, "unknown field(s) 'app_nam' (did you mean 'app_name'?)"),
        ({"pattern": "a", "provider_name": "clever-cloud"}, "no provider matches provider_name 'clever-cloud'"),
        ({"pattern": "a", "provider_zone": "par"}, "provider_zone needs provider_name"),
        ({"pattern": "a", "provider": "paris"}, "provider 'paris' is not one of the providers (local)"),
        ({"pattern": "a", "wake_strategy": "lazy"}, "wake_strategy must be one of auto, blocking, waiting-page"),
        ({"pattern": "a", "hooks": {"on_start": "x"}}, "hooks takes only before_start"),
        ({"pattern": "a", "upstream_url": "ftp://x"}, "upstream_url must start with http:// or https://"),
        ({"pattern": "a", "ignore": "yes"}, "ignore must be true or false"),
        ({"app_name": "x"}, "rule #1 must be a mapping with a 'pattern'"),
    ],
)
def test_a_bad_rule_stops_start_up_naming_the_rule_and_the_problem(raw, fragment):
    with pytest.raises(ConfigError) as caught:
        rules([{"pattern": "fine"}, raw])
    assert fragment in str(caught.value)


def test_a_bad_ignore_pattern_names_the_variable():
    with pytest.raises(ConfigError, match="REGISTRY_IGNORED_APPS='a\\(' holds an invalid pattern"):
        rules(None, REGISTRY_IGNORED_APPS="a(")


def test_a_renamed_review_app_brings_its_linked_front(tmp_path):
    paastis = paastis_for(tmp_path, ["renamed-app-pr123-back", "renamed-app-pr123-front"], ORIGINAL_RULES)
    back = paastis.lifecycle.resolve("app-review-pr123-back")
    assert (back.key, back.name) == ("app-review-pr123-back", "renamed-app-pr123-back")
    group = paastis.lifecycle.group(back)
    assert [(app.key, app.name) for app in group] == [
        ("app-review-pr123-back", "renamed-app-pr123-back"),
        ("app-review-pr123-front", "renamed-app-pr123-front"),
    ]
    assert paastis.lifecycle.upstream_url(group[1]) == paastis.provider.upstream_url(group[1])


def test_links_are_followed_transitively_and_a_cycle_lists_each_app_once(tmp_path):
    names = ["infinite-app-back", "infinite-app-front", "a", "b", "c"]
    chain = [{"pattern": "a", "linked_apps": ["b"]}, {"pattern": "b", "linked_apps": ["c", "a"]}]
    paastis = paastis_for(tmp_path, names, ORIGINAL_RULES + chain)
    front = paastis.lifecycle.resolve("infinite-app-front")
    assert sorted(app.key for app in paastis.lifecycle.group(front)) == ["infinite-app-back", "infinite-app-front"]
    a = paastis.lifecycle.resolve("a")
    assert sorted(app.key for app in paastis.lifecycle.group(a)) == ["a", "b", "c"]


def test_an_unknown_linked_app_fails_naming_it(tmp_path):
    paastis = paastis_for(tmp_path, ["my-app-pr7-front"], ORIGINAL_RULES)
    with pytest.raises(WakeError) as caught:
        paastis.lifecycle.group(paastis.lifecycle.resolve("my-app-pr7-front"))
    assert caught.value.status == 502
    assert "linked app 'my-app-pr7-back'" in caught.value.message


def test_the_infinite_cycle_registers_each_app_once(tmp_path):
    """The original's ``should not loop infinitely``, with both apps really woken."""
    apps = []
    for name in ("infinite-app-back", "infinite-app-front"):
        port = free_port()
        command = upstream_command(START_LOG=tmp_path / f"{name}.log")
        apps.append({"name": name, "url": f"http://127.0.0.1:{port}", "command": command})
    config_file = write_config(tmp_path, apps, ORIGINAL_RULES)
    settings = Settings.from_env(
        {"PAASTIS_CONFIG_FILE": str(config_file), "PAASTIS_STATE_DIR": str(tmp_path / "state")}, dotenv=False
    )
    paastis = create_app(settings).extensions["paastis"]
    try:
        paastis.lifecycle.ensure_awake(paastis.lifecycle.resolve("infinite-app-front"))
        assert sorted(entry.key for entry in paastis.registry.all()) == ["infinite-app-back", "infinite-app-front"]
        started = paastis.events.query(type="APP_STARTED")
        assert sorted((e.app, e.reason) for e in started) == [
            ("infinite-app-back", "linked"),
            ("infinite-app-front", "request"),
        ]
        for name in ("infinite-app-back", "infinite-app-front"):
            assert len((tmp_path / f"{name}.log").read_text().split()) == 1
    finally:
        for app in paastis.directory.apps():
            paastis.provider.stop(app)
        paastis.close()
    wait_until(lambda: not any(port_open(int(a["url"].rsplit(":", 1)[1])) for a in apps), 10)


def test_the_original_samples_inert_keys_are_accepted_with_one_warning():
    engine = rules(
        [
            {"pattern": r"pix-app-review-pr(\d+)-(back|front)", "group_name": "pix-pr$1", "app_max_idle_time": 30},
            {"pattern": "shop", "app_group": "shops"},
        ]
    )
    assert engine.policy("pix-app-review-pr1-back").max_idle_time == 30
    assert len(engine.warnings) == 1
    assert "app_group and group_name (rule(s) #0, #1) have no effect" in engine.warnings[0]


def test_app_max_idle_time_zero_means_the_next_check():
    assert rules([{"pattern": "demo", "app_max_idle_time": 0}]).policy("demo").max_idle_time == 0


def test_unknown_top_level_key_names_the_file_and_suggests_the_right_one(tmp_path):
    from paastis.rules import load_config_file

    path = tmp_path / "my-rules.yml"
    path.write_text("rule:\n  - pattern: demo\n")
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    assert str(caught.value) == f"{path}: unknown top-level key(s) 'rule' (did you mean 'rules'?)"


def test_a_rule_matching_no_listed_app_is_named_in_one_warning_each(tmp_path):
    from paastis import startup

    config = str(write_config(tmp_path))
    settings = Settings.from_env({"PAASTIS_CONFIG_FILE": config, "PAASTIS_DOMAINS": "localhost"}, dotenv=False)
    checked = Rules(settings, [{"pattern": "blgo"}, {"pattern": "blog"}, {"pattern": "review-.*"}])
    warned = checked.unmatched(("blog", "demo"))
    assert len(warned) == 2
    assert "rule #0 (pattern 'blgo') matches none of the apps the provider lists (blog, demo)" in warned[0]
    assert "rule #2 (pattern 'review-.*')" in warned[1]
    assert checked.unmatched(("blog", "blgo", "review-42")) == []
    assert startup.warnings(settings, checked, ("blog", "demo")) == warned  # said at start-up (local provider)


def test_a_missing_config_file_is_said_with_where_paastis_looked(tmp_path, monkeypatch):
    from paastis import startup

    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"PAASTIS_DOMAINS": "localhost"}, dotenv=False)
    said = startup.warnings(settings, Rules(settings, None), ())
    assert said == [
        f"no paastis.yml here: looked for {tmp_path / 'paastis.yml'}; running with no rules and no apps "
        "(set PAASTIS_CONFIG_FILE to use another file)"
    ]


def test_with_a_paas_provider_a_rule_matching_no_app_is_said_at_the_first_listing(tmp_path, paastis_caplog):
    from tests.fakes.scalingo_api import ScalingoPlatform

    platform = ScalingoPlatform()
    try:
        platform.add_app("shop", running=True)
        config = write_config(tmp_path, rules=[{"pattern": "shpo", "app_max_idle_time": 5}, {"pattern": "shop"}])
        env = {**platform.paastis_env(), "PAASTIS_CONFIG_FILE": str(config), "PROVIDER_OPERATION_TIMEOUT": "30"}
        paastis = create_app(Settings.from_env(env, dotenv=False)).extensions["paastis"]
        try:
            paastis.lifecycle.check_idle()
            paastis.lifecycle.check_idle()
        finally:
            paastis.close()
    finally:
        platform.close()
    warned = [r.getMessage() for r in paastis_caplog.records if "matches none of the apps" in r.getMessage()]
    assert len(warned) == 1 and "rule #0 (pattern 'shpo')" in warned[0] and "(shop)" in warned[0]
