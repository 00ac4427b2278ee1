"""WebSocket places counted per instance (paastis/places.py): the workers' views add up, limits span them."""

from __future__ import annotations

import os

from paastis.places import (
    ENTRY,
    GONE,
    HEADER,
    MAX_WEBSOCKETS,
    PER_CLIENT,
    TABLE,
    LocalPlaces,
    SharedPlaces,
    SharedTable,
)


def two_workers(max_connections: int = 10, per_client: int = 3) -> tuple[SharedTable, SharedPlaces, SharedPlaces]:
    """Two views of one table, as two forked workers would have (each claims a slot of its own)."""
    table = SharedTable()
    return table, SharedPlaces(table, max_connections, per_client), SharedPlaces(table, max_connections, per_client)


def test_counts_add_up_over_workers():
    _, one, two = two_workers()
    assert one.slot != two.slot
    assert one.book("chat", "10.0.0.1") is None
    assert two.book("chat", "10.0.0.2") is None
    assert two.book("news", "10.0.0.2") is None
    assert one.count("chat") == two.count("chat") == 2
    assert one.count("news") == 1


def test_the_instance_limit_spans_workers():
    _, one, two = two_workers(max_connections=3, per_client=10)
    assert [one.book("chat", f"10.0.0.{i}") for i in range(2)] == [None, None]
    assert two.book("chat", "10.0.0.9") is None
    assert two.book("chat", "10.0.0.8") == MAX_WEBSOCKETS
    one.release("chat", "10.0.0.0")
    assert two.book("chat", "10.0.0.8") is None


def test_one_client_cannot_take_every_place_whatever_the_worker():
    _, one, two = two_workers(per_client=3)
    assert [one.book("chat", "10.0.0.1"), two.book("chat", "10.0.0.1"), two.book("news", "10.0.0.1")] == [None] * 3
    assert one.book("chat", "10.0.0.1") == PER_CLIENT
    assert one.book("chat", "10.0.0.2") is None


def test_a_worker_that_exits_takes_its_counts_with_it():
    table, one, two = two_workers()
    one.book("chat", "10.0.0.1")
    two.book("chat", "10.0.0.1")
    table.free(os.getpid())  # the master, at child_exit (both views share this test's pid: the first slot goes)
    assert two.count("chat") == 1
    assert table.total() == 1


def test_released_entries_leave_the_table_clean():
    table, one, _ = two_workers(max_connections=100_000, per_client=100_000)
    for i in range(5000):
        assert one.book(f"app-{i % 50}", f"10.0.{i // 250}.{i % 250}") is None
    for i in range(5000):
        one.release(f"app-{i % 50}", f"10.0.{i // 250}.{i % 250}")
    assert table.total() == 0 and one.count("app-1") == 0
    kinds = [ENTRY.unpack_from(table.map, HEADER.size + i * ENTRY.size)[0] for i in range(TABLE)]
    assert kinds.count(GONE) == 0 and set(kinds) == {0}  # removals leave no marks behind for lookups to skip


def test_in_one_process_the_same_rules_apply():
    places = LocalPlaces(2, 1)
    assert places.book("chat", "a") is None
    assert places.book("chat", "a") == PER_CLIENT
    assert places.book("chat", "b") is None
    assert places.book("chat", "c") == MAX_WEBSOCKETS
    places.release("chat", "a")
    assert places.count("chat") == 1
