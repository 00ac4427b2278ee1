"""The Scalingo provider: apps of one account, in one or several regions, over the documented HTTP API.

Scalingo has no "stop" verb: an app sleeps when every process type is scaled to 0.
So stopping remembers the formation (``{"containers": [{"name", "amount", "size"}]}``,
kept by the lifecycle in the registry) and waking scales back to exactly that, or to
``web: 1`` when nothing is remembered. Scale calls answer 202 with an operation to
follow; the app's own URL is then probed by the lifecycle (``probe_upstream``), which
costs no API call: the account is allowed 60 requests per minute, all regions together.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import requests

from .. import deadlines
from ..config import ConfigError, Env, Settings
from ..metrics import Metrics
from ..routing import is_valid_app_key
from .base import (
    FAILED,
    RUNNING,
    STARTING,
    STOPPED,
    UNKNOWN,
    AppInfo,
    ProviderAuthError,
    ProviderError,
    ProviderTimeout,
)
from .http import ApiClient, RateLimiter, WindowLimiter
from .priority import CallClass, current_class, in_background
from .scheduler import CallScheduler

if TYPE_CHECKING:
    from ..redis_link import RedisLink

log = logging.getLogger(__name__)

NAME = "scalingo"
DEFAULT_REGION = "osc-fr1"
DEFAULT_AUTH_URL = "https://auth.scalingo.com"
DEFAULT_RATE_LIMIT = 60  # requests per minute, per account (documented)
TOKEN_HINT = "PROVIDER_SCALINGO_API_TOKEN (an API token from the Scalingo dashboard, User Settings > API tokens)"
STATUSES = {
    "running": RUNNING,
    "stopped": STOPPED,
    "new": STARTING,
    "booting": STARTING,
    "restarting": STARTING,
    "scaling": STARTING,
    # A crash is not going to fix itself while a request waits: fail the wake now (502).
    "crashed": FAILED,
}
DEFAULT_BEARER_LIFETIME = 3600.0  # documented; used when the JWT carries no readable ``exp``
MAX_RENEWAL_MARGIN = 300.0  # renew 5 minutes before expiry, as go-scalingo does
REFUSED_COOLDOWN = 30.0  # after the API token was refused, fail fast instead of asking again
FIRST_OPERATION_POLL = 1.0
# A wake's operation is looked at every half second for its first two seconds (a boot usually ends
# in that time, and a user waits for it), then less and less often: at most 4 calls in 2 s.
WAKE_OPERATION_POLLS = (0.5, 0.5, 0.5, 0.5)


class ScalingoBearer(requests.auth.AuthBase):
    """The bearer sent to the regional APIs: exchanged from the API token, renewed before its ``exp``.

    One bearer serves every region of the account. The lock makes concurrent callers
    wait for one exchange instead of each starting their own.
    """

    def __init__(self, auth: ApiClient, api_token: str):
        self._auth = auth
        self._api_token = api_token
        self._token: str | None = None
        self._renew_at = 0.0
        self._refused_until = 0.0
        self._lock = threading.Lock()

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.current()}"
        return request

    def current(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._token = self._exchange()
            return self._token

    def renew_after_401(self, response: requests.Response) -> bool:
        """Drop the bearer that was refused (not a newer one another thread already got); retry once."""
        sent = response.request.headers.get("Authorization", "") if response.request is not None else ""
        with self._lock:
            if self._token is not None and sent == f"Bearer {self._token}":
                self._token = None
        log.info("%s: bearer refused, exchanging the API token again", NAME)
        return True

    def _exchange(self) -> str:
        if time.monotonic() < self._refused_until:
            raise ProviderAuthError(NAME, None, "token_exchange: credentials refused recently, not asking again yet")
        try:
            response = self._auth.call("POST", "/v1/tokens/exchange", "token_exchange", auth=("", self._api_token))
        except ProviderAuthError:
            self._refused_until = time.monotonic() + REFUSED_COOLDOWN
            raise
        token = _json(response, "token_exchange").get("token")
        if not isinstance(token, str) or not token:
            raise ProviderError(NAME, None, "token_exchange: the answer has no token")
        lifetime = jwt_lifetime(token) or DEFAULT_BEARER_LIFETIME
        self._renew_at = time.monotonic() + lifetime - min(MAX_RENEWAL_MARGIN, lifetime / 5)
        log.debug("%s: new bearer, valid for %.0fs", NAME, lifetime)
        return token


def jwt_lifetime(token: str) -> float | None:
    """Seconds the bearer is valid for, from its ``exp`` (and ``iat``, which makes clock skew harmless)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        expires = float(claims["exp"])
        issued = float(claims["iat"]) if "iat" in claims else time.time()
    except (IndexError, ValueError, KeyError, TypeError):
        return None
    return max(1.0, expires - issued)


