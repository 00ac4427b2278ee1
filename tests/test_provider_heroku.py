"""The Heroku provider against a fake of the Platform API."""

from __future__ import annotations

import json
import logging
import time

import pytest

from paastis.config import ConfigError, Settings
from paastis.metrics import Metrics
from paastis.providers import FAILED, RUNNING, STARTING, STOPPED, UNKNOWN, AppInfo, AppNotFound, ProviderAuthError
from paastis.providers.heroku import MAX_STATUS_CHECKS, HerokuProvider
from tests.fakes.heroku_api import HerokuPlatform
from tests.fakes.platform import closing_factory
from tests.support import wait_until

platforms = closing_factory(HerokuPlatform)


def provider_for(platform: HerokuPlatform, metrics: Metrics | None = None, **extra: str) -> HerokuProvider:
    env = {**platform.paastis_env(), **extra}
    return HerokuProvider.from_settings(Settings.from_env(env), {}, metrics or Metrics())


def info(name: str) -> AppInfo:
    return AppInfo(key=name, name=name)


def calls(metrics: Metrics, operation: str, outcome: str) -> float:
    return metrics.provider_calls.labels("heroku", operation, outcome)._value.get()


def test_missing_token_stops_start_up_naming_the_variable():
    with pytest.raises(ConfigError, match="PROVIDER_HEROKU_API_TOKEN is required"):
        HerokuProvider.from_settings(Settings.from_env({"PROVIDER_NAME": "heroku"}), {}, Metrics())
    with pytest.raises(ConfigError, match="PROVIDER_HEROKU_PAGE_SIZE=1001 must be at most 1000"):
        HerokuProvider.from_settings(
            Settings.from_env({"PROVIDER_HEROKU_API_TOKEN": "x", "PROVIDER_HEROKU_PAGE_SIZE": "1001"}), {}, Metrics()
        )


def test_refused_token_is_one_clear_log_line_without_the_token(platforms, caplog):
    platform = platforms()
    provider = provider_for(platform, PROVIDER_HEROKU_API_TOKEN="HRKU-wrong-secret")
    with caplog.at_level(logging.ERROR), pytest.raises(ProviderAuthError):
        provider.list_apps()
    with pytest.raises(ProviderAuthError):
        provider.list_apps()
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "PROVIDER_HEROKU_API_TOKEN" in lines[0] and "Invalid credentials" in lines[0]
    assert "HRKU-wrong-secret" not in caplog.text
    assert platform.unauthorized == 2  # no retry storm: one call per attempt


def test_listing_follows_next_range_and_uses_web_url(platforms):
    platform = platforms()
    platform.add_filler_apps(450)
    platform.add_app("deep", id="ffffffff-0000-4000-8000-000000000000", real=False)
    assert platform.page_of("deep") == 3

    apps = {app.key: app for app in provider_for(platform, PROVIDER_HEROKU_PAGE_SIZE="200").list_apps()}
    assert len(apps) == 451
    assert platform.count("GET", "/apps") == 3  # 200 + 200 + 51: two 206 answers, then a 200
    assert apps["deep"].upstream_url == platform.apps["deep"].web_url.rstrip("/")
    assert apps["deep"].upstream_url != "https://deep.herokuapp.com"

    before = platform.count("GET", "/apps")
    assert len(provider_for(platform).list_apps()) == 451  # default max=1000: one call
    assert platform.count("GET", "/apps") == before + 1


def test_status_follows_formation_then_dynos(platforms):
    platform = platforms()
    platform.add_app("workers-only", formation={"worker": (1, "Basic")}, running=True, real=False)
    platform.add_app("web", boot_delay=0.5)
    platform.add_app("broken", crash=True)
    provider = provider_for(platform)
    assert provider.status(info("workers-only")) == STOPPED  # no web process type: not running, no crash
    assert provider.status(info("web")) == STOPPED
    provider.start(info("web"), None)
    assert platform.apps["web"].quantities() == {"web": 1}
    assert provider.status(info("web")) == STARTING
    wait_until(lambda: provider.status(info("web")) == RUNNING, 10, what="the web dyno to be up")
    provider.start(info("broken"), None)
    assert provider.status(info("broken")) == FAILED
    with pytest.raises(AppNotFound):
        provider.status(info("ghost"))


def test_stop_remembers_the_formation_and_start_restores_it_exactly(platforms):
    platform = platforms()
    formation = {"web": (3, "Performance-M"), "worker": (0, "Standard-1X"), "clock": (1, "Basic")}
    shop = platform.add_app("shop", formation=formation, running=True)
    provider = provider_for(platform)

    memo = json.loads(json.dumps(provider.stop(info("shop"))))  # as it comes back from Redis
    assert shop.quantities() == {"web": 0, "worker": 0, "clock": 0}
    assert platform.count("PATCH", "/apps/shop/formation") == 1  # one batch call
    assert provider.stop(info("shop")) is None  # already at 0: the earlier memo stays the truth

    shop.formation["web"]["size"] = "Basic"  # someone changed the size while it slept
    provider.start(info("shop"), memo)
    assert shop.quantities() == {"web": 3, "worker": 0, "clock": 1}  # a worker at 0 stays at 0
    assert shop.sizes()["web"] == "Performance-M"
    assert platform.count("PATCH", "/apps/shop/formation") == 2

    provider.stop(info("shop"))
    provider.start(info("shop"), None)  # nothing remembered: web 1
    assert shop.quantities() == {"web": 1, "worker": 0, "clock": 0}


