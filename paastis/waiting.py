"""The waiting page a browser gets while its app wakes, and the small status answer it polls.

The page says how long the app usually takes to wake (from its past wakes) and how long it
has been waking, and moves on to the app by itself: its script asks the same URL with the
``PaastisProxyWakeStatus`` header, which paastis answers itself (never the app), and reloads
once the app is ready. Without JavaScript the page refreshes itself every two seconds.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Request, Response, current_app, jsonify, render_template

from .providers import AppInfo
from .wake_times import WakeTimes

STATUS_HEADER = "PaastisProxyWakeStatus"
REFRESH = 2  # seconds between reloads of the page without JavaScript
FAILED_REFRESH = 10  # a failure stays on screen this long before a reload retries
MAX_TRACKED = 10_000


def asks_wake_status(req: Request) -> bool:
    return STATUS_HEADER in req.headers


class WaitingRoom:
    """Remembers when each app's wake began (in this process), to tell visitors how long it has been."""

    def __init__(self, wake_times: WakeTimes):
        self.wake_times = wake_times
        self._since: dict[str, float] = {}
        self._lock = threading.Lock()

    def welcome(self, lifecycle: Any, app: AppInfo) -> Response:
        """Wake ``app`` in the background (unless its last start just failed) and answer the page."""
        failure = lifecycle.failure(app.key)
        if failure is None:  # a recent failure is shown until it expires, not retried at every reload
            self._wake(lifecycle, app)
        return self._page(app.key, failure)

    def status(self, lifecycle: Any, app: AppInfo, awake: bool) -> Response:
        """What the page's script polls: ``waking``, ``ready`` or ``failed``, with the two durations."""
        failure = None if awake else lifecycle.failure(app.key)
        if awake:
            with self._lock:
                self._since.pop(app.key, None)
            state = "ready"
        elif failure is not None:
            state = "failed"
        else:
            self._wake(lifecycle, app)
            state = "waking"
        response = jsonify(
            app=app.key,
            state=state,
            elapsed_seconds=None if awake else round(self.elapsed(app.key), 1),
            typical_seconds=self.wake_times.typical(app.key),
            message=failure,
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    def elapsed(self, key: str) -> float:
        with self._lock:
            since = self._since.get(key)
        return 0.0 if since is None else time.monotonic() - since

    def _wake(self, lifecycle: Any, app: AppInfo) -> None:
        with self._lock:
            if app.key not in self._since or not lifecycle.starting(app.key):  # a new wake begins now
                if len(self._since) >= MAX_TRACKED:
                    self._since.clear()
                self._since[app.key] = time.monotonic()
        lifecycle.wake_in_background(app)

    def _page(self, key: str, failure: str | None) -> Response:
        if failure:
            title, status, refresh = f"{key} could not start", 502, FAILED_REFRESH
        else:
            title, status, refresh = f"{key} is starting", 503, REFRESH
        body = render_template(
            "waiting.html",
            title=title,
            failure=failure,
            refresh=refresh,
            elapsed=self.elapsed(key),
            typical=self.wake_times.typical(key),
            status_header=STATUS_HEADER,
        )
        response = current_app.response_class(body, status=status, mimetype="text/html")
        response.headers["Cache-Control"] = "no-store"
        response.headers["Retry-After"] = str(refresh)
        return response


def duration(seconds: float | None) -> str:
    """``0.8 seconds``, ``12 seconds``, ``2 min 05 s``: how people say it."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f} seconds"
    if seconds < 60:
        return f"{seconds:.0f} seconds"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"
