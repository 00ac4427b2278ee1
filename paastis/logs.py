"""Logging as text or one JSON object per line (``LOG_FORMAT``), at ``LOG_LEVEL``."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


def configure(level: str, fmt: str) -> None:
    """Configure the ``paastis`` logger tree once per process; later calls only adjust it."""
    logger = logging.getLogger("paastis")
    logger.setLevel(level.upper())
    if any(getattr(h, "_paastis", False) for h in logger.handlers):
        for handler in logger.handlers:
            handler.setFormatter(_formatter(fmt))
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(fmt))
    handler._paastis = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
