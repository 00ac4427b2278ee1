"""The catch-all blueprint: every request is routed by its Host to an app, woken if need be, and streamed.

The upstream always comes from the provider or the config (through the lifecycle),
never from the request: an absolute-form request line or a crafted Host can only ever
select one of the apps paastis knows.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from http.cookiejar import DefaultCookiePolicy
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Blueprint, Flask, Request, Response, current_app, request
from requests.adapters import HTTPAdapter
from requests.hooks import default_hooks
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError, ProtocolError
from urllib3.util import SKIP_HEADER
from urllib3.util.url import _encode_target

from .config import DEFAULT_FORWARDED_ALLOW_IPS
from .forwarding import FORWARDING_HEADERS, TrustedFronts
from .lifecycle import Lifecycle, WakeError
from .logs import about_app
from .providers import AppInfo
from .routes import Routes
from .routing import BadHost, NoAppKey, NotServed, is_valid_app_key, route_key, routing_help
from .sleep_gate import PASSIVE, SleepGate
from .waiting import WaitingRoom, asks_wake_status

log = logging.getLogger(__name__)

bp = Blueprint("proxy", __name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Recomputed or set by us (or by gunicorn) rather than copied.
NOT_FORWARDED = frozenset({"host", "content-length", "x-forwarded-host"})
NOT_RETURNED = frozenset({"date", "server"})
CHUNK = 64 * 1024
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})  # retried once when the app hangs up before answering
VIA = "1.1 paastis"  # RFC 9110 §7.6.3; also how paastis recognises a request it already proxied
ABSOLUTE_FORM = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


class PassThroughResponse(Response):
    """A response that adds nothing of its own: no default Content-Type."""

    default_mimetype = None


_RAW_TARGET: ContextVar[str | None] = ContextVar("paastis_raw_target", default=None)


class _RawTargetPool:
    """Sends the request target exactly as the client wrote it.

    urllib3 normalises targets (upper-cases percent-encodings, escapes a stray ``%``);
    the pool puts the original back when it is the same request (same normalised form).
    """

    def _make_request(self, conn, method, url, *args, **kwargs):  # type: ignore[no-untyped-def]
        raw = _RAW_TARGET.get()
        if raw is not None and _encode_target(raw) == url:
            url = raw
        return super()._make_request(conn, method, url, *args, **kwargs)  # type: ignore[misc]


class _RawHTTPPool(_RawTargetPool, HTTPConnectionPool):
    pass


class _RawHTTPSPool(_RawTargetPool, HTTPSConnectionPool):
    pass


class _RawTargetAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _RawHTTPPool, "https": _RawHTTPSPool}


class Proxy:
    """The streaming HTTP client side, with one pooled session shared by all threads."""

    def __init__(
        self,
        metrics: Any,
        wake_strategy_of: Callable[[str], str],
        ca_bundle: str | None = None,
        *,
        connect_timeout: float = 5.0,
        read_timeout_of: Callable[[str], float] = lambda key: 300.0,
        domains: tuple[str, ...] = (),
        trusted: TrustedFronts | None = None,
    ):
        self.metrics = metrics
        self.domains = domains  # PAASTIS_DOMAINS: the only domains whose hosts reach an app
        self.trusted = trusted or TrustedFronts(DEFAULT_FORWARDED_ALLOW_IPS)
        self.wake_strategy_of = wake_strategy_of
        self.connect_timeout = connect_timeout
        self.read_timeout_of = read_timeout_of  # UPSTREAM_READ_TIMEOUT, or the app's rule
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies or .netrc credentials from the environment
        self.session.verify = ca_bundle or True  # upstream TLS is verified; REQUESTS_CA_BUNDLE still applies
        self.session.headers.clear()  # send only what the client sent
        self.session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # never keep cookies
        adapter = _RawTargetAdapter(pool_connections=32, pool_maxsize=64)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def send(
        self, method: str, upstream: str, target: str, headers: dict[str, str], body: Any, read_timeout: float
    ) -> requests.Response:
        """Send one request, streaming both ways, without following redirects.

        ``read_timeout`` bounds the wait for the first byte of the answer and for each further chunk.

        The URL is set after preparation because requests would otherwise "requote" the
        path (decoding ``%2e`` into ``.``, for instance): the app must see what the client sent.
        The request is prepared without ``Session.prepare_request``: that would merge the
        session's headers, cookies and auth, which this session keeps empty on purpose, and the
        merge alone costs about 50 µs per request (see BENCHMARKS.md).
        """
        prepared = requests.PreparedRequest()
        prepared.prepare(method=method, url=upstream + "/", headers=headers, data=body, hooks=default_hooks())
        prepared.url = upstream + target
        reset = _RAW_TARGET.set(target)
        try:
            return self.session.send(
                prepared, stream=True, allow_redirects=False, timeout=(self.connect_timeout, read_timeout)
            )
        finally:
            _RAW_TARGET.reset(reset)

    def close(self) -> None:
        self.session.close()


def hop_by_hop(headers: Any) -> set[str]:
    """RFC 9110 §7.6.1 hop-by-hop fields, plus every field the Connection header names."""
    return HOP_BY_HOP | connection_tokens(headers)


def connection_tokens(headers: Any) -> set[str]:
    return {token.strip().lower() for value in headers.get_all("Connection") for token in value.split(",")}


def raw_target(req: Request) -> str:
    """Path and query exactly as the client sent them (the scheme and authority of an absolute form dropped)."""
    raw = req.environ.get("RAW_URI") or req.environ.get("REQUEST_URI")
    if not raw:
        query = req.environ.get("QUERY_STRING", "")
        raw = req.environ.get("PATH_INFO", "/") + (f"?{query}" if query else "")
    raw = ABSOLUTE_FORM.sub("", raw)
    return raw if raw.startswith("/") else "/" + raw.lstrip("*")


def request_headers(req: Request, upstream: str, trusted: TrustedFronts | None = None) -> dict[str, str]:
    """What the app receives: the client's end-to-end headers, its own Host, and X-Forwarded-*.

    Forwarding headers (``X-Forwarded-*``, ``Forwarded``, ``X-Real-IP``) pass on only from a
    trusted front (``FORWARDED_ALLOW_IPS``); from anyone else they are dropped, and
    ``X-Forwarded-For``/``-Proto``/``-Host`` say what paastis itself saw.
    """
    parts = urlsplit(upstream)
    believed = (trusted or TrustedFronts(DEFAULT_FORWARDED_ALLOW_IPS)).trusts_peer(req.environ)
    excluded = hop_by_hop(req.headers) | NOT_FORWARDED
    if not believed:
        excluded |= FORWARDING_HEADERS
    headers: dict[str, str] = {}
    for name, value in req.headers.items():
        if name.lower() in excluded:
            continue
        headers[name] = value
    host = req.headers.get("Host", "")
    proto = (believed and req.headers.get("X-Forwarded-Proto")) or req.scheme
    client = req.environ.get("REMOTE_ADDR", "")
    prior = believed and req.headers.get("X-Forwarded-For")
    headers["Host"] = parts.netloc
    headers["X-Forwarded-For"] = f"{prior}, {client}" if prior else client
    headers["X-Forwarded-Proto"] = proto
    headers["X-Forwarded-Host"] = (believed and req.headers.get("X-Forwarded-Host")) or host
    prior_via = req.headers.get("Via")
    headers["Via"] = f"{prior_via}, {VIA}" if prior_via else VIA
    origin = req.headers.get("Origin")
    if origin is not None and origin == f"{proto}://{host}":
        headers["Origin"] = f"{parts.scheme}://{parts.netloc}"
    if "User-Agent" not in headers:
        headers["User-Agent"] = SKIP_HEADER  # urllib3 would otherwise add its own
    return headers


class ClientBodyError(Exception):
    """The client's body broke off (short, malformed, or silent too long): the client's fault, not the app's.

    Raised from inside the upload, so that the upstream connection is closed before the
    body is complete: the app sees an aborted request, never a whole one.
    """

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(message)


class RequestBody:
    """Streams the client's body upstream chunk by chunk; remembers whether any byte was sent.

    A known length is exposed as ``len`` so that requests sends Content-Length instead
    of switching the upload to chunked encoding. A body that ends before that length, or
    that gunicorn cannot read (a malformed chunk, a client gone, a client silent for
    ``CLIENT_BODY_TIMEOUT``), raises :class:`ClientBodyError` instead of ending quietly.
    """

    def __init__(self, stream: Any, length: int | None):
        self.stream = stream
        self.started = False
        self.length = length
        if length is not None:
            self.len = length

    def __iter__(self) -> Iterator[bytes]:
        received = 0
        while True:
            chunk = self._read()
            if not chunk:
                break
            received += len(chunk)
            self.started = True
            yield chunk
        if self.length is not None and received < self.length:
            raise ClientBodyError(400, f"request body ended after {received} of {self.length} bytes")

    def _read(self) -> bytes:
        try:
            return self.stream.read(CHUNK)
        except TimeoutError as error:  # paastis.worker: CLIENT_BODY_TIMEOUT of silence
            raise ClientBodyError(408, f"request body: {error or 'the client stopped sending'}") from None
        except Exception as error:  # noqa: BLE001 - whatever gunicorn's reader says, the body is broken
            raise ClientBodyError(400, f"malformed request body: {_client_error(error)}") from None


def client_body_failure(error: Exception) -> Response:
    """Any other route that reads a body (admin API, forms) answers a broken one as the proxy does: 400/408."""
    status = 408 if isinstance(error, TimeoutError) else 400
    log.warning("client error on %s %s: %s", request.method, request.path[:200], _client_error(error))
    return error_response(status, f"malformed request body: {_client_error(error)}")


def _client_error(error: Exception) -> str:
    """gunicorn's parse errors name what they saw; keep it short."""
    return (str(error).strip() or type(error).__name__)[:200]


