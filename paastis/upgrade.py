"""Upgraded connections (WebSocket, or any other ``Upgrade`` the app accepts): the handshake.

The request thread relays the client's handshake to the app over a socket of its own
(TLS verified as for every upstream), reads the app's answer, and then either
- passes a refusal on unchanged (any status but 101, body included), or
- takes the client connection over from gunicorn (see :mod:`paastis.takeover`), sends the
  app's ``101 Switching Protocols`` back verbatim, and hands both sockets to the
  :class:`~paastis.relay.Relay`, freeing the thread for other requests.

The upstream is the app's, from the lifecycle, as for any request: never from the request.
"""

from __future__ import annotations

import http.client
import io
import logging
import os
import socket
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from flask import Response, request
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.util import SKIP_HEADER

from .forwarding import TrustedFronts
from .lifecycle import Lifecycle
from .places import PER_CLIENT
from .providers import AppInfo
from .proxy import (
    CHUNK,
    NOT_RETURNED,
    ClientBodyError,
    PassThroughResponse,
    Proxy,
    error_response,
    hop_by_hop,
    raw_target,
    request_body,
    request_headers,
    upgrade_tokens,
)
from .relay import Relay
from .takeover import TAKEOVER

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024  # bytes of response head an app may send


class UpstreamError(Exception):
    """The app could not be reached or did not answer; ``status`` is what the client gets."""

    def __init__(self, status: int, message: str, refused: bool = False):
        self.status = status
        self.message = message
        self.refused = refused  # nothing was sent: waking the app and trying again is safe
        super().__init__(message)


