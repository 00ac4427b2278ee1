"""End to end: a hung provider API cannot make a wake (or an admin start or stop) outlast its deadline.

The fake Scalingo API is made to take some calls and never answer. Before the deadline
was passed down, each such call was retried with 30 s timeouts, and a wake with a 10 s
operation timeout waited 91 s; the clients below give up after 25 s.
"""

from __future__ import annotations

import re

import pytest

from tests.fakes.platform import closing_factory
from tests.fakes.scalingo_api import ScalingoPlatform
from tests.support import echo, filed_details, wait_until

pytestmark = pytest.mark.e2e

platforms = closing_factory(ScalingoPlatform)

TOKEN = "deadline-token-0123456789abcdef"
ADMIN = {"PaastisProxyTarget": "system", "Authorization": f"Bearer {TOKEN}"}
SHORT = {"PROVIDER_OPERATION_TIMEOUT": "3", "ROUTING_SYSTEM_API_ENABLED": "true", "ROUTING_SYSTEM_API_TOKEN": TOKEN}
JSON = {"Accept": "application/json"}  # a blocking wake (no waiting page)
PATIENCE = 25  # seconds: generous for a 3 s deadline, far below what the hung calls used to cost


@pytest.fixture
def account(platforms, paastis_for):
    """A sleeping ``blog``, a running ``shop``, and a paastis that has listed them both already."""
    platform = platforms()
    platform.add_app("blog")
    platform.add_app("shop", running=True)
    paastis = paastis_for(platform, **SHORT)
    assert echo(paastis, "shop")["app"] == "shop"  # listed and registered: only the calls below can hang
    return platform, platform.regions["osc-fr1"], paastis


@pytest.mark.parametrize("hung", [r"^/v1/apps/blog$", r"^/v1/apps/blog/operations/"])
def test_a_wake_answers_504_at_its_deadline_whatever_the_api_does(account, hung):
    platform, region, paastis = account
    region.hang = re.compile(hung)  # the app's own status, or the scale operation it has to follow
    response = paastis.get("/", host="blog.localhost", headers=JSON, timeout=PATIENCE)
    assert response.status_code == 504
    assert response.json()["error"].startswith("app 'blog' did not become ready in time (event ")
    assert "app 'blog' did not become ready within 3s" in filed_details(paastis, response)
    assert region.hung >= 1
    assert echo(paastis, "shop")["app"] == "shop"  # every other app is still served
    assert "Traceback" not in paastis.logs()


def test_an_admin_start_answers_504_at_its_deadline(account):
    _, region, paastis = account
    region.hang = re.compile(r"^/v1/apps/blog")
    response = paastis.request("POST", "/apps/blog/start", headers=ADMIN, timeout=PATIENCE)
    assert response.status_code == 504
    assert "'blog'" in response.json()["error"]


def test_an_admin_stop_answers_504_at_its_deadline_and_loses_nothing(account):
    platform, region, paastis = account
    region.hang = re.compile(r"^/v1/apps/shop")
    response = paastis.request("POST", "/apps/shop/stop", headers=ADMIN, timeout=PATIENCE)
    assert response.status_code == 504
    assert "could not stop 'shop'" in response.json()["error"]
    assert platform.apps["shop"].process.running
    region.hang = None

    def monitored() -> bool:
        apps = paastis.request("GET", "/apps", headers=ADMIN).json()["apps"]
        return any(app["name"] == "shop" and app["monitored"] for app in apps)

    wait_until(monitored, 10, what="shop to be registered again after its stop failed")


def test_a_hung_listing_cannot_hold_a_request_for_an_unknown_name(platforms, paastis_for):
    platform = platforms()
    platform.add_app("shop", running=True)
    # Every unknown name lists again (TTL 0); the idle check lists once, at start-up, and not again for an hour.
    paastis = paastis_for(platform, **SHORT, PROVIDER_DIRECTORY_TTL="0", START_AND_STOP_CHECKING_INTERVAL="3600")
    assert echo(paastis, "shop")["app"] == "shop"
    wait_until(lambda: first_idle_check_done(paastis), 30, what="the start-up idle check (its listing) to end")
    region = platform.regions["osc-fr1"]
    region.hang = re.compile(r"^/v1/apps$")  # from now on, the only listing is the one the request below begins
    response = paastis.get("/", host="ghost.localhost", headers=JSON, timeout=PATIENCE)
    assert response.status_code == 502
    assert "cannot tell whether app 'ghost' exists" in response.json()["error"]
    assert region.hung == 1  # the answer came while that listing hung
    assert echo(paastis, "shop")["app"] == "shop"  # a known app is still served meanwhile


def first_idle_check_done(paastis) -> bool:
    metrics = paastis.request("GET", "/metrics", headers=ADMIN).text
    return "paastis_idle_check_duration_seconds_count 1.0" in metrics
