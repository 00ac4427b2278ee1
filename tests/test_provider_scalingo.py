"""The Scalingo provider against a fake of its auth service and regional APIs."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from paastis.config import ConfigError, Settings
from paastis.metrics import Metrics
from paastis.providers import FAILED, RUNNING, STARTING, STOPPED, AppInfo, AppNotFound, ProviderAuthError, ProviderError
from paastis.providers.http import WindowLimiter
from paastis.providers.priority import background_calls
from paastis.providers.scalingo import ScalingoProvider, jwt_lifetime, regional_urls
from paastis.providers.shared_limiter import SharedRateLimiter
from tests.fakes.platform import closing_factory
from tests.fakes.scalingo_api import ScalingoPlatform
from tests.redis_support import SHARED_URL
from tests.support import wait_until

platforms = closing_factory(ScalingoPlatform)


def settings_for(platform: ScalingoPlatform, **extra: str) -> Settings:
    env = {**platform.paastis_env(), "PROVIDER_SCALINGO_OPERATION_TIMEOUT": "20", **extra}
    return Settings.from_env(env)


def provider_for(platform: ScalingoPlatform, metrics: Metrics | None = None, **extra: str) -> ScalingoProvider:
    return ScalingoProvider.from_settings(settings_for(platform, **extra), {}, metrics or Metrics())


def listed(provider: ScalingoProvider, key: str) -> AppInfo:
    return next(app for app in provider.list_apps() if app.key == key)


def api_calls(platform: ScalingoPlatform) -> int:
    """Every regional API call so far (the token exchange goes to the auth service)."""
    return platform.calls("GET", ".*") + platform.calls("POST", ".*")


def calls(metrics: Metrics, operation: str, outcome: str) -> float:
    return metrics.provider_calls.labels("scalingo", operation, outcome)._value.get()


# -- settings ----------------------------------------------------------------------


def test_missing_api_token_stops_start_up_naming_the_variable():
    settings = Settings.from_env({"PROVIDER_NAME": "scalingo"})
    with pytest.raises(ConfigError, match="PROVIDER_SCALINGO_API_TOKEN is required"):
        ScalingoProvider.from_settings(settings, {}, Metrics())


def test_regional_urls_default_per_region_and_overrides():
    assert regional_urls(["osc-fr1", "osc-secnum-fr1"], None) == {
        "osc-fr1": "https://api.osc-fr1.scalingo.com",
        "osc-secnum-fr1": "https://api.osc-secnum-fr1.scalingo.com",
    }
    assert regional_urls(["osc-fr1"], "http://proxy:8080/") == {"osc-fr1": "http://proxy:8080"}
    assert regional_urls(["a", "b"], "http://p/{region}") == {"a": "http://p/a", "b": "http://p/b"}
    assert regional_urls(["a", "b"], "http://one, http://two") == {"a": "http://one", "b": "http://two"}
    with pytest.raises(ConfigError, match="1 URL\\(s\\) for 2 region\\(s\\)"):
        regional_urls(["a", "b"], "http://one")
    with pytest.raises(ConfigError, match="not an http\\(s\\) URL"):
        regional_urls(["a"], "ftp://one")


def test_bad_region_name_is_a_config_error():
    settings = Settings.from_env({"PROVIDER_SCALINGO_API_TOKEN": "tk", "PROVIDER_REGION": "osc-fr1,../x"})
    with pytest.raises(ConfigError, match="PROVIDER_REGION: '../x'"):
        ScalingoProvider.from_settings(settings, {}, Metrics())


def test_jwt_lifetime_reads_exp_and_iat():
    def token(claims: dict) -> str:
        import base64

        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        return f"e30.{payload}.sig"

    assert jwt_lifetime(token({"iat": 1000, "exp": 4600})) == 3600
    assert 59 < jwt_lifetime(token({"exp": time.time() + 60})) <= 60
    assert jwt_lifetime("not-a-jwt") is None
    assert jwt_lifetime(token({"iat": 1000})) is None


# -- auth --------------------------------------------------------------------------


def test_token_is_exchanged_once_and_every_call_carries_the_bearer(platforms):
    platform = platforms()
    platform.add_app("shop")
    provider = provider_for(platform)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: provider.list_apps(), range(8)))
    assert all([app.key for app in apps] == ["shop"] for apps in results)
    assert platform.exchanges == 1  # concurrent callers waited for one exchange
    assert platform.unauthorized == 0
    assert platform.refused_exchanges == 0


def test_bearer_is_renewed_before_it_expires(platforms):
    platform = platforms(bearer_ttl=2.0)
    platform.add_app("shop")
    provider = provider_for(platform)
    provider.list_apps()
    first_expiry = time.time() + 2.0
    wait_until(lambda: time.time() > first_expiry, 5, what="the first bearer to expire")
    assert listed(provider, "shop").status == STOPPED
    assert platform.exchanges == 2
    assert platform.unauthorized == 0  # renewed from its exp, not after a refusal


def test_refused_bearer_is_renewed_once_and_the_call_retried(platforms):
    platform = platforms()
    app = platform.add_app("shop", running=True)
    provider = provider_for(platform)
    shop = listed(provider, "shop")
    platform.revoke_bearers()
    assert provider.status(shop) == RUNNING
    assert platform.unauthorized == 1
    assert platform.exchanges == 2
    memo = provider.stop(shop)  # a write after renewal works too
    assert memo == {"containers": [{"name": "web", "amount": 1, "size": "M"}]}
    assert app.amounts() == {"web": 0}


def test_refused_api_token_logs_one_clear_line_and_does_not_storm(platforms, caplog):
    platform = platforms()
    platform.add_app("shop")
    provider = provider_for(platform, PROVIDER_SCALINGO_API_TOKEN="tk-us-wrong")
    caplog.set_level(logging.ERROR)
    for _ in range(5):
        with pytest.raises(ProviderAuthError):
            provider.list_apps()
    lines = [r.getMessage() for r in caplog.records if "PROVIDER_SCALINGO_API_TOKEN" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("scalingo refused our credentials (401: invalid token)")
    assert "tk-us-wrong" not in caplog.text
    assert platform.refused_exchanges == 1  # the next calls failed fast, without asking again
    assert platform.calls("GET", "/v1/apps") == 0


def test_bearer_refused_twice_is_an_auth_error_without_retry_storm(platforms, caplog):
    platform = platforms()
    platform.add_app("shop")
    provider = provider_for(platform)
    shop = listed(provider, "shop")
    platform.refuse_all_bearers = True
    caplog.set_level(logging.ERROR)
    with pytest.raises(ProviderAuthError, match="credentials refused \\(401\\)"):
        provider.status(shop)
    assert platform.calls("GET", "/v1/apps/shop") == 2  # the call, then one retry with a new bearer
    assert platform.exchanges == 2
    assert "check PROVIDER_SCALINGO_API_TOKEN" in caplog.text


# -- formation -----------------------------------------------------------------------


def test_formation_is_remembered_on_stop_and_restored_exactly(platforms):
    platform = platforms()
    formation = {"web": (3, "L"), "worker": (0, "S"), "clock": (1, "S")}
    app = platform.add_app("shop", formation=formation, running=True)
    provider = provider_for(platform)
    shop = listed(provider, "shop")
    assert shop.status == RUNNING and shop.upstream_url == app.process.url

    with background_calls():  # an idle stop: nobody waits for it
        memo = provider.stop(shop)
    assert app.amounts() == {"web": 0, "worker": 0, "clock": 0}
    assert platform.calls("POST", "/v1/apps/shop/scale") == 1
    assert platform.calls("GET", "/v1/apps/shop/operations/.*") == 0  # not followed: the next listing tells
    wait_until(lambda: not app.process.running, 10, what="the scale-down to finish")
    assert listed(provider, "shop").status == STOPPED

    memo = json.loads(json.dumps(memo))  # as the Redis registry keeps it
    running = provider.start(shop, memo)
    assert app.amounts() == {"web": 3, "worker": 0, "clock": 1}  # the worker at 0 stays at 0
    assert app.formation["web"]["size"] == "L"
    assert provider.status(shop) == RUNNING
    assert app.process.answering  # start returned once the operation was done
    assert platform.calls("GET", "/v1/apps/shop/operations/.*") >= 1
    assert {c["name"]: c["amount"] for c in running["containers"]} == {"web": 3, "worker": 0, "clock": 1}


def test_a_stop_costs_one_call_with_the_formation_known_and_two_without(platforms):
    platform = platforms()
    app = platform.add_app("shop", formation={"web": (2, "M"), "worker": (1, "S")}, running=True)
    provider = provider_for(platform)
    shop = listed(provider, "shop")
    before = api_calls(platform)

    with background_calls():  # idle stops
        memo = provider.stop(shop)  # nothing known: read the formation, then scale
    assert api_calls(platform) - before == 2
    wait_until(lambda: listed(provider, "shop").status == STOPPED, 10)
    running = provider.start(shop, memo)  # remembered at wake time
    wait_until(lambda: listed(provider, "shop").status == RUNNING, 10)

    before = api_calls(platform)
    with background_calls():
        assert provider.stop(shop, running) == memo
    assert api_calls(platform) - before == 1  # the scale alone
    assert app.amounts() == {"web": 0, "worker": 0}


def test_a_formation_changed_behind_our_back_is_read_again_or_remembered(platforms):
    platform = platforms()
    app = platform.add_app("shop", formation={"web": (1, "M"), "worker": (1, "S")}, running=True)
    provider = provider_for(platform)
    shop = listed(provider, "shop")
    stale = {"containers": [{"name": "web", "amount": 1}, {"name": "gone", "amount": 1}]}
    memo = provider.stop(shop, stale)  # "gone" no longer exists: the scale is refused, the formation read
    assert app.amounts() == {"web": 0, "worker": 0}
    assert {c["name"]: c["amount"] for c in memo["containers"]} == {"web": 1, "worker": 1}

    wait_until(lambda: listed(provider, "shop").status == STOPPED, 10)
    provider.start(shop, memo)
    wait_until(lambda: listed(provider, "shop").status == RUNNING, 10)
    memo = provider.stop(shop, {"containers": [{"name": "web", "amount": 1}]})  # worker unknown to us
    assert app.amounts() == {"web": 0, "worker": 1}  # scaled down at the next stop, now that it is known
    assert {c["name"]: c["amount"] for c in memo["containers"]} == {"web": 1, "worker": 1}


def test_a_start_right_after_a_stop_waits_for_the_scale_down_to_finish(platforms):
    platform = platforms()
    app = platform.add_app("shop", formation={"web": (1, "M")}, running=True, boot_delay=0.5)
    provider = provider_for(platform)
    shop = listed(provider, "shop")
    with background_calls():  # an idle stop, not followed
        memo = provider.stop(shop)
    assert provider.status(shop) == STARTING  # Scalingo says "scaling": no other operation is doable
    provider.start(shop, memo)
    assert app.amounts() == {"web": 1}
    assert provider.status(shop) == RUNNING


def test_start_without_memo_scales_web_to_one(platforms):
    platform = platforms()
    app = platform.add_app("blog", formation={"web": (2, "M"), "worker": (1, "M")})
    provider = provider_for(platform)
    provider.start(listed(provider, "blog"), None)
    assert app.amounts() == {"web": 1, "worker": 0}


def test_stop_of_an_app_already_at_zero_keeps_the_old_memo(platforms):
    platform = platforms()
    platform.add_app("blog")
    provider = provider_for(platform)
    assert provider.stop(listed(provider, "blog")) is None  # the lifecycle keeps what it remembered
    assert platform.calls("POST", "/v1/apps/blog/scale") == 0


def test_unusable_memo_falls_back_to_web_one(platforms):
    platform = platforms()
    app = platform.add_app("blog", formation={"web": (1, "M")})
    provider = provider_for(platform)
    provider.start(listed(provider, "blog"), {"formation": "web=3"})
    assert app.amounts() == {"web": 1}


def test_crashed_app_fails_fast_with_the_operation_error(platforms):
    platform = platforms()
    platform.add_app("broken", crash=True)
    provider = provider_for(platform)
    broken = listed(provider, "broken")
    with pytest.raises(ProviderError, match="scale operation failed: container web-1 crashed at boot") as error:
        provider.start(broken, None)  # the operation's error, long before the 20 s operation timeout
    assert error.value.status == 502 and error.value.app == "broken"
    assert provider.status(broken) == FAILED
    with pytest.raises(ProviderError, match="restart operation failed"):
        provider.start(broken, None)  # web is already at 1: a crashed app is restarted, not rescaled
    assert platform.calls("POST", "/v1/apps/broken/restart") == 1


def test_statuses_are_mapped(platforms):
    platform = platforms()
    app = platform.add_app("shop")
    provider = provider_for(platform)
    shop = listed(provider, "shop")
    expected = {"running": RUNNING, "stopped": STOPPED, "new": STARTING, "booting": STARTING}
    expected.update({"restarting": STARTING, "scaling": STARTING, "crashed": FAILED, "weird": "unknown"})
    for scalingo_status, status in expected.items():
        app.status = scalingo_status
        assert provider.status(shop) == status, scalingo_status


def test_unknown_app_is_app_not_found(platforms):
    platform = platforms()
    provider = provider_for(platform)
    with pytest.raises(AppNotFound):
        provider.status(AppInfo(key="ghost", name="ghost", region="osc-fr1"))


def test_never_deployed_app_answers_200_without_operation(platforms):
    platform = platforms()
    app = platform.add_app("fresh")
    app.deployed = False
    provider = provider_for(platform)
    provider.start(listed(provider, "fresh"), None)
    assert app.amounts() == {"web": 1}
    assert platform.calls("GET", "/v1/apps/fresh/operations/.*") == 0


# -- regions and rate limits -----------------------------------------------------------


def test_apps_of_every_region_are_listed_and_managed_in_their_region(platforms):
    platform = platforms(regions=("osc-fr1", "osc-secnum-fr1"))
    platform.add_app("shop", region="osc-fr1")
    secure = platform.add_app("vault", region="osc-secnum-fr1")
    provider = provider_for(platform)
    apps = {app.key: app for app in provider.list_apps()}
    assert {key: app.region for key, app in apps.items()} == {"shop": "osc-fr1", "vault": "osc-secnum-fr1"}
    provider.start(apps["vault"], None)
    assert secure.amounts() == {"web": 1}
    assert platform.regions["osc-secnum-fr1"].count("POST", "/v1/apps/vault/scale") == 1
    assert platform.regions["osc-fr1"].count("POST", "/v1/apps/vault/scale") == 0
    assert platform.exchanges == 1  # one bearer for the whole account


def test_one_region_failing_fails_the_listing(platforms):
    platform = platforms(regions=("osc-fr1", "osc-secnum-fr1"))
    platform.add_app("shop")
    provider = provider_for(platform)
    platform.regions["osc-secnum-fr1"].stop()
    with pytest.raises(ProviderError, match="list_apps failed"):
        provider.list_apps()


def test_a_429_storm_is_waited_out(platforms, caplog):
    platform = platforms()
    platform.add_app("shop")
    metrics = Metrics()
    provider = provider_for(platform, metrics)
    provider.list_apps()
    platform.storm(2.0)
    started = time.monotonic()
    caplog.set_level(logging.WARNING)
    assert [app.key for app in provider.list_apps()] == ["shop"]
    assert time.monotonic() - started >= 1.9
    assert platform.storm_rejected >= 2
    assert calls(metrics, "list_apps", "rate_limited") == platform.storm_rejected
    assert "scalingo: rate limited on list_apps" in caplog.text


def test_calls_never_exceed_the_budget(platforms):
    # 10 calls in any 2 s here (the fake enforces the same) so that the test takes seconds, not minutes.
    platform = platforms(rate_limit=10, window=2.0)
    platform.add_app("shop")
    provider = provider_for(platform)
    assert isinstance(provider.scheduler.limiter, WindowLimiter)  # one process: the last minute's calls, logged
    provider.scheduler.limiter = WindowLimiter(10, window=2.0, margin=0.2)
    shop = AppInfo(key="shop", name="shop", region="osc-fr1")
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: provider.status(shop), range(25)))
    elapsed = time.monotonic() - started
    assert platform.limit.rejected == 0
    assert platform.calls("GET", "/v1/apps/shop") == 25
    assert elapsed >= 4.0  # 10, then 10 once the first window passed, then the last 5 a window later


def test_idle_checks_that_would_spend_the_budget_are_warned_about(platforms, caplog):
    platform = platforms(regions=("osc-fr1", "osc-secnum-fr1"))
    caplog.set_level(logging.WARNING)
    provider_for(platform, START_AND_STOP_CHECKING_INTERVAL="60")
    assert "START_AND_STOP_CHECKING_INTERVAL" not in caplog.text
    provider_for(platform, START_AND_STOP_CHECKING_INTERVAL="2")
    assert "START_AND_STOP_CHECKING_INTERVAL=2s makes the idle checks alone spend 60 of the 60" in caplog.text


# -- the budget shared in Redis by several workers -------------------------------------


def redis_settings(prefix: str, budget: int) -> dict[str, str]:
    return {
        "REGISTRY_TYPE": "redis",
        "REGISTRY_REDIS_URL": SHARED_URL,
        "REGISTRY_REDIS_PREFIX": prefix,
        "PROVIDER_SCALINGO_RATE_LIMIT": str(budget),
    }


def test_workers_share_one_budget_in_redis(platforms, prefix):
    platform = platforms()
    platform.add_app("shop")
    shop = AppInfo(key="shop", name="shop", region="osc-fr1")
    first = provider_for(platform, **redis_settings(prefix, 12))
    second = provider_for(platform, **redis_settings(prefix, 12))  # another gunicorn worker
    assert isinstance(second.limiter, SharedRateLimiter)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: first.status(shop), range(7)))
        list(pool.map(lambda _: second.status(shop), range(5)))
    assert platform.calls("GET", "/v1/apps/shop") == 12
    wait = second.limiter.delay()
    assert 50 < wait <= 60  # the 13th call of the minute waits, whichever worker sends it
    first.close()
    second.close()


def test_a_429_seen_by_one_worker_pauses_the_others(platforms, prefix):
    platform = platforms()
    first = provider_for(platform, **redis_settings(prefix, 60))
    second = provider_for(platform, **redis_settings(prefix, 60))
    first.limiter.slow_down(5)
    assert 4 < second.limiter.delay() <= 5
    first.close()
    second.close()


def test_without_redis_each_process_keeps_within_the_budget_alone(caplog):
    limiter = SharedRateLimiter.from_url("redis://127.0.0.1:1/0", "k", 60, 0.2, local=(50, 10))
    caplog.set_level(logging.WARNING)
    for _ in range(10):
        limiter.acquire()  # the local burst
    assert caplog.text.count("redis: unreachable") == 1  # logged once, by the link
    assert limiter.delay() is None  # not asking Redis again for a while
    limiter.close()


def test_a_stop_an_operator_waits_for_is_followed_to_its_end(platforms):
    platform = platforms()
    app = platform.add_app("shop", running=True)
    provider = provider_for(platform)
    provider.stop(listed(provider, "shop"))  # not in the background: the admin API, the CLI, the dashboard
    assert platform.calls("GET", "/v1/apps/shop/operations/.*") >= 1
    assert listed(provider, "shop").status == STOPPED and not app.process.running
