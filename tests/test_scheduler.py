"""The account's API scheduler: one budget, spent by class (wake, operator, stop, background)."""

from __future__ import annotations

import threading

import pytest

from paastis import deadlines
from paastis.metrics import Metrics
from paastis.providers.http import RateLimiter, WindowLimiter
from paastis.providers.priority import CallClass, calls_as, current_class
from paastis.providers.scheduler import CallScheduler
from tests.support import wait_until


class Gate:
    """A budget that lets calls through only when the test says so (no timing involved)."""

    def __init__(self) -> None:
        self.slots = 0
        self.lock = threading.Lock()

    def release(self, slots: int) -> None:
        with self.lock:
            self.slots += slots

    def try_take(self, background: bool = False, patient: bool = True) -> float:
        with self.lock:
            if self.slots > 0:
                self.slots -= 1
                return 0.0
        return 0.02

    def remaining(self) -> float:
        return float(self.slots)

    def room(self) -> float:
        return float(self.slots)


def take_in_thread(scheduler: CallScheduler, klass: CallClass, order: list[str], name: str) -> threading.Thread:
    def run() -> None:
        with calls_as(klass):
            scheduler.acquire()
        order.append(name)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_wake_goes_before_stops_that_were_queued_first():
    gate = Gate()
    scheduler = CallScheduler("test", gate)
    order: list[str] = []
    stops = [take_in_thread(scheduler, CallClass.STOP, order, f"stop-{i}") for i in range(4)]
    wait_until(lambda: scheduler.waiting() == 4, 10, what="the stops to queue")
    wake = take_in_thread(scheduler, CallClass.WAKE, order, "wake")
    wait_until(lambda: scheduler.waiting() == 5, 10, what="the wake to queue")
    gate.release(5)
    for thread in [*stops, wake]:
        thread.join(30)
    assert len(order) == 5
    assert order.index("wake") <= 1  # at most the one stop already asking for its slot went first
    assert scheduler.granted[CallClass.STOP] == 4 and scheduler.granted[CallClass.WAKE] == 1


def test_classes_are_served_in_order_and_each_class_first_come_first_served():
    gate = Gate()
    scheduler = CallScheduler("test", gate)
    order: list[str] = []
    threads = []
    for klass, name in [
        (CallClass.BACKGROUND, "listing"),
        (CallClass.STOP, "stop-1"),
        (CallClass.STOP, "stop-2"),
        (CallClass.OPERATOR, "operator"),
    ]:
        threads.append(take_in_thread(scheduler, klass, order, name))
        queued = len(threads)
        wait_until(lambda: scheduler.waiting() == queued, 10, what=f"{name} to queue")  # noqa: B023
    for _ in threads:
        done = len(order)
        gate.release(1)  # one slot at a time: the head of the queue takes it
        wait_until(lambda: len(order) == done + 1, 10, what="the next call to go")  # noqa: B023
    assert order == ["operator", "stop-1", "stop-2", "listing"]


def test_stops_and_background_calls_leave_the_reserve_to_wakes():
    limiter = WindowLimiter(60)
    assert limiter.reserve == 6  # a wake's worth of calls
    scheduler = CallScheduler("test", limiter)
    with calls_as(CallClass.STOP):
        for _ in range(54):
            scheduler.acquire()
    assert limiter.try_take(background=True) > 0  # the 55th stop would wait
    assert scheduler.room() == 0
    assert not scheduler.has_room()
    for _ in range(6):
        scheduler.acquire()  # the wake's calls go at once
    assert scheduler.remaining() == 0


def test_a_call_waiting_for_its_turn_stops_at_the_operation_deadline():
    scheduler = CallScheduler("test", RateLimiter(per_minute=1, burst=1))
    scheduler.acquire()  # the only token: the next one is a minute away
    with deadlines.deadline_at(deadlines.time.monotonic() + 0.3), pytest.raises(deadlines.DeadlinePassed):
        scheduler.acquire()
    assert scheduler.waiting() == 0  # it left the queue


def test_calls_are_counted_by_class_and_the_budget_left_is_shown():
    metrics = Metrics()
    scheduler = CallScheduler("scalingo", WindowLimiter(60), metrics)
    assert current_class() == CallClass.WAKE  # a call outside any declared class is what a user waits for
    scheduler.acquire()
    with calls_as(CallClass.BACKGROUND):
        scheduler.acquire()
        scheduler.acquire()
    text = metrics.render().decode()
    assert 'paastis_provider_calls_total{class="wake",provider="scalingo"} 1.0' in text
    assert 'paastis_provider_calls_total{class="background",provider="scalingo"} 2.0' in text
    assert 'paastis_provider_budget_remaining{provider="scalingo"} 57.0' in text


def test_without_a_limit_calls_are_only_counted():
    scheduler = CallScheduler("clever-cloud", None, Metrics())
    with calls_as(CallClass.STOP):
        for _ in range(100):
            scheduler.acquire()
    assert scheduler.granted[CallClass.STOP] == 100 and scheduler.has_room()
