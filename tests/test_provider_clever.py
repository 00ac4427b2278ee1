"""The Clever Cloud provider against a fake of its v2 API."""

from __future__ import annotations

import logging

import pytest

from paastis.config import ConfigError, Settings
from paastis.directory import Directory
from paastis.metrics import Metrics
from paastis.providers import FAILED, RUNNING, STARTING, STOPPED, AppInfo, AppNotFound, ProviderAuthError
from paastis.providers.clever_cloud import CleverCloudProvider, best_vhost, slugify
from paastis.rules import Rules
from tests.fakes.clever_api import CleverPlatform
from tests.fakes.platform import closing_factory
from tests.support import wait_until

SECRETS = (
    "PROVIDER_CLEVER_OAUTH_CONSUMER_KEY",
    "PROVIDER_CLEVER_OAUTH_CONSUMER_SECRET",
    "PROVIDER_CLEVER_TOKEN",
    "PROVIDER_CLEVER_SECRET",
)


platforms = closing_factory(CleverPlatform)


def env_for(platform: CleverPlatform, **extra: str) -> dict[str, str]:
    return {**platform.paastis_env(), **extra}


def provider_for(platform: CleverPlatform, **extra: str) -> CleverCloudProvider:
    return CleverCloudProvider.from_settings(Settings.from_env(env_for(platform, **extra)), {}, Metrics())


def listed(provider: CleverCloudProvider) -> dict[str, AppInfo]:
    return {app.key: app for app in provider.list_apps()}


@pytest.mark.parametrize("missing", SECRETS)
def test_each_missing_credential_stops_start_up_naming_it(platforms, missing):
    env = env_for(platforms())
    del env[missing]
    with pytest.raises(ConfigError, match=f"{missing} is required"):
        CleverCloudProvider.from_settings(Settings.from_env(env), {}, Metrics())


def test_requests_are_signed_plaintext_and_a_refusal_is_one_log_line_without_secrets(platforms, caplog):
    platform = platforms()
    platform.add_app("shop")
    assert len(provider_for(platform).list_apps()) == 1  # the fake accepted the PLAINTEXT signature
    wrong = provider_for(platform, PROVIDER_CLEVER_SECRET="not-the-secret")
    with caplog.at_level(logging.ERROR), pytest.raises(ProviderAuthError):
        wrong.list_apps()
    with pytest.raises(ProviderAuthError):
        wrong.list_apps()
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "PROVIDER_CLEVER_TOKEN" in lines[0] and "Not authorized" in lines[0]
    assert "not-the-secret" not in caplog.text and platform.consumer_secret not in caplog.text
    assert platform.unauthorized == 2


def test_apps_are_keyed_app_dash_uuid_with_a_unique_name_slug_as_alias(platforms):
    platform = platforms()
    shop = platform.add_app("My Shop!")
    twin_a = platform.add_app("twin")
    twin_b = platform.add_app("Twin")
    apps = listed(provider_for(platform))
    assert set(apps) == {shop.key, twin_a.key, twin_b.key}
    assert apps[shop.key].name == shop.id and shop.id.startswith("app_")
    assert apps[shop.key].aliases == ("my-shop",)
    assert apps[twin_a.key].aliases == () and apps[twin_b.key].aliases == ()  # ambiguous: no alias
    assert apps[shop.key].upstream_url == shop.process.url  # the custom domain, before *.cleverapps.io
    assert apps[shop.key].status == STOPPED  # SHOULD_BE_DOWN: known from the listing alone


def test_upstream_is_https_by_default_and_prefers_a_custom_domain():
    assert best_vhost([{"fqdn": "app-1.cleverapps.io"}, {"fqdn": "www.example.com/"}]) == "www.example.com"
    assert best_vhost([{"fqdn": "example.com/api/"}, {"fqdn": "example.org"}]) == "example.org"
    assert best_vhost([{"fqdn": "app-1.cleverapps.io"}, {"fqdn": "shop.cleverapps.io"}]) == "app-1.cleverapps.io"
    assert best_vhost([]) is None
    assert slugify("Élan vital — API") == "elan-vital-api"
    assert slugify("___") == ""


