"""Building blocks for the fake PaaS APIs: an HTTP server, a rate limit, and apps that really run.

Each fake platform app has a *router* (its public URL, like ``*.scalingo.io``) that
answers 503 while the app has no running container, and relays to a real upstream
process (tests/upstream_app.py) once the app is scaled up and has booted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from tests.support import PYTHON, UPSTREAM_APP, free_port, port_open

Route = tuple[str, re.Pattern[str], Callable[..., "Reply"]]


class Reply:
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        self.status = status
        self.body = body
        self.headers = headers or {}

    def encode(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes | str):
            return self.body.encode() if isinstance(self.body, str) else self.body
        return json.dumps(self.body).encode()


class FixedWindowLimit:
    """At most ``limit`` calls per ``window`` seconds, else the fake answers 429."""

    def __init__(self, limit: int, window: float = 60.0):
        self.limit = limit
        self.window = window
        self.calls: list[float] = []
        self.lock = threading.Lock()
        self.rejected = 0

    def allow(self) -> float | None:
        """None if allowed, else the seconds until a slot frees up."""
        with self.lock:
            now = time.monotonic()
            self.calls = [t for t in self.calls if now - t < self.window]
            if len(self.calls) < self.limit:
                self.calls.append(now)
                return None
            self.rejected += 1
            return self.window - (now - self.calls[0])


class FakeApiServer:
    """A threaded HTTP server whose subclasses declare ``routes`` as (method, regex, handler)."""

    routes: list[Route] = []

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every call, for assertions
        self.lock = threading.Lock()
        self.hang: re.Pattern[str] | None = None  # calls whose path matches get no answer until stop()
        self.hung = 0
        self.released = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _dispatch(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if fake.hang is not None and fake.hang.search(self.path):
                    with fake.lock:
                        fake.hung += 1
                    fake.released.wait()  # a hung API: takes the call, never answers
                    return
                reply = fake.handle(self.command, self.path, dict(self.headers.items()), raw)
                data = reply.encode()
                self.send_response(reply.status)
                if reply.body is not None and "Content-Type" not in reply.headers:
                    self.send_header("Content-Type", "application/json")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _dispatch

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeApiServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        with self.lock:
            self.requests.append((method, path))
        bare = path.split("?", 1)[0]
        for route_method, pattern, handler in self.routes:
            match = pattern.fullmatch(bare)
            if match and route_method == method:
                payload = json.loads(body) if body else None
                return handler(self, headers, payload, path, *match.groups())
        return self.not_found(path)

    def not_found(self, path: str) -> Reply:
        return Reply(404, {"error": f"no route for {path}"})

    def count(self, method: str, pattern: str) -> int:
        regex = re.compile(pattern)
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and regex.fullmatch(p.split("?", 1)[0]))


class PlatformApp:
    """An app of a fake platform: a router on its public URL and a real process while scaled up."""

    def __init__(self, name: str, boot_delay: float = 0.3, start_log: str | None = None):
        self.name = name
        self.boot_delay = boot_delay
        self.start_log = start_log
        self.backend_port = free_port()
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.router = _Router(self)

    @property
    def url(self) -> str:
        return self.router.url

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def answering(self) -> bool:
        return self.running and port_open(self.backend_port)

    def scale_up(self) -> None:
        with self.lock:
            if self.running:
                return
            env = {**os.environ, "PORT": str(self.backend_port), "BOOT_DELAY": str(self.boot_delay)}
            env["PAASTIS_APP_NAME"] = self.name
            if self.start_log:
                env["START_LOG"] = self.start_log
            self.process = subprocess.Popen(
                [PYTHON, str(UPSTREAM_APP)], env=env, start_new_session=True, stdout=subprocess.DEVNULL
            )

    def scale_down(self) -> None:
        with self.lock:
            if self.process is not None and self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.process = None

    def close(self) -> None:
        self.scale_down()
        self.router.stop()


class _Router:
    """The platform's HTTP router in front of one app: 503 while it is down, relayed while up."""

    def __init__(self, app: PlatformApp):
        self.app = app
        self.port = free_port()
        router = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                status, headers, data = router.forward(self.command, self.path, dict(self.headers.items()), body)
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes | None):
        down = 503, [("Content-Type", "text/html")], b"<h1>Application not running</h1>"
        if not self.app.running:
            return down
        headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "connection")}
        url = f"http://127.0.0.1:{self.app.backend_port}{path}"
        try:
            upstream = requests.request(method, url, headers=headers, data=body, timeout=30, allow_redirects=False)
        except requests.ConnectionError:
            # Still booting (nothing listens yet). Not probed with a separate connect: under a burst of
            # requests such a probe can time out in the listen backlog and turn a live app into a 503.
            return down
        except requests.RequestException:
            return 502, [("Content-Type", "text/html")], b"<h1>Bad gateway</h1>"
        kept = [(k, v) for k, v in upstream.headers.items() if k.lower() not in ("content-length", "connection")]
        kept = [(k, v) for k, v in kept if k.lower() not in ("transfer-encoding", "content-encoding")]
        return upstream.status_code, kept, upstream.content

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closing_factory(platform_class: type) -> Callable[[], Iterator[Callable[..., Any]]]:
    """A pytest fixture that makes fake platforms on demand and closes them after the test."""

    @pytest.fixture
    def fixture() -> Iterator[Callable[..., Any]]:
        made: list[Any] = []

        def make(**kwargs: Any) -> Any:
            made.append(platform_class(**kwargs))
            return made[-1]

        yield make
        for platform in made:
            platform.close()

    return fixture
