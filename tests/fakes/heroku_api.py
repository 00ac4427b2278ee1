"""A fake Heroku Platform API (version 3), as documented (devcenter platform-api-reference, JSON schema).

What it enforces, like the real one:
- ``Accept: application/vnd.heroku+json; version=3``, else 406 ``{"id": "not_acceptable", ...}``;
- ``Authorization: Bearer <token>`` (or Basic with the token as password), else 401 ``{"id": "unauthorized", ...}``;
- ``GET /apps`` pages with ``Range`` (``id ..; max=N``, default 200, at most 1000): a truncated list is
  ``206 Partial Content`` with ``Next-Range: id ]<last id>..; max=N``; a bad Range is 416;
- apps as JSON objects with a ``web_url`` carrying a random suffix (never ``<name>.herokuapp.com``);
- ``GET/PATCH /apps/{app}/formation`` (batch ``{"updates": [{"type", "quantity", "dyno_size"}]}``, synchronous,
  answering the updated formations) and ``GET /apps/{app}/dynos`` whose web dynos are ``starting`` until the
  app has booted, then ``up`` (``crashed`` for an app that crashes at boot);
- a token bucket per account (``RateLimit-Remaining`` on every answer, 429 ``{"id": "rate_limit", ...}`` when empty);
- 404 ``{"id": "not_found", "message": "Couldn't find that app.", "resource": "app"}``, 422 ``invalid_params``.
Apps made with ``add_app`` have a real process behind a router (:class:`PlatformApp`) answering 503 while down;
``add_filler_apps`` makes listed-only apps (no process), to fill pages cheaply.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.fakes.platform import FakeApiServer, PlatformApp, Reply

ACCEPT = "application/vnd.heroku+json; version=3"
DEFAULT_PAGE = 200
MAX_PAGE = 1000
RANGE = re.compile(r"^\s*(id|name)\s+(\]?)([^.;\s]*)\.\.([^;\s]*)\s*(?:;\s*(.*))?$")
RATE_LIMITED = "Your account reached the API rate limit\nPlease wait a few minutes before making new requests"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, error_id: str, message: str, headers: dict[str, str] | None = None, **extra: str) -> Reply:
    return Reply(status, {"id": error_id, "message": message, **extra}, dict(headers or {}))


class TokenBucket:
    """Heroku's limit: ``size`` tokens per account, given back at ``refill_per_minute``; each call takes one."""

    def __init__(self, size: int, refill_per_minute: float):
        self.size = size
        self.rate = refill_per_minute / 60.0
        self.tokens = float(size)
        self.updated = time.monotonic()
        self.lock = threading.Lock()
        self.rejected = 0
        self.lowest = size

    def take(self) -> tuple[bool, int]:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.size, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens < 1:
                self.rejected += 1
                return False, 0
            self.tokens -= 1
            self.lowest = min(self.lowest, int(self.tokens))
            return True, int(self.tokens)


class FakeHerokuApp:
    """One app: its formation, its dynos, and (unless filler) a real process while web is above 0."""

    def __init__(
        self, name: str, formation: dict[str, tuple[int, str]], boot_delay: float, crash: bool, real: bool, id: str
    ):
        self.id = id or str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.heroku.fake"))
        self.name = name
        self.crash = crash
        self.process = PlatformApp(name, boot_delay=boot_delay) if real else None
        suffix = hashlib.sha1(name.encode()).hexdigest()[:12]
        self.web_url = f"{self.process.url}/" if self.process else f"https://{name}-{suffix}.herokuapp.com/"
        self.formation = {kind: {"quantity": q, "size": size} for kind, (q, size) in formation.items()}
        self.lock = threading.Lock()

    def quantities(self) -> dict[str, int]:
        with self.lock:
            return {kind: f["quantity"] for kind, f in self.formation.items()}

    def sizes(self) -> dict[str, str]:
        with self.lock:
            return {kind: f["size"] for kind, f in self.formation.items()}

    def ref(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name}

    def to_json(self) -> dict[str, Any]:
        named = {"id": "00000000-0000-0000-0000-000000000001"}
        return {
            "id": self.id,
            "name": self.name,
            "web_url": self.web_url,
            "git_url": f"https://git.heroku.com/{self.name}.git",
            "region": {**named, "name": "us"},
            "stack": {**named, "name": "heroku-24"},
            "build_stack": {**named, "name": "heroku-24"},
            "generation": {**named, "name": "cedar"},
            "owner": {**named, "email": "me@example.com"},
            "organization": None,
            "team": None,
            "space": None,
            "maintenance": False,
            "acm": False,
            "internal_routing": None,
            "buildpack_provided_description": "Python",
            "created_at": "2024-01-01T12:00:00Z",
            "updated_at": _now(),
            "released_at": "2024-01-01T12:00:00Z",
            "archived_at": None,
            "repo_size": 0,
            "slug_size": 0,
        }

    def formation_json(self, kind: str) -> dict[str, Any]:
        entry = self.formation[kind]
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.name}.{kind}.formation")),
            "type": kind,
            "quantity": entry["quantity"],
            "size": entry["size"],
            "dyno_size": {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, entry["size"])), "name": entry["size"]},
            "command": "python app.py" if kind == "web" else f"python {kind}.py",
            "app": self.ref(),
            "created_at": "2024-01-01T12:00:00Z",
            "updated_at": _now(),
        }

    def dynos_json(self) -> list[dict[str, Any]]:
        dynos = []
        for kind, entry in self.formation.items():
            for index in range(1, entry["quantity"] + 1):
                state = "up"
                if kind == "web":
                    if self.crash:
                        state = "crashed"
                    elif self.process is None or not self.process.answering:
                        state = "starting"
                dynos.append(
                    {
                        "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.name}.{kind}.{index}")),
                        "name": f"{kind}.{index}",
                        "type": kind,
                        "state": state,
                        "size": entry["size"],
                        "command": "python app.py",
                        "attach_url": None,
                        "release": {"id": "00000000-0000-0000-0000-000000000002", "version": 7},
                        "app": self.ref(),
                        "created_at": _now(),
                        "updated_at": _now(),
                    }
                )
        return dynos

    def apply(self) -> None:
        """Dynos follow the formation: the real process runs while web is above 0 (and does not crash)."""
        if self.process is None:
            return
        if self.formation.get("web", {}).get("quantity", 0) > 0 and not self.crash:
            self.process.scale_up()
        else:
            self.process.scale_down()


