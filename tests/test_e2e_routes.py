"""End to end: routes: in paastis.yml bring full host names to their apps through real gunicorn."""

from __future__ import annotations

import yaml

from tests.support import local_app, starts


def test_exact_and_wildcard_routes_reach_their_apps_with_their_own_host(tmp_path, gunicorn_factory):
    shop, shop_port = local_app(tmp_path, "sc-shop")
    preview, preview_port = local_app(tmp_path, "pr-42")
    config = {
        "apps": [shop, preview],
        "routes": [
            {"host": "shop.client.test", "app": "sc-shop"},
            {"host": "*.preview.client.test", "app": "pr-$1"},
        ],
    }
    (tmp_path / "paastis.yml").write_text(yaml.safe_dump(config))
    paastis = gunicorn_factory()

    exact = paastis.get("/echo", host=f"Shop.Client.test:{paastis.port}")
    assert exact.status_code == 200, exact.text
    seen = dict(exact.json()["headers"])
    assert seen["Host"] == f"127.0.0.1:{shop_port}"  # the app's own Host, as for first-label routing
    assert seen["X-Forwarded-Host"] == f"Shop.Client.test:{paastis.port}"  # the client's
    assert starts(tmp_path, "sc-shop") == 1

    wildcard = paastis.get("/echo", host="42.preview.client.test")
    assert wildcard.status_code == 200, wildcard.text
    assert dict(wildcard.json()["headers"])["Host"] == f"127.0.0.1:{preview_port}"
    assert starts(tmp_path, "pr-42") == 1

    missing = paastis.get("/echo", host="7.preview.client.test")
    assert missing.status_code == 404
    assert "'pr-7'" in missing.json()["error"]  # the route's app is named: the operator sees which is missing

    assert paastis.get("/echo", host="sc-shop.localhost").status_code == 200  # first-label routing still works
    assert paastis.get("/echo", host="a.b.preview.client.test").status_code == 404  # one label per wildcard
