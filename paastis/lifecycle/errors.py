"""Why a request cannot be served because of its app's lifecycle: each error carries its HTTP status."""

from __future__ import annotations


class WakeError(Exception):
    """A request cannot be served because its app could not be woken; ``status`` is the answer."""

    status = 502

    def __init__(self, app: str, message: str):
        self.app = app
        self.message = message
        super().__init__(message)


class UnknownApp(WakeError):
    status = 404


class NotManaged(WakeError):
    status = 503


class WakeTimeout(WakeError):
    status = 504


def wake_timeout(key: str, seconds: float, cause: Exception | None = None) -> WakeTimeout:
    why = f" ({cause})" if cause is not None else ""
    return WakeTimeout(key, f"app {key!r} did not become ready within {seconds:g}s{why}")
