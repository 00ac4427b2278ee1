"""providers: in paastis.yml: each entry checked at start-up, and the accounts asked as one directory."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from paastis import create_app
from paastis.config import ConfigError, Settings
from paastis.directories import SeveralDirectories
from paastis.metrics import Metrics
from paastis.providers import AppInfo, ProviderSpec
from paastis.providers.accounts import Account, Accounts, build_accounts, read_specs
from paastis.rules import Rules
from tests.fakes.heroku_api import HerokuPlatform
from tests.fakes.platform import closing_factory
from tests.support import local_app, wait_until


def settings_for(tmp_path: Path, config: dict, **env: str) -> tuple[Settings, dict]:
    path = tmp_path / "paastis.yml"
    path.write_text(yaml.safe_dump(config))
    values = {"PAASTIS_CONFIG_FILE": str(path), "PAASTIS_STATE_DIR": str(tmp_path / "state"), **env}
    return Settings.from_env(values, dotenv=False), config


def specs_of(tmp_path: Path, providers: dict, **env: str) -> list[ProviderSpec]:
    settings, config = settings_for(tmp_path, {"providers": providers}, **env)
    return read_specs(settings, config)


def refused(tmp_path: Path, providers: dict, **env: str) -> str:
    with pytest.raises(ConfigError) as error:
        specs = specs_of(tmp_path, providers, **env)
        build_accounts(specs, {"providers": providers}, None).close()
    return str(error.value)


def test_each_entry_becomes_its_type_s_settings_and_its_secret_comes_from_the_variable_it_names(tmp_path):
    providers = {
        "paris": {"type": "scalingo", "region": ["osc-fr1", "osc-secnum-fr1"], "api_token_env": "PARIS_TOKEN"},
        "us": {"type": "heroku", "api_token_env": "US_TOKEN", "rate_limit": 50},
        "here": {"type": "local", "operation_timeout": 12},
    }
    specs = specs_of(tmp_path, providers, PARIS_TOKEN="tk-us-paris", US_TOKEN="HRKU-us", PROVIDER_HEROKU_PAGE_SIZE="7")
    assert [(s.name, s.type, s.regions) for s in specs] == [
        ("paris", "scalingo", ("osc-fr1", "osc-secnum-fr1")),
        ("us", "heroku", ()),
        ("here", "local", ()),
    ]
    paris, us, here = (spec.settings.env for spec in specs)
    assert paris.get("PROVIDER_SCALINGO_API_TOKEN") == "tk-us-paris"
    assert paris.get("PROVIDER_REGION") == "osc-fr1,osc-secnum-fr1"
    assert us.get("PROVIDER_HEROKU_RATE_LIMIT") == "50"
    assert us.get("PROVIDER_HEROKU_PAGE_SIZE") is None  # an account never reads another's PROVIDER_* variables
    assert specs[2].settings.provider_operation_timeout("local") == 12
    assert specs[0].secret_variables == ("PARIS_TOKEN",)


def test_a_secret_written_in_the_file_is_refused_naming_the_env_key_without_its_value(tmp_path):
    message = refused(tmp_path, {"paris": {"type": "scalingo", "api_token": "tk-us-very-secret"}})
    assert "providers.paris: api_token is a secret" in message and "api_token_env" in message
    assert "tk-us-very-secret" not in message
    pasted = refused(tmp_path, {"paris": {"type": "scalingo", "api_token_env": "tk-us-pasted-here"}})
    assert "must name an environment variable" in pasted and "tk-us-pasted-here" not in pasted


@pytest.mark.parametrize(
    ("providers", "env", "words"),
    [
        ({"paris": {"type": "scalingo", "api_token_env": "NOPE"}}, {}, "api_token_env names NOPE, which is not set"),
        ({"paris": {"type": "scalingo"}}, {}, "providers.paris.api_token_env is required but not set"),
        ({"paris": {"type": "scaleway"}}, {}, "type must be one of local, scalingo, heroku, clever-cloud"),
        ({"paris": {"type": "scalingo", "apiurl": "x"}}, {}, "unknown setting 'apiurl' for scalingo"),
        ({"Paris!": {"type": "local"}}, {}, "a provider name is lower-case letters"),
        ({"a": {"type": "local"}, "b": {"type": "local"}}, {}, "providers a, b are both local"),
        (
            {"paris": {"type": "scalingo", "api_token_env": "T", "api_url": "ftp://x"}},
            {"T": "tk"},
            "providers.paris.api_url: 'ftp://x' is not an http(s) URL",
        ),
        ({"here": {"type": "local"}}, {"PROVIDER_NAME": "local"}, "PROVIDER_NAME is set and"),
    ],
)
def test_a_bad_entry_stops_start_up_in_one_line_naming_it(tmp_path, providers, env, words):
    message = refused(tmp_path, providers, **env)
    assert words in message and "\n" not in message


def test_provider_name_and_zone_pick_the_one_account_of_that_type_and_region(tmp_path):
    providers = {
        "paris": {"type": "scalingo", "region": "osc-fr1", "api_token_env": "T"},
        "secnum": {"type": "scalingo", "region": "osc-secnum-fr1", "api_token_env": "T"},
        "us": {"type": "heroku", "api_token_env": "T"},
    }
    specs = specs_of(tmp_path, providers, T="tk")
    settings = specs[0].settings
    rules = Rules(
        settings,
        [
            {"pattern": "a", "provider_name": "scalingo", "provider_zone": "osc-secnum-fr1"},
            {"pattern": "b", "provider_name": "heroku"},
            {"pattern": "c", "provider": "paris"},
        ],
        specs,
    )
    assert [rules.policy(key).provider for key in "abcd"] == ["secnum", "us", "paris", None]
    with pytest.raises(ConfigError, match=r"several providers match provider_name 'scalingo' \(paris, secnum\)"):
        Rules(settings, [{"pattern": "a", "provider_name": "scalingo"}], specs)
    with pytest.raises(ConfigError, match="no provider matches provider_name 'scalingo' and provider_zone 'x'"):
        Rules(settings, [{"pattern": "a", "provider_name": "scalingo", "provider_zone": "x"}], specs)


class MemoryProvider:
    """An account's API in memory; ``hang`` makes its listing wait until set free."""

    poll_interval = 0.05
    probe_upstream = False

    def __init__(self, *keys: str):
        self.keys = list(keys)
        self.hang = threading.Event()
        self.hang.set()
        self.listings = 0

    def list_apps(self) -> list[AppInfo]:
        self.listings += 1
        self.hang.wait()
        return [AppInfo(key, key, f"http://{key}.test") for key in self.keys]

    def close(self) -> None:
        self.hang.set()


