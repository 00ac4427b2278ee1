"""Why a request cannot be served because of its app's lifecycle: each error carries its HTTP status.

Each error has two texts. ``message`` is for operators (the event, the log, the admin API, the
dashboard): exit codes, output, paths, provider answers. ``public`` is what an app's visitor is
told: one sentence, and the id of the event the details are filed under, never the details.
"""

from __future__ import annotations


class WakeError(Exception):
    """A request cannot be served because its app could not be woken; ``status`` is the answer."""

    status = 502

    def __init__(self, app: str, message: str, public: str | None = None):
        self.app = app
        self.message = message
        self.event_id: str | None = None  # set once the failure is recorded as an event
        self._public = public
        super().__init__(message)

    @property
    def public(self) -> str:
        """One sentence for visitors, with the event id the operator can look the details up by."""
        text = self._public or f"app {self.app!r} could not be started"
        return f"{text} (event {self.event_id})" if self.event_id else text

    def amended(self, message: str) -> WakeError:
        """The same error (kind, status, public sentence, event) with a longer operator's message."""
        error = type(self)(self.app, message, self._public)
        error.event_id = self.event_id
        return error


class UnknownApp(WakeError):
    status = 404

    def __init__(self, app: str, message: str, public: str | None = None):
        super().__init__(app, message, public or f"unknown app {app!r}")


class NotManaged(WakeError):
    status = 503

    def __init__(self, app: str, message: str, public: str | None = None):
        super().__init__(app, message, public or message)  # says nothing about the machine


class WakeTimeout(WakeError):
    status = 504

    def __init__(self, app: str, message: str, public: str | None = None):
        super().__init__(app, message, public or f"app {app!r} did not become ready in time")


def wake_timeout(key: str, seconds: float, cause: Exception | None = None) -> WakeTimeout:
    why = f" ({cause})" if cause is not None else ""
    return WakeTimeout(key, f"app {key!r} did not become ready within {seconds:g}s{why}")