def request_body(req: Request) -> RequestBody | None:
    length = req.content_length
    chunked = "chunked" in req.headers.get("Transfer-Encoding", "").lower()
    if not chunked and not length:
        return None
    return RequestBody(req.stream, None if chunked else length)


def response_headers(upstream: requests.Response) -> list[tuple[str, str]]:
    raw = upstream.raw.headers
    excluded = hop_by_hop(_HeaderView(raw)) | NOT_RETURNED
    return [(name, value) for name, value in raw.iteritems() if name.lower() not in excluded]


class _HeaderView:
    """``get_all`` over urllib3's header dict, to share :func:`hop_by_hop`."""

    def __init__(self, headers: Any):
        self.headers = headers

    def get_all(self, name: str) -> list[str]:
        return self.headers.getlist(name)


def relay(upstream: requests.Response) -> Iterator[bytes]:
    """Pass the body on as it arrives, undecoded, without waiting to fill a buffer."""
    try:
        while True:
            chunk = upstream.raw.read1(CHUNK, decode_content=False)
            if not chunk:
                return
            yield chunk
    finally:
        upstream.close()


def error_response(status: int, message: str, event: str | None = None) -> Response:
    """paastis's own JSON answer; ``event`` names the event an operator finds the details under."""
    body: dict[str, Any] = {"error": message, "status": status}
    if event:
        body["event"] = event
    response = current_app.response_class(
        response=json.dumps(body) + "\n",
        status=status,
        mimetype="application/json",
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def wake_failure(error: WakeError) -> Response:
    """A visitor learns what happened in one sentence and the event id; the details stay with operators."""
    return error_response(error.status, error.public, error.event_id)


def waiting_room() -> WaitingRoom:
    return current_app.extensions["paastis"].waiting_room


def upgrade_tokens(req: Request) -> list[str]:
    """The protocols a request asks to switch to (``Connection: Upgrade``), ``h2c`` left out.

    paastis speaks HTTP/1.1 to apps, so an ``Upgrade: h2c`` is declined the HTTP way: the
    request is answered as a plain HTTP/1.1 request (RFC 9113 §3.2 lets servers ignore it).
    """
    if "upgrade" not in connection_tokens(req.headers):
        return []
    tokens = (token.strip() for token in req.headers.get("Upgrade", "").split(","))
    return [token for token in tokens if token and token.lower() != "h2c"]


def wants_waiting_page(strategy: str, req: Request) -> bool:
    if strategy == "blocking" or req.method not in ("GET", "HEAD") or upgrade_tokens(req):
        return False
    if strategy == "waiting-page":
        return True
    return "text/html" in req.headers.get("Accept", "")


def is_system_request(req: Request) -> bool:
    app: Flask = current_app  # type: ignore[assignment]
    settings = app.extensions["paastis"].settings
    return settings.system_api_enabled and req.headers.get("PaastisProxyTarget", "").lower() == "system"


def is_dashboard_request(req: Request) -> bool:
    """The dashboard's own host (``PAASTIS_DASHBOARD_HOST``, any port), unless it is a system API request."""
    dashboard_host = current_app.extensions["paastis"].settings.dashboard_host
    if dashboard_host is None:
        return False
    host = req.environ.get("HTTP_HOST", "").lower()  # not req.headers: this runs for every proxied request
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.rstrip(".") == dashboard_host and not is_system_request(req)


@bp.before_app_request
def proxy_request() -> Response | None:
    """Handle every request here, before routing, unless it is for the system API or the dashboard."""
    if is_system_request(request) or is_dashboard_request(request):
        return None
    paastis = current_app.extensions["paastis"]
    return serve(paastis.lifecycle, paastis.proxy, paastis.registry, paastis.gate, paastis.routes)


def serve(
    lifecycle: Lifecycle, proxy: Proxy, registry: Any, gate: SleepGate | None = None, routes: Routes | None = None
) -> Response:
    if VIA in request.headers.get("Via", ""):  # whatever its Host: an app's upstream leads back to paastis
        host = request.headers.get("Host", "")
        return error_response(508, f"request loop: Host {host!r} leads back to paastis (is paastis an upstream?)")
    host = request.headers.get("Host")
    try:
        key, routed = route_key(host, proxy.domains, routes)
    except BadHost as error:
        return error_response(400, str(error))
    except NoAppKey as error:
        if request.headers.get("PaastisProxyTarget", "").lower() == "system":  # meant for the admin API, which is off
            return error_response(404, "the admin API is off (ROUTING_SYSTEM_API_ENABLED)")
        return error_response(404, routing_help(error.host, _example_app(lifecycle)))
    except NotServed as error:
        return error_response(404, str(error))
    if routed and not is_valid_app_key(key):
        return error_response(404, f"host {host!r} is routed to {key!r}, which is not an app name")
    with about_app(key):
        return _serve_key(lifecycle, proxy, registry, gate, key, host if routed else None)


def _serve_key(
    lifecycle: Lifecycle, proxy: Proxy, registry: Any, gate: SleepGate | None, key: str, routed_host: str | None = None
) -> Response:
    try:
        app = lifecycle.resolve(key)
    except WakeError as error:
        if routed_host is not None and error.status == 404:  # the route is right there in paastis.yml: say so
            return error_response(404, f"host {routed_host!r} is routed to app {key!r}, which does not exist")
        return wake_failure(error)
    screened = gate.screen(request, app, lambda: _awake(lifecycle, app)) if gate is not None else None
    if screened is not None and screened is not PASSIVE:
        return screened
    if screened is PASSIVE:  # proxied, but leaves no trace in the registry: the idle timer runs on
        return forward(lifecycle, proxy, app, wake=False)
    token = registry.begin_request(app.key)
    try:
        response = _serve_app(lifecycle, proxy, registry, app)
    except BaseException:
        registry.end_request(app.key, token)
        raise
    proxy.metrics.proxied_requests.labels(app.key, str(response.status_code), proxy.metrics.provider_of(app)).inc()
    response.call_on_close(lambda: registry.end_request(app.key, token))
    return response


def _example_app(lifecycle: Lifecycle) -> str:
    """An app this paastis knows, for examples (from the cached listing; a listing failure is no reason to fail)."""
    try:
        apps = lifecycle.lookup.directory.apps()
    except Exception:  # noqa: BLE001 - the example is a courtesy
        apps = []
    return apps[0].key if apps else "my-app"


def _serve_app(lifecycle: Lifecycle, proxy: Proxy, registry: Any, app: AppInfo) -> Response:
    try:
        group = lifecycle.group(app)
        if asks_wake_status(request):  # the waiting page polling: paastis answers, never the app
            return waiting_room().status(lifecycle, app, lifecycle.is_awake(group))
        if not lifecycle.is_awake(group):
            if wants_waiting_page(proxy.wake_strategy_of(app.key), request):
                return waiting_room().welcome(lifecycle, app)
            lifecycle.ensure_awake(app)
        for linked in group[1:]:  # keeps a back awake under its front; the app's own access ends its request
            registry.touch(linked.key)
        return forward(lifecycle, proxy, app)
    except WakeError as error:
        return wake_failure(error)


def _awake(lifecycle: Lifecycle, app: AppInfo) -> bool:
    try:
        return lifecycle.is_awake(lifecycle.group(app))
    except WakeError:
        return False


def forward(lifecycle: Lifecycle, proxy: Proxy, app: AppInfo, wake: bool = True) -> Response:
    """Send the request upstream; if the app turns out to be down, wake it and try once more.

    A passive visitor (``wake=False``) never wakes an app: it gets the upstream's failure.
    """
    if upgrade_tokens(request):  # WebSocket and other upgrades: see paastis.upgrade
        return current_app.extensions["paastis"].upgrades.forward(lifecycle, proxy, app, wake)
    body = request_body(request)
    target = raw_target(request)
    read_timeout = proxy.read_timeout_of(app.key)
    for attempt in (1, 2):
        upstream = lifecycle.upstream_url(app)
        try:
            headers = request_headers(request, upstream, proxy.trusted)
            response = proxy.send(request.method, upstream, target, headers, body, read_timeout)
        except ClientBodyError as error:
            log.warning("client error on %s %s for %s: %s", request.method, target[:200], app.key, error.message)
            return error_response(error.status, error.message)
        except requests.ConnectionError as error:
            failure = _retryable_failure(error, request.method)
            if attempt == 2 or not wake or failure is None or (body is not None and body.started):
                log.warning("upstream of %s failed: %s", app.key, error)
                return error_response(502, f"app {app.key!r} did not answer: {_reason(error)}")
            log.info("upstream of %s %s: checking and waking it, then trying once more", app.key, failure)
            lifecycle.ensure_awake(app, recheck=True)
            continue
        except requests.Timeout as error:
            return error_response(504, f"app {app.key!r} did not answer in time: {_reason(error)}")
        except requests.RequestException as error:
            return error_response(502, f"app {app.key!r} could not be reached: {_reason(error)}")
        retry_safe = wake and attempt == 1 and (body is None or not body.started)
        if retry_safe and lifecycle.router_says_down(app, response.status_code):
            response.close()
            log.info("the platform says %s is down: waking it", app.key)
            lifecycle.ensure_awake(app, recheck=True)
            continue
        break
    relayed = PassThroughResponse(
        relay(response),
        status=f"{response.status_code} {response.reason or ''}".strip(),
        headers=response_headers(response),
    )
    relayed.call_on_close(response.close)  # also when the body is never iterated (HEAD, client gone)
    return relayed


def _retryable_failure(error: requests.ConnectionError, method: str) -> str | None:
    """Why trying again is safe, or None.

    A refused connection carried nothing, whatever the method. An idempotent request may
    also be sent again when the app hung up before its first response byte (reset, or
    closed at once). The caller still refuses once any byte of a request body was sent.
    """
    cause = error.args[0] if error.args else None
    reason = getattr(cause, "reason", cause)
    if isinstance(reason, NewConnectionError):
        return "refused the connection"
    if method in IDEMPOTENT and isinstance(cause, ProtocolError):
        hung_up = cause.args[1] if len(cause.args) > 1 else None
        if isinstance(hung_up, ConnectionResetError | http.client.RemoteDisconnected):
            return "hung up before answering"
    return None


def _reason(error: Exception) -> str:
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return str(reason or error).split(": ")[-1][:200]
