"""Configuration reloads that never take paastis down: SIGHUP (or ``paastis reload``) to gunicorn's master.

gunicorn's own SIGHUP re-reads ``gunicorn.conf.py`` (which checks paastis's configuration),
starts new workers and stops the old ones. A configuration mistake used to stop the master
there, and with it the proxy. Here the master checks the new configuration completely first:

- broken: one log line naming the problem; nothing changes (same workers, same settings);
- good: gunicorn's reload runs. The old workers stop accepting connections but keep serving
  what they hold (requests in flight, requests waiting for a wake, open WebSockets) until it
  ends or ``PAASTIS_RELOAD_DRAIN_TIMEOUT`` passes, while new workers serve every new connection.

The outcome of the last reload lives in a small shared memory page the master makes before it
forks any worker, so every worker reports it (``GET /health``, ``/metrics``), and in a file next
to the master's pid file so ``paastis reload`` can tell its user. Apps are never touched by a
reload: the local provider finds the processes it spawned through their pid files.
"""

from __future__ import annotations

import json
import logging
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PAGE = 64 * 1024
HEADER = struct.Struct("!I")  # length of the JSON that follows


@dataclass(frozen=True)
class Outcome:
    """What the last reload did: ``result`` is ``none`` (no reload yet), ``applied`` or ``failed``."""

    generation: int = 0
    result: str = "none"
    error: str | None = None
    at: str | None = None
    replaced: tuple[int, ...] = ()  # the workers the last applied reload replaced (they drain)

    def to_json(self) -> dict[str, Any]:
        return {"generation": self.generation, "result": self.result, "error": self.error, "at": self.at}


class ReloadStatus:
    """The last reload's outcome, in memory shared by gunicorn's master (who writes) and its workers (who read).

    The master makes it before forking: an anonymous shared mapping is inherited by every child,
    and a write in the master is seen by the workers at once, old and new alike.
    """

    def __init__(self, status_file: Path | None = None) -> None:
        self._page = mmap.mmap(-1, PAGE)
        self.status_file = status_file
        self._write(Outcome())

    def read(self) -> Outcome:
        for _ in range(100):  # a read racing the master's write sees a torn page: read again
            (length,) = HEADER.unpack_from(self._page, 0)
            try:
                data = json.loads(bytes(self._page[HEADER.size : HEADER.size + length]))
                return Outcome(**{**data, "replaced": tuple(data.get("replaced", ()))})
            except (ValueError, TypeError):
                continue
        return Outcome()

    def applied(self, replaced: tuple[int, ...]) -> Outcome:
        return self._next("applied", None, replaced)

    def failed(self, error: str) -> Outcome:
        return self._next("failed", error, self.read().replaced)

    def replacing(self, pid: int) -> bool:
        """Is the worker ``pid`` being replaced by a reload (rather than stopped with paastis)?"""
        return pid in self.read().replaced

    def _next(self, result: str, error: str | None, replaced: tuple[int, ...]) -> Outcome:
        at = datetime.now(UTC).isoformat(timespec="seconds")
        outcome = Outcome(self.read().generation + 1, result, error, at, replaced)
        self._write(outcome)
        return outcome

    def _write(self, outcome: Outcome) -> None:
        data = json.dumps({**outcome.to_json(), "replaced": list(outcome.replaced)}).encode()[: PAGE - HEADER.size]
        self._page[HEADER.size : HEADER.size + len(data)] = data
        HEADER.pack_into(self._page, 0, len(data))
        if self.status_file is not None:
            write_quietly(self.status_file, json.dumps(outcome.to_json()) + "\n")


def files(state_dir: Path, port: int) -> tuple[Path, Path]:
    """The master's pid file and its reload status file: one pair per port (never ``*.pid``: the local provider's)."""
    return state_dir / f"paastis-{port}.master", state_dir / f"paastis-{port}.reload.json"


def write_quietly(path: Path, text: str) -> bool:
    """Best effort: a read-only state directory costs ``paastis reload``, never the proxy."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(text)
        temporary.replace(path)
        return True
    except OSError as error:
        log.warning("cannot write %s (%s): `paastis reload` will not find this instance", path, error.strerror)
        return False


def install(
    server: Any, check: Callable[[], object], status: ReloadStatus, error_line: Callable[[Exception], str]
) -> None:
    """Replace gunicorn's SIGHUP handling in the master by :func:`safe_reload`.

    gunicorn's arbiter looks its signal handlers up by name on itself (``handle_hup``), so an
    attribute of the instance takes over without changing gunicorn.
    """
    server.handle_hup = lambda: safe_reload(server, check, status, error_line)


def safe_reload(
    server: Any, check: Callable[[], object], status: ReloadStatus, error_line: Callable[[Exception], str]
) -> None:
    """Check first; reload only a configuration that starts. The old workers drain (see :mod:`paastis.worker`)."""
    from gunicorn.arbiter import Arbiter

    from .config import ConfigError

    server.log.info("paastis: reloading the configuration (SIGHUP)")
    try:
        check()
    except ConfigError as error:
        status.failed(str(error))
        server.log.error(error_line(error))
        return
    old = tuple(server.WORKERS)
    status.applied(old)  # before gunicorn signals them: a replaced worker drains instead of closing WebSockets
    Arbiter.reload(server)
    for pid in old:  # draining: neither counted as serving nor timed out by the arbiter (each has its own deadline)
        server.WORKERS.pop(pid, None)
