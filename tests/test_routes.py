"""routes: in paastis.yml: full host names to apps, exact over wildcard, one label per wildcard."""

from __future__ import annotations

import pytest

from paastis.config import ConfigError
from paastis.routes import Routes
from paastis.routing import BadHost, NoAppKey, host_name

ROUTES = [
    {"host": "shop.client.test", "app": "sc-shop"},
    {"host": "*.preview.client.test", "app": "pr-$1"},
    {"host": "*.client.test", "app": "client-$1"},
    {"host": "one.preview.client.test", "app": "special"},
]


def test_exact_names_win_over_wildcards_and_a_wildcard_takes_one_label():
    routes = Routes(ROUTES)
    assert routes.app_for("shop.client.test") == "sc-shop"
    assert routes.app_for("one.preview.client.test") == "special"  # exact beats the wildcard listed before it
    assert routes.app_for("pr-42.preview.client.test") == "pr-pr-42"
    assert routes.app_for("blog.client.test") == "client-blog"
    assert routes.app_for("a.b.preview.client.test") is None  # two labels: no wildcard takes them
    assert routes.app_for("client.test") is None
    assert routes.app_for("shop.other.test") is None


def test_the_longer_suffix_wins_whatever_the_order():
    routes = Routes(list(reversed(ROUTES)))
    assert routes.app_for("x.preview.client.test") == "pr-x"  # *.client.test does not take two labels
    assert routes.app_for("preview.client.test") == "client-preview"


def test_the_label_is_lower_cased_into_the_app():
    assert Routes(ROUTES).app_for("ab1.preview.client.test") == "pr-ab1"
    assert host_name("PR-7.Preview.Client.Test.:8443") == "pr-7.preview.client.test"


def test_no_routes_is_empty_and_false():
    assert not Routes(None)
    assert Routes(None).app_for("shop.client.test") is None


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"host": "shop.test"}, "'host' and 'app'"),
        ([{"host": "shop.test", "app": "a"}], "mapping"),
        ({"host": "shop.test", "app": "a", "port": 1}, "unknown field"),
        ({"host": "*.*.test", "app": "a"}, "host name"),
        ({"host": "shop.test:80", "app": "a"}, "host name"),
        ({"host": "sh*p.test", "app": "a"}, "host name"),
        ({"host": "shop.test", "app": "pr-$1"}, "not a wildcard"),
        ({"host": "*.test", "app": "pr_$1"}, "app name"),
        ({"host": "*.test", "app": "pr-$2"}, "app name"),
        ({"host": "shop.test", "app": 3}, "strings"),
    ],
)
def test_bad_routes_stop_start_up_naming_the_entry(raw, words):
    with pytest.raises(ConfigError) as error:
        Routes([raw], "paastis.yml")
    assert "routes #0" in str(error.value) and words in str(error.value)


def test_a_host_routed_twice_is_refused():
    with pytest.raises(ConfigError, match="routed twice"):
        Routes([{"host": "Shop.test", "app": "a"}, {"host": "shop.test.", "app": "b"}])


def test_routes_must_be_a_list():
    with pytest.raises(ConfigError, match="'routes' must be a list"):
        Routes({"host": "shop.test", "app": "a"})


def test_host_name_refuses_what_first_label_routing_refuses():
    with pytest.raises(BadHost):
        host_name("shop_1.test")
    with pytest.raises(NoAppKey):
        host_name("[::1]:3000")
    assert host_name("localhost:3000") == "localhost"