def test_a_formation_read_ahead_makes_the_stop_one_call(platforms):
    platform = platforms()
    shop = platform.add_app("shop", formation={"web": (2, "Basic"), "worker": (1, "Basic")}, running=True)
    provider = provider_for(platform)
    memo = json.loads(json.dumps(provider.read_ahead(info("shop"))))  # while the budget had room
    reads = platform.count("GET", "/apps/shop/formation")
    assert provider.stop(info("shop"), memo) == memo
    assert platform.count("GET", "/apps/shop/formation") == reads  # the PATCH alone
    assert shop.quantities() == {"web": 0, "worker": 0}
    assert provider.read_ahead(info("shop")) is None  # nothing runs: nothing worth remembering

    provider.start(info("shop"), memo)
    stale = {"formation": [{"type": "web", "quantity": 2}, {"type": "gone", "quantity": 1}]}
    assert provider.stop(info("shop"), stale) == memo  # refused (no such type): read, then scaled
    assert shop.quantities() == {"web": 0, "worker": 0}


def test_calls_slow_down_before_the_bucket_is_empty(platforms):
    platform = platforms(bucket=40, refill_per_minute=600)  # 10 tokens/s given back
    platform.add_app("shop", real=False)
    provider = provider_for(platform, PROVIDER_HEROKU_RATE_LIMIT="600", PROVIDER_HEROKU_RATE_LIMIT_RESERVE="15")
    started = time.monotonic()
    for _ in range(60):
        provider.status(info("shop"))
    elapsed = time.monotonic() - started
    assert platform.bucket.rejected == 0  # never ran dry
    assert platform.bucket.lowest >= 10
    assert elapsed >= 2.0  # paced at the refill rate once under the reserve


def test_a_429_storm_is_waited_out(platforms, caplog):
    platform = platforms()
    platform.add_app("shop", real=False)
    metrics = Metrics()
    provider = provider_for(platform, metrics)
    platform.storm(1.5)
    with caplog.at_level(logging.WARNING):
        assert provider.status(info("shop")) == STOPPED
    assert platform.storm_rejected >= 2
    assert calls(metrics, "get_formation", "rate_limited") >= 2
    assert "heroku: rate limited" in caplog.text


def test_listing_checks_a_bounded_rotating_share_of_statuses(platforms):
    platform = platforms()
    platform.add_filler_apps(120)
    platform.add_app("live", running=True, real=False)
    provider = provider_for(platform)

    first = {app.key: app.status for app in provider.list_apps() if app.status != UNKNOWN}
    assert len(first) == MAX_STATUS_CHECKS
    assert platform.count("GET", r"/apps/[^/]+/formation") == MAX_STATUS_CHECKS
    second = {app.key: app.status for app in provider.list_apps() if app.status != UNKNOWN}
    assert first.keys() & second.keys() <= {"live"}  # the least recently checked come next (after scaled-up apps)
    third = {app.key: app.status for app in provider.list_apps() if app.status != UNKNOWN}
    seen = {**first, **second, **third}
    assert len(seen) == 121  # every app checked within three listings
    assert seen["live"] == RUNNING and seen["filler-0000"] == STOPPED


def test_listing_budget_shrinks_with_the_remaining_tokens(platforms):
    platform = platforms(bucket=400, refill_per_minute=1)
    platform.add_filler_apps(60)
    provider = provider_for(platform, PROVIDER_HEROKU_RATE_LIMIT_RESERVE="300")
    checked = sum(1 for app in provider.list_apps() if app.status != UNKNOWN)
    assert checked == (399 - 300) // 10  # a tenth of the headroom above the reserve


def test_apps_seen_scaled_up_are_checked_at_every_listing(platforms):
    platform = platforms()
    platform.add_filler_apps(200)
    shop = platform.add_app("shop", real=False)
    provider = provider_for(platform)
    provider.start(info("shop"), None)  # woken by paastis: known to be scaled up
    for _ in range(3):
        assert next(a for a in provider.list_apps() if a.key == "shop").status == RUNNING
    shop.formation["web"]["quantity"] = 0  # stopped from the dashboard
    assert next(a for a in provider.list_apps() if a.key == "shop").status == STOPPED


def test_waking_always_gives_a_web_dyno(platforms):
    platform = platforms()
    shop = platform.add_app("shop", formation={"web": (0, "Basic"), "worker": (0, "Basic")}, real=False)
    provider = provider_for(platform)
    memo = {"formation": [{"type": "web", "quantity": 0, "size": "Basic"}, {"type": "worker", "quantity": 2}]}
    provider.start(info("shop"), memo)
    assert shop.quantities() == {"web": 1, "worker": 2}
