"""Configuration reloads that never take paastis down: SIGHUP (or ``paastis reload``) to gunicorn's master.

gunicorn's own SIGHUP re-reads ``gunicorn.conf.py`` (which checks paastis's configuration),
starts new workers and stops the old ones. A configuration mistake used to stop the master
there, and with it the proxy. Here the master checks the new configuration completely first:

- broken: one log line naming the problem; nothing changes (same workers, same settings);
- good: gunicorn's reload runs, except that the old workers keep accepting connections until
  the new ones have booted. Then the old workers stop accepting but keep serving what they hold
  (requests in flight, requests waiting for a wake, open WebSockets) until it ends or
  ``PAASTIS_RELOAD_DRAIN_TIMEOUT`` passes, while new workers serve every new connection.

The outcome of the last reload lives in a small shared memory page the master makes before it
forks any worker, so every worker reports it (``GET /health``, ``/metrics``), and in a file next
to the master's pid file so ``paastis reload`` can tell its user. Apps are never touched by a
reload: the local provider finds the processes it spawned through their pid files.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PAGE = 64 * 1024
BOOT_WAIT = 15.0  # seconds the old workers keep accepting while the new ones boot (the master waits meanwhile)
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
    server.paastis_draining = {}
    server.reap_workers = lambda: reap_drained(server)


def reap_drained(server: Any) -> None:
    """Reap the replaced workers that ended, with gunicorn's ``child_exit`` hook (which frees their counts).

    They left ``server.WORKERS`` when they began draining, so gunicorn's own reaping (``waitpid(-1)``)
    would take them as strangers: they are reaped here first, by pid.
    """
    from gunicorn.arbiter import Arbiter

    for pid, worker in list(server.paastis_draining.items()):
        try:
            ended = os.waitpid(pid, os.WNOHANG)[0] == pid
        except ChildProcessError:
            ended = True
        if ended:
            del server.paastis_draining[pid]
            worker.tmp.close()
            server.cfg.child_exit(server, worker)
    Arbiter.reap_workers(server)


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
    status.applied(old)  # before they are signalled: a replaced worker drains instead of closing WebSockets
    # gunicorn's reload spawns the new workers, then calls manage_workers() to stop the old ones at once, then
    # waits for them to exit. Instead, the old ones keep accepting until the new ones serve, then drain on
    # their own, out of gunicorn's count (so the master never waits on them, nor times them out).
    server.manage_workers = lambda: replace_workers(server, old)
    try:
        Arbiter.reload(server)
    finally:
        del server.manage_workers


def replace_workers(server: Any, old: tuple[int, ...]) -> None:
    await_boot(server, [pid for pid in server.WORKERS if pid not in old])
    for pid in old:
        server.kill_worker(pid, signal.SIGTERM)
        worker = server.WORKERS.pop(pid, None)  # draining: neither counted as serving nor timed out
        if worker is not None:
            server.paastis_draining[pid] = worker


def await_boot(server: Any, pids: list[int], timeout: float = BOOT_WAIT) -> bool:
    """Wait until the new workers have loaded paastis and entered their loop (their first heartbeat).

    gunicorn stamps a worker's heartbeat file when it makes it (wall clock) and the worker then
    stamps it from its loop (monotonic clock): a changed stamp means the worker serves. Bounded:
    past ``timeout`` the old workers are stopped anyway, as gunicorn itself would.
    """
    made = {pid: server.WORKERS[pid].tmp.last_update() for pid in pids if pid in server.WORKERS}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(pid not in server.WORKERS or server.WORKERS[pid].tmp.last_update() != at for pid, at in made.items()):
            return True
        time.sleep(0.02)
    server.log.warning("paastis: new workers not ready after %.0fs: replacing the old ones anyway", timeout)
    return False