class HerokuPlatform(FakeApiServer):
    """``api.heroku.com`` for one account."""

    def __init__(self, token: str = "HRKU-fake-0123456789abcdef", bucket: int = 4500, refill_per_minute: float = 75):
        super().__init__()
        self.token = token
        self.bucket = TokenBucket(bucket, refill_per_minute)
        self.apps: dict[str, FakeHerokuApp] = {}
        self.storm_until = 0.0
        self.storm_rejected = 0
        self.unauthorized = 0
        self.start()

    # -- what tests set up and look at -----------------------------------------

    def paastis_env(self) -> dict[str, str]:
        """The settings that point paastis at this fake account."""
        return {"PROVIDER_NAME": "heroku", "PROVIDER_HEROKU_API_TOKEN": self.token, "PROVIDER_HEROKU_API_URL": self.url}

    def add_app(
        self,
        name: str,
        formation: dict[str, tuple[int, str]] | None = None,
        running: bool = False,
        boot_delay: float = 0.3,
        crash: bool = False,
        real: bool = True,
        id: str = "",
    ) -> FakeHerokuApp:
        """An app; ``running`` boots it with its formation, else every quantity is 0; ``id`` orders the listing."""
        formation = formation or {"web": (1, "Basic")}
        if not running:
            formation = {kind: (0, size) for kind, (_, size) in formation.items()}
        app = FakeHerokuApp(name, formation, boot_delay, crash, real, id)
        app.apply()
        self.apps[name] = app
        return app

    def add_filler_apps(self, count: int, prefix: str = "filler") -> None:
        for index in range(count):
            self.add_app(f"{prefix}-{index:04d}", real=False)

    def page_of(self, name: str, page_size: int = DEFAULT_PAGE) -> int:
        """On which page (1-based) of an id-ordered listing the app comes."""
        ids = sorted(app.id for app in self.apps.values())
        return ids.index(self.apps[name].id) // page_size + 1

    def storm(self, seconds: float) -> None:
        """Answer every call with 429 for ``seconds``, as when other clients emptied the account's bucket."""
        self.storm_until = time.monotonic() + seconds

    def close(self) -> None:
        for app in self.apps.values():
            if app.process is not None:
                app.process.close()
        self.stop()

    # -- the API ------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        if time.monotonic() < self.storm_until:
            self._note(method, path)
            with self.lock:
                self.storm_rejected += 1
            return _error(429, "rate_limit", RATE_LIMITED, headers={"RateLimit-Remaining": "0"})
        allowed, remaining = self.bucket.take()
        if allowed:
            reply = self._serve(method, path, headers, body)
        else:
            self._note(method, path)
            reply = _error(429, "rate_limit", RATE_LIMITED)
        reply.headers["RateLimit-Remaining"] = str(remaining)
        return reply

    def _note(self, method: str, path: str) -> None:
        with self.lock:
            self.requests.append((method, path))

    def _serve(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        if ACCEPT not in (_header(headers, "Accept") or ""):
            self._note(method, path)
            return _error(406, "not_acceptable", f"Please use an Accept header of: {ACCEPT}")
        if not self._authorized(_header(headers, "Authorization") or ""):
            self._note(method, path)
            with self.lock:
                self.unauthorized += 1
            return _error(401, "unauthorized", "Invalid credentials provided.")
        return super().handle(method, path, headers, body)

    def _authorized(self, value: str) -> bool:
        if value.startswith("Bearer "):
            return value[7:] == self.token
        if value.startswith("Basic "):
            try:
                return base64.b64decode(value[6:]).decode().partition(":")[2] == self.token
            except ValueError:
                return False
        return False

    def not_found(self, path: str) -> Reply:
        return _error(404, "not_found", "Not found.")

    def _app(self, id_or_name: str) -> FakeHerokuApp | None:
        return self.apps.get(id_or_name) or next((a for a in self.apps.values() if a.id == id_or_name), None)

    def list_apps(self, headers, payload, path) -> Reply:
        field, exclusive, start, end, params = "id", "", "", "", {}
        raw = _header(headers, "Range")
        if raw:
            match = RANGE.match(raw)
            if not match:
                return _error(416, "requested_range_not_satisfiable", "Invalid Range header.")
            field, exclusive, start, end, rest = match.groups()
            params = dict(p.strip().split("=", 1) for p in (rest or "").split(",") if "=" in p)
        try:
            size = int(params.get("max", DEFAULT_PAGE))
        except ValueError:
            size = 0
        if not 1 <= size <= MAX_PAGE:
            return _error(416, "requested_range_not_satisfiable", f"max must be between 1 and {MAX_PAGE}.")
        apps = sorted(self.apps.values(), key=lambda a: getattr(a, field))
        if start:
            apps = [a for a in apps if (getattr(a, field) > start if exclusive else getattr(a, field) >= start)]
        if end:
            apps = [a for a in apps if getattr(a, field) <= end]
        page = apps[:size]
        reply = Reply(200, [a.to_json() for a in page], {"Accept-Ranges": "id, name"})
        if page:
            reply.headers["Content-Range"] = f"{field} {getattr(page[0], field)}..{getattr(page[-1], field)}"
        if len(apps) > size:
            reply.status = 206
            reply.headers["Next-Range"] = f"{field} ]{getattr(page[-1], field)}..; max={size}"
        return reply

    def get_app(self, headers, payload, path, id_or_name) -> Reply:
        app = self._app(id_or_name)
        if app is None:
            return _error(404, "not_found", "Couldn't find that app.", resource="app")
        return Reply(200, app.to_json())

    def formation(self, headers, payload, path, id_or_name) -> Reply:
        app = self._app(id_or_name)
        if app is None:
            return _error(404, "not_found", "Couldn't find that app.", resource="app")
        with app.lock:
            return Reply(200, [app.formation_json(kind) for kind in app.formation])

    def update_formation(self, headers, payload, path, id_or_name) -> Reply:
        app = self._app(id_or_name)
        if app is None:
            return _error(404, "not_found", "Couldn't find that app.", resource="app")
        updates = payload.get("updates") if isinstance(payload, dict) else None
        if not isinstance(updates, list) or not updates:
            return _error(422, "invalid_params", "Invalid params: updates is required.")
        with app.lock:
            changes = []
            for update in updates:
                kind = update.get("type") if isinstance(update, dict) else None
                if kind not in app.formation:
                    return _error(404, "not_found", "Couldn't find that formation.", resource="formation")
                quantity = update.get("quantity", app.formation[kind]["quantity"])
                if not isinstance(quantity, int) or isinstance(quantity, bool) or not 0 <= quantity <= 100:
                    return _error(422, "invalid_params", "Invalid params: quantity must be an integer from 0 to 100.")
                size = update.get("dyno_size", {}).get("name") if "dyno_size" in update else update.get("size")
                changes.append((kind, quantity, size or app.formation[kind]["size"]))
            for kind, quantity, size in changes:
                app.formation[kind] = {"quantity": quantity, "size": size}
            answer = [app.formation_json(kind) for kind, _, _ in changes]
        app.apply()
        return Reply(200, answer)

    def dynos(self, headers, payload, path, id_or_name) -> Reply:
        app = self._app(id_or_name)
        if app is None:
            return _error(404, "not_found", "Couldn't find that app.", resource="app")
        with app.lock:
            return Reply(200, app.dynos_json())

    routes = [
        ("GET", re.compile(r"/apps"), list_apps),
        ("GET", re.compile(r"/apps/([^/]+)"), get_app),
        ("GET", re.compile(r"/apps/([^/]+)/formation"), formation),
        ("PATCH", re.compile(r"/apps/([^/]+)/formation"), update_formation),
        ("GET", re.compile(r"/apps/([^/]+)/dynos"), dynos),
    ]


def _header(headers: dict[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None
