"""The Heroku provider: the apps of one account, over the Platform API (version 3).

An app sleeps when its formation is scaled to 0: Heroku has no "stop" verb either.
Stopping remembers every process type's quantity and dyno size (the memo, kept in the
registry) and waking restores exactly that with one batch ``PATCH /apps/{app}/formation``,
or ``web: 1`` when nothing is remembered.

Cost per idle check: the app list is one paged sequence (``Range: id ..; max=1000``),
but Heroku lists apps without their formation, so telling running from stopped costs
one call per app. The listing therefore checks only a bounded share of the apps (at most
a tenth of the remaining rate-limit headroom): those last seen scaled up at every listing
(few, when most apps sleep), then the least recently checked; the others are reported
``unknown`` for this tick, which the idle check leaves alone. Apps paastis wakes or stops
are checked on the spot, never from a cache.
"""

from __future__ import annotations

import contextvars
import logging
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from ..config import ConfigError, Settings
from ..metrics import Metrics
from ..routing import is_valid_app_key
from .base import FAILED, RUNNING, STARTING, STOPPED, UNKNOWN, AppInfo, ProviderAuthError, ProviderError
from .http import ApiClient, RateLimiter

log = logging.getLogger(__name__)

NAME = "heroku"
DEFAULT_API_URL = "https://api.heroku.com"
ACCEPT = "application/vnd.heroku+json; version=3"
TOKEN_HINT = "PROVIDER_HEROKU_API_TOKEN (an API key from `heroku authorizations:create` or Account settings)"
DEFAULT_REFILL = 75.0  # tokens per minute given back to the account's bucket (documented, approximate)
DEFAULT_BUCKET = 4500.0  # the account's bucket size (documented)
DEFAULT_RESERVE = 250  # below this many remaining tokens, spend no faster than the bucket refills
MAX_PAGE_SIZE = 1000  # documented maximum of ``max`` in a Range header
MAX_PAGES = 100
MAX_STATUS_CHECKS = 50  # per listing: with the default 60 s interval, checks + pages stay under the refill
STATUS_WORKERS = 8
NEXT_RANGE = re.compile(r"^\s*[a-z_]+\s+\S*\.\.")  # e.g. ``id ]01234567-…..; max=1000``


