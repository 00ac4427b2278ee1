"""paastis's gunicorn worker: gthread, where no client and no app can hold the threads others need.

gunicorn's gthread worker hands a connection to a thread as soon as its first byte arrives,
and the thread then reads the request at whatever pace the client sends it: 32 clients
sending a byte a second hold the 32 threads, and every app stops being served. This worker
does everything that waits on a client in its main loop instead (non-blocking, in the same
poller gthread uses for kept-alive connections), and gives a request a thread only once it is
ready to be served:

1. **The head** is read by the main loop, under ``CLIENT_HEADER_TIMEOUT``: a request head must be
   complete this many seconds after its connection was accepted (or, on a kept-alive
   connection, after its first byte). Past it the connection is closed, with a ``408`` when some
   of the head had arrived.
2. **The body** is buffered by the main loop too (up to ``BODY_IN_MEMORY`` bytes in memory, then in
   a temporary file) until it is complete or ``BODY_HANDOVER`` bytes have arrived: a client
   that sends that much is sending at speed, and the rest streams through the thread as before
   (a 256 MiB upload keeps flat memory). ``CLIENT_BODY_TIMEOUT`` seconds without a byte end it
   with a ``408``, before the app sees anything. While a thread reads the rest of a body, the
   same silence raises :class:`ClientBodyTimeout` (a ``TimeoutError``) in whoever reads it.
3. **Admission** (:mod:`paastis.admission`): the request's app is known from its ``Host``; it gets a
   thread now, or waits in its app's queue (holding no thread) until the fair share rule gives
   it one, or gets a ``503`` past ``QUEUE_TIMEOUT`` / ``MAX_QUEUED_PER_APP``, written from here.
4. **Closing**: a response that ends the connection is followed by a lingering close (RFC 9112
   §9.6: FIN first, then drain what the client still sends, for 2 s at most) that gthread does
   in the main loop, blocking everything for up to 2 s per connection; here it is one more
   non-blocking watch in the poller.

How the pieces fit, for whoever extends this class (socket takeover after a ``101``, say):

- :meth:`accept` and :meth:`on_client_socket_readable` send a connection to :meth:`read_head`
  instead of the thread pool; :meth:`murder_pending` also expires heads, bodies, queued requests
  and lingering closes; :meth:`finish_request` gives the request's place back and closes.
- :meth:`handle` (in a thread) pushes the bytes read so far back into gunicorn's parser and
  installs a :class:`TimedUnreader`, then runs gthread's own ``handle``: parsing, the WSGI
  call, keep-alive, errors, HTTP/2 are all gunicorn's.
- :meth:`handle_request` switches the connection's reads from the head deadline to the body timeout.

Connections gunicorn terminates TLS for (``certfile``) or sniffs for HTTP/2 are left to
gthread's own path: paastis is meant to sit behind the platform's router, which does both.
"""

from __future__ import annotations

import errno
import json
import os
import select
import selectors
import socket
import tempfile
import threading
import time
from collections import deque
from concurrent import futures
from functools import partial
from typing import IO, Any

from gunicorn.http.unreader import SocketUnreader
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import _DEFER, STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from . import startup
from .admission import FULL, QUEUED, RUN, Admission, Waiting
from .config import Settings
from .places import SharedPlaces
from .request_head import ChunkedEnd, Head, app_key, parse_head
from .takeover import DETACHED, TakeoverMixin

HEAD_READ = 8 * 1024  # bytes per recv() while a head arrives (gunicorn reads 8 KiB at a time too)
BODY_READ = 64 * 1024  # bytes per recv() while a body is buffered
MAX_POLLED_HEAD = 64 * 1024  # beyond this, the thread reads the rest (still under the head deadline)
BODY_IN_MEMORY = 64 * 1024  # bytes of head and body kept in memory per connection; the rest goes to a file
BODY_HANDOVER = 1024 * 1024  # bytes of body buffered before the thread takes over (the client is fast)
LINGER_TIMEOUT = 2.0  # seconds a closed connection drains what its client still sends (as gunicorn does)
LINGER_DRAIN = 64 * 1024  # bytes drained at most (as gunicorn does)
MAX_LINGERING = 10_000  # lingering closes at once; past it the oldest is closed outright
SYSTEM_THREADS = 8  # threads beyond the apps' for requests that are not for an app (system API, dashboard)
BUSY_RETRY_AFTER = 1  # seconds a refused client is asked to wait
WAIT, READY, GONE = object(), object(), object()  # what one read of a head found
RESPONSE_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class ClientHeadTimeout(Exception):
    """The request head did not arrive within ``CLIENT_HEADER_TIMEOUT`` (raised in a thread's parse)."""