def test_default_upstream_scheme_is_https(platforms):
    platform = platforms()
    shop = platform.add_app("shop")
    env = env_for(platform)
    del env["PROVIDER_CLEVER_UPSTREAM_SCHEME"]
    provider = CleverCloudProvider.from_settings(Settings.from_env(env), {}, Metrics())
    assert provider.list_apps()[0].upstream_url == "https://" + shop.process.url.split("://")[1]


def test_start_stop_and_status(platforms):
    platform = platforms()
    shop = platform.add_app("shop", boot_delay=0.5)
    provider = provider_for(platform)
    app = listed(provider)[shop.key]
    assert provider.status(app) == STOPPED
    provider.start(app, None)
    assert provider.status(app) == STARTING
    provider.start(app, None)  # already on its way: no second deployment
    assert shop.starts == 1
    wait_until(lambda: provider.status(app) == RUNNING, 10, what="an instance UP")
    assert shop.process.answering
    assert provider.stop(app) is None  # the scaling is the app's configuration: nothing to remember
    assert shop.up  # the undeploy is asynchronous: the instance is still UP for a moment…
    assert provider.status(app) == STOPPED  # …but the app is on its way down
    assert platform.count("DELETE", f"/v2/self/applications/{shop.id}/instances") == 1
    provider.start(app, None)  # woken again at once: a new deployment, not "already running"
    assert shop.starts == 2
    wait_until(lambda: provider.status(app) == RUNNING, 10, what="an instance UP again")
    provider.stop(app)
    wait_until(lambda: not shop.process.running, 5, what="the instance to stop")


def test_a_crash_at_boot_is_failed(platforms):
    platform = platforms()
    broken = platform.add_app("broken", crash=True, boot_delay=0.2)
    provider = provider_for(platform)
    app = listed(provider)[broken.key]
    provider.start(app, None)
    wait_until(lambda: provider.status(app) == FAILED, 10, what="the failed deployment to show")


def test_organisation_apps_and_a_foreign_organisation(platforms):
    platform = platforms(organisation_id="orga_0123")
    team = platform.add_app("team-app")
    platform.add_app("mine", personal=True)
    assert set(listed(provider_for(platform, PROVIDER_CLEVER_ORGANISATION_ID="orga_0123"))) == {team.key}
    assert len(provider_for(platform).list_apps()) == 1  # the personal space has only "mine"
    with pytest.raises(ProviderAuthError):
        provider_for(platform, PROVIDER_CLEVER_ORGANISATION_ID="orga_other").list_apps()
    with pytest.raises(AppNotFound):
        provider_for(platform).status(AppInfo(key=team.key, name=team.id))  # not in the personal space


def test_a_429_is_waited_out(platforms):
    platform = platforms()
    platform.add_app("shop", running=True)
    provider = provider_for(platform)
    platform.storm(1.2)
    assert len(provider.list_apps()) == 1
    assert platform.storm_rejected >= 1


def test_the_directory_maps_the_slug_and_the_key_to_one_app(platforms):
    platform = platforms()
    shop = platform.add_app("shop")
    other = platform.add_app("other")
    settings = Settings.from_env(env_for(platform))
    provider = CleverCloudProvider.from_settings(settings, {}, Metrics())
    directory = Directory(provider, Rules(settings, None), ttl=3600)
    assert directory.resolve("shop") is directory.resolve(shop.key)
    assert directory.resolve("shop").key == shop.key  # the registry only ever sees the key
    assert sorted(app.key for app in directory.apps()) == sorted([shop.key, other.key])  # each app once
    directory.forget(shop.key)
    assert directory.resolve("shop") is None and directory.resolve(shop.key) is None
    assert directory.resolve("other") is not None


def test_an_app_meant_to_be_up_without_instances_is_redeployed(platforms):
    platform = platforms()
    shop = platform.add_app("shop", running=True)
    shop.instances = []  # its instance died and nothing is deploying it again
    provider = provider_for(platform)
    app = listed(provider)[shop.key]
    assert provider.status(app) == STOPPED
    provider.start(app, None)
    assert shop.starts == 1
    wait_until(lambda: provider.status(app) == RUNNING, 10, what="the redeployed instance UP")
