"""Logging as text or one JSON object per line (``LOG_FORMAT``), at ``LOG_LEVEL``.

With ``LOG_FORMAT=json`` every line is JSON, gunicorn's own included (see
:func:`gunicorn_logconfig`, used by ``gunicorn.conf.py``). Lines about one app carry an
``app`` field: set by :func:`about_app` for the code that works on that app (a request, a
start, a stop), or passed as ``extra={"app": key}``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_APP: ContextVar[str | None] = ContextVar("paastis_log_app", default=None)


@contextmanager
def about_app(key: str) -> Iterator[None]:
    """Every line logged in this block (in this thread) is about ``key``."""
    token = _APP.set(key)
    try:
        yield
    finally:
        _APP.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, pid, and app where there is one."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        app = getattr(record, "app", None) or _APP.get() or _access_app(record)
        if app:
            data["app"] = app
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


def _access_app(record: logging.LogRecord) -> str | None:
    """gunicorn's access lines carry the request's headers in their arguments: the Host names the app."""
    if record.name != "gunicorn.access" or not isinstance(record.args, dict):
        return None
    from .routing import app_key_from_host  # no import cycle at module load

    try:
        return app_key_from_host(str(record.args.get("{host}i") or ""))
    except ValueError:
        return None


def configure(level: str, fmt: str) -> None:
    """Configure the ``paastis`` logger tree once per process; later calls only adjust it.

    It does not propagate: under gunicorn with ``LOG_FORMAT=json`` the root logger has a JSON
    handler too, and each line must be written once.
    """
    logger = logging.getLogger("paastis")
    logger.setLevel(level.upper())
    logger.propagate = False
    if any(getattr(h, "_paastis", False) for h in logger.handlers):
        for handler in logger.handlers:
            handler.setFormatter(_formatter(fmt))
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(fmt))
    handler._paastis = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


def gunicorn_logconfig(fmt: str, level: str, access_log: str | None) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: JSON lines for its error and access logs when asked for.

    gunicorn merges this into its own defaults (error log on stderr, root logger on stdout),
    so libraries' warnings, which reach the root logger, are JSON too. The access log keeps
    going where ``PAASTIS_ACCESS_LOG`` says, and nowhere when it is unset.
    """
    if fmt != "json":
        return {}
    handlers: dict[str, Any] = {
        "console": {"class": "logging.StreamHandler", "formatter": "generic", "stream": "ext://sys.stdout"},
        "error_console": {"class": "logging.StreamHandler", "formatter": "generic", "stream": "ext://sys.stderr"},
    }
    if access_log is None:
        access: dict[str, Any] = {"level": "WARNING", "handlers": [], "propagate": False}
    elif access_log == "-":
        access = {"level": "INFO", "handlers": ["console"], "propagate": False}
    else:
        handlers["access_file"] = {"class": "logging.FileHandler", "formatter": "generic", "filename": access_log}
        access = {"level": "INFO", "handlers": ["access_file"], "propagate": False}
    return {
        "formatters": {"generic": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": handlers,
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": access,
        },
    }


def format_line(fmt: str, message: str, level: str = "error", logger: str = "paastis") -> str:
    """A line written before logging is set up (a configuration error), in the format asked for."""
    if fmt != "json":
        return message
    record = logging.LogRecord(logger, logging.getLevelName(level.upper()), __file__, 0, message, None, None)
    return JsonFormatter().format(record)


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")


class JobErrors:
    """Errors of a background job: the first is logged with its traceback, later ones at most once a ``every``.

    A job that fails at every tick (the provider's API down for an hour) must neither flood the
    log nor hide why it fails: the traceback is shown once, then one line a minute says it goes
    on, with how many failures were not logged. A success resets it: the next failure is news.
    """

    def __init__(self, logger: logging.Logger, every: float = 60.0, clock: Any = None):
        import time

        self.logger = logger
        self.every = every
        self.clock = clock or time.monotonic
        self._last: dict[str, tuple[float, int]] = {}  # job -> (when last logged, failures not logged since)

    def failed(self, job: str, error: BaseException) -> None:
        now = self.clock()
        last = self._last.get(job)
        if last is None:
            self._last[job] = (now, 0)
            self.logger.error("%s failed: %s", job, error, exc_info=error)
        elif now - last[0] >= self.every:
            self._last[job] = (now, 0)
            self.logger.error("%s failed again: %s (%d failure(s) not logged since)", job, error, last[1])
        else:
            self._last[job] = (last[0], last[1] + 1)

    def succeeded(self, job: str) -> None:
        if self._last.pop(job, None) is not None:
            self.logger.info("%s works again", job)
