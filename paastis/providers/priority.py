"""Which provider API calls may wait: those made for idle stops give way to everything else.

A user waiting for a sleeping app must never queue behind a crowd of idle stops. The stopper
wraps its provider calls in :func:`background_calls`; rate limiters read :func:`in_background`
and keep part of the budget for the other calls (see :class:`~paastis.providers.http.RateLimiter`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_BACKGROUND: ContextVar[bool] = ContextVar("paastis_background_api_calls", default=False)


@contextmanager
def background_calls() -> Iterator[None]:
    """API calls made inside this block (in this thread) yield to the others."""
    token = _BACKGROUND.set(True)
    try:
        yield
    finally:
        _BACKGROUND.reset(token)


def in_background() -> bool:
    return _BACKGROUND.get()
