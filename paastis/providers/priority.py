"""Which class an API call belongs to: the budget goes first to what users wait for.

Each provider account has one :class:`~paastis.providers.scheduler.CallScheduler`, which
grants its API budget by class, in this order:

1. ``wake``: a wake and everything it waits on (the listing that finds the app, the start,
   the readiness polls). Calls made outside any declared class are of this class: a thread
   serving a request is what a user waits for.
2. ``operator``: a start or stop an operator asked for (admin API, CLI, dashboard), and the
   starts of awake windows.
3. ``stop``: idle and schedule stops, which nobody waits for.
4. ``background``: the idle check's listings, formations read ahead of time, explicit refreshes.

The class travels with the thread's context (:func:`calls_as`), like the operation's deadline
(:mod:`paastis.deadlines`), so the code between the lifecycle and the HTTP client never passes it along.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import IntEnum


class CallClass(IntEnum):
    """Lower values go first."""

    WAKE = 1
    OPERATOR = 2
    STOP = 3
    BACKGROUND = 4

    @property
    def label(self) -> str:
        """The ``class`` label of ``paastis_provider_calls_total``."""
        return self.name.lower()


_CLASS: ContextVar[CallClass] = ContextVar("paastis_api_call_class", default=CallClass.WAKE)


@contextmanager
def calls_as(klass: CallClass) -> Iterator[None]:
    """API calls made inside this block (in this thread, or a context copied from it) are of ``klass``."""
    token = _CLASS.set(klass)
    try:
        yield
    finally:
        _CLASS.reset(token)


def current_class() -> CallClass:
    return _CLASS.get()


@contextmanager
def background_calls() -> Iterator[None]:
    """Calls for a stop nobody waits for (an idle or schedule stop): class ``stop``."""
    with calls_as(CallClass.STOP):
        yield


def in_background() -> bool:
    """Nobody waits for these calls' outcome (stops, listings, reads ahead): a stop need not be followed."""
    return current_class() >= CallClass.STOP