def several(tmp_path: Path, rules: list | None = None, **providers: MemoryProvider) -> SeveralDirectories:
    settings, _ = settings_for(tmp_path, {})
    specs = [ProviderSpec(name, "local", (), settings, {}) for name in providers]
    accounts = Accounts([Account(spec, provider) for spec, provider in zip(specs, providers.values(), strict=True)])
    return SeveralDirectories(accounts, Rules(settings, rules, specs), ttl=3600)


def test_the_first_account_in_order_serves_a_name_two_list_and_one_warning_says_so(tmp_path, paastis_caplog):
    directory = several(tmp_path, paris=MemoryProvider("shop", "both"), us=MemoryProvider("both", "front"))
    apps = {app.key: app.provider for app in directory.refresh()}
    assert apps == {"shop": "paris", "both": "paris", "front": "us"}
    directory.refresh()
    warnings = [r.getMessage() for r in paastis_caplog.records if "listed by providers" in r.getMessage()]
    assert warnings == [
        "app both is listed by providers paris and us: paris serves it (first in providers:); "
        "a rule's provider: picks the other"
    ]
    assert directory.resolve("both").provider == "paris"
    assert directory.resolve("front").provider == "us"
    assert directory.resolve("ghost") is None


def test_a_rule_pins_a_name_to_its_account(tmp_path):
    rules = [{"pattern": "both", "provider": "us"}]
    directory = several(tmp_path, rules, paris=MemoryProvider("both"), us=MemoryProvider("both"))
    assert {app.key: app.provider for app in directory.refresh()} == {"both": "us"}
    assert directory.resolve("both").provider == "us"


def test_a_hung_account_neither_delays_the_others_nor_loses_its_apps(tmp_path, monkeypatch, paastis_caplog):
    monkeypatch.setattr("paastis.directories.LISTING_PATIENCE", 0.5)
    slow, fast = MemoryProvider("api"), MemoryProvider("shop")
    directory = several(tmp_path, slow=slow, fast=fast)
    directory.refresh()
    slow.hang.clear()  # from now on its listings never answer (until the test ends)
    try:
        assert [app.key for app in directory.refresh()] == ["shop"]  # after its patience, without slow's
        assert directory.unanswered == {"slow"}
        assert directory.held_keys() == {"api"}  # the idle check leaves these alone
        assert directory.resolve("shop").provider == "fast"  # from the cache: slow is not asked
        assert directory.resolve("api").provider == "slow"  # what slow listed last
        listings = slow.listings
        directory.refresh()
        assert slow.listings == listings  # never two listings of one account at once
    finally:
        slow.hang.set()
    wait_until(lambda: directory.refresh() and not directory.unanswered, 5, what="slow to answer again")
    assert {app.key for app in directory.refresh()} == {"api", "shop"}
    directory.close()


