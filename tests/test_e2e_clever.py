"""End to end: real gunicorn with PROVIDER_NAME=clever-cloud, against the fake v2 API and real app processes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.fakes.clever_api import CleverPlatform
from tests.fakes.platform import closing_factory
from tests.support import echo, filed_details, wait_until, write_config

FAST_IDLE = {"START_AND_STOP_MAX_IDLE_TIME": "0.02", "START_AND_STOP_CHECKING_INTERVAL": "1"}


platforms = closing_factory(CleverPlatform)


def test_running_app_is_discovered_put_to_sleep_and_woken(platforms, paastis_for):
    platform = platforms(organisation_id="orga_0123")
    shop = platform.add_app("shop", running=True)
    wait_until(lambda: shop.process.answering, 10, what="the shop to have booted")
    paastis = paastis_for(platform, PROVIDER_CLEVER_ORGANISATION_ID="orga_0123", **FAST_IDLE)

    wait_until(lambda: shop.state == "SHOULD_BE_DOWN", 20, what="the idle shop to be undeployed")
    wait_until(lambda: not shop.process.running, 5, what="the shop's instance to stop")
    assert f"stopping {shop.key} (idle)" in paastis.logs()

    assert echo(paastis, shop.key)["app"] == "shop"  # the app-<uuid> host form
    assert shop.up and shop.starts == 1
    assert platform.count("POST", f"/v2/organisations/orga_0123/applications/{shop.id}/instances") == 1


def test_name_slug_and_app_uuid_reach_the_same_app_woken_once(platforms, paastis_for):
    platform = platforms()
    blog = platform.add_app("My Blog", boot_delay=1.0)
    platform.add_app("twin")
    platform.add_app("Twin")
    paastis = paastis_for(platform, MAX_IN_FLIGHT_PER_APP="20")  # all 20 may wait for the wake
    hosts = [blog.key, "my-blog"] * 10
    with ThreadPoolExecutor(20) as pool:
        apps = list(pool.map(lambda host: echo(paastis, host)["app"], hosts))
    assert apps == ["My Blog"] * 20
    assert blog.starts == 1
    assert paastis.get(host="twin.localhost").status_code == 404  # two apps share that slug: no alias
    assert paastis.get(host=f"{blog.id}.localhost").status_code == 400  # app_<uuid> is not a host label


def test_a_429_storm_is_survived_by_requests_that_can_wait(platforms, paastis_for):
    platform = platforms()
    warm = platform.add_app("warm", running=True)
    shop = platform.add_app("shop", boot_delay=0.5)
    wait_until(lambda: warm.process.answering, 10, what="the warm app to have booted")
    paastis = paastis_for(platform)
    assert echo(paastis, "warm")["app"] == "warm"  # the directory is filled

    platform.storm(3.0)
    with ThreadPoolExecutor(10) as pool:
        apps = list(pool.map(lambda _: echo(paastis, "shop", timeout=60)["app"], range(10)))
    assert apps == ["shop"] * 10
    assert platform.storm_rejected >= 2
    assert shop.starts == 1
    assert "clever-cloud: rate limited" in paastis.logs()


def test_failed_deployment_is_a_502_naming_provider_and_app(platforms, paastis_for):
    platform = platforms()
    platform.add_app("broken", crash=True, boot_delay=0.2)
    paastis = paastis_for(platform)
    response = paastis.get("/echo", host="broken.localhost", timeout=20)
    assert response.status_code == 502
    assert " could not be started (event " in response.json()["error"]
    details = filed_details(paastis, response)
    assert "clever-cloud" in details and "failed to start" in details


def test_a_missing_credential_stops_start_up_naming_it(tmp_path, gunicorn_factory):
    write_config(tmp_path)
    env = {
        "PROVIDER_NAME": "clever-cloud",
        "PROVIDER_CLEVER_OAUTH_CONSUMER_KEY": "ck",
        "PROVIDER_CLEVER_OAUTH_CONSUMER_SECRET": "cs",
        "PROVIDER_CLEVER_TOKEN": "tk",
    }
    paastis = gunicorn_factory(env, wait=False)
    wait_until(lambda: paastis.process.poll() is not None, 20, what="gunicorn to give up")
    assert "PROVIDER_CLEVER_SECRET is required but not set" in paastis.logs()
