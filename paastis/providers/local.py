"""The ``local`` provider: apps that run on this machine, declared under ``apps:`` in ``paastis.yml``.

An app either has a long-running ``command`` that paastis spawns itself, or ``start``
and ``stop`` commands that return once done (``systemctl``, ``docker``…). Spawned
processes are tracked through pid files under ``PAASTIS_STATE_DIR`` rather than
in-memory handles, so that any gunicorn worker (or a restarted one) can stop them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .. import deadlines
from ..config import ConfigError, Settings
from ..routing import is_valid_app_key
from ..secrecy import Redactor, base_environment
from .base import FAILED, RUNNING, STARTING, STOPPED, AppInfo, AppNotFound, ProviderError, ProviderTimeout

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger(__name__)

TAIL_LINES = 5  # lines of a failed command's output quoted in its error
KILL_WAIT = 5.0  # seconds for the kernel to reap a SIGKILLed group
APP_FIELDS = {"name", "url", "command", "start", "stop", "ready_path", "cwd", "env", "stop_timeout"}


@dataclass(frozen=True)
class LocalApp:
    name: str
    url: str
    command: str | None = None
    start: str | None = None
    stop: str | None = None
    ready_path: str | None = None
    cwd: Path | None = None
    env: dict[str, str] | None = None
    stop_timeout: float = 10.0

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def parse_app(index: int, raw: Any, base_dir: Path, source: str = "paastis.yml") -> LocalApp:
    """Validate one ``apps:`` entry; errors name the file and the entry so the operator finds it."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} apps[{index}] must be a mapping")
    where = f"{source} apps[{index}] ({raw.get('name', '?')!r})"
    unknown = set(raw) - APP_FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name = raw.get("name")
    if not isinstance(name, str) or not is_valid_app_key(name):
        raise ConfigError(f"{where}: name must be a DNS label (letters, digits, hyphens)")
    url = raw.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: url must be an http(s) URL such as http://127.0.0.1:8001")
    for field_name in ("command", "start", "stop"):
        value = raw.get(field_name)
        if value is not None and not isinstance(value, str):
            shown = "a list" if isinstance(value, list) else f"a {type(value).__name__}"
            raise ConfigError(f"{where}: {field_name} must be one shell command string, not {shown}")
    has_command = bool(raw.get("command"))
    has_pair = bool(raw.get("start")) and bool(raw.get("stop"))
    if has_command == has_pair:
        raise ConfigError(f"{where}: give either 'command', or both 'start' and 'stop'")
    ready_path = raw.get("ready_path")
    if ready_path is not None and (not isinstance(ready_path, str) or not ready_path.startswith("/")):
        raise ConfigError(f"{where}: ready_path must be a path starting with '/', such as /health")
    stop_timeout = raw.get("stop_timeout", 10)
    if isinstance(stop_timeout, bool) or not isinstance(stop_timeout, int | float) or not 0 < stop_timeout <= 3600:
        raise ConfigError(f"{where}: stop_timeout must be seconds (> 0, at most 3600), not {stop_timeout!r}")
    cwd_value = raw.get("cwd")
    if cwd_value is not None and not isinstance(cwd_value, str):
        raise ConfigError(f"{where}: cwd must be a directory path")
    cwd = Path(cwd_value) if cwd_value else base_dir
    if not cwd.is_absolute():
        cwd = base_dir / cwd
    if not cwd.is_dir():
        raise ConfigError(f"{where}: cwd {str(cwd)!r} is not a directory")
    env = raw.get("env")
    if env is not None and (
        not isinstance(env, dict) or not all(isinstance(v, str | int | float | bool) for v in env.values())
    ):
        raise ConfigError(f"{where}: env must be a mapping of variable names to plain values")
    return LocalApp(
        name=name,
        url=url.rstrip("/"),
        command=raw.get("command"),
        start=raw.get("start"),
        stop=raw.get("stop"),
        ready_path=ready_path,
        cwd=cwd,
        env={str(k): str(v) for k, v in (env or {}).items()},
        stop_timeout=float(stop_timeout),
    )


