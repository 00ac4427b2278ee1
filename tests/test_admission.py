"""The admission rule (paastis/admission.py): work-conserving, fair between waiting apps, bounded, timed."""

from __future__ import annotations

from paastis.admission import FULL, QUEUED, RUN, Admission


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def admission(threads: int = 4, share: int = 2, max_queued: int = 100, timeout: float = 30.0, **kw) -> Admission:
    return Admission(threads, share, max_queued, lambda key: timeout, **kw)


def run(adm: Admission, key: str, count: int) -> list[str]:
    return [adm.offer(key, f"{key}-{i}")[0] for i in range(count)]


def test_one_app_alone_may_use_every_thread_then_waits_in_order():
    adm = admission()
    assert run(adm, "shop", 6) == [RUN] * 4 + [QUEUED] * 2
    adm.done("shop")
    assert [w.item for w in adm.ready()] == ["shop-4"]
    assert adm.ready() == []  # no thread free until another ends


def test_an_app_under_its_share_gets_a_thread_beside_an_app_over_its_own():
    adm = admission()
    run(adm, "hung", 8)  # 4 threads, 4 queued
    assert run(adm, "other", 3) == [RUN, RUN, QUEUED]  # its share, on the extra threads
    assert adm.total == 6 and adm.total <= adm.max_threads


def test_freed_threads_go_round_robin_between_waiting_apps_over_their_share():
    adm = admission(threads=4, share=1)
    run(adm, "a", 8)  # 4 running, 4 queued
    assert run(adm, "b", 3) == [RUN, QUEUED, QUEUED]  # its share at once, the rest waits its turn
    adm.done("a")
    adm.done("a")
    started = [w.key for w in adm.ready()]
    for _ in range(3):
        adm.done("a")
        started += [w.key for w in adm.ready()]
    assert started == ["a", "b", "a", "b"]


def test_no_thread_stays_idle_while_requests_wait():
    adm = admission(threads=3, share=1)
    run(adm, "a", 5)
    run(adm, "b", 3)
    for _ in range(3):
        adm.done("a")
        adm.ready()
        assert adm.total >= adm.threads or not adm.queues


def test_requests_not_for_an_app_are_never_queued():
    adm = admission(threads=1, share=1)
    run(adm, "shop", 3)
    assert adm.offer(None, "system")[0] == RUN
    adm.done(None)
    assert adm.total == 1


def test_a_full_queue_refuses_and_only_then():
    adm = admission(threads=2, share=1, max_queued=2)
    assert run(adm, "shop", 5) == [RUN, RUN, QUEUED, QUEUED, FULL]
    assert run(adm, "blog", 1) == [RUN]


def test_queued_requests_expire_after_the_timeout_oldest_first():
    clock = Clock()
    adm = admission(threads=1, share=1, timeout=5, clock=clock)
    run(adm, "shop", 3)
    clock.now = 4.9
    assert adm.expired() == []
    clock.now = 5.0
    assert [w.item for w in adm.expired()] == ["shop-1", "shop-2"]
    assert adm.queued == 0 and not adm.queues


def test_a_wake_under_way_keeps_its_requests_queued_past_the_timeout():
    clock = Clock()
    waking = {"shop"}
    adm = admission(threads=1, share=1, timeout=5, clock=clock, waking=lambda key: key in waking)
    run(adm, "shop", 2)
    clock.now = 60
    assert adm.expired() == []  # a wake is one piece of work: never refused for waiting on it
    waking.clear()
    clock.now = 64.9
    assert adm.expired() == []  # the timeout starts again once the wake is over
    clock.now = 65
    assert len(adm.expired()) == 1


def test_a_client_that_left_frees_its_place():
    adm = admission(threads=1, share=1)
    run(adm, "shop", 1)
    _, waiting = adm.offer("shop", "gone")
    assert waiting is not None and adm.forget(waiting)
    assert not adm.forget(waiting)
    assert adm.queued == 0 and not adm.queues


def test_counts_return_to_zero():
    adm = admission(threads=8)
    for key in ("a", "b", "a", "c", "a"):
        adm.offer(key, key)
    for key in ("a", "b", "a", "c", "a"):
        adm.done(key)
    assert (adm.total, adm.within, adm.in_flight) == (0, 0, {})