def test_a_new_app_of_a_later_account_does_not_wait_for_a_hung_earlier_one(tmp_path, monkeypatch):
    monkeypatch.setattr("paastis.directories.LOOKUP_PATIENCE", 0.2)
    first, second = MemoryProvider("old"), MemoryProvider("old-two")
    directory = several(tmp_path, first=first, second=second)
    directory.refresh()
    for member in directory.members.values():
        member.ttl = 0  # every miss lists again
    first.hang.clear()
    second.keys.append("new")
    try:
        app = directory.resolve("new")
        assert app is not None and app.provider == "second"
        assert first.listings >= 2  # first was asked too, and had not answered
    finally:
        first.hang.set()
        directory.close()


def test_the_provider_label_of_api_calls_is_the_account_name(tmp_path):
    specs = specs_of(tmp_path, {"paris": {"type": "scalingo", "api_token_env": "T"}}, T="tk-us-x")
    metrics = Metrics()
    accounts = build_accounts(specs, {}, metrics)
    try:
        client = next(iter(accounts.first.provider.clients.values()))
        client._count("list_apps", "success")
        assert 'provider="paris"' in metrics.render().decode()
    finally:
        accounts.close()


herokus = closing_factory(HerokuPlatform)


def test_the_dashboard_and_the_admin_api_say_which_provider(tmp_path, herokus):
    from tests.test_dashboard import HOST, SECRET, TOKEN, get, sign_in

    us = herokus(token="HRKU-us-dashboard")
    us.add_app("front", real=False)
    demo, _ = local_app(tmp_path, "demo")
    providers = {"here": {"type": "local"}, "us": {"type": "heroku", "api_url": us.url, "api_token_env": "US"}}
    settings, _ = settings_for(
        tmp_path,
        {"providers": providers, "apps": [demo]},
        US=us.token,
        ROUTING_SYSTEM_API_ENABLED="true",
        ROUTING_SYSTEM_API_TOKEN=TOKEN,
        PAASTIS_DASHBOARD_HOST=HOST,
        PAASTIS_SECRET_KEY=SECRET,
    )
    app = create_app(settings)
    paastis = app.extensions["paastis"]
    try:
        client = app.test_client()
        sign_in(client)
        page = get(client, "/dashboard/").get_data(as_text=True)
        assert '<span class="tag provider" title="provider">us</span>' in page
        assert '<span class="tag provider" title="provider">here</span>' in page
        system = {"PaastisProxyTarget": "system", "PaastisProxySystemApiToken": TOKEN}
        health = client.get("/health", headers=system).get_json()["provider"]
        assert health["providers"] == {
            "here": {"type": "local", "status": "ok", "apps": 1},
            "us": {"type": "heroku", "status": "ok", "apps": 1},
        }
    finally:
        paastis.close()  # nothing was woken: no local process to stop


def test_each_account_lists_in_the_caller_s_call_class(tmp_path):
    from paastis.providers.priority import CallClass, calls_as, current_class

    seen: list[CallClass] = []

    class Recording(MemoryProvider):
        def list_apps(self) -> list[AppInfo]:
            seen.append(current_class())
            return super().list_apps()

    directory = several(tmp_path, paris=Recording("a"), us=Recording("b"))
    with calls_as(CallClass.BACKGROUND):  # as the idle check lists: behind every wake and stop
        directory.refresh()
    assert seen == [CallClass.BACKGROUND, CallClass.BACKGROUND]
    directory.close()


def test_credentials_of_several_types_in_the_environment_are_fine_with_providers(tmp_path):
    providers = {
        "paris": {"type": "scalingo", "api_token_env": "PROVIDER_SCALINGO_API_TOKEN"},
        "us": {"type": "heroku", "api_token_env": "PROVIDER_HEROKU_API_TOKEN"},
    }
    env = {"PROVIDER_SCALINGO_API_TOKEN": "tk-us-x", "PROVIDER_HEROKU_API_TOKEN": "HRKU-x"}
    specs = specs_of(tmp_path, providers, **env)  # without providers:, these two would need PROVIDER_NAME
    assert [spec.name for spec in specs] == ["paris", "us"]
    assert specs[0].settings.provider_inferred_from is None  # nothing inferred: no warning about it
