"""Test helpers: free ports, waiting on conditions with deadlines, real gunicorn instances."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
UPSTREAM_APP = Path(__file__).resolve().parent / "upstream_app.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - the predicate may fail until the condition holds
            last_error = error
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate}" + (f": {last_error}" if last_error else "")
    )


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by the openssl command: a real TLS upstream's identity."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):  # a loaded machine may be slow to accept
            return True
    except OSError:
        return False


def upstream_command(**env: Any) -> str:
    """A ``command:`` for paastis.yml that runs the test upstream app (settings as env assignments)."""
    assignments = " ".join(f"{k}={v}" for k, v in env.items())
    return f"{assignments} exec {PYTHON} {UPSTREAM_APP}".strip()


def local_app(tmp_path: Path, name: str = "demo", **env: Any) -> tuple[dict, int]:
    """A ``paastis.yml`` app running the test upstream on a free port; it logs each boot for :func:`starts`."""
    port = free_port()
    env.setdefault("START_LOG", tmp_path / f"{name}-starts.log")
    return {"name": name, "url": f"http://127.0.0.1:{port}", "command": upstream_command(**env)}, port


def starts(tmp_path: Path, name: str = "demo") -> int:
    """How many times the app made by :func:`local_app` booted."""
    path = tmp_path / f"{name}-starts.log"
    return len(path.read_text().split()) if path.exists() else 0


def echo(paastis: Gunicorn, app: str, **kwargs: Any) -> dict:
    """``GET /echo`` through paastis for ``app``, which must answer 200: what the app saw."""
    response = paastis.get("/echo", host=f"{app}.localhost", **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def filed_details(paastis: Gunicorn, answer: requests.Response) -> str:
    """A visitor told of a failed start got one sentence and an event id; the log line filed under that id.

    Asserts the visitor's answer says no more than ``... (event <id>)``; returns what operators see.
    """
    told = answer.json()
    event = told["event"]
    assert told["error"].endswith(f" (event {event})"), told

    def line() -> str | None:
        return next((line for line in paastis.logs().splitlines() if f"(event {event})" in line), None)

    return wait_until(line, 10, what=f"the log line of event {event}")


def write_config(directory: Path, apps: list[dict] | None = None, rules: list[dict] | None = None) -> Path:
    path = directory / "paastis.yml"
    data: dict[str, Any] = {}
    if apps is not None:
        data["apps"] = apps
    if rules is not None:
        data["rules"] = rules
    path.write_text(yaml.safe_dump(data))
    return path


class Gunicorn:
    """A real ``gunicorn app:app`` started from the repository root with the given environment."""

    def __init__(self, env: dict[str, str], tmp: Path, name: str = "paastis"):
        self.port = free_port()
        self.log_path = tmp / f"{name}-{self.port}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVIDER_", "REGISTRY_", "HOOKS_"))}
        full_env.update({"PORT": str(self.port), "HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"})
        full_env.update(env)
        self.env = full_env
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> Gunicorn:
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "gunicorn", "app:app"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            wait_until(lambda: port_open(self.port) or self._died(), 20, what=f"gunicorn on {self.port}")
            assert self.process.poll() is None, f"gunicorn exited:\n{self.logs()}"
        return self

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str = "/", host: str = "demo.localhost", **kwargs: Any) -> requests.Response:
        headers = {"Host": host, **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 60)
        return requests.request(method, self.url + path, headers=headers, allow_redirects=False, **kwargs)

    def get(self, path: str = "/", host: str = "demo.localhost", **kwargs: Any) -> requests.Response:
        return self.request("GET", path, host, **kwargs)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False)
        return [int(pid) for pid in out.stdout.split()]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()


def close_in_process(paastis: Any) -> None:
    """Stop the local apps an in-process paastis (``create_app``) woke, then close it.

    A wake still under way is waited for first, so an app spawned in the background is not left running.
    """
    for app in paastis.directory.apps():
        wait_until(lambda app=app: not paastis.lifecycle.starting(app.key), 60, what=f"{app.key}'s wake to end")
        if port_open(int(paastis.provider.upstream_url(app).rsplit(":", 1)[1])):
            paastis.provider.stop(app)
    paastis.close()
    kill_local_apps(paastis.settings.state_dir)


def kill_local_apps(state_dir: Path) -> None:
    """Stop whatever the local provider spawned under ``state_dir`` (tests must not leak processes)."""
    for pid_file in state_dir.glob("*.pid"):
        try:
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


class SlowClients:
    """``count`` slowloris connections: each sends part of a request head, then one more byte every ``pace`` s.

    Used by the tests and by ``bench/slow_clients.py``. ``closed()`` counts the connections
    paastis has cut off; ``answers()`` says what those got before the close.
    """

    def __init__(self, port: int, count: int, pace: float = 0.5):
        self.port = port
        self.pace = pace
        self.socks: list[socket.socket] = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: demo.localhost\r\n")
            sock.setblocking(False)
            self.socks.append(sock)
        self.gone: dict[int, bytes] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        while not self._stop:
            for index, sock in enumerate(self.socks):
                if index not in self.gone:
                    self._poke(index, sock)
            time.sleep(self.pace)

    def _poke(self, index: int, sock: socket.socket) -> None:
        try:
            answer = sock.recv(4096)
        except BlockingIOError:
            answer = None
        except OSError:
            answer = b""
        if answer is not None:
            self.gone[index] = answer
            return
        try:
            sock.send(b"X")
        except OSError:
            self.gone[index] = b""

    def closed(self) -> int:
        return len(self.gone)

    def answers(self) -> list[bytes]:
        return list(self.gone.values())

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        for sock in self.socks:
            sock.close()

    def __enter__(self) -> SlowClients:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
