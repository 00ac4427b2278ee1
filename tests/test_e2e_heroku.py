"""End to end: real gunicorn with PROVIDER_NAME=heroku, against the fake Platform API and real app processes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.fakes.heroku_api import HerokuPlatform
from tests.fakes.platform import closing_factory
from tests.support import echo, filed_details, wait_until, write_config

FAST_IDLE = {"START_AND_STOP_MAX_IDLE_TIME": "0.02", "START_AND_STOP_CHECKING_INTERVAL": "1"}


platforms = closing_factory(HerokuPlatform)


def test_running_app_is_discovered_put_to_sleep_and_woken_with_its_exact_formation(platforms, paastis_for):
    platform = platforms()
    formation = {"web": (2, "Standard-2X"), "worker": (0, "Basic"), "clock": (1, "Basic")}
    shop = platform.add_app("shop", formation=formation, running=True)
    paastis = paastis_for(platform, **FAST_IDLE)

    wait_until(lambda: shop.quantities()["web"] == 0, 20, what="the idle shop to be scaled to 0")
    assert shop.quantities() == {"web": 0, "worker": 0, "clock": 0}
    wait_until(lambda: not shop.process.running, 5, what="the shop's process to end")
    assert "stopping shop (idle)" in paastis.logs()
    assert paastis.get("/", host="shop.localhost", headers={"Accept": "text/html"}).status_code == 503  # waiting page

    wait_until(lambda: echo(paastis, "shop")["app"] == "shop", 20, what="the shop to answer again")
    assert shop.quantities() == {"web": 2, "worker": 0, "clock": 1}  # a worker at 0 stays at 0
    assert shop.sizes()["web"] == "Standard-2X"


def test_stopped_app_is_woken_once_for_many_concurrent_requests(platforms, paastis_for):
    platform = platforms()
    blog = platform.add_app("blog", formation={"web": (2, "Basic"), "worker": (1, "Basic")}, boot_delay=1.0)
    paastis = paastis_for(platform, MAX_IN_FLIGHT_PER_APP="20")  # all 20 may wait for the wake
    with ThreadPoolExecutor(20) as pool:
        apps = list(pool.map(lambda _: echo(paastis, "blog")["app"], range(20)))
    assert apps == ["blog"] * 20
    assert platform.count("PATCH", "/apps/blog/formation") == 1
    assert blog.quantities() == {"web": 1, "worker": 0}  # nothing remembered: web 1
    assert paastis.get(host="ghost.localhost").status_code == 404


def test_an_app_on_the_third_page_of_the_listing_is_found(platforms, paastis_for):
    platform = platforms()
    platform.add_filler_apps(450)
    platform.add_app("deep", id="ffffffff-0000-4000-8000-000000000000")
    assert platform.page_of("deep") == 3
    paastis = paastis_for(platform, PROVIDER_HEROKU_PAGE_SIZE="200")
    assert echo(paastis, "deep")["app"] == "deep"
    assert platform.count("GET", "/apps") >= 3


def test_a_429_storm_is_survived_by_requests_that_can_wait(platforms, paastis_for):
    platform = platforms()
    warm = platform.add_app("warm", running=True)
    shop = platform.add_app("shop", boot_delay=0.5)
    wait_until(lambda: warm.process.answering, 10, what="the warm app to have booted")
    paastis = paastis_for(platform)
    assert echo(paastis, "warm")["app"] == "warm"  # the directory is filled

    platform.storm(4.0)
    with ThreadPoolExecutor(10) as pool:
        apps = list(pool.map(lambda _: echo(paastis, "shop", timeout=60)["app"], range(10)))
    assert apps == ["shop"] * 10
    assert platform.storm_rejected >= 2
    assert platform.count("PATCH", "/apps/shop/formation") == 1
    assert shop.quantities() == {"web": 1}
    assert "heroku: rate limited" in paastis.logs()


def test_crashing_app_is_a_quick_502_naming_provider_and_app(platforms, paastis_for):
    platform = platforms()
    platform.add_app("broken", crash=True)
    paastis = paastis_for(platform)
    response = paastis.get("/echo", host="broken.localhost", timeout=15)
    assert response.status_code == 502
    assert response.json()["error"].startswith("app 'broken' could not be started (event ")
    assert "heroku" in filed_details(paastis, response)


def test_a_missing_token_stops_start_up_naming_it(tmp_path, gunicorn_factory):
    write_config(tmp_path)
    paastis = gunicorn_factory({"PROVIDER_NAME": "heroku"}, wait=False)
    wait_until(lambda: paastis.process.poll() is not None, 20, what="gunicorn to give up")
    assert "PROVIDER_HEROKU_API_TOKEN is required but not set" in paastis.logs()
