"""paastis's gunicorn worker: gthread, where a slow client cannot hold a thread.

gunicorn's gthread worker hands a connection to a thread as soon as its first byte
arrives, and the thread then reads the request head at whatever pace the client sends
it: 32 clients sending a byte a second hold the 32 threads, and every app stops being
served. This worker reads request heads in its main loop instead (non-blocking, in the
same poller gthread uses for kept-alive connections) and hands a connection to a thread
only once its whole head has arrived, so a thread only ever parses a head already here.

Two deadlines (``Settings``, from the environment):

- ``CLIENT_HEADER_TIMEOUT``: a request head must be complete this many seconds after its
  connection was accepted (or, on a kept-alive connection, after its first byte). Past it
  the connection is closed, with a ``408`` when some of the head had arrived.
- ``CLIENT_BODY_TIMEOUT``: while a thread reads a request body, this many seconds without
  a byte raise :class:`ClientBodyTimeout` (a ``TimeoutError``) in whoever reads it; the
  proxy answers ``408`` and aborts the upload.

How the pieces fit, for whoever extends this class (socket takeover after a ``101``, say):

- :meth:`accept` and :meth:`on_client_socket_readable` send a connection to
  :meth:`read_head` instead of the thread pool; :meth:`murder_pending` also expires heads.
- :meth:`handle` (in a thread) pushes the bytes read so far back into gunicorn's parser and
  installs a :class:`TimedUnreader`, then runs gthread's own ``handle``: parsing, the WSGI
  call, keep-alive, errors, HTTP/2 are all gunicorn's.
- :meth:`handle_request` switches the connection's reads from the head deadline to the body timeout.

Connections gunicorn terminates TLS for (``certfile``) or sniffs for HTTP/2 are left to
gthread's own path: paastis is meant to sit behind the platform's router, which does both.
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import socket
import threading
import time
from functools import partial
from typing import Any

from gunicorn.http.unreader import SocketUnreader
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import TConn, ThreadWorker

from . import startup
from .config import Settings
from .takeover import TakeoverMixin

HEAD_READ = 8 * 1024  # bytes per recv() while a head arrives (gunicorn reads 8 KiB at a time too)
MAX_POLLED_HEAD = 64 * 1024  # beyond this, the thread reads the rest (still under the head deadline)
WAIT, READY, GONE = object(), object(), object()  # what one read of a head found
RESPONSE_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class ClientHeadTimeout(Exception):
    """The request head did not arrive within ``CLIENT_HEADER_TIMEOUT`` (raised in a thread's parse)."""


class ClientBodyTimeout(TimeoutError):
    """No byte of the request body for ``CLIENT_BODY_TIMEOUT`` seconds.

    A ``TimeoutError``, so gunicorn's own body drain treats it as it treats a socket timeout.
    """


class Connection(TConn):
    """gthread's connection, plus the head bytes read by the main loop and the head deadline."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any):
        super().__init__(cfg, sock, client, server)
        self.head = bytearray()
        self.head_deadline = 0.0
        self.timed = False  # its heads are read by the main loop, its reads bounded by TimedUnreader


class TimedUnreader(SocketUnreader):
    """gunicorn's socket reader, with a deadline for the head and a silence timeout for the body.

    The common case costs nothing: a ``recv`` that finds data returns it at once. Only when
    the socket has nothing does it wait, in ``poll``, for at most the time left.
    """

    def __init__(self, sock: socket.socket, body_timeout: float):
        super().__init__(sock)
        self.body_timeout = body_timeout
        self.head_deadline: float | None = None  # set while a head is read; None while a body is

    def chunk(self, size_hint: int | None = None) -> bytes:
        size = self.mxchunk
        if size_hint and size_hint > size:
            size = min(size_hint, self.max_body_chunk)
        try:
            return self.sock.recv(size, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            pass
        self._wait()
        return self.sock.recv(size)

    def _wait(self) -> None:
        if self.head_deadline is not None:
            timeout = self.head_deadline - time.monotonic()
        else:
            timeout = self.body_timeout
        own = self.sock.gettimeout()  # gunicorn bounds its drain of an unread body this way
        if own is not None:
            timeout = min(timeout, own)
        if timeout > 0 and wait_readable(self.sock, timeout):
            return
        if own is not None and own <= timeout:
            raise TimeoutError("timed out")  # the drain's own bound, as the socket would have said
        if self.head_deadline is not None:
            raise ClientHeadTimeout("the request head did not arrive in time (CLIENT_HEADER_TIMEOUT)")
        raise ClientBodyTimeout(f"no byte of the request body for {self.body_timeout:g}s (CLIENT_BODY_TIMEOUT)")


def wait_readable(sock: socket.socket, timeout: float) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(timeout * 1000))


def head_complete(head: bytearray, searched_from: int) -> bool:
    """The empty line that ends a head has arrived (CRLF, or a bare LF that gunicorn will refuse)."""
    start = max(0, searched_from - 3)
    return head.find(b"\n\r\n", start) >= 0 or head.find(b"\n\n", start) >= 0


class PaastisWorker(TakeoverMixin, ThreadWorker):
    """gthread with request heads read by the main loop, under ``CLIENT_HEADER_TIMEOUT``.

    :class:`~paastis.takeover.TakeoverMixin` lets the app take a connection over after a 101 (WebSockets).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Made in the master, which checked the settings: the ones it accepted last (paastis.reloads).
        settings = startup.accepted.settings if startup.accepted else Settings.from_env()
        self.header_timeout = settings.client_header_timeout
        self.body_timeout = settings.client_body_timeout
        self.drain_timeout = settings.reload_drain_timeout
        self.draining = False  # replaced by a reload: serve what we hold, accept nothing new
        # Connections whose head is arriving, oldest first; every deadline is "start + header timeout",
        # so the first one not yet expired ends the search.
        self.heads: dict[Connection, None] = {}

    # -- reloads: a replaced worker drains ---------------------------------------

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: paastis stops (close everything, within gunicorn's grace), or a reload replaces us (drain).

        A replaced worker keeps its requests, the requests waiting for a wake and its open
        WebSockets until they end or ``PAASTIS_RELOAD_DRAIN_TIMEOUT`` passes; new workers
        take every new connection. Its idle checks stop at once: the new workers run them.
        """
        super().handle_exit(sig, frame)
        status = startup.reload_status
        if self.draining or status is None or not status.replacing(os.getpid()):
            return
        self.draining = True
        self.cfg.set("graceful_timeout", max(1, int(self.drain_timeout)))  # gthread's wait for requests in flight
        self.log.info("paastis: worker %s replaced by a reload: draining what it serves", os.getpid())
        threading.Thread(target=self._stop_idle_checks, name="paastis-drain", daemon=True).start()

    def _stop_idle_checks(self) -> None:
        paastis = self._paastis()
        if paastis is not None:
            paastis.supervisor.stop()

    def _paastis(self) -> Any:
        return getattr(getattr(self, "wsgi", None), "extensions", {}).get("paastis")

    def run(self) -> None:
        started = time.monotonic()
        super().run()  # returns once the requests in flight are done (or the grace is over)
        if self.draining:
            self._drain_websockets(started + self.drain_timeout)

    def _drain_websockets(self, deadline: float) -> None:
        """Open WebSockets outlive the reload: wait for them to end, still telling the master we are alive."""
        paastis = self._paastis()
        relay = paastis.upgrades.relay if paastis is not None else None
        while relay is not None and relay.total() > 0 and time.monotonic() < deadline and self.is_parent_alive():
            self.notify()
            time.sleep(0.5)
        self.log.info("paastis: replaced worker %s drained", os.getpid())

    # -- main loop: accepting and reading heads --------------------------------

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, addr = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = Connection(self.cfg, sock, addr, listener.getsockname())  # non-blocking from here
        if self.cfg.is_ssl or negotiation.prior_knowledge_allowed(self.cfg, addr):
            self.enqueue_req(conn)  # gthread's own path (see the module docstring)
            return
        self.read_head(conn)

    def on_client_socket_readable(self, conn: Connection, client: socket.socket) -> None:
        """A kept-alive connection has bytes: its next head is read here too, not in a thread."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        if conn.is_http2 or self.cfg.is_ssl:
            self.enqueue_req(conn)
            return
        self.read_head(conn)

    def read_head(self, conn: Connection) -> None:
        """Read what is there now; hand the connection to a thread once the head is whole, else watch it."""
        conn.timed = True
        conn.head_deadline = time.monotonic() + self.header_timeout
        outcome = self._take_bytes(conn)
        if outcome is WAIT:
            self.heads[conn] = None
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_readable, conn))
        else:
            self._leave_main_loop(conn, outcome)

    def _on_head_readable(self, conn: Connection, sock: socket.socket) -> None:
        outcome = self._take_bytes(conn)
        if outcome is not WAIT:
            self.poller.unregister(conn.sock)
            del self.heads[conn]
            self._leave_main_loop(conn, outcome)

    def _take_bytes(self, conn: Connection) -> object:
        """One non-blocking read: the head is whole (READY), the client is gone (GONE), or WAIT for more."""
        try:
            data = conn.sock.recv(HEAD_READ)
        except (BlockingIOError, InterruptedError):
            return WAIT
        except OSError:
            return GONE
        if not data:
            return GONE
        searched = len(conn.head)
        conn.head += data
        if head_complete(conn.head, searched) or len(conn.head) > MAX_POLLED_HEAD:
            return READY
        return WAIT

    def _leave_main_loop(self, conn: Connection, outcome: object) -> None:
        if outcome is READY:
            conn.data_ready = True
            self.enqueue_req(conn)
        else:
            self._close(conn)

    def murder_pending(self) -> None:
        """gthread's expiry of deferred connections, plus heads past ``CLIENT_HEADER_TIMEOUT``.

        A stopping worker also closes the connections that have sent nothing yet.
        """
        super().murder_pending()
        now = time.monotonic()
        victims = []
        for conn in self.heads:
            if conn.head_deadline <= now or not (self.alive or conn.head):
                victims.append(conn)
            elif self.alive:
                break  # oldest first: the others expire later
        for conn in victims:
            self.poller.unregister(conn.sock)
            del self.heads[conn]
            if conn.head:
                self.log.info(
                    "client %s sent no complete request head within %gs (CLIENT_HEADER_TIMEOUT): closed",
                    _peer(conn.client),
                    self.header_timeout,
                )
                _send_quietly(conn.sock, RESPONSE_408)
            self._close(conn)

    def _close(self, conn: Connection) -> None:
        self.nr_conns -= 1
        conn.close()

    # -- threads: parsing and serving ------------------------------------------

    def handle(self, conn: Connection) -> Any:
        """Give gunicorn's parser the bytes read so far, under the head deadline, then serve as gthread does."""
        if getattr(conn, "timed", False):
            if not conn.initialized:
                conn.init()  # makes the socket blocking and the parser (gthread's handle does the rest)
            unreader = conn.parser.unreader
            if not isinstance(unreader, TimedUnreader):
                unreader = conn.parser.unreader = TimedUnreader(conn.sock, self.body_timeout)
            if conn.head:
                unreader.unread(bytes(conn.head))
                conn.head = bytearray()
            else:  # pipelined: the next head was read ahead with the last body
                conn.head_deadline = time.monotonic() + self.header_timeout
            unreader.head_deadline = conn.head_deadline
        return super().handle(conn)

    def handle_request(self, req: Any, conn: Connection) -> Any:
        """The head is parsed: from now on the body's silence timeout applies."""
        unreader = getattr(conn.parser, "unreader", None)
        if isinstance(unreader, TimedUnreader):
            unreader.head_deadline = None
        return super().handle_request(req, conn)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """A head that ran out of time while a thread read it: a 408 and a log line, not a 500."""
        if isinstance(exc, ClientHeadTimeout):
            self.log.info("client %s: %s: closed", _peer(addr), exc)
            _send_quietly(client, RESPONSE_408)
            return
        super().handle_error(req, client, addr, exc)


def _peer(addr: Any) -> str:
    return str(addr[0]) if isinstance(addr, tuple | list) and addr else "(unix socket)"


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.send(data, socket.MSG_DONTWAIT)
    except OSError:
        pass  # the client is gone or not reading: closing is all that is left
