"""What the worker's main loop reads from a head (paastis/request_head.py): the app, and the body's framing."""

from __future__ import annotations

import pytest

from paastis.request_head import ChunkedEnd, app_key, parse_head


def head(*lines: str) -> bytes:
    return ("\r\n".join(["POST /x HTTP/1.1", *lines]) + "\r\n\r\n").encode()


def test_host_and_length_are_read():
    parsed = parse_head(head("Host: Shop.example.com:8080", "Content-Length: 12") + b"rest")
    assert parsed.content_length == 12 and not parsed.chunked and not parsed.unclear
    assert parsed.size == len(head("Host: Shop.example.com:8080", "Content-Length: 12"))
    assert app_key(parsed, False, None) == "shop"


@pytest.mark.parametrize(
    "lines",
    [
        ("Content-Length: 5", "Content-Length: 6"),
        ("Content-Length: 5", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: gzip",),
        ("Content-Length: -1",),
        ("Content-Length: 1e3",),
    ],
)
def test_framing_it_will_not_guess_at_is_left_to_gunicorn(lines):
    assert parse_head(head("Host: a.example", *lines)).unclear


def test_chunked_and_expect_are_seen():
    parsed = parse_head(head("Host: a", "Transfer-Encoding: chunked", "Expect: 100-continue"))
    assert parsed.chunked and parsed.expect_continue and parsed.has_body


@pytest.mark.parametrize(
    ("lines", "system_api", "dashboard", "expected"),
    [
        (("Host: shop.localhost",), False, None, "shop"),
        (("Host: shop.localhost", "PaastisProxyTarget: system"), True, None, None),
        (("Host: shop.localhost", "PaastisProxyTarget: system"), False, None, "shop"),
        (("Host: admin.example.com:443",), False, "admin.example.com", None),
        (("Host: localhost:3000",), False, None, None),
        (("Host: 127.0.0.1",), False, None, None),
        (("Host: bad_host!",), False, None, None),
        ((), False, None, None),
    ],
)
def test_requests_not_for_an_app_have_no_key(lines, system_api, dashboard, expected):
    assert app_key(parse_head(head(*lines)), system_api, dashboard) == expected


def test_the_end_of_a_chunked_body_is_found_whatever_the_pieces():
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT"
    for cut in range(1, len(body)):
        chunks = ChunkedEnd()
        first = chunks.feed(body[:cut])
        if first >= 0:
            assert body[:first].endswith(b"\r\n\r\n") and first == len(body) - 4
            continue
        assert cut + chunks.feed(body[cut:]) == len(body) - 4


@pytest.mark.parametrize("body", [b"zz\r\n", b"5\r\nhelloXX\r\n", b"1" * 5000])
def test_broken_chunked_framing_is_reported(body):
    with pytest.raises(ValueError):
        ChunkedEnd().feed(body)


def test_paastis_domains_and_routes_are_followed_as_the_proxy_follows_them():
    assert app_key(parse_head(head("Host: shop.example.com")), False, None, ("example.com",)) == "shop"
    assert app_key(parse_head(head("Host: shop.attacker.example")), False, None, ("example.com",)) is None