class LocalProvider:
    name = "local"
    poll_interval = 0.05  # a status check is one local TCP connect: cheap
    probe_upstream = False  # status() already probes the app itself
    scheduler = None  # no API, no budget to share out

    def __init__(
        self, apps: list[LocalApp], state_dir: Path, operation_timeout: float, redact: Redactor | None = None
    ):
        self.apps = {app.name: app for app in apps}
        self.state_dir = state_dir
        self.operation_timeout = operation_timeout
        self.redact = redact or Redactor(())  # an app's output is quoted in errors, which are logged
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"PAASTIS_STATE_DIR={str(state_dir)!r} cannot be created: {error.strerror}") from None
        self._http: Any = None  # a requests.Session, made on first use (gunicorn's master never needs one)

    @classmethod
    def from_settings(
        cls, settings: Settings, config: dict, metrics: Metrics | None = None, redis_link: object = None
    ) -> LocalProvider:
        """``redis_link`` is unused: this provider's budget is not shared through Redis."""
        source = str(settings.config_file)
        raw_apps = config.get("apps") or []
        if not isinstance(raw_apps, list):
            raise ConfigError(f"{source}: 'apps' must be a list")
        base_dir = settings.config_file.resolve().parent
        apps = [parse_app(i, raw, base_dir, source) for i, raw in enumerate(raw_apps)]
        names = [app.name for app in apps]
        duplicates = {name for name in names if names.count(name) > 1}
        if duplicates:
            raise ConfigError(f"{source} apps: duplicate name(s) {', '.join(sorted(duplicates))}")
        first_at: dict[tuple[str, int], LocalApp] = {}
        for app in apps:
            other = first_at.setdefault(app.address, app)
            if other is not app:  # requests for one would reach the other, and stopping one would stop both
                raise ConfigError(f"{source} apps: {other.name} and {app.name} share {app.url}: one port per app")
        timeout = settings.provider_operation_timeout("local")
        return cls(apps, settings.state_dir, timeout, Redactor.of(settings.env.values))

    # -- the provider interface -------------------------------------------------

    def list_apps(self) -> list[AppInfo]:
        return [AppInfo(key=a.name, name=a.name, upstream_url=a.url) for a in self.apps.values()]

    def status(self, app: AppInfo) -> str:
        local = self._app(app)
        if self._answers(local):
            return RUNNING
        if local.command is None:
            return STOPPED
        if not self._pid_file(local).exists():
            return STOPPED
        return STARTING if self._our_group(local) is not None else FAILED

    def failure(self, app: AppInfo) -> str | None:
        """Why a spawned ``command`` is gone: its exit code and the last lines it wrote."""
        local = self._app(app)
        if local.command is None or not self._pid_file(local).exists() or self._our_group(local) is not None:
            return None
        identity = self._identity(local)
        code = self._exit_code_when_reaped(local)
        ended = f"exited with code {code}" if code is not None else "exited"
        tail = _tail(self._log_path(local), identity.log_offset if identity else 0)
        output = f"; its last output: {' | '.join(tail)}" if tail else ""
        return self.redact(f"{local.command!r} {ended}{output} (full output in {self._log_path(local)})")

    def start(self, app: AppInfo, memo: dict | None = None) -> None:
        local = self._app(app)
        if local.command is None:
            self._run(local, local.start, "start")
            return
        if self._our_group(local) is not None:
            return  # already spawned and still booting (another worker may have spawned it)
        if self._port_open(local):
            raise ProviderError(self.name, app.name, self._foreign(local))
        self._spawn(local)

    def stop(self, app: AppInfo, memo: dict | None = None) -> dict | None:
        """Stopped means stopped: processes gone and port closed, else a :class:`ProviderError` saying why."""
        local = self._app(app)
        if local.command is None:
            self._run(local, local.stop, "stop")
            self._await_port_closed(
                local, local.stop_timeout, f"its stop command succeeded, but {local.url} still accepts connections"
            )
            return None
        pgid = self._our_group(local)
        if pgid is not None and not _terminate_group(pgid, local.stop_timeout):
            raise ProviderError(self.name, app.name, f"process group {pgid} is still alive after SIGKILL")
        self._forget_process(local)
        self._await_port_closed(local, 1.0 if pgid is not None else 0.0, self._foreign(local))
        return None

    def abandon_start(self, app: AppInfo) -> str | None:
        """A start that failed or timed out must not leave anything running (and billing).

        Its ``stop:`` command runs with the app's ``stop_timeout``, never with what was left of the
        start's deadline (nothing, when the start timed out).
        """
        local = self._app(app)
        if local.command is None:
            try:
                with deadlines.own_time(local.stop_timeout):
                    self._run(local, local.stop, "stop", local.stop_timeout)
            except ProviderError as error:
                return f"its stop command failed too: {error.message}"
            return "its stop command was run"
        pgid = self._our_group(local)
        if pgid is None:
            self._forget_process(local)
            return None
        if not _terminate_group(pgid, local.stop_timeout):
            return f"its process group {pgid} could not be killed"
        self._forget_process(local)
        return f"its process group {pgid} was stopped"

    def upstream_url(self, app: AppInfo) -> str:
        return self._app(app).url

    def ready_path(self, app: AppInfo) -> str | None:
        return self._app(app).ready_path

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    # -- helpers ----------------------------------------------------------------

    def _app(self, app: AppInfo) -> LocalApp:
        try:
            return self.apps[app.name]
        except KeyError:
            raise AppNotFound(self.name, app.name, "no such app in paastis.yml") from None

    def _answers(self, app: LocalApp) -> bool:
        """Running means the url accepts connections, or answers ``ready_path`` below 500."""
        if not self._port_open(app):
            return False
        if not app.ready_path:
            return True
        import requests  # here: building the provider (gunicorn's master checks it) must not load requests

        if self._http is None:
            self._http = requests.Session()
        try:
            response = self._http.get(app.url + app.ready_path, timeout=2, allow_redirects=False)
        except requests.RequestException:
            return False
        return response.status_code < 500

    def _port_open(self, app: LocalApp) -> bool:
        try:
            with socket.create_connection(app.address, timeout=0.5):
                return True
        except OSError:
            return False

    def _foreign(self, app: LocalApp) -> str:
        host, port = app.address
        return f"a process paastis did not start listens on {host}:{port}"

    def _await_port_closed(self, app: LocalApp, grace: float, why_open: str) -> None:
        """The port must close within ``grace`` seconds, or the stop is not reported as done."""
        deadline = time.monotonic() + grace
        while self._port_open(app):
            if time.monotonic() >= deadline:
                raise ProviderError(self.name, app.name, why_open)
            time.sleep(0.05)

    def _pid_file(self, app: LocalApp) -> Path:
        return self.state_dir / f"{app.name}.pid"

    def _identity_file(self, app: LocalApp) -> Path:
        return self.state_dir / f"{app.name}.identity"

    def _exit_file(self, app: LocalApp) -> Path:
        return self.state_dir / f"{app.name}.exit"

    def _log_path(self, app: LocalApp) -> Path:
        return self.state_dir / f"{app.name}.log"

    def _read_pid(self, app: LocalApp) -> int | None:
        try:
            return int(self._pid_file(app).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _identity(self, app: LocalApp) -> Identity | None:
        try:
            pid, started, offset = (int(x) for x in self._identity_file(app).read_text().split())
        except (FileNotFoundError, ValueError):
            return None
        return Identity(pid, started, offset)

    def _exit_code(self, app: LocalApp) -> int | None:
        try:
            return int(self._exit_file(app).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _exit_code_when_reaped(self, app: LocalApp, patience: float = 2.0) -> int | None:
        """The exit code, waiting a moment for it: the group can be gone before its reaper has written it."""
        deadline = time.monotonic() + patience
        while (code := self._exit_code(app)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return code

    def _our_group(self, app: LocalApp) -> int | None:
        """The process group we spawned for ``app``, if it still runs; never a recycled pid's.

        The pid file is trusted only with an identity file naming the same pid and its start
        time (``/proc/<pid>/stat``). While the group leader lives, its start time must match; once
        it has exited, a live group with its id is still ours (Linux does not hand out a pid that
        is still some group's id).
        """
        pid = self._read_pid(app)
        if pid is None:
            return None
        identity = self._identity(app)
        if identity is None or identity.pid != pid:
            log.warning("local: %s: pid file names %d without a matching identity: not trusted", app.name, pid)
            return None
        started = process_start_time(pid)
        if started is not None:
            if started != identity.started:
                log.warning("local: %s: pid %d now belongs to another process: not ours, left alone", app.name, pid)
                return None
            return pid
        return pid if _group_alive(pid) else None

    def _forget_process(self, app: LocalApp) -> None:
        for path in (self._pid_file(app), self._identity_file(app), self._exit_file(app)):
            path.unlink(missing_ok=True)

    def _environment(self, app: LocalApp) -> dict[str, str]:
        """Least privilege: the documented base, the app's own ``env:``, its ``PORT`` and name; nothing else.

        Never paastis's environment as a whole: it holds the admin token, the session key,
        the provider's credentials and the database and Redis URLs (see docs/security.md).
        """
        env = base_environment()
        env.update(app.env or {})
        env["PORT"] = str(app.address[1])
        env["PAASTIS_APP_NAME"] = app.name
        return env

    def _spawn(self, app: LocalApp) -> None:
        log_path = self._log_path(app)
        self._exit_file(app).unlink(missing_ok=True)
        with open(log_path, "ab") as output:
            offset = output.tell()
            process = subprocess.Popen(
                app.command,
                shell=True,
                cwd=app.cwd,
                env=self._environment(app),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = process_start_time(process.pid)
        _write_atomically(self._identity_file(app), f"{process.pid} {started or 0} {offset}")
        _write_atomically(self._pid_file(app), str(process.pid))
        log.info("local: spawned %s (pid %d, output in %s)", app.name, process.pid, log_path)
        threading.Thread(target=_reap, args=(app.name, process, self._exit_file(app)), daemon=True).start()

    def _run(self, app: LocalApp, command: str | None, what: str, timeout: float | None = None) -> None:
        """Run a ``start:``/``stop:`` command to its end (``timeout``: the operation timeout, or less if the
        current deadline comes first); on timeout its whole process group is killed."""
        timeout = self.operation_timeout if timeout is None else timeout
        process = subprocess.Popen(
            command or "true",
            shell=True,
            cwd=app.cwd,
            env=self._environment(app),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=deadlines.capped(timeout))
        except subprocess.TimeoutExpired:
            _terminate_group(process.pid, 0)
            process.communicate()
            raise ProviderTimeout(
                self.name, app.name, f"{what} command timed out after {timeout:g}s (killed)"
            ) from None
        if process.returncode != 0:
            tail = (stderr or stdout).decode(errors="replace").strip().splitlines()[-TAIL_LINES:]
            detail = self.redact(f": {' | '.join(tail)}") if tail else ""
            raise ProviderError(self.name, app.name, f"{what} command exited with code {process.returncode}{detail}")


@dataclass(frozen=True)
class Identity:
    """Who a pid file was written for: the pid, its start time (clock ticks after boot), where its log began."""

    pid: int
    started: int
    log_offset: int


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: with the pid, it names one process for the life of the machine."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # after "(comm)", fields 3.. ; starttime is field 22


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _tail(path: Path, offset: int) -> list[str]:
    """The last lines written to ``path`` after ``offset`` (this run's output, not an older one's)."""
    try:
        with open(path, "rb") as file:
            file.seek(max(offset, 0))
            data = file.read()[-8192:]
    except OSError:
        return []
    return [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()][-TAIL_LINES:]


def _reap(name: str, process: subprocess.Popen, exit_file: Path) -> None:
    """Wait for the child so it never lingers as a zombie, and record how it ended for any worker to read."""
    code = process.wait()
    log.info("local: %s exited with code %s", name, code)
    try:
        exit_file.write_text(str(code))
    except OSError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate_group(pgid: int, grace: float) -> bool:
    """SIGTERM the whole process group, SIGKILL what is left after ``grace`` seconds; True once it is gone."""
    try:
        os.killpg(pgid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
    except ProcessLookupError:
        return True
    if grace <= 0:
        return _wait_group_gone(pgid, KILL_WAIT)
    if _wait_group_gone(pgid, grace):
        return True
    log.warning("local: process group %d ignored SIGTERM for %gs, killing it", pgid, grace)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    return _wait_group_gone(pgid, KILL_WAIT)


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
