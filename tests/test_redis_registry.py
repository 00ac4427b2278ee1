"""The Redis registry and locks against a real Redis: each test under its own key prefix."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import redis

from paastis.config import ConfigError, Settings
from paastis.leader import ClusterLocks, RedisLeadership
from paastis.redis_link import RedisLink
from paastis.redis_registry import RedisRegistry
from paastis.registry import RunningApp
from tests.redis_support import SHARED_URL, RedisServer
from tests.support import wait_until


@pytest.fixture
def make(prefix):
    """Registries (one per simulated instance) on the shared Redis, closed after the test."""
    made: list[RedisRegistry] = []

    def build(url: str = SHARED_URL, **options) -> RedisRegistry:
        registry = RedisRegistry(RedisLink(url, prefix, 0.5), **options)
        made.append(registry)
        return registry

    yield build
    for registry in made:
        registry.close()


@pytest.fixture
def links(prefix):
    """Redis links (one per simulated instance), closed after the test."""
    made: list[RedisLink] = []

    def build(url: str = SHARED_URL, key_prefix: str | None = None, timeout: float = 0.5) -> RedisLink:
        made.append(RedisLink(url, prefix if key_prefix is None else key_prefix, timeout))
        return made[-1]

    yield build
    for link in made:
        link.close()


@pytest.fixture
def raw():
    client = redis.Redis.from_url(SHARED_URL, decode_responses=True)
    yield client
    client.close()


@contextmanager
def redis_round_trips(registry: RedisRegistry) -> Iterator[list[str]]:
    """The Redis connections this thread takes from the registry's pool while the block runs
    (background threads, such as the flusher's probes, are not counted)."""
    pool = registry.client.connection_pool
    real = pool.get_connection
    trips: list[str] = []
    caller = threading.current_thread()

    def counted(*args, **kwargs):
        if threading.current_thread() is caller:
            trips.append(str(args[:1]))
        return real(*args, **kwargs)

    pool.get_connection = counted
    try:
        yield trips
    finally:
        pool.get_connection = real


def an_app(key="demo", minutes_ago=0.0):
    when = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return RunningApp(key=key, started_at=when - timedelta(seconds=1), last_accessed_at=when)


def test_instances_share_apps_and_read_back_equal_objects(make):
    one, two = make(), make()
    app = an_app("a", minutes_ago=3)
    one.register(app)
    one.register(an_app("b"))
    assert two.get("a") == app
    assert two.get("a").last_accessed_at.tzinfo is not None
    assert {entry.key for entry in two.all()} == {"a", "b"}
    two.unregister("a")
    assert one.get("a") is None
    assert [entry.key for entry in one.all()] == ["b"]


def test_values_are_json_with_aware_iso_dates_under_the_prefix(make, prefix, raw):
    registry = make()
    registry.register(an_app("a"))
    registry.remember("a", {"web": 2})
    assert set(raw.scan_iter(match=prefix + "*")) == {
        f"{prefix}registry:apps",
        f"{prefix}registry:touched",
        f"{prefix}registry:memos",
    }
    stored = raw.hget(f"{prefix}registry:apps", "a")
    assert '"key": "a"' in stored and "+00:00" in stored
    assert raw.hget(f"{prefix}registry:memos", "a") == '{"web": 2}'


def test_touches_are_written_at_most_once_a_second_yet_recorded(make):
    server_side, leader = make(flush_interval=0.3), make()
    server_side.register(an_app("a", minutes_ago=60))
    for _ in range(500):
        server_side.touch("a")
    assert leader.get("a").idle_seconds(datetime.now(UTC)) > 3000  # not written on the request path
    wait_until(lambda: leader.get("a").idle_seconds(datetime.now(UTC)) < 5, 5, what="the flush of the last access")


def test_touch_after_unregister_leaves_nothing_behind(make, prefix, raw):
    registry = make(flush_interval=0.1)
    registry.register(an_app("a"))
    registry.unregister("a")
    registry.touch("a")
    registry.flush()
    assert raw.hget(f"{prefix}registry:touched", "a") is None
    assert registry.get("a") is None


def test_in_flight_is_seen_by_other_instances_and_ends(make):
    serving, leader = make(flush_interval=0.1, linger=0.2), make()
    serving.register(an_app("a", minutes_ago=60))
    tokens = [serving.begin_request("a") for _ in range(3)]
    assert leader.in_flight("a") == 1  # one instance is serving it
    assert serving.in_flight("a") == 3
    for token in tokens:
        serving.end_request("a", token)
    wait_until(lambda: leader.in_flight("a") == 0, 5, what="the in-flight entry to be withdrawn")
    assert leader.get("a").idle_seconds(datetime.now(UTC)) < 5  # the end of the requests counts as an access


def test_a_long_request_keeps_its_entry_alive_past_the_ttl(make):
    serving, leader = make(in_flight_ttl=0.6, flush_interval=0.1), make()
    serving.register(an_app("a", minutes_ago=60))
    token = serving.begin_request("a")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # several TTLs: renewals must keep it
        assert leader.in_flight("a") == 1
        time.sleep(0.1)
    serving.end_request("a", token)


def test_a_crashed_instance_does_not_pin_an_app_awake(make):
    crashed, leader = make(in_flight_ttl=0.5, flush_interval=0.1), make()
    crashed.register(an_app("a", minutes_ago=60))
    crashed.begin_request("a")
    crashed._stopping.set()  # its flusher dies with it: no renewal, no withdrawal
    crashed._thread.join()
    assert leader.in_flight("a") == 1
    wait_until(lambda: leader.in_flight("a") == 0, 3, what="the crashed instance's entry to expire")


def test_steady_requests_cost_no_redis_command(tmp_path):
    server = RedisServer(tmp_path).start()
    registry = RedisRegistry(RedisLink(server.url, "p:", 0.5), flush_interval=60)
    try:
        registry.register(an_app("a"))
        token = registry.begin_request("a")  # publishes once
        before = server.data_commands()
        for _ in range(200):
            t = registry.begin_request("a")
            assert registry.get("a") is not None
            registry.touch("a")
            registry.end_request("a", t)
        after = server.data_commands()
        assert after == before
        registry.end_request("a", token)
    finally:
        registry.close()
        server.stop()


def test_memos_outlive_the_app_and_clear_keeps_them(make):
    one, two = make(), make()
    one.register(an_app("a"))
    one.remember("a", {"web": 3, "worker": 1})
    one.unregister("a")
    two.clear()
    assert one.recall("a") == {"web": 3, "worker": 1}
    assert two.recall("missing") is None
    assert one.all() == []


def test_foreign_keys_are_never_touched(make, prefix, raw):
    foreign = {
        "other-program:key": "x",
        prefix.rstrip(":"): "same name without the colon",
        f"{prefix[:-1]}x:registry:apps": "a neighbour's",
    }
    for key, value in foreign.items():
        raw.set(key, value, ex=60)
    try:
        registry = make(flush_interval=0.1)
        registry.register(an_app("a"))
        token = registry.begin_request("a")
        registry.end_request("a", token)
        registry.flush()
        registry.clear()
        for key, value in foreign.items():
            assert raw.get(key) == value
            assert raw.ttl(key) > 0
    finally:
        raw.delete(*foreign)


class Records(logging.Handler):
    """Collects records on a logger directly: ``paastis`` may not propagate to caplog's root handler."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def link_logs():
    logger = logging.getLogger("paastis.redis_link")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_outage_serves_the_local_view_logs_once_and_recovers(tmp_path, link_logs):
    server = RedisServer(tmp_path).start()
    registry = RedisRegistry(RedisLink(server.url, "p:", 0.3), flush_interval=0.1)
    caplog = link_logs
    try:
        registry.register(an_app("a"))
        assert registry.get("a") is not None
        server.stop()
        with redis_round_trips(registry) as trips:
            for _ in range(50):
                token = registry.begin_request("a")
                assert registry.get("a") is not None  # still proxied
                registry.touch("a")
                registry.end_request("a", token)
            registry.register(an_app("woken-meanwhile"))
        assert len(trips) <= 1  # the one that found Redis down; no request waits on it after that
        assert {app.key for app in registry.all()} == {"a", "woken-meanwhile"}
        assert not registry.healthy()
        unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(unreachable) == 1
        server.start()  # empty: it lost everything
        wait_until(registry.healthy, 5, what="the registry to reconnect")
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        assert registry.get("a") is None  # Redis is the truth again (the leader re-registers running apps)
    finally:
        registry.close()
        server.stop()


def test_a_hung_redis_costs_one_socket_timeout_not_one_per_request(tmp_path):
    server = RedisServer(tmp_path).start()
    registry = RedisRegistry(RedisLink(server.url, "p:", 0.3), flush_interval=0.1)
    try:
        registry.register(an_app("a"))
        server.process.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
        with redis_round_trips(registry) as trips:
            assert registry.get("a") is not None  # waits once for the timeout, then answers from memory
            for _ in range(100):
                token = registry.begin_request("a")
                assert registry.get("a") is not None
                registry.end_request("a", token)
        assert len(trips) == 1  # one socket timeout, not one per request
    finally:
        server.process.send_signal(signal.SIGCONT)
        registry.close()
        server.stop()


def test_leadership_is_exclusive_renewed_and_released(prefix, links):
    one = RedisLeadership(links(), ttl=0.6)
    two = RedisLeadership(links(), ttl=0.6)
    try:
        assert one.hold() is True
        assert two.hold() is False
        time.sleep(1.5)  # a long idle check: hold() is not called, the renewal thread keeps the lock
        assert two.hold() is False
        assert one.hold() is True
        one.release()
        assert two.hold() is True
    finally:
        one.release()
        two.release()


def test_a_killed_leader_is_replaced_within_the_ttl(prefix, links):
    dead = RedisLeadership(links(), ttl=0.8)
    heir = RedisLeadership(links(), ttl=0.8)
    try:
        assert dead.hold()
        dead._stopping.set()  # killed: no more renewals, no release
        dead._renewer.join()
        wait_until(heir.hold, 3, interval=0.05, what="another worker to take over (TTL 0.8 s)")
        assert dead.hold() is False  # compare-and-delete: it cannot take back or free what is not its own
    finally:
        heir.release()


def test_cluster_lock_is_single_flight_across_instances(prefix, links):
    one = ClusterLocks(links())
    two = ClusterLocks(links())
    with one("demo") as first:
        with two("demo") as second:
            assert (first, second) == (True, False)
        with two("other") as other:
            assert other is True
    with two("demo") as after:
        assert after is True


def test_cluster_lock_falls_back_to_local_logic_while_redis_is_down(tmp_path, links):
    server = RedisServer(tmp_path).start()
    locks = ClusterLocks(links(server.url, "p:", 0.3))
    server.stop()
    with locks("demo") as ours:
        assert ours is True


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"REGISTRY_REDIS_URL": "redis://a", "REDIS_URL": "redis://b", "SCALINGO_REDIS_URL": "redis://c"}, "redis://a"),
        ({"REDIS_URL": "redis://b", "SCALINGO_REDIS_URL": "redis://c"}, "redis://b"),
        ({"REGISTRY_REDIS_URL": " ", "SCALINGO_REDIS_URL": "redis://c"}, "redis://c"),
    ],
)
def test_redis_url_fallback(env, expected):
    assert Settings.from_env({"REGISTRY_TYPE": "redis", **env}).redis_url == expected


def test_redis_without_url_is_a_clear_error():
    with pytest.raises(ConfigError, match="REGISTRY_REDIS_URL"):
        Settings.from_env({"REGISTRY_TYPE": "redis"})


def test_last_access_never_goes_back_when_instances_flush_out_of_order(make):
    """Three instances serve one app one after the other; whoever flushes last, the newest access wins."""
    instances = [make(flush_interval=3600) for _ in range(3)]  # flushed by hand, in the order we choose
    instances[0].register(an_app("demo", minutes_ago=10))
    windows = []  # each touch happened between these two times, and the windows do not overlap
    for registry in instances:
        before = datetime.now(UTC)
        registry.touch("demo")
        windows.append((before, datetime.now(UTC)))
        wait_until(lambda: datetime.now(UTC) > windows[-1][1], 1, 0.001)
    newest = windows[-1][0]
    reader = make()
    for registry in reversed(instances):  # the newest first, then older and older
        registry.flush()
        assert reader.get("demo").last_accessed_at >= newest
    assert reader.all()[0].last_accessed_at >= newest


def test_an_in_flight_set_expires_by_itself(make, prefix, raw):
    """A crashed instance cannot withdraw its entry: the set still goes, with the last entry's lifetime."""
    registry = make(in_flight_ttl=30)
    registry.register(an_app("a"))
    token = registry.begin_request("a")
    try:
        assert 0 < raw.pttl(f"{prefix}registry:inflight:a") <= 31_000
    finally:
        registry.end_request("a", token)


@pytest.mark.parametrize("shift", [60.0, -60.0])
def test_a_host_clock_60s_off_hides_no_request_in_flight(make, shift):
    """In-flight entries expire on Redis's clock (TIME): hosts whose clocks disagree by a minute still see
    each other's requests, whichever of them is off (the serving one, or the leader that asks)."""
    skewed = make(in_flight_ttl=2.0, flush_interval=0.1, clock=lambda: time.time() + shift)
    right = make(in_flight_ttl=2.0, flush_interval=0.1)
    skewed.register(an_app("a", minutes_ago=60))
    right.register(an_app("b", minutes_ago=60))
    tokens = [skewed.begin_request("a"), right.begin_request("b")]
    deadline = time.monotonic() + 5  # more than two TTLs: renewals are scored on Redis's clock too
    while time.monotonic() < deadline:
        assert right.in_flight("a") == 1 and right.last_look(["a"])["a"].in_flight == 1
        assert skewed.in_flight("b") == 1 and skewed.last_look(["b"])["b"].in_flight == 1
        time.sleep(0.1)
    skewed.end_request("a", tokens[0])
    right.end_request("b", tokens[1])
    wait_until(lambda: right.in_flight("a") == 0 and skewed.in_flight("b") == 0, 5, what="the entries to retire")


def test_a_request_end_records_its_access_and_leaves_in_flight_in_one_step(make):
    """Whatever instant the leader looks at, it sees the request in flight or its new last access, never neither."""
    serving = make(flush_interval=0.05, linger=0.0)
    leader = make()
    old = an_app("a", minutes_ago=60)
    serving.register(old)
    for _ in range(20):
        token = serving.begin_request("a")
        serving.end_request("a", token)
        seen_neither = False
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            look = leader.last_look(["a"])["a"]
            assert look.entry is not None
            fresh = look.entry.last_accessed_at > old.last_accessed_at
            if look.in_flight == 0 and not fresh:
                seen_neither = True
                break
            if look.in_flight == 0 and fresh:
                break
        assert not seen_neither
        old = look.entry


def test_a_memo_remembered_while_redis_is_down_reaches_it_once_it_answers(tmp_path):
    server = RedisServer(tmp_path).start()
    one = RedisRegistry(RedisLink(server.url, "p:", 0.3, retry_after=0.1), flush_interval=0.1)
    two = RedisRegistry(RedisLink(server.url, "p:", 0.3, retry_after=0.1), flush_interval=0.1)
    try:
        server.stop()
        one.remember("shop", {"formation": [{"type": "web", "quantity": 2}]})
        assert one.recall("shop") == {"formation": [{"type": "web", "quantity": 2}]}  # degraded: its own copy
        server.start()  # empty
        wait_until(lambda: two.recall("shop") is not None, 10, what="the memo to reach Redis")
        assert two.recall("shop") == {"formation": [{"type": "web", "quantity": 2}]}
    finally:
        one.close()
        two.close()
        server.stop()
