"""End to end: one paastis for a whole organisation, through real gunicorn.

Two Scalingo accounts (each with its own token, one per region), a Heroku account, a Clever
Cloud account and a local app, all in ONE instance configured by ``providers:`` in paastis.yml.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.fakes.clever_api import CleverPlatform
from tests.fakes.heroku_api import HerokuPlatform
from tests.fakes.platform import closing_factory
from tests.fakes.scalingo_api import ScalingoPlatform
from tests.support import echo, local_app, starts, wait_until
from tests.test_cli import run

TOKEN = "organisation-token-0123456789"
SYSTEM = {"PaastisProxyTarget": "system", "PaastisProxySystemApiToken": TOKEN}

scalingos = closing_factory(ScalingoPlatform)
herokus = closing_factory(HerokuPlatform)
clevers = closing_factory(CleverPlatform)


def scalingo_entry(platform: ScalingoPlatform, variable: str) -> dict[str, Any]:
    return {
        "type": "scalingo",
        "region": platform.region_names,
        "api_url": platform.api_urls,
        "auth_url": platform.auth.url,
        "api_token_env": variable,
    }


def write(tmp_path: Path, config: dict[str, Any]) -> None:
    (tmp_path / "paastis.yml").write_text(yaml.safe_dump(config, sort_keys=False))


def admin(paastis: Any, method: str, path: str, **kwargs: Any) -> requests.Response:
    return paastis.request(method, path, host="paastis.localhost", headers=SYSTEM, **kwargs)


def paths(server: Any) -> list[str]:
    with server.lock:
        return [path for _, path in server.requests]


def scalingo_paths(platform: ScalingoPlatform) -> list[str]:
    return [path for server in platform.regions.values() for path in paths(server)]


@pytest.fixture
def organisation(tmp_path, scalingos, herokus, clevers):
    """Every account, its apps, and the paastis.yml and environment that put them behind one paastis."""
    paris = scalingos(api_token="tk-us-paris-0000000000")
    secnum = scalingos(regions=("osc-secnum-fr1",), api_token="tk-us-secnum-111111111")
    us = herokus(token="HRKU-us-22222222222222")
    clever = clevers()
    apps = {
        "sc-shop": paris.add_app("sc-shop"),
        "sn-api": secnum.add_app("sn-api"),
        "hk-front": us.add_app("hk-front"),
        "blog": clever.add_app("Blog"),
        "both-paris": paris.add_app("both"),
        "both-us": us.add_app("both"),
        "pinned-paris": paris.add_app("pinned"),
        "pinned-us": us.add_app("pinned"),
        "legacy-paris": paris.add_app("legacy"),
        "legacy-us": us.add_app("legacy"),
    }
    here, _ = local_app(tmp_path, "here")
    config = {
        "providers": {
            "paris": scalingo_entry(paris, "SCALINGO_PARIS_TOKEN"),
            "secnum": scalingo_entry(secnum, "SCALINGO_SECNUM_TOKEN"),
            "us": {"type": "heroku", "api_url": us.url, "api_token_env": "HEROKU_US_TOKEN"},
            "clever": {
                "type": "clever-cloud",
                "api_host": clever.url,
                "upstream_scheme": "http",
                "oauth_consumer_key_env": "CLEVER_KEY",
                "oauth_consumer_secret_env": "CLEVER_CONSUMER_SECRET",
                "token_env": "CLEVER_TOKEN",
                "secret_env": "CLEVER_SECRET",
            },
            "here": {"type": "local"},
        },
        "apps": [here],
        "rules": [
            {"pattern": "pinned", "provider": "us"},
            {"pattern": "legacy", "provider_name": "heroku"},  # the original's key: the one heroku account
        ],
        "routes": [
            {"host": "shop.client.test", "app": "sc-shop"},
            {"host": "*.preview.client.test", "app": "hk-$1"},
        ],
    }
    env = {
        "SCALINGO_PARIS_TOKEN": paris.api_token,
        "SCALINGO_SECNUM_TOKEN": secnum.api_token,
        "HEROKU_US_TOKEN": us.token,
        "CLEVER_KEY": clever.consumer_key,
        "CLEVER_CONSUMER_SECRET": clever.consumer_secret,
        "CLEVER_TOKEN": clever.token,
        "CLEVER_SECRET": clever.secret,
        "ROUTING_SYSTEM_API_ENABLED": "true",
        "ROUTING_SYSTEM_API_TOKEN": TOKEN,
        "PROVIDER_OPERATION_TIMEOUT": "30",
    }
    return {"paris": paris, "secnum": secnum, "us": us, "clever": clever}, apps, config, env


def test_every_app_is_woken_and_stopped_through_its_own_account(organisation, tmp_path, gunicorn_factory):
    accounts, apps, config, env = organisation
    paris, secnum, us, clever = accounts["paris"], accounts["secnum"], accounts["us"], accounts["clever"]
    write(tmp_path, config)
    paastis = gunicorn_factory(env)

    assert echo(paastis, "sc-shop")["app"] == "sc-shop"
    assert echo(paastis, "sn-api")["app"] == "sn-api"
    assert echo(paastis, "hk-front")["app"] == "hk-front"
    assert echo(paastis, "blog")["app"] == "Blog"  # Clever Cloud's name slug
    assert echo(paastis, "here")["path"] == "/echo" and starts(tmp_path, "here") == 1
    assert apps["sc-shop"].amounts() == {"web": 1} and apps["sn-api"].amounts() == {"web": 1}
    assert apps["hk-front"].quantities() == {"web": 1} and apps["blog"].up

    listed = {app["name"]: app["provider"] for app in admin(paastis, "GET", "/apps").json()["apps"]}
    assert listed == {
        "sc-shop": "paris",
        "sn-api": "secnum",
        "hk-front": "us",
        apps["blog"].key: "clever",
        "here": "here",
        "both": "paris",  # on paris and us: the first in providers: order
        "pinned": "us",  # provider: us
        "legacy": "us",  # provider_name: heroku
    }
    assert admin(paastis, "GET", "/apps/sn-api").json()["provider"] == "secnum"
    only_us = admin(paastis, "GET", "/apps", params={"provider": "us"}).json()["apps"]
    assert sorted(app["name"] for app in only_us) == ["hk-front", "legacy", "pinned"]
    assert admin(paastis, "GET", "/apps", params={"provider": "nope"}).status_code == 400
    cli_env = {"PAASTIS_URL": paastis.url, "ROUTING_SYSTEM_API_TOKEN": TOKEN}
    table = run("apps", "--provider", "secnum", **cli_env)
    assert table.returncode == 0, table.stderr
    assert [line.split()[0] for line in table.stdout.splitlines()] == ["NAME", "sn-api"]
    everything = run("apps", **cli_env).stdout.splitlines()
    assert everything[0].split()[:3] == ["NAME", "PROVIDER", "STATUS"]
    assert {line.split()[0]: line.split()[1] for line in everything[1:]}["sn-api"] == "secnum"

    for name in ("sc-shop", "sn-api", "hk-front", apps["blog"].key, "here"):
        stopped = admin(paastis, "POST", f"/apps/{name}/stop")
        assert stopped.status_code == 200, stopped.text
    assert apps["sc-shop"].amounts() == {"web": 0} and apps["sn-api"].amounts() == {"web": 0}
    assert apps["hk-front"].quantities() == {"web": 0}
    wait_until(lambda: not apps["blog"].up, 10, what="the Clever Cloud app to be undeployed")

    events = admin(paastis, "GET", "/events", params={"type": "APP_STOPPED"}).json()["events"]
    assert {event["app"]: event["provider"] for event in events} == {
        "sc-shop": "paris",
        "sn-api": "secnum",
        "hk-front": "us",
        apps["blog"].key: "clever",
        "here": "here",
    }
    metrics = admin(paastis, "GET", "/metrics").text
    assert 'paastis_wakes_total{app="sn-api",outcome="success",provider="secnum"} 1.0' in metrics
    assert 'paastis_provider_api_calls_total{operation="scale",outcome="success",provider="paris"}' in metrics

    # No call ever went to another account: each fake saw only its own apps, and its own token.
    own = {
        "paris": {"sc-shop", "both", "pinned", "legacy"},
        "secnum": {"sn-api"},
        "us": {"hk-front", "both", "pinned", "legacy", apps["hk-front"].id},
        "clever": {apps["blog"].id},
    }
    seen = {
        "paris": scalingo_paths(paris),
        "secnum": scalingo_paths(secnum),
        "us": paths(us),
        "clever": paths(clever),
    }
    for account, account_paths in seen.items():
        strangers = {name for other, names in own.items() if other != account for name in names} - own[account]
        assert not [path for path in account_paths for name in strangers if f"/{name}" in path], account
    assert paris.unauthorized == secnum.unauthorized == 0  # each bearer went to its own account only
    assert paris.refused_exchanges == secnum.refused_exchanges == 0


def test_a_name_on_two_providers_follows_the_order_and_the_rules(organisation, tmp_path, gunicorn_factory):
    accounts, apps, config, env = organisation
    write(tmp_path, config)
    paastis = gunicorn_factory(env)

    assert echo(paastis, "both")["app"] == "both"
    assert apps["both-paris"].amounts() == {"web": 1}  # paris comes first in providers:
    assert apps["both-us"].quantities() == {"web": 0}
    assert echo(paastis, "pinned")["app"] == "pinned"
    assert apps["pinned-us"].quantities() == {"web": 1}  # a rule's provider: us
    assert apps["pinned-paris"].amounts() == {"web": 0}
    assert echo(paastis, "legacy")["app"] == "legacy"
    assert apps["legacy-us"].quantities() == {"web": 1}  # provider_name: heroku picks the one Heroku account
    assert apps["legacy-paris"].amounts() == {"web": 0}
    logs = paastis.logs()
    assert logs.count("app both is listed by providers paris and us: paris serves it") == 1
    assert "app pinned is listed" not in logs  # a pinned name is not a question


def test_exact_and_wildcard_routes_reach_apps_of_their_own_providers(organisation, tmp_path, gunicorn_factory):
    accounts, apps, config, env = organisation
    write(tmp_path, config)
    paastis = gunicorn_factory({**env, "PAASTIS_DOMAINS": "localhost"})  # routes are served whatever the domains

    shop = paastis.get("/echo", host="shop.client.test")
    assert shop.status_code == 200, shop.text
    assert shop.json()["app"] == "sc-shop" and apps["sc-shop"].amounts() == {"web": 1}
    assert dict(shop.json()["headers"])["X-Forwarded-Host"] == "shop.client.test"

    front = paastis.get("/echo", host="front.preview.client.test")
    assert front.status_code == 200, front.text
    assert front.json()["app"] == "hk-front" and apps["hk-front"].quantities() == {"web": 1}

    missing = paastis.get("/echo", host="back.preview.client.test")
    assert missing.status_code == 404 and "'hk-back'" in missing.json()["error"]
    elsewhere = paastis.get("/echo", host="sc-shop.client.test")  # neither routed nor under PAASTIS_DOMAINS
    assert elsewhere.status_code == 404 and "not served here" in elsewhere.json()["error"]
    assert echo(paastis, "sn-api")["app"] == "sn-api"  # <app>.localhost: under PAASTIS_DOMAINS


def test_a_hung_api_of_one_provider_does_not_slow_the_apps_of_another(organisation, tmp_path, gunicorn_factory):
    accounts, apps, config, env = organisation
    secnum = accounts["secnum"]
    write(tmp_path, config)
    paastis = gunicorn_factory({**env, "START_AND_STOP_MAX_IDLE_TIME": "0.05", "START_AND_STOP_CHECKING_INTERVAL": "1"})
    assert echo(paastis, "sn-api")["app"] == "sn-api"  # woken before its API hangs: it stays registered
    region = next(iter(secnum.regions.values()))
    region.hang = re.compile(".")  # every call to secnum now waits forever

    wait_until(lambda: region.hung >= 1, 20, what="an idle check to call the hung secnum API")
    assert echo(paastis, "sc-shop")["app"] == "sc-shop"  # paris answered while secnum's call is still hanging
    assert apps["sc-shop"].amounts() == {"web": 1}
    assert region.hung >= 1 and not region.released.is_set()
    wait_until(lambda: apps["sc-shop"].amounts() == {"web": 0}, 30, what="the idle check to stop sc-shop")
    assert region.hung >= 1 and not region.released.is_set()  # stopped while secnum still hangs
    assert apps["sn-api"].amounts() == {"web": 1}  # nobody could stop it: its API never answered
    logs = paastis.logs()
    assert "forgetting sn-api" not in logs  # nor was it forgotten as if it were gone


def test_a_secret_written_in_the_file_is_refused_without_echoing_it(tmp_path, gunicorn_factory):
    secret = "tk-us-written-in-the-file-123456"
    write(tmp_path, {"providers": {"paris": {"type": "scalingo", "api_token": secret}, "here": {"type": "local"}}})
    paastis = gunicorn_factory(wait=False)
    wait_until(lambda: paastis.process.poll() is not None, 20, what="paastis to refuse to start")
    assert paastis.process.returncode != 0
    logs = paastis.logs()
    assert "providers.paris: api_token is a secret" in logs and "set api_token_env" in logs
    assert secret not in logs


def test_paastis_check_lists_providers_their_apps_routes_and_names_found_twice(organisation, tmp_path):
    accounts, apps, config, env = organisation
    write(tmp_path, config)
    files = {"PAASTIS_CONFIG_FILE": str(tmp_path / "paastis.yml"), "PAASTIS_STATE_DIR": str(tmp_path / "state")}
    offline = run("check", cwd=tmp_path, **env, **files)
    assert offline.returncode == 0, offline.stderr
    rows = [re.split(r"\s{2,}", line, maxsplit=1) for line in offline.stdout.splitlines()[1:-1]]
    assert ["provider", "paris: scalingo (osc-fr1)"] in rows and ["provider", "us: heroku"] in rows
    assert ["route", "*.preview.client.test -> hk-$1"] in rows
    assert accounts["us"].count("GET", "/apps") == 0  # without --online, no provider is asked

    online = run("check", "--online", cwd=tmp_path, **env, **files)
    assert online.returncode == 0, online.stderr
    rows = [re.split(r"\s{2,}", line, maxsplit=1) for line in online.stdout.splitlines()[1:-1]]
    assert ["apps listed", "paris: 4"] in rows and ["apps listed", "us: 4"] in rows
    assert ["apps listed", "here: 1"] in rows
    assert ["on two providers", "both: paris, us (paris serves it)"] in rows
    assert ["on two providers", "pinned: paris, us (us serves it)"] in rows


def test_linked_apps_may_span_providers(organisation, tmp_path, gunicorn_factory):
    accounts, apps, config, env = organisation
    config["rules"].append({"pattern": "hk-front", "linked_apps": ["sn-api"]})  # a Heroku front, a Scalingo API
    write(tmp_path, config)
    paastis = gunicorn_factory(env)

    assert echo(paastis, "hk-front")["app"] == "hk-front"
    assert apps["hk-front"].quantities() == {"web": 1}
    assert apps["sn-api"].amounts() == {"web": 1}  # woken with it, through the secnum account
    assert accounts["secnum"].calls("POST", "/v1/apps/sn-api/scale") == 1
    linked = admin(paastis, "GET", "/events", params={"app": "sn-api", "type": "APP_STARTED"}).json()["events"]
    assert [(event["reason"], event["provider"]) for event in linked] == [("linked", "secnum")]
