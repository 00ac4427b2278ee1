"""The Host header decides the app: only plain hostnames are accepted."""

import pytest

from paastis.routing import BadHost, NoAppKey, app_key_from_host, is_valid_app_key, routing_help


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("demo.proxy.example.com", "demo"),
        ("demo.localhost:3000", "demo"),
        ("Demo.LOCALHOST", "demo"),
        ("app-review-pr12-front.example.com.", "app-review-pr12-front"),
        ("localhost.example.com", "localhost"),
        ("a1.b", "a1"),
    ],
)
def test_first_label_is_the_app_key(host, key):
    assert app_key_from_host(host) == key


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "demo_app.example.com",
        "-demo.example.com",
        "demo-.example.com",
        "demo..example.com",
        "demo.example.com:abc",
        "demo.example.com:99999",
        "demo.example.com:0",
        "user@demo.example.com",
        "demo.example.com/path",
        "$(touch /tmp/x).example.com",
        "demo.example.com;rm -rf /",
        "[::1",
        "a" * 64 + ".example.com",
        "demo example.com",
    ],
)
def test_malformed_hosts_are_refused(host):
    with pytest.raises(BadHost):
        app_key_from_host(host)


@pytest.mark.parametrize("host", ["localhost", "localhost:3000", "127.0.0.1", "10.1.2.3:8080", "[::1]:3000", "::1"])
def test_hosts_that_name_the_machine_carry_no_app_key(host):
    with pytest.raises(NoAppKey):
        app_key_from_host(host)


def test_routing_help_explains_the_scheme_with_an_example_for_this_port():
    text = routing_help("localhost:3000", "demo")
    assert "<app>.<your domain>" in text
    assert "curl -H 'Host: demo.localhost:3000'" in text


def test_app_keys_are_dns_labels():
    assert is_valid_app_key("app-review-pr1")
    assert not is_valid_app_key("app_review")
    assert not is_valid_app_key("a;b")
    assert not is_valid_app_key("")
