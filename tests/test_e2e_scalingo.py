"""End to end: real gunicorn with PROVIDER_NAME=scalingo, against the fake Scalingo and real app processes."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tests.fakes.platform import closing_factory
from tests.fakes.scalingo_api import ScalingoPlatform
from tests.redis_support import SHARED_URL, delete_prefix, unique_prefix
from tests.support import echo, filed_details, wait_until

FAST_IDLE = {"START_AND_STOP_MAX_IDLE_TIME": "0.02", "START_AND_STOP_CHECKING_INTERVAL": "2"}


platforms = closing_factory(ScalingoPlatform)


def test_running_app_is_discovered_put_to_sleep_and_woken_with_its_exact_formation(platforms, paastis_for):
    platform = platforms()
    shop = platform.add_app("shop", formation={"web": (3, "L"), "worker": (0, "S"), "clock": (1, "S")}, running=True)
    paastis = paastis_for(platform, **FAST_IDLE)

    wait_until(lambda: shop.status == "stopped", 20, what="the idle shop to be scaled to 0")
    assert shop.amounts() == {"web": 0, "worker": 0, "clock": 0}
    assert not shop.process.running
    assert "stopping shop (idle)" in paastis.logs()

    assert echo(paastis, "shop")["app"] == "shop"
    assert shop.amounts() == {"web": 3, "worker": 0, "clock": 1}  # a worker at 0 stays at 0
    assert shop.formation["web"]["size"] == "L"
    assert platform.limit.rejected == 0  # the documented 60 requests/minute were never exceeded


def test_stopped_app_is_woken_once_for_many_concurrent_requests(platforms, paastis_for):
    platform = platforms()
    blog = platform.add_app("blog", formation={"web": (2, "M"), "worker": (1, "M")}, boot_delay=1.0)
    paastis = paastis_for(platform, MAX_IN_FLIGHT_PER_APP="20")  # all 20 may wait for the wake
    with ThreadPoolExecutor(20) as pool:
        apps = list(pool.map(lambda _: echo(paastis, "blog")["app"], range(20)))
    assert apps == ["blog"] * 20
    assert platform.calls("POST", "/v1/apps/blog/scale") == 1
    assert blog.amounts() == {"web": 1, "worker": 0}  # nothing remembered: web 1
    assert paastis.get(host="ghost.localhost").status_code == 404


def test_bearer_is_renewed_after_expiry_and_after_a_401(platforms, paastis_for):
    platform = platforms(bearer_ttl=2.0)
    for name in ("one", "two", "three"):
        platform.add_app(name)
    paastis = paastis_for(platform)
    assert echo(paastis, "one")["app"] == "one"
    assert platform.exchanges == 1
    first_expiry = time.time() + 2.0
    wait_until(lambda: time.time() > first_expiry, 5, what="the first bearer to expire")
    assert echo(paastis, "two")["app"] == "two"
    assert platform.exchanges >= 2
    assert platform.unauthorized == 0  # renewed from its exp, before any refusal

    platform.revoke_bearers()  # e.g. revoked on Scalingo's side
    assert echo(paastis, "three")["app"] == "three"
    assert platform.unauthorized == 1  # one refusal, then a new bearer: no retry storm
    assert "PROVIDER_SCALINGO_API_TOKEN" not in paastis.logs()  # a renewed bearer is not an operator problem


def test_a_429_storm_is_survived_by_requests_that_can_wait(platforms, paastis_for):
    platform = platforms()
    platform.add_app("warm", running=True)
    shop = platform.add_app("shop", boot_delay=0.5)
    paastis = paastis_for(platform)
    assert echo(paastis, "warm")["app"] == "warm"  # the directory is filled

    platform.storm(3.0)
    with ThreadPoolExecutor(10) as pool:
        apps = list(pool.map(lambda _: echo(paastis, "shop", timeout=60)["app"], range(10)))
    assert apps == ["shop"] * 10
    assert platform.storm_rejected >= 2
    assert platform.calls("POST", "/v1/apps/shop/scale") == 1
    assert shop.amounts() == {"web": 1}
    assert "scalingo: rate limited" in paastis.logs()


def test_crashing_app_is_a_quick_502_naming_provider_and_app(platforms, paastis_for):
    platform = platforms()
    platform.add_app("broken", crash=True)
    platform.add_app("healthy")
    paastis = paastis_for(platform)
    response = paastis.get("/echo", host="broken.localhost", timeout=15)
    assert response.status_code == 502
    assert response.json()["error"].startswith("app 'broken' could not be started (event ")
    details = filed_details(paastis, response)
    assert "scalingo" in details and "broken" in details and "crashed at boot" in details
    assert echo(paastis, "healthy")["app"] == "healthy"


def test_apps_of_two_regions_are_served(platforms, paastis_for):
    platform = platforms(regions=("osc-fr1", "osc-secnum-fr1"))
    platform.add_app("shop", region="osc-fr1")
    platform.add_app("vault", region="osc-secnum-fr1")
    paastis = paastis_for(platform)
    assert echo(paastis, "shop")["app"] == "shop"
    assert echo(paastis, "vault")["app"] == "vault"
    assert platform.regions["osc-secnum-fr1"].count("POST", "/v1/apps/vault/scale") == 1


def test_formation_survives_a_restart_of_paastis_in_redis(platforms, paastis_for):
    platform = platforms()
    shop = platform.add_app("shop", formation={"web": (2, "M"), "worker": (1, "S")}, running=True)
    prefix = unique_prefix("scalingo")
    redis_env = {"REGISTRY_TYPE": "redis", "REGISTRY_REDIS_URL": SHARED_URL, "REGISTRY_REDIS_PREFIX": prefix}
    try:
        first = paastis_for(platform, **redis_env, **FAST_IDLE)
        wait_until(lambda: shop.status == "stopped", 20, what="the idle shop to be scaled to 0")
        first.stop()
        second = paastis_for(platform, **redis_env)
        assert echo(second, "shop")["app"] == "shop"
        assert shop.amounts() == {"web": 2, "worker": 1}  # remembered by the first instance
    finally:
        delete_prefix(SHARED_URL, prefix)


def test_refused_token_gives_one_log_line_and_paastis_keeps_serving(platforms, paastis_for):
    platform = platforms()
    platform.add_app("shop")
    paastis = paastis_for(platform, PROVIDER_SCALINGO_API_TOKEN="tk-us-revoked", PROVIDER_DIRECTORY_TTL="0")
    for _ in range(3):
        response = paastis.get("/echo", host="shop.localhost", timeout=15)
        assert response.status_code == 502  # nothing can be listed: not "unknown", but the provider failing
        assert response.json()["error"] == "paastis cannot tell whether app 'shop' exists right now: try again shortly"
    assert paastis.get("/echo", host="shop.localhost").status_code == 502  # still serving
    refusals = [line for line in paastis.logs().splitlines() if "check PROVIDER_SCALINGO_API_TOKEN" in line]
    assert len(refusals) == 1 and "scalingo refused our credentials (401" in refusals[0]
    assert platform.refused_exchanges == 1  # later attempts failed fast instead of asking again
    assert "tk-us-revoked" not in paastis.logs()


def test_app_stopped_behind_our_back_is_woken_when_the_router_says_so(platforms, paastis_for):
    platform = platforms()
    shop = platform.add_app("shop", formation={"web": (1, "M")}, running=True)
    paastis = paastis_for(platform)
    assert echo(paastis, "shop")["app"] == "shop"
    with shop.lock:  # someone scales it down in the dashboard
        shop.formation["web"]["amount"] = 0
        shop.status = "stopped"
    shop.process.scale_down()
    assert echo(paastis, "shop")["app"] == "shop"  # the router's 503 made paastis check and wake it
    assert shop.web == 1
    assert "the platform says shop is down: waking it" in paastis.logs()


def test_an_app_deleted_since_the_last_listing_is_a_404_and_forgotten(platforms, paastis_for):
    platform = platforms()
    platform.add_app("shop", formation={"web": (1, "M")})
    gone = platform.add_app("gone", formation={"web": (1, "M")})
    paastis = paastis_for(platform)
    assert echo(paastis, "shop")["app"] == "shop"  # the listing now knows "gone" too
    del platform.apps["gone"]
    gone.process.close()
    first = paastis.get(host="gone.localhost")
    assert first.status_code == 404 and "gone" in first.json()["error"]
    calls = platform.calls("GET", "/v1/apps/gone.*")
    assert calls >= 1  # the wake asked Scalingo, which said 404
    again = paastis.get(host="gone.localhost")
    assert again.status_code == 404
    assert platform.calls("GET", "/v1/apps/gone.*") == calls  # forgotten: no more API calls for it
