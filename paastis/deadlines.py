"""Deadlines that follow an operation down into every provider API call made on its behalf.

A wake must answer by its app's operation timeout whatever the provider's API does. The
waker sets the deadline once, around the whole start; the API client, its retries, its
backoffs and the rate limiter's waits all read it here and stop at it, instead of each
applying its own timeouts one after the other (a hung API once made a 10 s wake wait 91 s).

The deadline lives in a :class:`~contextvars.ContextVar`: it belongs to the thread (or
context) doing the operation, so concurrent wakes of different apps never see each other's,
and code that runs outside any operation (the idle check's listing) keeps its own timeouts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")


class DeadlinePassed(Exception):
    """The current operation's deadline came (or would come) before a wait could end."""


_DEADLINE: ContextVar[float | None] = ContextVar("paastis_deadline", default=None)


@contextmanager
def deadline_at(when: float) -> Iterator[float]:
    """Run the block under a deadline (a ``time.monotonic()`` value); an outer, earlier one still wins."""
    outer = _DEADLINE.get()
    effective = when if outer is None else min(outer, when)
    token = _DEADLINE.set(effective)
    try:
        yield effective
    finally:
        _DEADLINE.reset(token)


@contextmanager
def own_time(seconds: float) -> Iterator[float]:
    """Run the block under a deadline of its own, ``seconds`` from now, whatever the enclosing one has left.

    For cleanup: undoing a start that timed out happens *because* the wake's deadline passed, so
    under that deadline it would be cut off before doing anything (a local ``stop:`` command was
    killed at once, leaving the app running). Cleanup gets the time a stop would get instead.
    """
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield time.monotonic() + seconds
    finally:
        _DEADLINE.reset(token)


def current() -> float | None:
    """The deadline of the operation under way in this context, if any."""
    return _DEADLINE.get()


def remaining() -> float | None:
    """Seconds left before the current deadline (never negative), or None when there is none."""
    deadline = _DEADLINE.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def capped(seconds: float) -> float:
    """``seconds``, or less if the current deadline comes first."""
    left = remaining()
    return seconds if left is None else min(seconds, left)


def expired() -> bool:
    left = remaining()
    return left is not None and left <= 0


def check() -> None:
    """Raise :class:`DeadlinePassed` once the current deadline is past."""
    if expired():
        raise DeadlinePassed()


def sleep(seconds: float) -> None:
    """Sleep, unless the current deadline comes first: then raise at once instead of sleeping in vain."""
    left = remaining()
    if left is not None and seconds >= left:
        raise DeadlinePassed()
    time.sleep(seconds)


def timeout(value: float | tuple[float, float]) -> float | tuple[float, float]:
    """A requests ``timeout`` (one number or connect/read), shortened to the time left; DeadlinePassed if none."""
    left = remaining()
    if left is None:
        return value
    if left <= 0:
        raise DeadlinePassed()
    if isinstance(value, tuple):
        return (min(value[0], left), min(value[1], left))
    return min(value, left)


def call_within(seconds: float, grace: float, work: Callable[[], T], name: str = "paastis-deadline") -> T:
    """Run ``work`` under a deadline ``seconds`` away, in a thread of its own; its result or its exception.

    The caller waits at most ``seconds + grace``, then gets :class:`DeadlinePassed` while ``work``
    goes on in the background (it stops at the deadline wherever it honours it).
    """
    when = time.monotonic() + seconds
    future: Future[T] = Future()

    def run() -> None:
        with deadline_at(when):
            try:
                future.set_result(work())
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                future.set_exception(error)

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        return future.result(timeout=max(0.0, when + grace - time.monotonic()))
    except FutureTimeout:
        raise DeadlinePassed() from None
