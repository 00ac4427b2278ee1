"""A fake Scalingo: the auth service and one regional API per region, as documented.

What it enforces, like the real one (developers.scalingo.com, go-scalingo):
- ``POST /v1/tokens/exchange`` with HTTP Basic, empty user and the API token as password,
  answering ``{"token": <JWT>}``; the JWT carries ``iat``/``exp`` and expires (``bearer_ttl``);
- ``Authorization: Bearer <jwt>`` on every regional call, else 401 ``{"error": ...}``;
- JSON root keys (``{"apps": [...]}``, ``{"app": ...}``, ``{"containers": [...]}``, ``{"operation": ...}``);
- scale and restart answer 202 with ``Location`` to an operation going pending → running → done
  (or error when the app crashes at boot); an app never deployed answers 200 without operation;
- 60 requests per minute for the account (all regions), then 429 with the plain text ``Retry later``;
- error bodies as documented: 404 ``{"resource": "app", "error": "not found"}``, 400, 422.
Each app has a real process behind a router (:class:`PlatformApp`) that answers 503 while it is scaled down.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.fakes.platform import FakeApiServer, FixedWindowLimit, PlatformApp, Reply
from tests.support import wait_until

MAX_CONTAINERS = 10  # per process type, documented


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Operation:
    id: str
    type: str
    status: str = "pending"
    error: str = ""
    created_at: str = field(default_factory=_now_iso)
    finished_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"id": self.id, "created_at": self.created_at, "status": self.status, "type": self.type}
        data["finished_at"] = self.finished_at
        if self.status == "error":
            data["error"] = self.error
        return data


class FakeScalingoApp:
    """One app: its formation, its status, and a real process while ``web`` is above 0."""

    def __init__(self, name: str, region: str, formation: dict[str, tuple[int, str]], boot_delay: float, crash: bool):
        self.id = hashlib.sha1(name.encode()).hexdigest()[:24]
        self.name = name
        self.region = region
        self.formation = {kind: {"amount": amount, "size": size} for kind, (amount, size) in formation.items()}
        self.crash = crash
        self.deployed = True
        self.status = "stopped"
        self.process = PlatformApp(name, boot_delay=boot_delay)
        self.operations: dict[str, Operation] = {}
        self.lock = threading.Lock()

    @property
    def web(self) -> int:
        return self.formation.get("web", {}).get("amount", 0)

    def amounts(self) -> dict[str, int]:
        with self.lock:
            return {kind: c["amount"] for kind, c in self.formation.items()}

    def to_json(self) -> dict[str, Any]:
        url = self.process.url
        return {
            "id": self.id,
            "name": self.name,
            "region": self.region,
            "status": self.status,
            "url": url,
            "base_url": url,
            "git_url": f"git@ssh.{self.region}.scalingo.com:{self.name}.git",
            "created_at": "2024-01-01T00:00:00.000Z",
            "updated_at": _now_iso(),
            "force_https": False,
            "sticky_session": False,
            "router_logs": False,
            "owner": {"id": "us-1", "username": "john", "email": "john@example.com"},
            "project": {"id": "pr-1", "name": "default"},
            "flags": {},
            "limits": {},
        }

    def containers_json(self) -> list[dict[str, Any]]:
        return [
            {"id": f"{self.id}-{kind}", "app_id": self.id, "name": kind, "command": "", **c}
            for kind, c in self.formation.items()
        ]


class ScalingoPlatform:
    """The account: auth service, regional APIs, apps, and the rate limit they all share."""

    def __init__(
        self,
        regions: tuple[str, ...] = ("osc-fr1",),
        api_token: str = "tk-us-fake-0123456789",
        bearer_ttl: float = 3600.0,
        rate_limit: int = 60,
        window: float = 60.0,
    ):
        self.api_token = api_token
        self.bearer_ttl = bearer_ttl
        self.secret = os.urandom(16)
        self.limit = FixedWindowLimit(rate_limit, window)
        self.storm_until = 0.0
        self.storm_rejected = 0
        self.exchanges = 0  # successful token exchanges
        self.refused_exchanges = 0
        self.unauthorized = 0  # regional calls refused for a missing, bad or expired bearer
        self.revoked: set[str] = set()
        self.refuse_all_bearers = False  # as when the account is suspended: fresh bearers fail too
        self.issued: list[str] = []
        self.call_times: list[float] = []  # time.monotonic() of every regional call, 429s included
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        self.apps: dict[str, FakeScalingoApp] = {}
        self.auth = FakeScalingoAuth(self).start()
        self.regions = {region: FakeScalingoRegion(self, region).start() for region in regions}

    # -- what tests set up and look at -----------------------------------------

    def paastis_env(self) -> dict[str, str]:
        """The settings that point paastis at this fake account."""
        return {
            "PROVIDER_NAME": "scalingo",
            "PROVIDER_SCALINGO_API_TOKEN": self.api_token,
            "PROVIDER_REGION": self.region_names,
            "PROVIDER_SCALINGO_API_URL": self.api_urls,
            "PROVIDER_SCALINGO_AUTH_URL": self.auth.url,
        }

    def add_app(
        self,
        name: str,
        region: str | None = None,
        formation: dict[str, tuple[int, str]] | None = None,
        running: bool = False,
        boot_delay: float = 0.3,
        crash: bool = False,
    ) -> FakeScalingoApp:
        """An app; ``running`` boots it at once with its formation, else every amount is 0."""
        region = region or next(iter(self.regions))
        formation = formation or {"web": (1, "M")}
        if not running:
            formation = {kind: (0, size) for kind, (_, size) in formation.items()}
        app = FakeScalingoApp(name, region, formation, boot_delay, crash)
        if running and app.web > 0:
            app.process.scale_up()
            wait_until(lambda: app.process.answering, 15, what=f"{name} to boot")
        app.status = "running" if running else "stopped"
        self.apps[name] = app
        return app

    @property
    def api_urls(self) -> str:
        """The value for ``PROVIDER_SCALINGO_API_URL``: one URL per region, in order."""
        return ",".join(server.url for server in self.regions.values())

    @property
    def region_names(self) -> str:
        return ",".join(self.regions)

    def storm(self, seconds: float) -> None:
        """Answer every regional call with 429 for ``seconds``, as when another client spent the quota."""
        self.storm_until = time.monotonic() + seconds

    def revoke_bearers(self) -> None:
        with self.lock:
            self.revoked.update(self.issued)

    def calls(self, method: str, pattern: str) -> int:
        return sum(server.count(method, pattern) for server in self.regions.values())

    def most_calls_in_a_window(self, since: float = 0.0) -> int:
        """The most regional calls received in any ``window`` seconds (the limit's own window) since ``since``."""
        with self.lock:
            times = [t for t in self.call_times if t >= since]
        most, start = 0, 0
        for end, at in enumerate(times):
            while at - times[start] >= self.limit.window:
                start += 1
            most = max(most, end - start + 1)
        return most

    def close(self) -> None:
        """Stop everything at once: each server takes up to half a second to notice its shutdown."""
        closers = [app.process.close for app in self.apps.values()]
        closers += [server.stop for server in self.regions.values()] + [self.auth.stop]
        with ThreadPoolExecutor(len(closers)) as pool:
            for future in [pool.submit(close) for close in closers]:
                future.result()

    # -- tokens -----------------------------------------------------------------

    def issue_bearer(self) -> str:
        now = time.time()
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {"iss": "Scalingo", "uid": "us-1", "jti": next(self._ids)}
        claims.update({"iat": round(now, 3), "exp": round(now + self.bearer_ttl, 3)})
        payload = _b64(json.dumps(claims).encode())
        signature = _b64(hmac.new(self.secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        token = f"{header}.{payload}.{signature}"
        with self.lock:
            self.exchanges += 1
            self.issued.append(token)
        return token

    def bearer_problem(self, headers: dict[str, str]) -> str | None:
        """Why the call's bearer is refused, or None."""
        value = _header(headers, "Authorization") or ""
        if not value.startswith("Bearer "):
            return "no authorization header"
        token = value[len("Bearer ") :]
        try:
            header, payload, signature = token.split(".")
            expected = _b64(hmac.new(self.secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
            claims = json.loads(_unb64(payload))
        except ValueError:
            return "invalid token"
        if not hmac.compare_digest(signature, expected):
            return "invalid token"
        if token in self.revoked or self.refuse_all_bearers:
            return "not authenticated"
        if time.time() >= float(claims["exp"]):
            return "token expired"
        return None

    def throttled(self) -> bool:
        if time.monotonic() < self.storm_until:
            with self.lock:
                self.storm_rejected += 1
            return True
        return self.limit.allow() is not None

    def next_id(self) -> str:
        return f"{next(self._ids):024x}"


class FakeScalingoAuth(FakeApiServer):
    """``auth.scalingo.com``: only the token exchange is needed."""

    def __init__(self, platform: ScalingoPlatform):
        super().__init__()
        self.platform = platform

    def exchange(self, headers: dict[str, str], payload: Any, path: str) -> Reply:
        value = _header(headers, "Authorization") or ""
        user, _, password = "", "", ""
        if value.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(value[6:]).decode().partition(":")
            except ValueError:
                pass
        if user != "" or not password or not hmac.compare_digest(password, self.platform.api_token):
            self.platform.refused_exchanges += 1
            return Reply(401, {"error": "invalid token"})
        return Reply(200, {"token": self.platform.issue_bearer()})

    routes = [("POST", re.compile(r"/v1/tokens/exchange"), exchange)]


class FakeScalingoRegion(FakeApiServer):
    """``api.<region>.scalingo.com``: apps, formation, scale, restart, operations."""

    def __init__(self, platform: ScalingoPlatform, region: str):
        super().__init__()
        self.platform = platform
        self.region = region

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        with self.platform.lock:
            self.platform.call_times.append(time.monotonic())
        if self.platform.throttled():
            with self.lock:
                self.requests.append((method, path))
            return Reply(429, "Retry later", {"Content-Type": "text/plain"})
        problem = self.platform.bearer_problem(headers)
        if problem is not None:
            with self.lock:
                self.requests.append((method, path))
                self.platform.unauthorized += 1
            return Reply(401, {"error": problem})
        if body:
            try:
                json.loads(body)
            except ValueError as error:
                return Reply(400, {"error": f"There was a problem in the JSON you submitted: {error}"})
        return super().handle(method, path, headers, body)

    def _app(self, name: str) -> FakeScalingoApp | None:
        app = self.platform.apps.get(name)
        return app if app is not None and app.region == self.region else None

    # -- routes -----------------------------------------------------------------

    def list_apps(self, headers, payload, path) -> Reply:
        return Reply(200, {"apps": [a.to_json() for a in self.platform.apps.values() if a.region == self.region]})

    def get_app(self, headers, payload, path, name) -> Reply:
        app = self._app(name)
        if app is None:
            return Reply(404, {"resource": "app", "error": "not found"})
        return Reply(200, {"app": app.to_json()})

    def containers(self, headers, payload, path, name) -> Reply:
        app = self._app(name)
        if app is None:
            return Reply(404, {"resource": "app", "error": "not found"})
        with app.lock:
            return Reply(200, {"containers": app.containers_json()})

    def ps(self, headers, payload, path, name) -> Reply:
        app = self._app(name)
        if app is None:
            return Reply(404, {"resource": "app", "error": "not found"})
        state = "running" if app.process.answering else "booting"
        live = [] if not app.process.running else [{"type": "web", "type_index": 1, "label": "web-1", "state": state}]
        return Reply(200, {"containers": live})

    def scale(self, headers, payload, path, name) -> Reply:
        app = self._app(name)
        if app is None:
            return Reply(404, {"resource": "app", "error": "not found"})
        changes = payload.get("containers") if isinstance(payload, dict) else None
        if not isinstance(changes, list) or not changes:
            return Reply(400, {"error": "There was a problem in the JSON you submitted: containers is required"})
        with app.lock:
            if app.status in ("scaling", "restarting"):
                return Reply(422, {"errors": {"app": [f"is {app.status}, no other operation is doable"]}})
            for change in changes:
                kind, amount = change.get("name"), change.get("amount")
                if kind not in app.formation:
                    return Reply(404, {"resource": "container_type", "error": "not found"})
                if not isinstance(amount, int) or not 0 <= amount <= MAX_CONTAINERS:
                    return Reply(422, {"errors": {"amount": [f"must be between 0 and {MAX_CONTAINERS}"]}})
            for change in changes:
                app.formation[change["name"]]["amount"] = change["amount"]
                if change.get("size"):
                    app.formation[change["name"]]["size"] = change["size"]
            formation = app.containers_json()
            if not app.deployed:
                return Reply(200, {"containers": formation})
            operation = self._begin(app, "scale", "scaling")
        return Reply(202, {"containers": formation}, {"Location": self._location(app, operation)})

    def restart(self, headers, payload, path, name) -> Reply:
        app = self._app(name)
        if app is None:
            return Reply(404, {"resource": "app", "error": "not found"})
        with app.lock:
            if app.status in ("scaling", "restarting"):
                return Reply(422, {"errors": {"app": [f"is {app.status}, no other operation is doable"]}})
            operation = self._begin(app, "restart", "restarting")
        app.process.scale_down()
        return Reply(202, None, {"Location": self._location(app, operation)})

    def operation(self, headers, payload, path, name, operation_id) -> Reply:
        app = self._app(name)
        operation = app.operations.get(operation_id) if app is not None else None
        if operation is None:
            return Reply(404, {"resource": "operation", "error": "not found"})
        return Reply(200, {"operation": operation.to_json()})

    routes = [
        ("GET", re.compile(r"/v1/apps"), list_apps),
        ("GET", re.compile(r"/v1/apps/([^/]+)"), get_app),
        ("GET", re.compile(r"/v1/apps/([^/]+)/containers"), containers),
        ("GET", re.compile(r"/v1/apps/([^/]+)/ps"), ps),
        ("POST", re.compile(r"/v1/apps/([^/]+)/scale"), scale),
        ("POST", re.compile(r"/v1/apps/([^/]+)/restart"), restart),
        ("GET", re.compile(r"/v1/apps/([^/]+)/operations/([^/]+)"), operation),
    ]

    # -- operations ---------------------------------------------------------------

    def _location(self, app: FakeScalingoApp, operation: Operation) -> str:
        return f"{self.url}/v1/apps/{app.name}/operations/{operation.id}"

    def _begin(self, app: FakeScalingoApp, kind: str, status: str) -> Operation:
        operation = Operation(self.platform.next_id(), kind)
        app.operations[operation.id] = operation
        app.status = status
        threading.Thread(target=self._run, args=(app, operation), daemon=True).start()
        return operation

    def _run(self, app: FakeScalingoApp, operation: Operation) -> None:
        """pending, running while containers change, then done (or error if the app crashes at boot)."""
        time.sleep(0.1)
        operation.status = "running"
        if app.web > 0:
            if app.crash:
                time.sleep(app.process.boot_delay)
                return self._finish(app, operation, "crashed", "container web-1 crashed at boot (exit code 1)")
            app.process.scale_up()
            deadline = time.monotonic() + 30
            while not app.process.answering and time.monotonic() < deadline:
                time.sleep(0.05)
            if not app.process.answering:
                return self._finish(app, operation, "crashed", "container web-1 did not start in time")
        else:
            app.process.scale_down()
        running = any(c["amount"] > 0 for c in app.formation.values())
        self._finish(app, operation, "running" if running else "stopped")

    def _finish(self, app: FakeScalingoApp, operation: Operation, status: str, error: str = "") -> None:
        with app.lock:
            app.status = status
            operation.finished_at = _now_iso()
            operation.error = error
            operation.status = "error" if error else "done"


def _header(headers: dict[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None
