"""The Clever Cloud provider: the apps of a personal space or of an organisation, over the v2 API.

Authentication is OAuth 1.0a with four secrets, signed PLAINTEXT as the current official
clients do (clever-client 11, clever-tools). Stopping is an "undeploy" (``DELETE …/instances``)
and waking a redeploy (``POST …/instances``): the app's scaling lives in its configuration
on Clever Cloud, so there is no formation to remember.

App ids (``app_<uuid>``) contain an underscore, which is not allowed in a host label: an
app's key is ``app-<uuid>`` (what its default ``*.cleverapps.io`` domain uses). It also
answers to a slug of its name when no other app of the account has the same slug; the
slug is an *alias* (see :class:`AppInfo`), so the registry, rules and events keep one
stable key per app, which survives renames.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from oauthlib.oauth1 import SIGNATURE_PLAINTEXT
from requests_oauthlib import OAuth1

from ..config import ConfigError, Settings
from ..metrics import Metrics
from ..routing import is_valid_app_key
from .base import FAILED, RUNNING, STARTING, STOPPED, UNKNOWN, AppInfo, ProviderError
from .http import ApiClient

log = logging.getLogger(__name__)

NAME = "clever-cloud"
DEFAULT_API_HOST = "https://api.clever-cloud.com"
CREDENTIALS_HINT = (
    "PROVIDER_CLEVER_OAUTH_CONSUMER_KEY/SECRET and PROVIDER_CLEVER_TOKEN/SECRET "
    "(the token and secret `clever login` writes), and PROVIDER_CLEVER_ORGANISATION_ID membership"
)
DEFAULT_DOMAIN = ".cleverapps.io"
BOOTING = {"BOOTING", "STARTING", "DEPLOYING", "BUILDING", "READY", "TASK_IN_PROGRESS", "MIGRATION_IN_PROGRESS"}
BLOCKED = {"MODERATED", "DEFAULT_OF_PAYMENT"}  # the platform refuses to run these: waking cannot help


class CleverCloudProvider:
    name = NAME
    poll_interval = 2.0  # a boot takes tens of seconds; the router probe does the fine-grained waiting
    probe_upstream = True

    def __init__(self, client: ApiClient, owner_path: str, upstream_scheme: str):
        self.client = client
        self.scheduler = client.scheduler  # no documented rate limit: calls are only counted by class
        self.owner_path = owner_path  # /v2/self or /v2/organisations/<id>
        self.upstream_scheme = upstream_scheme

    @classmethod
    def from_settings(
        cls, settings: Settings, config: dict, metrics: Metrics | None = None, redis_link: object = None
    ) -> CleverCloudProvider:
        """``redis_link`` is unused: this provider's budget is not shared through Redis."""
        env = settings.env
        why = "see the Clever Cloud section of the README"
        consumer_key = env.secret("PROVIDER_CLEVER_OAUTH_CONSUMER_KEY", why)
        consumer_secret = env.secret("PROVIDER_CLEVER_OAUTH_CONSUMER_SECRET", why)
        token = env.secret("PROVIDER_CLEVER_TOKEN", "as written by `clever login`")
        secret = env.secret("PROVIDER_CLEVER_SECRET", "as written by `clever login`")
        host = env.get("PROVIDER_CLEVER_API_HOST", DEFAULT_API_HOST)
        parts = urlsplit(host)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"PROVIDER_CLEVER_API_HOST={host!r} is not an http(s) URL")
        organisation = env.get("PROVIDER_CLEVER_ORGANISATION_ID")
        owner_path = f"/v2/organisations/{quote(organisation, safe='')}" if organisation else "/v2/self"
        scheme = env.choice("PROVIDER_CLEVER_UPSTREAM_SCHEME", "https", ("https", "http"))
        session = requests.Session()
        session.headers["Accept"] = "application/json"
        session.auth = OAuth1(
            consumer_key,
            client_secret=consumer_secret,
            resource_owner_key=token,
            resource_owner_secret=secret,
            signature_method=SIGNATURE_PLAINTEXT,
        )
        client = ApiClient(NAME, host, metrics, CREDENTIALS_HINT, session=session)
        return cls(client, owner_path, scheme)

    # -- the provider interface -------------------------------------------------

    def list_apps(self) -> list[AppInfo]:
        """One call. Apps Clever Cloud keeps down are stopped as listed; the others' instances are checked."""
        body = _json(self.client.call("GET", f"{self.owner_path}/applications", "list_apps"), "list_apps")
        if not isinstance(body, list):
            raise ProviderError(NAME, None, "list_apps: the answer is not a JSON array")
        raw_apps = [raw for raw in body if _is_app(raw)]
        keys = {app_key(raw["id"]) for raw in raw_apps}
        slugs = Counter(slugify(raw.get("name")) for raw in raw_apps)
        apps = []
        for raw in raw_apps:
            key = app_key(raw["id"])
            if not is_valid_app_key(key):
                log.warning("%s: skipping app %r: its id does not make a host label", NAME, raw["id"])
                continue
            slug = slugify(raw.get("name"))
            aliases = (slug,) if slug and slugs[slug] == 1 and slug not in keys else ()
            status = STOPPED if raw.get("state") == "SHOULD_BE_DOWN" else None
            apps.append(AppInfo(key, raw["id"], self._best_url(raw), status, aliases=aliases))
        return apps

    def status(self, app: AppInfo) -> str:
        """The app's state first (an undeploy leaves instances ``UP`` for a moment), then ≥1 instance ``UP``."""
        state = self._get_app(app).get("state")
        if state == "SHOULD_BE_DOWN":
            return STOPPED
        if state in BLOCKED:
            return FAILED
        states = {instance.get("state") for instance in self._instances(app)}
        if "UP" in states:
            return RUNNING
        if states & BOOTING:
            return STARTING
        deployment = (self._last_deployment(app) or {}).get("state")
        if deployment == "FAIL":
            return FAILED
        if deployment == "WIP" or state == "WANTS_TO_BE_UP":
            return STARTING
        # Meant to be up, yet no instance and nothing under way: down for good, a redeploy brings it back.
        return STOPPED if state == "SHOULD_BE_UP" else UNKNOWN

    def start(self, app: AppInfo, memo: dict | None) -> None:
        """Redeploy, unless the app is up or already on its way (a second deployment would restart it)."""
        if self.status(app) in (RUNNING, STARTING):
            return
        self.client.call("POST", self._path(app, "/instances"), "start", app.name)

    def stop(self, app: AppInfo, memo: dict | None = None) -> dict | None:
        self.client.call("DELETE", self._path(app, "/instances"), "stop", app.name)
        return None

    def failure(self, app: AppInfo) -> str | None:
        return None  # the status says all the API tells

    def abandon_start(self, app: AppInfo) -> str | None:
        return None  # see Provider.abandon_start: the platform's operation is left to finish

    def upstream_url(self, app: AppInfo) -> str:
        url = app.upstream_url or self._best_url(self._get_app(app))
        if url is None:
            raise ProviderError(NAME, app.name, "the app has no domain (vhost)")
        return url

    def ready_path(self, app: AppInfo) -> str | None:
        return None

    def close(self) -> None:
        self.client.close()

    # -- helpers ----------------------------------------------------------------

    def _best_url(self, raw: dict[str, Any]) -> str | None:
        fqdn = best_vhost(raw.get("vhosts"))
        return f"{self.upstream_scheme}://{fqdn}" if fqdn else None

    def _path(self, app: AppInfo, suffix: str = "") -> str:
        return f"{self.owner_path}/applications/{quote(app.name, safe='')}{suffix}"

    def _get_app(self, app: AppInfo) -> dict[str, Any]:
        body = _json(self.client.call("GET", self._path(app), "get_app", app.name), "get_app")
        if not isinstance(body, dict):
            raise ProviderError(NAME, app.name, "get_app: unexpected answer")
        return body

    def _instances(self, app: AppInfo) -> list[dict[str, Any]]:
        body = _json(self.client.call("GET", self._path(app, "/instances"), "get_instances", app.name), "get_instances")
        if not isinstance(body, list) or not all(isinstance(i, dict) for i in body):
            raise ProviderError(NAME, app.name, "get_instances: unexpected answer")
        return body

    def _last_deployment(self, app: AppInfo) -> dict[str, Any] | None:
        path = self._path(app, "/deployments")
        body = _json(self.client.call("GET", path, "get_deployments", app.name, params={"limit": 1}), "get_deployments")
        return body[0] if isinstance(body, list) and body and isinstance(body[0], dict) else None


