"""The deadline an operation sets reaches the provider API client: its calls, retries and rate-limit waits."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from paastis import deadlines
from paastis.providers import ProviderTimeout
from paastis.providers.http import ApiClient, RateLimiter


class HungApi:
    """Takes every call and answers none (until closed); counts the calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.released = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.calls += 1
                owner.released.wait()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hung():
    api = HungApi()
    yield api
    api.close()


def test_a_read_cut_by_the_deadline_is_a_provider_timeout_and_is_not_retried(hung):
    client = ApiClient("fake", hung.url, None, "the token")
    with deadlines.deadline_at(time.monotonic() + 0.5), pytest.raises(ProviderTimeout) as raised:
        client.call("GET", "/v1/apps", "list_apps")  # a read: normally retried 3 times with 30 s timeouts
    assert raised.value.status == 504
    assert "deadline" in raised.value.message
    assert hung.calls == 1
    client.close()


def test_without_a_deadline_calls_keep_their_own_timeouts():
    assert deadlines.current() is None
    assert deadlines.timeout((5, 30)) == (5, 30)


def test_an_inner_deadline_never_extends_an_outer_one():
    outer = time.monotonic() + 1
    with deadlines.deadline_at(outer), deadlines.deadline_at(outer + 100) as inner:
        assert inner == outer
    assert deadlines.current() is None


def test_the_rate_limiter_does_not_wait_past_the_deadline():
    limiter = RateLimiter(per_minute=1, burst=1)
    limiter.acquire()  # the only token: the next one is a minute away
    with deadlines.deadline_at(time.monotonic() + 2), pytest.raises(deadlines.DeadlinePassed):
        limiter.acquire()


def test_call_within_returns_raises_or_gives_up_at_the_deadline():
    assert deadlines.call_within(1, 0.1, lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        deadlines.call_within(1, 0.1, lambda: 1 / 0)
    release = threading.Event()
    with pytest.raises(deadlines.DeadlinePassed):
        deadlines.call_within(0.2, 0.1, release.wait)
    release.set()
