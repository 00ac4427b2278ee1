"""A fake Clever Cloud API (v2), as the official clients use it (clever-client.js, clever-tools).

What it enforces, like the real one:
- OAuth 1.0a signed PLAINTEXT: ``Authorization: OAuth oauth_consumer_key="…", oauth_token="…",
  oauth_signature="<consumer secret>&<token secret>"`` (percent-encoded), else 401 with the documented
  error body ``{"id": …, "type": "error", "message": …}``;
- ``Accept: application/json`` when an Accept header is sent (406 otherwise);
- the personal space ``/v2/self/…`` and organisations ``/v2/organisations/{id}/…`` (403 for another organisation);
- applications as root JSON arrays/objects with ``id`` ``app_<uuid>``, ``state`` and ``vhosts[].fqdn``;
- ``POST …/instances`` redeploys (``WANTS_TO_BE_UP``, a ``WIP`` deployment, an instance ``DEPLOYING`` that is
  ``UP`` once the app has booted, or a ``FAIL`` deployment for an app that crashes at boot);
  ``DELETE …/instances`` undeploys (``SHOULD_BE_DOWN`` at once, instances gone a moment later);
- ``GET …/deployments?limit=N`` newest first.
Clever Cloud documents no rate limit; :meth:`CleverPlatform.storm` answers 429 (with ``Retry-After``) to test
that paastis survives one anyway.

Each app's vhosts are its default ``app-<uuid>.cleverapps.io`` domain (unreachable here) and, as a custom
domain, ``127.0.0.1:<port>`` of a router (:class:`PlatformApp`) answering 503 while the app is down: the
provider picks the custom domain, and tests set ``PROVIDER_CLEVER_UPSTREAM_SCHEME=http``.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.fakes.platform import FakeApiServer, PlatformApp, Reply

OAUTH_PARAM = re.compile(r'(\w+)="([^"]*)"')


def _error(status: int, code: int, message: str) -> Reply:
    return Reply(status, {"id": code, "type": "error", "message": message})


def _quote(value: str) -> str:
    return quote(value, safe="~")


class FakeCleverApp:
    """One application: its state, deployments, instances, and a real process while deployed."""

    def __init__(self, name: str, owner_id: str, boot_delay: float, crash: bool):
        self.uuid = str(uuid.uuid4())
        self.id = f"app_{self.uuid}"
        self.name = name
        self.owner_id = owner_id
        self.crash = crash
        self.state = "SHOULD_BE_DOWN"
        self.instances: list[dict[str, Any]] = []
        self.deployments: list[dict[str, Any]] = []
        self.process = PlatformApp(name, boot_delay=boot_delay)
        self.lock = threading.Lock()
        self.starts = 0
        self.stop_delay = 0.3

    @property
    def key(self) -> str:
        return f"app-{self.uuid}"

    @property
    def up(self) -> bool:
        return any(i["state"] == "UP" for i in self.instances)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ownerId": self.owner_id,
            "name": self.name,
            "description": self.name,
            "zone": "par",
            "zoneId": "par",
            "state": self.state,
            "homogeneous": False,
            "instance": {
                "type": "python",
                "version": "20240101",
                "variant": {"id": "v1", "slug": "python", "name": "Python", "deployType": "python", "logo": ""},
                "minInstances": 1,
                "maxInstances": 1,
                "maxAllowedInstances": 40,
                "minFlavor": {"name": "XS", "mem": 1024, "cpus": 1, "price": 0},
                "maxFlavor": {"name": "XS", "mem": 1024, "cpus": 1, "price": 0},
                "flavors": [],
                "defaultEnv": {},
                "lifetime": "REGULAR",
            },
            "deployment": {
                "type": "GIT",
                "shutdownable": False,
                "repoState": "CREATED",
                "url": f"git+ssh://git@push-par-clevercloud-customers.services.clever-cloud.com/{self.id}.git",
                "httpUrl": f"https://push-par-clevercloud-customers.services.clever-cloud.com/{self.id}.git",
            },
            "vhosts": [{"fqdn": f"{self.key}.cleverapps.io"}, {"fqdn": self.process.url.split("://", 1)[1] + "/"}],
            "creationDate": 1664323200000,
            "last_deploy": len(self.deployments),
            "archived": False,
            "stickySessions": False,
            "favourite": False,
            "cancelOnPush": False,
            "separateBuild": False,
            "buildFlavor": {"name": "M"},
            "commitId": "43a4f0c1d2e3",
            "branch": "master",
            "forceHttps": "DISABLED",
            "deployUrl": "",
            "env": [],
        }

    def instance_json(self, state: str) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid4()),
            "appId": self.id,
            "ip": "10.2.0.1",
            "appPort": 8080,
            "state": state,
            "flavor": {"name": "XS", "mem": 1024, "cpus": 1, "price": 0},
            "commit": "43a4f0c1d2e3",
            "deployNumber": len(self.deployments),
            "instanceNumber": 0,
            "displayName": "Happy Turtle",
        }

    def deploy(self) -> str:
        """Start a deployment that ends UP once the process answers (or FAIL for a crashing app)."""
        deployment = {"uuid": f"deployment_{uuid.uuid4()}", "state": "WIP", "action": "DEPLOY", "date": time.time()}
        with self.lock:
            self.starts += 1
            self.state = "WANTS_TO_BE_UP"
            self.deployments.insert(0, deployment)
            self.instances = [self.instance_json("DEPLOYING")]
        threading.Thread(target=self._boot, args=(deployment,), daemon=True).start()
        return deployment["uuid"]

    def _boot(self, deployment: dict[str, Any]) -> None:
        if self.crash:
            time.sleep(self.process.boot_delay)
            with self.lock:
                deployment["state"] = "FAIL"
                self.instances = []
            return
        self.process.scale_up()
        deadline = time.monotonic() + 30
        while not self.process.answering and time.monotonic() < deadline and deployment["state"] == "WIP":
            time.sleep(0.05)
        with self.lock:
            if deployment["state"] != "WIP" or self.state == "SHOULD_BE_DOWN":
                return  # undeployed meanwhile
            deployment["state"] = "OK" if self.process.answering else "FAIL"
            self.instances = [self.instance_json("UP")] if self.process.answering else []
            self.state = "SHOULD_BE_UP"

    def run_now(self) -> None:
        """Deployed and up from the start."""
        self.process.scale_up()
        with self.lock:
            self.state = "SHOULD_BE_UP"
            self.deployments.insert(0, {"uuid": f"deployment_{uuid.uuid4()}", "state": "OK", "action": "DEPLOY"})
            self.instances = [self.instance_json("UP")]

    def undeploy(self) -> None:
        """Asynchronous, as on Clever Cloud: the state says down at once, the instances stop a moment later."""
        with self.lock:
            self.state = "SHOULD_BE_DOWN"
            generation = self.starts
            for deployment in self.deployments:
                if deployment["state"] == "WIP":
                    deployment["state"] = "CANCELLED"
        threading.Thread(target=self._shut_down, args=(generation,), daemon=True).start()

    def _shut_down(self, generation: int) -> None:
        time.sleep(self.stop_delay)
        with self.lock:
            if self.starts != generation:
                return  # redeployed meanwhile
            self.instances = []
        self.process.scale_down()


class CleverPlatform(FakeApiServer):
    """``api.clever-cloud.com`` for one user, who may belong to one organisation."""

    def __init__(self, organisation_id: str | None = None):
        super().__init__()
        self.consumer_key = "ck-fake-consumer"
        self.consumer_secret = "cs-fake/secret+1"
        self.token = "tk-fake-user-token"
        self.secret = "ts-fake/secret&2"
        self.user_id = f"user_{uuid.uuid4()}"
        self.organisation_id = organisation_id
        self.apps: dict[str, FakeCleverApp] = {}
        self.unauthorized = 0
        self.storm_until = 0.0
        self.storm_rejected = 0
        self.start()

    # -- what tests set up and look at -----------------------------------------

    def paastis_env(self) -> dict[str, str]:
        """The settings that point paastis at this fake account's personal space."""
        return {
            "PROVIDER_NAME": "clever-cloud",
            "PROVIDER_CLEVER_OAUTH_CONSUMER_KEY": self.consumer_key,
            "PROVIDER_CLEVER_OAUTH_CONSUMER_SECRET": self.consumer_secret,
            "PROVIDER_CLEVER_TOKEN": self.token,
            "PROVIDER_CLEVER_SECRET": self.secret,
            "PROVIDER_CLEVER_API_HOST": self.url,
            "PROVIDER_CLEVER_UPSTREAM_SCHEME": "http",  # the fake's custom domains are 127.0.0.1:<port>
        }

    def add_app(
        self, name: str, running: bool = False, boot_delay: float = 0.3, crash: bool = False, personal: bool = False
    ) -> FakeCleverApp:
        owner = self.user_id if personal or not self.organisation_id else self.organisation_id
        app = FakeCleverApp(name, owner, boot_delay, crash)
        if running:
            app.run_now()
        self.apps[app.id] = app
        return app

    def storm(self, seconds: float) -> None:
        self.storm_until = time.monotonic() + seconds

    def close(self) -> None:
        for app in self.apps.values():
            app.process.close()
        self.stop()

    # -- the API ------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        problem = self._refusal(headers)
        if problem is None:
            return super().handle(method, path, headers, body)
        with self.lock:
            self.requests.append((method, path))
        return problem

    def _refusal(self, headers: dict[str, str]) -> Reply | None:
        if time.monotonic() < self.storm_until:
            self.storm_rejected += 1
            return Reply(429, {"id": 429, "type": "error", "message": "Too many requests"}, {"Retry-After": "1"})
        accept = _header(headers, "Accept")
        if accept is not None and not any(t in accept for t in ("application/json", "*/*")):
            return _error(406, 406, "Not acceptable: this API answers application/json")
        if not self._signed(_header(headers, "Authorization") or ""):
            self.unauthorized += 1
            return _error(401, 2001, "Not authorized: invalid or missing OAuth credentials")
        return None

    def _signed(self, value: str) -> bool:
        """PLAINTEXT: the signature is ``encode(consumer secret) & encode(token secret)``, encoded once more."""
        if not value.startswith("OAuth "):
            return False
        params = {name: unquote(raw) for name, raw in OAUTH_PARAM.findall(value)}
        expected = f"{_quote(self.consumer_secret)}&{_quote(self.secret)}"
        return (
            params.get("oauth_consumer_key") == self.consumer_key
            and params.get("oauth_token") == self.token
            and params.get("oauth_signature") == expected
            and params.get("oauth_signature_method", "PLAINTEXT") == "PLAINTEXT"
        )

    def _owner(self, owner: str) -> str | None:
        """``self`` is the user; an organisation path must be the user's organisation."""
        if owner == "self":
            return self.user_id
        organisation = owner.removeprefix("organisations/")
        return organisation if organisation == self.organisation_id else None

    def _app(self, owner: str, app_id: str) -> tuple[FakeCleverApp | None, Reply | None]:
        owner_id = self._owner(owner)
        if owner_id is None:
            return None, _error(403, 6200, "You do not belong to this organisation")
        app = self.apps.get(app_id)
        if app is None or app.owner_id != owner_id:
            return None, _error(404, 4004, "Not Found")
        return app, None

    def list_apps(self, headers, payload, path, owner) -> Reply:
        owner_id = self._owner(owner)
        if owner_id is None:
            return _error(403, 6200, "You do not belong to this organisation")
        return Reply(200, [a.to_json() for a in self.apps.values() if a.owner_id == owner_id])

    def get_app(self, headers, payload, path, owner, app_id) -> Reply:
        app, error = self._app(owner, app_id)
        return error or Reply(200, app.to_json())

    def instances(self, headers, payload, path, owner, app_id) -> Reply:
        app, error = self._app(owner, app_id)
        if error:
            return error
        with app.lock:
            return Reply(200, list(app.instances))

    def redeploy(self, headers, payload, path, owner, app_id) -> Reply:
        app, error = self._app(owner, app_id)
        if error:
            return error
        deployment = app.deploy()
        message = "The application has been redeployed"
        return Reply(200, {"id": 200, "type": "success", "message": message, "deploymentId": deployment})

    def undeploy(self, headers, payload, path, owner, app_id) -> Reply:
        app, error = self._app(owner, app_id)
        if error:
            return error
        app.undeploy()
        return Reply(200, {"id": 200, "type": "success", "message": "The application has been undeployed"})

    def deployments(self, headers, payload, path, owner, app_id) -> Reply:
        app, error = self._app(owner, app_id)
        if error:
            return error
        limit = parse_qs(urlsplit(path).query).get("limit", ["50"])[0]
        with app.lock:
            return Reply(200, [dict(d) for d in app.deployments[: int(limit)]])

    OWNER = r"/v2/(self|organisations/[^/]+)"
    routes = [
        ("GET", re.compile(OWNER + r"/applications"), list_apps),
        ("GET", re.compile(OWNER + r"/applications/([^/]+)"), get_app),
        ("GET", re.compile(OWNER + r"/applications/([^/]+)/instances"), instances),
        ("POST", re.compile(OWNER + r"/applications/([^/]+)/instances"), redeploy),
        ("DELETE", re.compile(OWNER + r"/applications/([^/]+)/instances"), undeploy),
        ("GET", re.compile(OWNER + r"/applications/([^/]+)/deployments"), deployments),
    ]


def _header(headers: dict[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None