def app_key(app_id: str) -> str:
    """``app_<uuid>`` → ``app-<uuid>``: the label of the app's default domain, valid in a Host header."""
    return app_id.replace("_", "-").lower()


def slugify(name: Any) -> str:
    """``"Hello Fastify!"`` → ``hello-fastify``; empty when nothing usable is left."""
    if not isinstance(name, str):
        return ""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:63].rstrip("-")
    return slug if is_valid_app_key(slug) else ""


def best_vhost(vhosts: Any) -> str | None:
    """A custom domain before ``*.cleverapps.io``, a domain without a path before one with (clever-tools' choice)."""
    fqdns = [v["fqdn"].rstrip("/") for v in vhosts or [] if isinstance(v, dict) and isinstance(v.get("fqdn"), str)]
    fqdns = [fqdn for fqdn in fqdns if fqdn]
    if not fqdns:
        return None

    def rank(fqdn: str) -> tuple[bool, bool]:
        host = fqdn.split("/", 1)[0].split(":", 1)[0].lower()
        return host.endswith(DEFAULT_DOMAIN), "/" in fqdn

    return min(fqdns, key=rank)  # min() keeps the API's order among equals


def _is_app(raw: Any) -> bool:
    return isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"].startswith("app_")


def _json(response: requests.Response, operation: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ProviderError(NAME, None, f"{operation}: the answer is not JSON") from None
