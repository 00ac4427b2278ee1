"""End to end: the account's API budget goes to what users wait for (real gunicorn, fake Scalingo).

A crowd of idle apps found running on an account allowed 12 calls a minute, of which 6 are kept
for wakes: the first minute goes to the first listings and formations read ahead, then the
stops queue for the budget for minutes. Meanwhile a user's wake is served, and the idle checks
stop listing (they decide from the last list and what paastis did).
"""

from __future__ import annotations

import re

import pytest

from tests.fakes.platform import closing_factory
from tests.fakes.scalingo_api import ScalingoPlatform
from tests.support import Gunicorn, echo, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "budget-token-0123456789abcdef"
ADMIN = {"PaastisProxyTarget": "system", "Authorization": f"Bearer {TOKEN}"}
CROWD = [f"idle-{i:02d}" for i in range(12)]

platforms = closing_factory(ScalingoPlatform)


def crowd_of(platforms, paastis_for) -> tuple[ScalingoPlatform, Gunicorn]:
    platform = platforms(rate_limit=12)
    for name in CROWD:
        platform.add_app(name, formation={"web": (1, "M"), "worker": (1, "S")}, running=True)
    platform.add_app("shop", boot_delay=0.3)
    paastis = paastis_for(
        platform,
        START_AND_STOP_MAX_IDLE_TIME="0.02",
        START_AND_STOP_CHECKING_INTERVAL="2",
        PROVIDER_SCALINGO_RATE_LIMIT="12",
        PROVIDER_DIRECTORY_TTL="3600",
        ROUTING_SYSTEM_API_ENABLED="true",
        ROUTING_SYSTEM_API_TOKEN=TOKEN,
    )
    return platform, paastis


def apps(paastis: Gunicorn) -> dict[str, dict]:
    response = paastis.get("/apps", headers=ADMIN)
    assert response.status_code == 200, response.text
    return {app["name"]: app for app in response.json()["apps"]}


def queued(paastis: Gunicorn) -> set[str]:
    return {name for name, app in apps(paastis).items() if app["stop_queued"]}


def metric(paastis: Gunicorn, name: str) -> float:
    text = paastis.get("/metrics", headers=ADMIN).text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def stopped(platform: ScalingoPlatform) -> set[str]:
    return {name for name in CROWD if platform.apps[name].amounts()["web"] == 0}


def test_a_wake_is_served_while_idle_stops_are_queued(platforms, paastis_for):
    platform, paastis = crowd_of(platforms, paastis_for)
    wait_until(lambda: stopped(platform) and queued(paastis), 150, what="stops to be under way and queued")

    assert echo(paastis, "shop", timeout=90)["app"] == "shop"  # woken through the crowd
    assert queued(paastis), "the crowd was done before the wake: the test proves nothing"
    log = list(platform.regions["osc-fr1"].requests)
    shop_scale = log.index(("POST", "/v1/apps/shop/scale"))
    assert any(method == "POST" and path.startswith("/v1/apps/idle-") for method, path in log[:shop_scale])
    assert not stopped(platform) >= set(CROWD)  # stops queued before the wake are still to come after it
    text = paastis.get("/metrics", headers=ADMIN).text
    assert re.search(r'^paastis_provider_calls_total\{class="wake",provider="scalingo"\} [1-9]', text, re.MULTILINE)
    assert re.search(r'^paastis_provider_calls_total\{class="stop",provider="scalingo"\} [1-9]', text, re.MULTILINE)
    assert platform.limit.rejected == 0  # 12 calls a minute, never one more


def test_idle_check_listings_yield_while_stops_are_queued(platforms, paastis_for):
    platform, paastis = crowd_of(platforms, paastis_for)
    wait_until(lambda: queued(paastis), 90, what="stops to be queued")
    listings = platform.calls("GET", "/v1/apps")
    skipped = metric(paastis, 'paastis_idle_check_listings_total{outcome="skipped"}')
    listed = metric(paastis, 'paastis_idle_check_listings_total{outcome="listed"}')

    wait_until(
        lambda: metric(paastis, 'paastis_idle_check_listings_total{outcome="skipped"}') >= skipped + 3,
        60,
        what="three idle checks that did not list",
    )
    assert queued(paastis)  # the stops were still waiting for the budget all along
    listed_since = metric(paastis, 'paastis_idle_check_listings_total{outcome="listed"}') - listed
    assert platform.calls("GET", "/v1/apps") - listings == listed_since  # a skipped check made no call
    assert listed_since < 3
    assert apps(paastis)["shop"]["status"] == "stopped"  # GET /apps reads the last list: no listing either
    assert platform.calls("GET", "/v1/apps") - listings == listed_since
    assert platform.limit.rejected == 0