class Upgrades:
    """Hands upgraded connections from request threads to the relay, within ``MAX_WEBSOCKETS``."""

    def __init__(self, relay: Relay, ca_bundle: str | None = None):
        self.relay = relay
        self.tls = tls_context(ca_bundle)

    def open(self, app: str) -> int:
        return self.relay.open(app)

    def close_app(self, app: str) -> None:
        self.relay.close_app(app)

    def close(self) -> None:
        self.relay.close()

    def forward(self, lifecycle: Lifecycle, proxy: Proxy, app: AppInfo, wake: bool = True) -> Response:
        """Relay the handshake of the current request to ``app`` (awake); see the module docstring.

        A passive visitor (``wake=False``) never wakes the app: it gets the upstream's failure.
        """
        takeover = request.environ.get(TAKEOVER)
        if takeover is None:
            return error_response(501, "upgraded connections need paastis's gunicorn worker (see docs/websockets.md)")
        peer = proxy.trusted.client_address(request.environ)
        refused = self.relay.reserve(app.key, peer)
        if refused is not None:
            return self._refusal(app, peer, refused)
        try:
            return self._forward(lifecycle, proxy, app, takeover, wake, peer)
        finally:
            if not request.environ.get("paastis.upgraded"):
                self.relay.release(app.key, peer)

    def _refusal(self, app: AppInfo, peer: str, refused: str) -> Response:
        """Past an instance's limit: 503 naming it (counted in ``paastis_refused_requests_total``)."""
        self.relay.metrics.refused_requests.labels(refused).inc()
        if refused == PER_CLIENT:
            limit = self.relay.places.per_client
            message = f"too many upgraded connections open from {peer} (MAX_WEBSOCKETS_PER_CLIENT={limit})"
        else:
            message = f"too many upgraded connections open (MAX_WEBSOCKETS={self.relay.max_connections})"
        log.warning("upgrade to %s refused: %s", app.key, message)
        response = error_response(503, message)
        response.headers["Retry-After"] = "1"
        return response

    def _forward(
        self, lifecycle: Lifecycle, proxy: Proxy, app: AppInfo, takeover: Any, wake: bool, peer: str
    ) -> Response:
        body = request_body(request)
        timeouts = (proxy.connect_timeout, proxy.read_timeout_of(app.key))
        for attempt in (1, 2):
            try:
                sock, head, rest = self._handshake(lifecycle.upstream_url(app), body, timeouts, proxy.trusted)
            except ClientBodyError as error:
                log.warning("client error on upgrade to %s: %s", app.key, error.message)
                return error_response(error.status, error.message)
            except UpstreamError as error:
                if attempt == 2 or not wake or not error.refused:
                    log.warning("upgrade to %s failed: %s", app.key, error.message)
                    return error_response(error.status, f"app {app.key!r} {error.message}")
                log.info("upstream of %s refused the connection: checking and waking it", app.key)
                lifecycle.ensure_awake(app, recheck=True)
                continue
            status = status_code(head)
            if status == 101:
                return self._switch(app, sock, head, rest, takeover, counts=wake, peer=peer)
            if wake and attempt == 1 and body is None and lifecycle.router_says_down(app, status):
                sock.close()
                log.info("the platform says %s is down: waking it", app.key)
                lifecycle.ensure_awake(app, recheck=True)
                continue
            return refusal(sock, head + rest)
        raise AssertionError("unreachable")

    def _handshake(
        self, upstream: str, body: Any, timeouts: tuple[float, float], trusted: TrustedFronts | None = None
    ) -> tuple[socket.socket, bytes, bytes]:
        """Send the request head (and body) to the app; return its socket and its answer's head.

        ``timeouts``: to connect, then for the app's answer (as for other requests).
        """
        sock = self._connect(upstream, *timeouts)
        try:
            headers = request_headers(request, upstream, trusted)
            if headers.get("User-Agent") == SKIP_HEADER:
                del headers["User-Agent"]  # requests' way of sending none; here none is simply not written
            headers["Connection"] = "Upgrade"
            headers["Upgrade"] = ", ".join(upgrade_tokens(request))
            send_request(sock, request.method, urlsplit(upstream).path + raw_target(request), headers, body)
            head, rest = read_head(sock)
        except ClientBodyError:
            sock.close()  # the app sees an aborted request, never a whole one
            raise
        except TimeoutError:
            sock.close()
            raise UpstreamError(504, "did not answer in time") from None
        except (OSError, ValueError) as error:
            sock.close()
            raise UpstreamError(502, f"did not answer: {error}") from None
        return sock, head, rest

    def _connect(self, upstream: str, connect_timeout: float, read_timeout: float) -> socket.socket:
        parts = urlsplit(upstream)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except TimeoutError:
            raise UpstreamError(504, "did not answer in time (connect)") from None
        except OSError as error:
            raise UpstreamError(502, f"did not answer: {error.strerror or error}", refused=True) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if parts.scheme == "https":
                sock = self.tls.wrap_socket(sock, server_hostname=host)
            sock.settimeout(read_timeout)
        except ssl.SSLError as error:
            sock.close()
            raise UpstreamError(502, f"could not be reached: {error.reason or error}") from None
        except OSError as error:
            sock.close()
            raise UpstreamError(502, f"did not answer: {error}") from None
        return sock

    def _switch(
        self, app: AppInfo, sock: socket.socket, head: bytes, rest: bytes, takeover: Any, counts: bool, peer: str
    ) -> Response:
        """The app said 101: the client gets it verbatim, and the relay both sockets.

        A passive visitor's connection (``counts=False``) never counts as the app's activity.
        """
        chosen = header_value(head, "Upgrade").strip().lower()
        if chosen not in {token.lower() for token in upgrade_tokens(request)}:
            sock.close()
            return error_response(502, f"app {app.key!r} switched to {chosen or 'nothing'!r}, which was not asked for")

        def handoff(client: socket.socket, pending: bytes) -> None:
            """Runs once this request is over (its in-flight count given back)."""
            try:
                self.relay.adopt(
                    app.key,
                    client,
                    sock,
                    websocket=websocket,
                    head=head,
                    to_client=rest,
                    to_upstream=pending,
                    counts=counts,
                    peer=peer,
                )
            except BaseException:
                sock.close()
                self.relay.release(app.key, peer)
                raise
            log.debug("%s: %s connection handed to the relay", app.key, chosen)

        websocket = chosen == "websocket"
        takeover(handoff)
        request.environ["paastis.upgraded"] = True  # the place booked in the relay is the handoff's now
        return PassThroughResponse(status=101)  # never written: the connection is the relay's now


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Verified TLS to apps, trusting what requests trusts (``REQUESTS_CA_BUNDLE`` or certifi)."""
    where = ca_bundle or DEFAULT_CA_BUNDLE_PATH
    if os.path.isdir(where):
        context = ssl.create_default_context(capath=where)
    else:
        context = ssl.create_default_context(cafile=where)
    context.set_alpn_protocols(["http/1.1"])
    return context


def send_request(sock: socket.socket, method: str, target: str, headers: dict[str, str], body: Any) -> None:
    """An HTTP/1.1 request head, then the body as the client sent it (by length, or chunked)."""
    if body is not None:
        if hasattr(body, "len"):
            headers["Content-Length"] = str(body.len)
        else:
            headers["Transfer-Encoding"] = "chunked"
    lines = [f"{method} {target} HTTP/1.1"] + [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if body is None:
        return
    for chunk in body:
        sock.sendall(chunk if hasattr(body, "len") else b"%x\r\n%s\r\n" % (len(chunk), chunk))
    if not hasattr(body, "len"):
        sock.sendall(b"0\r\n\r\n")


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The app's status line and headers, and whatever it sent after them."""
    buffer = bytearray()
    while True:
        end = buffer.find(b"\r\n\r\n", max(0, len(buffer) - CHUNK - 3))
        if end >= 0:
            return bytes(buffer[: end + 4]), bytes(buffer[end + 4 :])
        if len(buffer) > MAX_HEAD:
            raise ValueError(f"its answer's head is over {MAX_HEAD} bytes")
        chunk = sock.recv(CHUNK)
        if not chunk:
            raise ConnectionError("the connection closed before an answer")
        buffer += chunk