def regional_urls(regions: list[str], override: str | None) -> dict[str, str]:
    """One API URL per region.

    ``PROVIDER_SCALINGO_API_URL`` may be one URL per listed region (comma-separated, in
    the order of ``PROVIDER_REGION``), or a template containing ``{region}``.
    """
    if override is None:
        urls = [f"https://api.{region}.scalingo.com" for region in regions]
    elif "{region}" in override:
        urls = [override.replace("{region}", region) for region in regions]
    else:
        urls = [url.strip() for url in override.split(",") if url.strip()]
        if len(urls) != len(regions):
            raise ConfigError(
                f"PROVIDER_SCALINGO_API_URL lists {len(urls)} URL(s) for {len(regions)} region(s) in "
                "PROVIDER_REGION: give one URL per region in the same order, or a template with {region}"
            )
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"PROVIDER_SCALINGO_API_URL: {url!r} is not an http(s) URL")
    return {region: url.rstrip("/") for region, url in zip(regions, urls, strict=True)}


def read_regions(env: Env) -> list[str]:
    regions = list(dict.fromkeys(region.lower() for region in env.csv("PROVIDER_REGION"))) or [DEFAULT_REGION]
    for region in regions:
        if not is_valid_app_key(region):
            raise ConfigError(f"PROVIDER_REGION: {region!r} is not a region name such as osc-fr1")
    return regions


def rate_limiter(settings: Settings, budget: int, api_token: str, link: RedisLink | None = None) -> RateLimiter:
    """At most ``budget`` calls in any 60 s window, for the account.

    With the Redis registry (several workers, maybe several machines) the count is shared in
    Redis, per account (a hash of the token names it), with a local bucket whose burst plus
    refill over 60 s equals the budget as the fallback while Redis is down. Otherwise (one
    process) a log of the last minute's calls, like the shared one: the whole budget, never more.
    """
    burst = budget / 6
    local = (budget - burst, burst)
    if settings.registry_type == "redis" and settings.redis_url:
        from .shared_limiter import SharedRateLimiter  # redis-py is only imported by those who use it

        account = hashlib.sha256(api_token.encode()).hexdigest()[:12]
        key = f"{settings.redis_prefix}provider:{NAME}:{account}:calls"
        if link is not None:  # the instance's one Redis link: one outage state for all
            return SharedRateLimiter(link, key, budget, local=local)
        return SharedRateLimiter.from_url(settings.redis_url, key, budget, settings.redis_socket_timeout, local=local)
    return WindowLimiter(budget)


def warn_if_idle_checks_spend_the_budget(interval: float, regions: int, budget: float) -> None:
    """Each idle check lists every region: checked that often, listings leave little to read formations ahead.

    Listings are the lowest class of the budget: they never delay a wake or a stop (while stops
    wait, they are spaced out down to one per ``PROVIDER_DIRECTORY_TTL``), but they do take
    what stops would otherwise use once the crowd is gone, and the room formations are read ahead in.
    """
    spent = regions * 60 / interval
    if spent > budget / 2:
        log.warning(
            "%s: START_AND_STOP_CHECKING_INTERVAL=%gs makes the idle checks alone spend %.0f of the %.0f "
            "API requests per minute allowed while nothing else happens; they give way to wakes and stops, "
            "but leave little room to read formations ahead (check less often)",
            NAME,
            interval,
            spent,
            budget,
        )


