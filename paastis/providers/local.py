"""The ``local`` provider: apps that run on this machine, declared under ``apps:`` in ``paastis.yml``.

An app either has a long-running ``command`` that paastis spawns itself, or ``start``
and ``stop`` commands that return once done (``systemctl``, ``docker``…). Spawned
processes are tracked through pid files under ``PAASTIS_STATE_DIR`` rather than
in-memory handles, so that any gunicorn worker (or a restarted one) can stop them.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from .. import deadlines
from ..config import ConfigError, Settings
from ..metrics import Metrics
from ..routing import is_valid_app_key
from .base import FAILED, RUNNING, STARTING, STOPPED, AppInfo, AppNotFound, ProviderError, ProviderTimeout

log = logging.getLogger(__name__)

PAASTIS_SECRET = re.compile(r"ROUTING_SYSTEM_API_TOKEN|PROVIDER_\w*(TOKEN|SECRET|KEY)|REGISTRY_REDIS_URL")
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


def parse_app(index: int, raw: Any, base_dir: Path) -> LocalApp:
    """Validate one ``apps:`` entry; errors name the entry so the operator finds it."""
    if not isinstance(raw, dict):
        raise ConfigError(f"paastis.yml apps[{index}] must be a mapping")
    where = f"paastis.yml apps[{index}] ({raw.get('name', '?')!r})"
    unknown = set(raw) - APP_FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name = str(raw.get("name", ""))
    if not is_valid_app_key(name):
        raise ConfigError(f"{where}: name must be a DNS label (letters, digits, hyphens)")
    url = str(raw.get("url", ""))
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: url must be an http(s) URL such as http://127.0.0.1:8001")
    has_command = bool(raw.get("command"))
    has_pair = bool(raw.get("start")) and bool(raw.get("stop"))
    if has_command == has_pair:
        raise ConfigError(f"{where}: give either 'command', or both 'start' and 'stop'")
    cwd = Path(raw["cwd"]) if raw.get("cwd") else base_dir
    if not cwd.is_absolute():
        cwd = base_dir / cwd
    env = raw.get("env")
    if env is not None and not isinstance(env, dict):
        raise ConfigError(f"{where}: env must be a mapping")
    return LocalApp(
        name=name,
        url=url.rstrip("/"),
        command=raw.get("command"),
        start=raw.get("start"),
        stop=raw.get("stop"),
        ready_path=raw.get("ready_path"),
        cwd=cwd,
        env={str(k): str(v) for k, v in (env or {}).items()},
        stop_timeout=float(raw.get("stop_timeout", 10)),
    )


class LocalProvider:
    name = "local"
    poll_interval = 0.05  # a status check is one local TCP connect: cheap
    probe_upstream = False  # status() already probes the app itself

    def __init__(self, apps: list[LocalApp], state_dir: Path, operation_timeout: float):
        self.apps = {app.name: app for app in apps}
        self.state_dir = state_dir
        self.operation_timeout = operation_timeout
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._http = requests.Session()

    @classmethod
    def from_settings(cls, settings: Settings, config: dict, metrics: Metrics | None = None) -> LocalProvider:
        raw_apps = config.get("apps") or []
        if not isinstance(raw_apps, list):
            raise ConfigError("paastis.yml 'apps' must be a list")
        base_dir = settings.config_file.resolve().parent
        apps = [parse_app(i, raw, base_dir) for i, raw in enumerate(raw_apps)]
        names = [app.name for app in apps]
        duplicates = {name for name in names if names.count(name) > 1}
        if duplicates:
            raise ConfigError(f"paastis.yml apps: duplicate name(s) {', '.join(sorted(duplicates))}")
        timeout = settings.provider_operation_timeout("local")
        return cls(apps, settings.state_dir, timeout)

    # -- the provider interface -------------------------------------------------

    def list_apps(self) -> list[AppInfo]:
        return [AppInfo(key=a.name, name=a.name, upstream_url=a.url) for a in self.apps.values()]

    def status(self, app: AppInfo) -> str:
        local = self._app(app)
        if self._answers(local):
            return RUNNING
        if local.command is None:
            return STOPPED
        pid = self._read_pid(local)
        if pid is None:
            return STOPPED
        return STARTING if _group_alive(pid) else FAILED

    def start(self, app: AppInfo, memo: dict | None = None) -> None:
        local = self._app(app)
        if local.command is None:
            self._run(local, local.start, "start")
            return
        pid = self._read_pid(local)
        if pid is not None and _group_alive(pid):
            return
        self._spawn(local)

    def stop(self, app: AppInfo) -> dict | None:
        local = self._app(app)
        if local.command is None:
            self._run(local, local.stop, "stop")
            return None
        pid = self._read_pid(local)
        if pid is not None:
            _terminate_group(pid, local.stop_timeout)
        self._pid_file(local).unlink(missing_ok=True)
        return None

    def upstream_url(self, app: AppInfo) -> str:
        return self._app(app).url

    def ready_path(self, app: AppInfo) -> str | None:
        return self._app(app).ready_path

    def close(self) -> None:
        self._http.close()

    # -- helpers ----------------------------------------------------------------

    def _app(self, app: AppInfo) -> LocalApp:
        try:
            return self.apps[app.name]
        except KeyError:
            raise AppNotFound(self.name, app.name, "no such app in paastis.yml") from None

    def _answers(self, app: LocalApp) -> bool:
        """Running means the url accepts connections, or answers ``ready_path`` below 500."""
        try:
            with socket.create_connection(app.address, timeout=0.5):
                pass
        except OSError:
            return False
        if not app.ready_path:
            return True
        try:
            response = self._http.get(app.url + app.ready_path, timeout=2, allow_redirects=False)
        except requests.RequestException:
            return False
        return response.status_code < 500

    def _pid_file(self, app: LocalApp) -> Path:
        return self.state_dir / f"{app.name}.pid"

    def _read_pid(self, app: LocalApp) -> int | None:
        try:
            return int(self._pid_file(app).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _environment(self, app: LocalApp) -> dict[str, str]:
        """paastis's environment minus its own secrets (apps are not paastis), plus the app's."""
        env = {k: v for k, v in os.environ.items() if not PAASTIS_SECRET.fullmatch(k)}
        env.update(app.env or {})
        env["PORT"] = str(app.address[1])
        env["PAASTIS_APP_NAME"] = app.name
        return env

    def _spawn(self, app: LocalApp) -> None:
        log_path = self.state_dir / f"{app.name}.log"
        with open(log_path, "ab") as output:
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
        tmp = self._pid_file(app).with_suffix(".pid.tmp")
        tmp.write_text(str(process.pid))
        tmp.replace(self._pid_file(app))
        log.info("local: spawned %s (pid %d, output in %s)", app.name, process.pid, log_path)
        threading.Thread(target=_reap, args=(app.name, process), daemon=True).start()

    def _run(self, app: LocalApp, command: str | None, what: str) -> None:
        try:
            result = subprocess.run(
                command,
                shell=True,
                check=False,
                cwd=app.cwd,
                env=self._environment(app),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=deadlines.capped(self.operation_timeout),
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise ProviderTimeout(self.name, app.name, f"{what} command timed out") from None
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()[-1:]
            detail = f": {tail[0]}" if tail else ""
            raise ProviderError(self.name, app.name, f"{what} command exited with code {result.returncode}{detail}")


def _reap(name: str, process: subprocess.Popen) -> None:
    """Wait for the child so it never lingers as a zombie, and say how it ended."""
    code = process.wait()
    log.info("local: %s exited with code %s", name, code)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate_group(pgid: int, grace: float) -> None:
    """SIGTERM the whole process group, then SIGKILL what is left after ``grace`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.05)
    log.warning("local: process group %d ignored SIGTERM for %.0fs, killing it", pgid, grace)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