def status_code(head: bytes) -> int:
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return 502
    return int(parts[1])


def header_value(head: bytes, name: str) -> str:
    message = http.client.parse_headers(io.BytesIO(head.split(b"\r\n", 1)[1]))
    return message.get(name, "")


def refusal(sock: socket.socket, received: bytes) -> Response:
    """The app's answer to an upgrade it did not accept, passed on as for any request."""
    answer = http.client.HTTPResponse(_Replay(sock, received), method=request.method)  # type: ignore[arg-type]
    try:
        answer.begin()
    except (OSError, http.client.HTTPException) as error:
        sock.close()
        return error_response(502, f"the app's answer could not be read: {error}")
    excluded = hop_by_hop(_Headers(answer.msg)) | NOT_RETURNED
    headers = [(name, value) for name, value in answer.msg.items() if name.lower() not in excluded]
    relayed = PassThroughResponse(_body(answer), status=f"{answer.status} {answer.reason}".strip(), headers=headers)
    relayed.call_on_close(sock.close)
    return relayed


def _body(answer: http.client.HTTPResponse) -> Iterator[bytes]:
    try:
        while chunk := answer.read1(CHUNK):
            yield chunk
    finally:
        answer.close()


class _Headers:
    """``get_all`` that answers a list, to share :func:`paastis.proxy.hop_by_hop`."""

    def __init__(self, message: http.client.HTTPMessage):
        self.message = message

    def get_all(self, name: str) -> list[str]:
        return self.message.get_all(name) or []


class _Replay:
    """A socket for :class:`http.client.HTTPResponse` that first gives back the bytes already read."""

    def __init__(self, sock: socket.socket, received: bytes):
        self.sock = sock
        self.received = received

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_PrefixedReader(self.sock, self.received))


class _PrefixedReader(io.RawIOBase):
    def __init__(self, sock: socket.socket, prefix: bytes):
        self.sock = sock
        self.prefix = memoryview(prefix)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.prefix:
            size = min(len(buffer), len(self.prefix))
            buffer[:size] = self.prefix[:size]
            self.prefix = self.prefix[size:]
            return size
        return self.sock.recv_into(buffer)