class ScalingoProvider:
    name = NAME
    poll_interval = 5.0  # status calls during a wake; readiness itself is probed on the app's URL
    probe_upstream = True

    def __init__(
        self,
        clients: dict[str, ApiClient],
        bearer: ScalingoBearer,
        operation_timeout: float,
        limiter: RateLimiter | None = None,
    ):
        self.clients = clients  # region -> regional API client, in PROVIDER_REGION order
        self.bearer = bearer
        self.operation_timeout = operation_timeout
        self.limiter = limiter  # the clients' shared budget, kept to be closed
        self.scheduler = next(iter(clients.values())).scheduler  # one per account, shared by the regions
        for client in clients.values():
            client.on_unauthorized = bearer.renew_after_401

    @classmethod
    def from_settings(
        cls, settings: Settings, config: dict, metrics: Metrics | None = None, redis_link: RedisLink | None = None
    ) -> ScalingoProvider:
        env = settings.env
        api_token = env.secret("PROVIDER_SCALINGO_API_TOKEN", "create an API token in the Scalingo dashboard")
        regions = read_regions(env)
        urls = regional_urls(regions, env.get("PROVIDER_SCALINGO_API_URL"))
        auth_url = env.get("PROVIDER_SCALINGO_AUTH_URL", DEFAULT_AUTH_URL)
        if urlsplit(auth_url).scheme not in ("http", "https") or not urlsplit(auth_url).hostname:
            raise ConfigError(f"PROVIDER_SCALINGO_AUTH_URL={auth_url!r} is not an http(s) URL")
        budget = env.integer("PROVIDER_SCALINGO_RATE_LIMIT", DEFAULT_RATE_LIMIT, minimum=6)
        warn_if_idle_checks_spend_the_budget(settings.checking_interval, len(regions), budget)
        limiter = rate_limiter(settings, budget, api_token, redis_link)
        session = requests.Session()  # one pool for the auth service and every region
        session.headers["Accept"] = "application/json"
        auth = ApiClient(NAME, auth_url, metrics, TOKEN_HINT, session=session)
        scheduler = CallScheduler(NAME, limiter, metrics)  # the account's budget, spent by priority
        clients = {
            region: ApiClient(NAME, url, metrics, TOKEN_HINT, limiter=limiter, session=session, scheduler=scheduler)
            for region, url in urls.items()
        }
        return cls(clients, ScalingoBearer(auth, api_token), settings.provider_operation_timeout(NAME), limiter)

    # -- the provider interface -------------------------------------------------

    def list_apps(self) -> list[AppInfo]:
        """Every region's ``GET /v1/apps``; one failing region fails it all (a partial list would read as deletions)."""
        apps: dict[str, AppInfo] = {}
        for region, client in self.clients.items():
            body = _json(client.call("GET", "/v1/apps", "list_apps", auth=self.bearer), "list_apps")
            listed = body.get("apps")
            if not isinstance(listed, list):
                raise ProviderError(NAME, None, f"list_apps: unexpected answer from region {region}")
            for raw in listed:
                app = _app_info(raw, region)
                if app is None:
                    continue
                if app.key in apps:
                    log.warning(
                        "%s: app %s exists in %s and %s; using %s",
                        NAME,
                        app.key,
                        apps[app.key].region,
                        region,
                        apps[app.key].region,
                    )
                    continue
                apps[app.key] = app
        return list(apps.values())

    def status(self, app: AppInfo) -> str:
        return STATUSES.get(str(self._app(app).get("status")), UNKNOWN)

    def start(self, app: AppInfo, memo: dict | None) -> dict | None:
        """Scale back to the remembered formation (only the types that differ), or restart a crashed app.

        Returns the formation the app now has (Scalingo answers a scale with the whole formation),
        so that its stop costs one call.
        """
        wanted = formation_from_memo(memo)
        if wanted is not None and app.status == STOPPED:
            scaled = self._scale_to_memo(app, wanted)
            if scaled is not None:
                return scaled
        current = {c["name"]: c for c in self._formation(app)}
        if wanted is None:
            if memo is not None:
                log.warning("%s: ignoring an unusable remembered formation for %s", NAME, app.key)
            if "web" not in current:
                raise ProviderError(NAME, app.name, "no formation remembered and the app has no web process type")
            wanted = [{"name": "web", "amount": 1}]
        changes = []
        for entry in wanted:
            now = current.get(entry["name"])
            if now is None:
                log.warning("%s: %s no longer has a %r process type; not scaling it", NAME, app.key, entry["name"])
            elif now.get("amount") != entry["amount"] or entry.get("size", now.get("size")) != now.get("size"):
                changes.append(entry)
        if changes:
            response = self._scale_when_settled(app, changes)
            self._follow(app, response, "scale")
            changed = {c["name"]: c for c in changes}
            after = _containers(response) or [{**c, **changed.get(name, {})} for name, c in current.items()]
            return {"containers": [_entry(c) for c in after]}
        if self.status(app) == FAILED:
            self._follow(app, self._post(app, "restart", {"scope": None}), "restart")
        # else: already scaled as wanted and booting: the lifecycle waits for it
        return {"containers": [_entry(c) for c in current.values()]}

    def _scale_to_memo(self, app: AppInfo, wanted: list[dict[str, Any]]) -> dict | None:
        """A stopped app whose formation is remembered: scale straight to it (one call less for the wake).

        None if the platform refuses it (a process type removed since): the caller reads the formation.
        """
        changes = [entry for entry in wanted if entry["amount"] > 0]
        try:
            response = self._scale_when_settled(app, changes)
        except ProviderAuthError:
            raise
        except ProviderError as error:
            log.info("%s: the remembered formation of %s is out of date (%s): reading it", NAME, app.key, error)
            return None
        self._follow(app, response, "scale")
        after = _containers(response) or wanted
        return {"containers": [_entry(c) for c in after]}

    def stop(self, app: AppInfo, memo: dict | None = None) -> dict | None:
        """Scale every type that has containers to 0; return the formation it had.

        With a remembered formation this is one call (the scale); otherwise the formation is read
        first (two). The scale's operation is followed only when someone waits for the stop (an
        operator); a stop nobody waits for (:func:`~paastis.providers.priority.background_calls`,
        the idle stops) is confirmed by the next listing instead.
        """
        known = formation_from_memo(memo)
        if known is not None:
            try:
                return self._scale_down(app, known)
            except ProviderAuthError:
                raise
            except ProviderError as error:  # e.g. a process type removed since: read what there is now
                log.info("%s: the remembered formation of %s is out of date (%s): reading it", NAME, app.key, error)
        return self._scale_down(app, [_entry(c) for c in self._formation(app)])

    def read_ahead(self, app: AppInfo) -> dict | None:
        """The formation of a running app, read while the budget has room, so that its stop is one call.

        Scalingo has no call giving the formations of several apps: one ``GET /containers`` per app
        (which gives every process type at once). None when nothing runs (no memo worth keeping).
        """
        formation = [_entry(c) for c in self._formation(app)]
        return {"containers": formation} if any(c["amount"] > 0 for c in formation) else None

    def _scale_down(self, app: AppInfo, formation: list[dict[str, Any]]) -> dict | None:
        to_zero = [{"name": c["name"], "amount": 0} for c in formation if c["amount"] > 0]
        if not to_zero:
            return None  # already at 0: keep whatever formation was remembered before
        response = self._post(app, "scale", {"containers": to_zero})
        if not in_background():
            try:
                self._follow(app, response, "scale")
            except ProviderError as error:  # the scale was accepted: what must not be lost is the formation
                log.warning("%s: scaling %s down was accepted but did not finish cleanly: %s", NAME, app.key, error)
        still_up = {c["name"]: c for c in _containers(response) if c["amount"] > 0}
        memo = [still_up.pop(c["name"], c) for c in formation] + list(still_up.values())
        if still_up:  # scaled up behind our back: remembered now, scaled down by the next stop
            log.warning("%s: %s also runs %s, unknown when it was stopped", NAME, app.key, ", ".join(still_up))
        return {"containers": [_entry(c) for c in memo]}

    def _scale_when_settled(self, app: AppInfo, containers: list[dict[str, Any]]) -> requests.Response:
        """Scale; if the app is still busy with an earlier operation (a stop is not followed), wait for it once."""
        try:
            return self._post(app, "scale", {"containers": containers})
        except ProviderAuthError:
            raise
        except ProviderError:
            if not self._wait_while_busy(app):
                raise
        return self._post(app, "scale", {"containers": containers})

    def _wait_while_busy(self, app: AppInfo) -> bool:
        """Poll the app while an operation runs (``scaling``, ``restarting``); True if it was busy."""
        deadline = min(time.monotonic() + self.operation_timeout, deadlines.current() or float("inf"))
        delay = FIRST_OPERATION_POLL
        busy = False
        while self._app(app).get("status") in ("scaling", "restarting"):
            busy = True
            if time.monotonic() >= deadline:
                raise ProviderError(NAME, app.name, f"still busy after {self.operation_timeout:g}s")
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 1.5, self.poll_interval)
        return busy

    def failure(self, app: AppInfo) -> str | None:
        return None  # the status says all the API tells

    def abandon_start(self, app: AppInfo) -> str | None:
        return None  # see Provider.abandon_start: the platform's operation is left to finish

    def upstream_url(self, app: AppInfo) -> str:
        url = app.upstream_url or self._app(app).get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise ProviderError(NAME, app.name, "the app has no URL")
        return url

    def ready_path(self, app: AppInfo) -> str | None:
        return None

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        if self.limiter is not None:
            self.limiter.close()

    # -- helpers ----------------------------------------------------------------

    def _client(self, app: AppInfo) -> ApiClient:
        return self.clients.get(app.region or "") or next(iter(self.clients.values()))

    def _path(self, app: AppInfo, suffix: str = "") -> str:
        return f"/v1/apps/{quote(app.name, safe='')}{suffix}"

    def _app(self, app: AppInfo) -> dict[str, Any]:
        response = self._client(app).call("GET", self._path(app), "get_app", app.name, auth=self.bearer)
        body = _json(response, "get_app", app.name).get("app")
        if not isinstance(body, dict):
            raise ProviderError(NAME, app.name, "get_app: unexpected answer")
        return body

    def _formation(self, app: AppInfo) -> list[dict[str, Any]]:
        path = self._path(app, "/containers")
        response = self._client(app).call("GET", path, "get_formation", app.name, auth=self.bearer)
        containers = _json(response, "get_formation", app.name).get("containers")
        if not isinstance(containers, list) or not all(_is_formation_entry(c) for c in containers):
            raise ProviderError(NAME, app.name, "get_formation: unexpected answer")
        return containers

    def _post(self, app: AppInfo, action: str, body: dict[str, Any]) -> requests.Response:
        path = self._path(app, f"/{action}")
        return self._client(app).call("POST", path, action, app.name, json=body, auth=self.bearer)

    def _follow(self, app: AppInfo, response: requests.Response, what: str) -> None:
        """Poll the 202's operation until ``done`` or ``error``, slowing down as it lasts (the quota is small).

        Only the operation id is taken from ``Location``: the bearer never goes to a host we were not configured with.
        """
        location = response.headers.get("Location")
        if response.status_code != 202 or not location:
            return  # 200 without an operation: already applied (e.g. an app never deployed)
        operation_id = urlsplit(location).path.rstrip("/").rsplit("/", 1)[-1]
        path = self._path(app, f"/operations/{quote(operation_id, safe='')}")
        deadline = min(time.monotonic() + self.operation_timeout, deadlines.current() or float("inf"))
        delay = FIRST_OPERATION_POLL
        quick = list(WAKE_OPERATION_POLLS) if current_class() == CallClass.WAKE else []
        while True:
            time.sleep(max(0.0, min(quick.pop(0) if quick else delay, deadline - time.monotonic())))
            reply = self._client(app).call("GET", path, "get_operation", app.name, auth=self.bearer)
            operation = _json(reply, "get_operation", app.name).get("operation") or {}
            state = operation.get("status")
            if state == "done":
                return
            if state == "error":
                detail = operation.get("error") or "no detail given"
                raise ProviderError(NAME, app.name, f"{what} operation failed: {detail}")
            if time.monotonic() >= deadline:
                raise ProviderTimeout(NAME, app.name, f"{what} operation still {state} at the operation's deadline")
            if not quick:
                delay = min(delay * 1.5, self.poll_interval)