class ClientBodyTimeout(TimeoutError):
    """No byte of the request body for ``CLIENT_BODY_TIMEOUT`` seconds.

    A ``TimeoutError``, so gunicorn's own body drain treats it as it treats a socket timeout.
    """


class Connection(TConn):
    """gthread's connection, plus what the main loop read of its request and where that request stands."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any):
        super().__init__(cfg, sock, client, server)
        self.head = bytearray()  # the head, and the first BODY_IN_MEMORY bytes of what follows it
        self.head_deadline = 0.0
        self.timed = False  # its heads are read by the main loop, its reads bounded by TimedUnreader
        self.spool: IO[bytes] | None = None  # body bytes past BODY_IN_MEMORY
        self.body = 0  # body bytes buffered so far
        self.body_left: int | None = None  # Content-Length still to come
        self.chunks: ChunkedEnd | None = None
        self.body_deadline = 0.0
        self.key: str | None = None  # the app the request is for (None: not for an app)
        self.admitted = False  # holds a place in the admission count until its thread is done
        self.waiting: Waiting | None = None  # its place in its app's queue
        self.watched = False  # registered in the poller while queued (to notice a client leaving)

    def reset(self) -> None:
        """Between two requests of a kept-alive connection."""
        self.drop_spool()
        self.body, self.body_left, self.chunks = 0, None, None
        self.key, self.waiting = None, None

    def drop_spool(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def close(self, graceful: bool = False) -> None:
        self.drop_spool()
        super().close(graceful)


class TimedUnreader(SocketUnreader):
    """gunicorn's socket reader, with a deadline for the head and a silence timeout for the body.

    The common case costs nothing: a ``recv`` that finds data returns it at once. Only when
    the socket has nothing does it wait, in ``poll``, for at most the time left. Body bytes the
    main loop spooled to a file are read from it first.
    """

    def __init__(self, sock: socket.socket, body_timeout: float):
        super().__init__(sock)
        self.body_timeout = body_timeout
        self.head_deadline: float | None = None  # set while a head is read; None while a body is
        self.spool: IO[bytes] | None = None

    def chunk(self, size_hint: int | None = None) -> bytes:
        size = self.mxchunk
        if size_hint and size_hint > size:
            size = min(size_hint, self.max_body_chunk)
        if self.spool is not None:
            data = self.spool.read(size)
            if data:
                return data
            self.spool.close()
            self.spool = None
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
    """gthread with heads and slow bodies read by the main loop, a fair per-app queue, and no blocking close.

    :class:`~paastis.takeover.TakeoverMixin` lets the app take a connection over after a 101 (WebSockets).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Made in the master, which checked the settings: the ones it accepted last (paastis.reloads).
        settings = startup.accepted.settings if startup.accepted else Settings.from_env()
        self.settings = settings
        self.header_timeout = settings.client_header_timeout
        self.body_timeout = settings.client_body_timeout
        self.drain_timeout = settings.reload_drain_timeout
        self.draining = False  # replaced by a reload: serve what we hold, accept nothing new
        # Connections whose head is arriving, oldest first; every deadline is "start + header timeout",
        # so the first one not yet expired ends the search.
        self.heads: dict[Connection, None] = {}
        self.bodies: dict[Connection, None] = {}  # connections whose body is being buffered
        self.lingering: deque[tuple[float, socket.socket]] = deque()  # oldest first
        self.lingering_drained: dict[socket.socket, int] = {}
        self.admission = Admission(
            self.cfg.threads,
            settings.max_in_flight_per_app,
            settings.max_queued_per_app,
            lambda key: settings.queue_timeout,
        )
        self.paastis: Any = None  # the app's object graph, once loaded

    def get_thread_pool(self) -> futures.ThreadPoolExecutor:
        """Room for the fair share rule's extra threads, and for system requests (see :mod:`paastis.admission`)."""
        return futures.ThreadPoolExecutor(max_workers=self.admission.max_threads + SYSTEM_THREADS)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        extensions = getattr(self.wsgi, "extensions", {})
        self.paastis = extensions.get("paastis")
        if self.paastis is not None:
            self._share_websocket_counts()
            rules, lifecycle = self.paastis.rules, self.paastis.lifecycle
            self.admission.queue_timeout_of = lambda key: rules.policy(key).queue_timeout
            self.admission.waking = lifecycle.starting

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

    def _share_websocket_counts(self) -> None:
        """Count WebSockets in the memory gunicorn's master shares with every worker (``post_fork``)."""
        table = getattr(self, "paastis_websockets", None)
        if table is None:
            return  # not started by paastis's gunicorn.conf.py: this worker counts alone
        relay, settings = self.paastis.upgrades.relay, self.settings
        try:
            relay.places = SharedPlaces(table, settings.max_websockets, settings.max_websockets_per_client)
        except RuntimeError as error:
            self.log.warning("paastis: %s: this worker counts its WebSockets alone", error)

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
        """Read what is there now; go on once the head is whole, else watch the connection."""
        conn.timed = True
        conn.head_deadline = time.monotonic() + self.header_timeout
        outcome = READY if head_complete(conn.head, 0) else self._take_bytes(conn)
        if outcome is WAIT:
            self.heads[conn] = None
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_readable, conn))
        else:
            self._leave_head(conn, outcome)

    def _on_head_readable(self, conn: Connection, sock: socket.socket) -> None:
        outcome = self._take_bytes(conn)
        if outcome is not WAIT:
            self.poller.unregister(conn.sock)
            del self.heads[conn]
            self._leave_head(conn, outcome)

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

    def _leave_head(self, conn: Connection, outcome: object) -> None:
        if outcome is READY:
            self._head_done(conn)
        else:
            self._close(conn)

    # -- main loop: buffering bodies -------------------------------------------

    def _head_done(self, conn: Connection) -> None:
        """The head is here: note its app, then buffer its body (if it has one the loop can follow) or admit it."""
        try:
            head = parse_head(conn.head)
        except Exception:  # noqa: BLE001 - the main loop serves everyone: a thread's parser will judge this head
            self.log.exception("reading a request head in the main loop failed: a thread takes it as it is")
            self._admit(conn)
            return
        settings = self.settings
        routes = getattr(self.paastis, "routes", None)
        conn.key = app_key(head, settings.system_api_enabled, settings.dashboard_host, settings.domains, routes)
        if head.unclear or head.expect_continue or not head.has_body:
            self._admit(conn)  # nothing to wait for (or gunicorn answers: 100 Continue, or a 400)
            return
        self._start_body(conn, head)

    def _start_body(self, conn: Connection, head: Head) -> None:
        if head.chunked:
            conn.chunks = ChunkedEnd()
        else:
            conn.body_left = head.content_length
        if self._body_bytes(conn, bytes(conn.head[head.size :])):
            self._admit(conn)
            return
        conn.body_deadline = time.monotonic() + self.body_timeout
        self.bodies[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_body_readable, conn))

    def _body_bytes(self, conn: Connection, data: bytes) -> bool:
        """Count body bytes just buffered; True once the thread should take over (complete, fast, or unclear)."""
        conn.body += len(data)
        if conn.chunks is not None:
            try:
                done = conn.chunks.feed(data) >= 0
            except ValueError:
                return True  # gunicorn's parser will say what is wrong with it
        else:
            assert conn.body_left is not None
            conn.body_left -= len(data)
            done = conn.body_left <= 0
        return done or conn.body >= BODY_HANDOVER

    def _on_body_readable(self, conn: Connection, sock: socket.socket) -> None:
        try:
            data = conn.sock.recv(BODY_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self._keep(conn, data)
            conn.body_deadline = time.monotonic() + self.body_timeout
            if not self._body_bytes(conn, data):
                return
        # complete, fast, or the client ended its side early: a thread takes it (a short body gets its 400)
        self.poller.unregister(conn.sock)
        del self.bodies[conn]
        self._admit(conn)

    def _keep(self, conn: Connection, data: bytes) -> None:
        """Body bytes in memory up to ``BODY_IN_MEMORY`` per connection, then in a temporary file."""
        if conn.spool is None and len(conn.head) + len(data) <= BODY_IN_MEMORY:
            conn.head += data
            return
        if conn.spool is None:
            conn.spool = tempfile.TemporaryFile(prefix="paastis-body-")
        conn.spool.write(data)

    # -- main loop: admission --------------------------------------------------

    def _admit(self, conn: Connection) -> None:
        """A request is ready: a thread now, or its app's queue, or a 503 when that queue is full."""
        verdict, waiting = self.admission.offer(conn.key, conn)
        if verdict is RUN:
            self._dispatch(conn, 0.0)
        elif verdict is QUEUED:
            conn.waiting = waiting
            conn.watched = True  # a client that leaves while it waits frees its place
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_queued_readable, conn))
            self._gauge(conn.key)
        elif verdict is FULL:
            self._refuse(
                conn,
                "queue_full",
                f"its queue is full ({self.settings.max_queued_per_app} requests waiting, MAX_QUEUED_PER_APP)",
            )

    def _dispatch(self, conn: Connection, waited: float) -> None:
        conn.admitted = conn.key is not None
        if conn.admitted and self.paastis is not None:
            self.paastis.metrics.queue_wait.observe(waited)
        conn.data_ready = True
        self.enqueue_req(conn)

    def _dispatch_ready(self) -> None:
        """Give freed threads to queued requests, in the admission's fair order."""
        now = time.monotonic()
        for waiting in self.admission.ready():
            conn: Connection = waiting.item
            self._unwatch(conn)
            conn.waiting = None
            self._gauge(conn.key)
            self._dispatch(conn, now - waiting.since)

    def _on_queued_readable(self, conn: Connection, sock: socket.socket) -> None:
        """A queued client sent more (kept for its thread) or left (its place is freed)."""
        self._unwatch(conn)
        try:
            gone = not conn.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            gone = False
        except OSError:
            gone = True
        if gone and conn.waiting is not None and self.admission.forget(conn.waiting):
            self._gauge(conn.key)
            self._close(conn)

    def _unwatch(self, conn: Connection) -> None:
        if conn.watched:
            conn.watched = False
            self.poller.unregister(conn.sock)

    def _expire_queued(self) -> None:
        for waiting in self.admission.expired():
            conn: Connection = waiting.item
            self._unwatch(conn)
            conn.waiting = None
            self._gauge(conn.key)
            timeout = self.admission.queue_timeout_of(waiting.key)
            self._refuse(conn, "queue_timeout", f"no thread was free for it within {timeout:g}s (QUEUE_TIMEOUT)")

    def _gauge(self, key: str | None) -> None:
        if key is not None and self.paastis is not None:
            metrics = self.paastis.metrics
            metrics.queued_requests.labels(key, metrics.provider_of_key(key)).set(self.admission.queued_for(key))

    def _refuse(self, conn: Connection, reason: str, why: str) -> None:
        """The only refusals: a 503 naming the app, with Retry-After, written without waiting, then a close."""
        key = conn.key or ""
        if self.admission.should_warn(key):
            self.log.warning("app %s: answering 503 to requests that cannot wait: %s", key, why)
        if self.paastis is not None:
            self.paastis.metrics.refused_requests.labels(reason).inc()
            metrics = self.paastis.metrics
            metrics.proxied_requests.labels(key, "503", metrics.provider_of_key(key)).inc()
        body = json.dumps({"error": f"app {key!r} is busy: {why}; retry shortly", "status": 503}) + "\n"
        _send_quietly(conn.sock, busy_response(body))
        self.nr_conns -= 1
        conn.drop_spool()
        self._linger(conn.sock)

    # -- threads done: places given back, connections kept or closed ------------

    def finish_request(self, conn: Any, fs: Any) -> None:
        """The request's place goes back to the queues; a closing connection lingers without blocking the loop."""
        if getattr(conn, "admitted", False):
            conn.admitted = False
            self.admission.done(conn.key)
        try:
            result = fs.result() if not fs.cancelled() else False
        except Exception:  # noqa: BLE001 - gthread closes the connection in this case too
            result = False
        if isinstance(conn, Connection) and conn.timed and result is not DETACHED and result is not _DEFER:
            if result:
                self._next_request(conn)
            else:
                self.nr_conns -= 1
                conn.drop_spool()
                self._linger(conn.sock)
        else:
            super().finish_request(conn, fs)
        self._dispatch_ready()

    def _next_request(self, conn: Connection) -> None:
        """Kept alive: what the client already sent (pipelined) is read by the main loop, like any head."""
        pipelined = conn.parser.unreader.take_buffered()
        conn.reset()
        conn.sock.setblocking(False)
        conn.head = bytearray(pipelined)
        if pipelined:
            self.read_head(conn)
            return
        conn.set_timeout()
        if not self.alive:
            conn.timeout = min(conn.timeout, time.monotonic() + STOP_KEEPALIVE_LINGER)
        self.keepalived_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))

    def _linger(self, sock: socket.socket) -> None:
        """RFC 9112 §9.6 close: FIN now, drain what the client still sends from the poller, close at EOF or 2 s."""
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            _close_quietly(sock)
            return
        if len(self.lingering) >= MAX_LINGERING:
            self._end_linger(self.lingering[0][1])
        self.lingering.append((time.monotonic() + LINGER_TIMEOUT, sock))
        self.lingering_drained[sock] = 0
        self.poller.register(sock, selectors.EVENT_READ, self._on_lingering_readable)

    def _on_lingering_readable(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(16 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        drained = self.lingering_drained.get(sock, 0) + len(data)
        self.lingering_drained[sock] = drained
        if not data or drained >= LINGER_DRAIN:
            self._end_linger(sock)

    def _end_linger(self, sock: socket.socket) -> None:
        if self.lingering_drained.pop(sock, None) is None:
            return  # already closed
        try:
            self.poller.unregister(sock)
        except (KeyError, ValueError):
            pass
        _close_quietly(sock)

    # -- deadlines ---------------------------------------------------------------

    def murder_pending(self) -> None:
        """gthread's expiry of deferred connections, plus heads, bodies, queued requests and lingering closes.

        A stopping worker also closes the connections that have sent nothing yet.
        """
        super().murder_pending()
        self._expire_heads()
        self._expire_bodies()
        self._expire_queued()
        now = time.monotonic()
        while self.lingering and (self.lingering[0][0] <= now or self.lingering[0][1] not in self.lingering_drained):
            self._end_linger(self.lingering.popleft()[1])

    def _expire_heads(self) -> None:
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

    def _expire_bodies(self) -> None:
        """Bodies silent for ``CLIENT_BODY_TIMEOUT``: a 408 from here, and the app never sees the request."""
        now = time.monotonic()
        for conn in [conn for conn in self.bodies if conn.body_deadline <= now]:
            self.poller.unregister(conn.sock)
            del self.bodies[conn]
            message = f"request body: no byte of the request body for {self.body_timeout:g}s (CLIENT_BODY_TIMEOUT)"
            self.log.warning("client error for %s (client %s): %s", conn.key or "-", _peer(conn.client), message)
            _send_quietly(conn.sock, json_response(408, "Request Timeout", message))
            self.nr_conns -= 1
            conn.drop_spool()
            self._linger(conn.sock)

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
            if conn.spool is not None:
                conn.spool.seek(0)
                unreader.spool, conn.spool = conn.spool, None
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


def json_response(status: int, reason: str, message: str, extra: str = "") -> bytes:
    """A whole small JSON error answer that closes the connection (as ``paastis.proxy.error_response`` words it)."""
    body = (json.dumps({"error": message, "status": status}) + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Cache-Control: no-store\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + body


def busy_response(body: str) -> bytes:
    head = (
        f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body.encode())}"
        f"\r\nCache-Control: no-store\r\nRetry-After: {BUSY_RETRY_AFTER}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body.encode()


def _peer(addr: Any) -> str:
    return str(addr[0]) if isinstance(addr, tuple | list) and addr else "(unix socket)"


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.send(data, socket.MSG_DONTWAIT)
    except OSError:
        pass  # the client is gone or not reading: closing is all that is left


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
