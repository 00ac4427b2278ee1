"""The Host header decides the app: only plain hostnames are accepted."""

import pytest

from paastis.routing import BadHost, app_key_from_host, is_valid_app_key


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("demo.proxy.example.com", "demo"),
        ("demo.localhost:3000", "demo"),
        ("Demo.LOCALHOST", "demo"),
        ("app-review-pr12-front.example.com.", "app-review-pr12-front"),
        ("localhost", "localhost"),
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
        "[::1]:3000",
        "a" * 64 + ".example.com",
        "demo example.com",
    ],
)
def test_malformed_hosts_are_refused(host):
    with pytest.raises(BadHost):
        app_key_from_host(host)


def test_app_keys_are_dns_labels():
    assert is_valid_app_key("app-review-pr1")
    assert not is_valid_app_key("app_review")
    assert not is_valid_app_key("a;b")
    assert not is_valid_app_key("")