def formation_from_memo(memo: Any) -> list[dict[str, Any]] | None:
    """The formation :meth:`ScalingoProvider.stop` remembered, if it is usable (it went through Redis)."""
    containers = memo.get("containers") if isinstance(memo, dict) else None
    if not isinstance(containers, list) or not all(_is_formation_entry(c) for c in containers):
        return None
    wanted = [_entry(c) for c in containers]
    return wanted if any(entry["amount"] > 0 for entry in wanted) else None


def _containers(response: requests.Response) -> list[dict[str, Any]]:
    """The whole formation a scale answers with; [] when the answer does not say (the scale still happened)."""
    try:
        containers = response.json().get("containers")
    except (ValueError, AttributeError):
        return []
    if not isinstance(containers, list) or not all(_is_formation_entry(c) for c in containers):
        return []
    return containers


def _is_formation_entry(raw: Any) -> bool:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        return False
    amount = raw.get("amount")
    return isinstance(amount, int) and not isinstance(amount, bool) and amount >= 0


def _entry(container: dict[str, Any]) -> dict[str, Any]:
    entry = {"name": container["name"], "amount": container["amount"]}
    if isinstance(container.get("size"), str) and container["size"]:
        entry["size"] = container["size"]
    return entry


def _app_info(raw: Any, region: str) -> AppInfo | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        return None
    name = raw["name"]
    if not is_valid_app_key(name):
        log.warning("%s: skipping app %r: its name is not a valid host label", NAME, name)
        return None
    url = raw.get("url") or raw.get("base_url")
    status = STATUSES.get(str(raw.get("status")), UNKNOWN)
    return AppInfo(
        key=name.lower(), name=name, upstream_url=url if isinstance(url, str) else None, status=status, region=region
    )


def _json(response: requests.Response, operation: str, app: str | None = None) -> dict[str, Any]:
    """Scalingo always answers a JSON object with a root key; anything else is reported, not trusted."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ProviderError(NAME, app, f"{operation}: the answer is not a JSON object")
    return body