class HerokuProvider:
    name = NAME
    poll_interval = 1.0  # a status during a wake costs two calls (formation, dynos)
    probe_upstream = True  # "up" dynos may still be booting the app: the router tells the truth

    def __init__(self, client: ApiClient, reserve: int, page_size: int):
        self.client = client
        self.reserve = reserve
        self.page_size = page_size
        self.remaining: int | None = None  # the last RateLimit-Remaining seen
        self._checked: dict[str, float] = {}  # app name -> when its formation was last read by a listing
        self._scaled_up: set[str] = set()  # apps last seen with web above 0: checked first, at every listing
        self._lock = threading.Lock()
        self.scheduler = client.scheduler  # the account's budget, spent by priority
        client.on_response = self._watch_rate_limit

    @classmethod
    def from_settings(
        cls, settings: Settings, config: dict, metrics: Metrics | None = None, redis_link: object = None
    ) -> HerokuProvider:
        """``redis_link`` is unused: this provider's budget is not shared through Redis."""
        env = settings.env
        token = env.secret("PROVIDER_HEROKU_API_TOKEN", "create one with `heroku authorizations:create`")
        url = env.get("PROVIDER_HEROKU_API_URL", DEFAULT_API_URL)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"PROVIDER_HEROKU_API_URL={url!r} is not an http(s) URL")
        refill = env.number("PROVIDER_HEROKU_RATE_LIMIT", DEFAULT_REFILL, minimum=1)
        bucket = env.number("PROVIDER_HEROKU_RATE_LIMIT_BUCKET", DEFAULT_BUCKET, minimum=1)
        reserve = env.integer("PROVIDER_HEROKU_RATE_LIMIT_RESERVE", DEFAULT_RESERVE, minimum=0)
        page_size = env.integer("PROVIDER_HEROKU_PAGE_SIZE", MAX_PAGE_SIZE, minimum=1)
        if page_size > MAX_PAGE_SIZE:
            raise ConfigError(f"PROVIDER_HEROKU_PAGE_SIZE={page_size} must be at most {MAX_PAGE_SIZE}")
        session = requests.Session()
        session.headers["Accept"] = ACCEPT
        session.headers["Authorization"] = f"Bearer {token}"
        limiter = RateLimiter(refill, burst=bucket)
        client = ApiClient(NAME, url, metrics, TOKEN_HINT, limiter=limiter, session=session)
        return cls(client, reserve, page_size)

    # -- the provider interface -------------------------------------------------

    def list_apps(self) -> list[AppInfo]:
        raw_apps = self._list_pages()
        apps = [app for app in (_app_info(raw) for raw in raw_apps) if app is not None]
        statuses = self._check_some(apps)
        return [AppInfo(a.key, a.name, a.upstream_url, statuses.get(a.name, UNKNOWN)) for a in apps]

    def status(self, app: AppInfo) -> str:
        """Stopped while web is at 0; running once a web dyno is ``up``; failed when they all crashed."""
        if not self._note(app.name, _web_quantity(self._formation(app))):
            return STOPPED
        web = [d for d in self._dynos(app) if d.get("type") == "web"]
        states = {d.get("state") for d in web}
        if "up" in states:
            return RUNNING
        if web and states == {"crashed"}:
            return FAILED
        return STARTING

    def start(self, app: AppInfo, memo: dict | None) -> None:
        """Scale back to the remembered formation (only what differs), unless web is already above 0."""
        current = {f["type"]: f for f in self._formation(app)}
        if _web_quantity(current.values()) > 0:
            return  # already scaled up (booting, or someone scaled it): the lifecycle waits for it
        wanted = formation_from_memo(memo)
        if wanted is None:
            if memo is not None:
                log.warning("%s: ignoring an unusable remembered formation for %s", NAME, app.key)
            if "web" not in current:
                raise ProviderError(NAME, app.name, "no formation remembered and the app has no web process type")
            wanted = [{"type": "web", "quantity": 1}]
        if "web" in current and _web_quantity(wanted) == 0:  # a request is waiting: it needs a web dyno
            wanted = [e for e in wanted if e["type"] != "web"] + [{"type": "web", "quantity": 1}]
        updates = []
        for entry in wanted:
            now = current.get(entry["type"])
            if now is None:
                log.warning("%s: %s no longer has a %r process type; not scaling it", NAME, app.key, entry["type"])
                continue
            update: dict[str, Any] = {"type": entry["type"]}
            if now.get("quantity") != entry["quantity"]:
                update["quantity"] = entry["quantity"]
            size = entry.get("size")
            if size and size.lower() != (_size(now) or "").lower():
                update["dyno_size"] = {"name": size}
            if len(update) > 1:
                updates.append(update)
        if updates:
            self._patch(app, updates, "scale_up")
            self._note(app.name, 1)

    def stop(self, app: AppInfo, memo: dict | None = None) -> dict | None:
        """Scale every process type to 0 in one call; return the formation it had.

        With the formation known (remembered at the last stop, or read ahead by the idle check)
        this is the PATCH alone; otherwise the formation is read first (two calls).
        """
        known = formation_from_memo(memo)
        if known is not None:
            try:
                return self._scale_down(app, known)
            except ProviderAuthError:
                raise
            except ProviderError as error:  # e.g. a process type removed since: read what there is now
                log.info("%s: the remembered formation of %s is out of date (%s): reading it", NAME, app.key, error)
        return self._scale_down(app, [_entry(f) for f in self._formation(app)])

    def read_ahead(self, app: AppInfo) -> dict | None:
        """The formation of a running app, read while the budget has room, so that its stop is one call.

        Heroku gives one app's whole formation in one call, but no call for several apps.
        """
        formation = [_entry(f) for f in self._formation(app)]
        return {"formation": formation} if any(e["quantity"] > 0 for e in formation) else None

    def _scale_down(self, app: AppInfo, formation: list[dict[str, Any]]) -> dict | None:
        updates = [{"type": e["type"], "quantity": 0} for e in formation if e["quantity"] > 0]
        if not updates:
            return None  # already at 0: keep whatever formation was remembered before
        answer = self._patch(app, updates, "scale_down")
        self._note(app.name, 0)
        memo = {e["type"]: e for e in formation}
        still_up = [_entry(f) for f in answer if f["quantity"] > 0 and f["type"] not in memo]
        if still_up:  # scaled up behind our back: remembered now, scaled down by the next stop
            log.warning(
                "%s: %s also runs %s, unknown when it was stopped",
                NAME,
                app.key,
                ", ".join(e["type"] for e in still_up),
            )
        return {"formation": list(memo.values()) + still_up}

    def failure(self, app: AppInfo) -> str | None:
        return None  # the status says all the API tells

    def abandon_start(self, app: AppInfo) -> str | None:
        return None  # see Provider.abandon_start: the platform's operation is left to finish

    def upstream_url(self, app: AppInfo) -> str:
        url = app.upstream_url or self._get_app(app).get("web_url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise ProviderError(NAME, app.name, "the app has no web_url")
        return url.rstrip("/")

    def ready_path(self, app: AppInfo) -> str | None:
        return None

    def close(self) -> None:
        self.client.close()

    # -- rate limit -------------------------------------------------------------

    def _watch_rate_limit(self, response: requests.Response) -> None:
        """Below the reserve, pace calls at the refill rate, so the bucket never runs dry because of us."""
        try:
            remaining = int(response.headers["RateLimit-Remaining"])
        except (KeyError, ValueError):
            return
        self.remaining = remaining
        self.scheduler.reported_remaining = remaining
        if remaining <= self.reserve and self.client.limiter is not None:
            self.client.limiter.slow_down(0)

    def _note(self, name: str, web_quantity: int) -> int:
        """Remember whether the app was last seen scaled up; returns the quantity for convenience."""
        with self._lock:
            if web_quantity > 0:
                self._scaled_up.add(name)
            else:
                self._scaled_up.discard(name)
        return web_quantity

    def _status_budget(self) -> int:
        """At most a tenth of the headroom above the reserve per listing, so background checks never starve wakes."""
        if self.remaining is None:  # no header seen (yet): the fixed cap alone
            return MAX_STATUS_CHECKS
        return max(0, min(MAX_STATUS_CHECKS, (self.remaining - self.reserve) // 10))

    def _check_some(self, apps: list[AppInfo]) -> dict[str, str]:
        """The formation status of the least recently checked apps, as many as the budget allows."""
        with self._lock:
            known = {app.name for app in apps}
            self._checked = {name: at for name, at in self._checked.items() if name in known}
            self._scaled_up &= known
            # Apps seen scaled up first (few, when most sleep): a stop made elsewhere is noticed at the next tick.
            order = sorted(apps, key=lambda a: (a.name not in self._scaled_up, self._checked.get(a.name, -math.inf)))
            chosen = order[: self._status_budget()]
            now = time.monotonic()
            for app in chosen:
                self._checked[app.name] = now
        if not chosen:
            return {}
        context = contextvars.copy_context()  # the listing's call class (and deadline) go with each check
        with ThreadPoolExecutor(min(STATUS_WORKERS, len(chosen))) as pool:
            results = list(pool.map(lambda app: context.copy().run(self._listing_status, app), chosen))
        return {app.name: status for app, status in zip(chosen, results, strict=True)}

    def _listing_status(self, app: AppInfo) -> str:
        """Running means web above 0 (the issue's definition); errors leave the app unknown for this tick."""
        try:
            return RUNNING if self._note(app.name, _web_quantity(self._formation(app))) else STOPPED
        except ProviderAuthError:
            return UNKNOWN  # the client logged it once already: not once more per app
        except ProviderError as error:
            log.warning("%s: no formation for %s this time: %s", NAME, app.key, error.message)
            return UNKNOWN

    # -- API calls ----------------------------------------------------------------

    def _list_pages(self) -> list[Any]:
        """``GET /apps``, following ``Next-Range`` while the answer is 206 Partial Content."""
        apps: list[Any] = []
        page_range = f"id ..; max={self.page_size}"
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            response = self.client.call("GET", "/apps", "list_apps", headers={"Range": page_range})
            page = _json(response, "list_apps")
            if not isinstance(page, list):
                raise ProviderError(NAME, None, "list_apps: the answer is not a JSON array")
            apps.extend(page)
            next_range = response.headers.get("Next-Range")
            if response.status_code != 206 or not next_range:
                return apps
            if next_range in seen or not NEXT_RANGE.match(next_range):
                raise ProviderError(NAME, None, f"list_apps: unusable Next-Range {next_range[:80]!r}")
            seen.add(next_range)
            page_range = next_range
        raise ProviderError(NAME, None, f"list_apps: more than {MAX_PAGES} pages")

    def _path(self, app: AppInfo, suffix: str = "") -> str:
        return f"/apps/{quote(app.name, safe='')}{suffix}"

    def _get_app(self, app: AppInfo) -> dict[str, Any]:
        body = _json(self.client.call("GET", self._path(app), "get_app", app.name), "get_app", app.name)
        if not isinstance(body, dict):
            raise ProviderError(NAME, app.name, "get_app: unexpected answer")
        return body

    def _formation(self, app: AppInfo) -> list[dict[str, Any]]:
        response = self.client.call("GET", self._path(app, "/formation"), "get_formation", app.name)
        return _formation_list(_json(response, "get_formation", app.name), "get_formation", app.name)

    def _dynos(self, app: AppInfo) -> list[dict[str, Any]]:
        response = self.client.call("GET", self._path(app, "/dynos"), "get_dynos", app.name)
        dynos = _json(response, "get_dynos", app.name)
        if not isinstance(dynos, list) or not all(isinstance(d, dict) for d in dynos):
            raise ProviderError(NAME, app.name, "get_dynos: unexpected answer")
        return dynos

    def _patch(self, app: AppInfo, updates: list[dict[str, Any]], operation: str) -> list[dict[str, Any]]:
        """One batch PATCH: synchronous on Heroku, and never retried blindly (ApiClient's rule for writes)."""
        body = {"updates": updates}
        response = self.client.call("PATCH", self._path(app, "/formation"), operation, app.name, json=body)
        return _formation_list(_json(response, operation, app.name), operation, app.name)


def formation_from_memo(memo: Any) -> list[dict[str, Any]] | None:
    """The formation :meth:`HerokuProvider.stop` remembered, if usable (it may have gone through Redis)."""
    formation = memo.get("formation") if isinstance(memo, dict) else None
    if not isinstance(formation, list) or not all(_is_memo_entry(e) for e in formation):
        return None
    return formation if any(e["quantity"] > 0 for e in formation) else None


def _is_memo_entry(raw: Any) -> bool:
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str) or not raw["type"]:
        return False
    quantity = raw.get("quantity")
    size_ok = raw.get("size") is None or isinstance(raw["size"], str)
    return isinstance(quantity, int) and not isinstance(quantity, bool) and quantity >= 0 and size_ok


def _formation_list(body: Any, operation: str, app: str) -> list[dict[str, Any]]:
    if not isinstance(body, list) or not all(_is_formation(f) for f in body):
        raise ProviderError(NAME, app, f"{operation}: unexpected formation")
    return body


def _is_formation(raw: Any) -> bool:
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        return False
    quantity = raw.get("quantity")
    return isinstance(quantity, int) and not isinstance(quantity, bool)


def _web_quantity(formation: Any) -> int:
    """Apps without a web process type (workers only, or never released) are simply not running."""
    return next((f["quantity"] for f in formation if f["type"] == "web"), 0)


def _size(formation: dict[str, Any]) -> str | None:
    """``dyno_size.name`` (current), else the deprecated ``size``."""
    dyno_size = formation.get("dyno_size")
    if isinstance(dyno_size, dict) and isinstance(dyno_size.get("name"), str):
        return dyno_size["name"]
    return formation.get("size") if isinstance(formation.get("size"), str) else None


def _entry(formation: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": formation["type"], "quantity": formation["quantity"]}
    size = _size(formation)
    if size:
        entry["size"] = size
    return entry


def _app_info(raw: Any) -> AppInfo | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        return None
    name = raw["name"]
    if not is_valid_app_key(name):
        log.warning("%s: skipping app %r: its name is not a valid host label", NAME, name)
        return None
    url = raw.get("web_url")  # never <name>.herokuapp.com: apps since 2023 carry a random suffix
    return AppInfo(key=name.lower(), name=name, upstream_url=url.rstrip("/") if isinstance(url, str) else None)


def _json(response: requests.Response, operation: str, app: str | None = None) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ProviderError(NAME, app, f"{operation}: the answer is not JSON") from None
