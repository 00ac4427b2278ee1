"""Trusted fronts (FORWARDED_ALLOW_IPS), the client address a throttle keys on, and PAASTIS_DOMAINS routing."""

from __future__ import annotations

import pytest

from paastis.config import ConfigError, Settings
from paastis.forwarding import TrustedFronts
from paastis.routes import Routes
from paastis.routing import NoAppKey, NotServed, route_key


def test_fronts_are_addresses_and_networks_and_a_star_trusts_everyone():
    fronts = TrustedFronts(["127.0.0.1", "10.0.0.0/8", "::1"])
    assert fronts.trusts("127.0.0.1") and fronts.trusts("10.20.30.40") and fronts.trusts("::1")
    assert fronts.trusts("::ffff:10.1.2.3")  # an IPv4 peer on a dual-stack socket
    assert not fronts.trusts("127.0.0.2") and not fronts.trusts("192.168.1.1") and not fronts.trusts("junk")
    assert TrustedFronts(["*"]).trusts("203.0.113.7")


def test_the_client_address_is_the_nearest_untrusted_hop_a_trusted_front_names():
    fronts = TrustedFronts(["10.0.0.0/8"])
    via_front = {"REMOTE_ADDR": "10.0.0.5", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 198.51.100.4, 10.0.0.9"}
    assert fronts.client_address(via_front) == "198.51.100.4"  # the left part is whatever the client wrote
    direct = {"REMOTE_ADDR": "198.51.100.4", "HTTP_X_FORWARDED_FOR": "6.6.6.6"}
    assert fronts.client_address(direct) == "198.51.100.4"  # not a front: its word counts for nothing
    assert TrustedFronts(["*"]).client_address(via_front) == "10.0.0.9"  # the hop the router itself saw


def test_paastis_domains_limit_first_label_routing_to_one_label_under_them():
    domains = ("apps.example.com", "localhost")
    assert route_key("shop.apps.example.com", domains) == ("shop", False)
    assert route_key("Shop.Apps.Example.com.:443", domains) == ("shop", False)
    assert route_key("shop.localhost:3000", domains) == ("shop", False)
    for host in ("shop.attacker.example", "shop.apps.example.com.evil", "a.shop.apps.example.com"):
        with pytest.raises(NotServed, match="paastis serves <app>.apps.example.com, <app>.localhost"):
            route_key(host, domains)
    with pytest.raises(NoAppKey):
        route_key("localhost:3000", domains)
    assert route_key("shop.attacker.example") == ("shop", False)  # unset: any domain, as before


def test_a_route_serves_its_host_whatever_the_domains():
    routes = Routes([{"host": "shop.client.test", "app": "shop"}])
    assert route_key("shop.client.test", ("apps.example.com",), routes) == ("shop", True)
    with pytest.raises(NotServed):
        route_key("other.client.test", ("apps.example.com",), routes)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PAASTIS_DOMAINS": "apps.example.com:443"}, "PAASTIS_DOMAINS: 'apps.example.com:443' is not a domain name"),
        ({"FORWARDED_ALLOW_IPS": "10.0.0.0/8,router"}, "FORWARDED_ALLOW_IPS: 'router' is not an IP address"),
        ({"HOOKS_ENV_PASSTHROUGH": "SLACK_URL,$HOME"}, "HOOKS_ENV_PASSTHROUGH: '$HOME' is not a variable name"),
    ],
)
def test_bad_values_stop_start_up_with_one_line(env, message):
    with pytest.raises(ConfigError, match=message.replace("$", r"\$")):
        Settings.from_env(env)


def test_settings_read_the_new_values():
    settings = Settings.from_env(
        {"PAASTIS_DOMAINS": "*.Apps.Example.com, localhost", "FORWARDED_ALLOW_IPS": "*", "HOOKS_ENV_PASSTHROUGH": "A,B"}
    )
    assert settings.domains == ("apps.example.com", "localhost")
    assert settings.forwarded_allow_ips == ("*",) and settings.hooks_env_passthrough == ("A", "B")
    assert Settings.from_env({}).forwarded_allow_ips == ("127.0.0.1", "::1")
