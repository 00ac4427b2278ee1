"""The admin token's one brake: per address, locking out after 5 failures in a row, shared through Redis."""

from __future__ import annotations

from paastis.redis_link import RedisLink
from paastis.throttle import TokenThrottle
from tests.redis_support import SHARED_URL


def test_five_failures_in_a_row_lock_the_address_out_and_a_success_clears_it():
    throttle = TokenThrottle(delay=0)
    for _ in range(4):
        throttle.failed("198.51.100.1")
    assert throttle.retry_after("198.51.100.1") is None  # four failures: still may try
    throttle.succeeded("198.51.100.1")
    for _ in range(5):
        throttle.failed("198.51.100.1")
    wait = throttle.retry_after("198.51.100.1")
    assert wait is not None and 0 < wait <= 30
    assert throttle.retry_after("198.51.100.2") is None  # another address is not concerned


def test_with_redis_every_worker_and_instance_counts_the_same_failures(prefix):
    links = [RedisLink(SHARED_URL, prefix, 0.5) for _ in range(2)]
    try:
        first, second = (TokenThrottle(delay=0, link=link) for link in links)
        for throttle in (first, second, first, second, first):  # five failures, spread over two instances
            throttle.failed("2001:db8::7")
        assert first.retry_after("2001:db8::7") is not None and second.retry_after("2001:db8::7") is not None
        assert second.retry_after("2001:db8::8") is None
    finally:
        for link in links:
            link.close()
