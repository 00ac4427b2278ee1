"""gunicorn's gthread worker, extended so the app can take a client connection over.

After a ``101 Switching Protocols`` the connection no longer speaks HTTP: gunicorn must
neither write a response on it, nor keep it alive for another request, nor close it.
gthread has no such state (only its own HTTP/2 upgrade), so this mixin adds one. The app
finds ``environ["paastis.takeover"]`` and calls it with a *handoff*: once the app's response
is closed (so everything the request held, such as its in-flight count, is given back), the
handoff gets the client socket and the bytes the client already sent past its request, and
from then on the socket is the app's:

- the response the app returns is not written (the access log still shows a 101);
- the request's connection ends as far as gunicorn knows: it counts no longer against
  ``worker_connections``, is not put back in the keep-alive poller, and is not closed.

The mixin also raises the process's open-files limit to its hard limit, since each
upgraded connection holds two descriptors for as long as it lasts.
"""

from __future__ import annotations

import logging
import resource
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

TAKEOVER = "paastis.takeover"
DETACHED = object()


class TakeoverMixin:
    """For gthread workers (put it before ``ThreadWorker`` in the bases, as ``PaastisWorker`` does)."""

    def init_process(self) -> None:
        self._takeover = threading.local()
        raise_open_files_limit(self.log)  # type: ignore[attr-defined]
        super().init_process()  # type: ignore[misc]

    def load_wsgi(self) -> None:
        super().load_wsgi()  # type: ignore[misc]
        self.wsgi = TakeoverMiddleware(self.wsgi, self._takeover)

    def handle_request(self, req: Any, conn: Any) -> bool:
        self._takeover.conn = conn
        try:
            return super().handle_request(req, conn)  # type: ignore[misc]
        finally:
            self._takeover.conn = None

    def handle(self, conn: Any) -> Any:
        result = super().handle(conn)  # type: ignore[misc]
        return DETACHED if getattr(conn, "paastis_detached", False) else result

    def finish_request(self, conn: Any, fs: Any) -> None:
        if not fs.cancelled() and fs.exception() is None and fs.result() is DETACHED:
            self.nr_conns -= 1  # type: ignore[attr-defined]  # ours no more: not polled, not closed
            return
        super().finish_request(conn, fs)  # type: ignore[misc]


class TakeoverMiddleware:
    """Offers ``environ["paastis.takeover"]`` and, once it was used, keeps gunicorn off the socket.

    Attribute access goes through to the wrapped app, so gunicorn hooks that reach
    ``worker.wsgi.extensions`` keep working.
    """

    def __init__(self, app: Any, local: threading.local):
        self.app = app
        self.local = local

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    def __call__(self, environ: dict, start_response: Any) -> Any:
        conn = getattr(self.local, "conn", None)
        response = getattr(start_response, "__self__", None)  # gunicorn's Response for this request
        if conn is None or response is None or conn.sock is not environ.get("gunicorn.socket"):
            return self.app(environ, start_response)

        handoffs: list[Callable[[Any, bytes], None]] = []

        def takeover(handoff: Callable[[Any, bytes], None]) -> None:
            conn.paastis_detached = True
            handoffs.append(handoff)

        environ[TAKEOVER] = takeover
        result = self.app(environ, start_response)
        if not handoffs:
            return result
        try:
            if hasattr(result, "close"):
                result.close()
        finally:
            _silence(response)
            _hand_off(handoffs[0], conn)
        return []


def _hand_off(handoff: Callable[[Any, bytes], None], conn: Any) -> None:
    try:
        handoff(conn.sock, conn.parser.unreader.take_buffered())
    except Exception:  # noqa: BLE001 - the socket is ours alone now: nobody else would close it
        log.exception("taking a connection over failed: closing it")
        conn.sock.close()


def _silence(response: Any) -> None:
    """gunicorn's response for a taken-over connection: logged as a 101, never written, never kept alive."""
    response.status = "101 Switching Protocols"
    response.status_code = 101
    response.headers_sent = True
    response.chunked = False
    response.must_close = True


def raise_open_files_limit(log: Any) -> None:
    """Soft open-files limit up to the hard one: 1,000 WebSockets need 2,000 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY:
        wanted = max(soft, 1 << 20) if soft != resource.RLIM_INFINITY else soft
    else:
        wanted = hard
    if soft != resource.RLIM_INFINITY and wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-files limit from %d: %s", soft, error)
