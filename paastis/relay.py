"""The relay: every upgraded connection of a worker, served both ways by one selector loop.

After a ``101 Switching Protocols`` the request thread hands the client socket and the
app's socket over here and goes back to gunicorn's pool, so an open WebSocket costs two
file descriptors and a few buffers, never a thread. Bytes pass through unchanged. The
relay follows WebSocket frame boundaries (see :mod:`paastis.websocket`) only so that it
can put a Close frame (1001, "going away") between two frames when the app is stopped,
paastis shuts down, or the app dies under an open connection.

Activity: a connection that carries bytes counts as a request in flight in the registry
(and its traffic records accesses, at most once a second per app); once it has been quiet
for its idle timeout it stops counting, so a forgotten tab cannot keep an app awake. The loop
never calls the registry itself (a Redis round trip would hold every connection): it queues
what happened for :class:`~paastis.bookkeeping.Bookkeeper`, which tells the registry in batches.
"""

from __future__ import annotations

import itertools
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from queue import Empty, SimpleQueue
from typing import Any

from .bookkeeping import Bookkeeper
from .places import MAX_WEBSOCKETS, LocalPlaces
from .registry import Registry
from .websocket import GOING_AWAY, FrameTracker, close_frame

log = logging.getLogger(__name__)

RECV_SIZE = 256 * 1024
HIGH_WATER = 1024 * 1024  # bytes queued towards one side before the other side is no longer read
CLOSE_GRACE = 3.0  # seconds a going-away connection gets to flush its Close frames and end
HALF_CLOSED_TIMEOUT = 30.0  # seconds a connection one side has ended may take to end on the other
SWEEP_INTERVAL = 1.0  # seconds between checks of quiet connections and deadlines
TOUCH_INTERVAL = 1.0  # seconds between two accesses recorded for one app's traffic
WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class End:
    """One side of a relayed connection: its socket and what waits to be written to it."""

    __slots__ = ("sock", "out", "frames", "masked", "read_done", "write_done", "sealed", "pending_close", "peer")

    def __init__(self, sock: socket.socket, masked: bool, websocket: bool):
        self.sock = sock
        self.out = bytearray()
        self.frames = FrameTracker() if websocket else None  # the stream written to this side
        self.masked = masked  # frames towards the app are masked, as a client's are
        self.read_done = False  # this side sent its last byte (or failed)
        self.write_done = False  # we sent this side our last byte
        self.sealed = False  # nothing more is forwarded to this side; what is queued still goes
        self.pending_close: bytes | None = None  # a Close frame waiting for a frame boundary
        self.peer: End

    @property
    def tls(self) -> bool:
        return isinstance(self.sock, ssl.SSLSocket)


class Tunnel:
    """One upgraded connection: the client's socket, the app's socket, and its activity."""

    def __init__(self, app: str, client: socket.socket, upstream: socket.socket, websocket: bool, token: object):
        self.app = app
        self.websocket = websocket
        self.client = End(client, masked=False, websocket=websocket)
        self.upstream = End(upstream, masked=True, websocket=websocket)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.token: object | None = token  # set (to this tunnel's ref, see Bookkeeper) while the connection counts
        self.last_traffic = time.monotonic()
        self.last_traffic_at = time.time()
        self.deadline: float | None = None  # once ending: closed at this time however far it got
        self.going_away = False
        self.counts = True  # a passive visitor's connection neither wakes nor keeps the app awake
        self.peer = ""  # the client address its place was booked for (MAX_WEBSOCKETS_PER_CLIENT)

    def ends(self) -> tuple[End, End]:
        return self.client, self.upstream

    def deliver(self, end: End, data: bytes | memoryview) -> None:
        """Queue bytes read from ``end.peer`` for ``end``, keeping track of its frames."""
        if end.sealed:
            return  # going away: the rest is dropped
        end.out += data
        if end.frames is not None:
            end.frames.feed(data)
            if end.pending_close is not None and end.frames.at_boundary:
                end.out += end.pending_close
                end.pending_close = None
                end.sealed = True

    def say_going_away(self, end: End, code: int = GOING_AWAY) -> None:
        """Close ``end`` with a Close frame as soon as the stream towards it is between frames."""
        if end.sealed or end.write_done:
            return
        if end.frames is None or end.frames.saw_close:
            end.sealed = True  # not a WebSocket, or its peer already said goodbye
        elif end.frames.at_boundary:
            end.out += close_frame(code, masked=end.masked)
            end.sealed = True
        else:
            end.pending_close = close_frame(code, masked=end.masked)

    def finished(self) -> bool:
        return all(end.read_done and end.write_done for end in self.ends())


class Relay:
    """Relays all upgraded connections of this process with one thread."""

    def __init__(
        self,
        registry: Registry,
        metrics: Any,
        idle_timeout_of: Callable[[str], float],
        max_connections: int,
        places: Any = None,
    ):
        self.registry = registry
        self.bookkeeper = Bookkeeper(registry)  # registry calls, off the selector thread
        self._refs = itertools.count(1)  # one ref per counting period of a connection (never reused, unlike id())
        self.metrics = metrics
        self.idle_timeout_of = idle_timeout_of  # seconds a quiet connection still counts, per app
        self.max_connections = max_connections
        # Places are counted per instance (paastis.places): shared by the workers under gunicorn.
        self.places = places or LocalPlaces(max_connections, max_connections)
        self._tunnels: dict[socket.socket, tuple[Tunnel, End]] = {}
        self._open: dict[str, int] = {}
        self._reserved = 0
        self._lock = threading.Condition()
        self._commands: SimpleQueue[Callable[[], None]] = SimpleQueue()
        self._selector: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._touched: dict[str, float] = {}

    # -- what request threads and the lifecycle ask --------------------------------

    def reserve(self, app: str = "", peer: str = "") -> str | None:
        """Book a place for a connection of ``app`` from client ``peer`` being set up.

        None when booked; else the limit that refuses it (``max_websockets``, also while stopping,
        or ``max_websockets_per_client``), counted over the whole instance.
        """
        with self._lock:
            if self._stopping:
                return MAX_WEBSOCKETS
            refused = self.places.book(app, peer)
            if refused is None:
                self._reserved += 1
            return refused

    def release(self, app: str = "", peer: str = "") -> None:
        """Give back a place booked by :meth:`reserve` that was not used."""
        with self._lock:
            self._reserved -= 1
        self.places.release(app, peer)

    def adopt(
        self,
        app: str,
        client: socket.socket,
        upstream: socket.socket,
        *,
        websocket: bool,
        head: bytes,
        to_client: bytes = b"",
        to_upstream: bytes = b"",
        counts: bool = True,
        peer: str = "",
    ) -> None:
        """Take over a connection whose handshake succeeded (uses a place booked by :meth:`reserve`).

        ``head`` is the app's 101 answer, ``to_client`` what the app sent after it, and
        ``to_upstream`` what the client sent after its request: all go out first. A passive
        visitor's connection (``counts=False``) is relayed, but never counts as activity.
        """
        tunnel = Tunnel(app, client, upstream, websocket, None)
        if counts:  # a request thread: it may wait on the registry, the selector loop never does
            tunnel.token = next(self._refs)
            self.bookkeeper.adopted(tunnel.token, self.registry.begin_request(app))
        tunnel.counts = counts
        tunnel.peer = peer
        tunnel.client.out += head
        tunnel.deliver(tunnel.client, to_client)
        tunnel.deliver(tunnel.upstream, to_upstream)
        for end in tunnel.ends():
            end.sock.setblocking(False)
        with self._lock:
            self._reserved -= 1
            self._open[app] = self._open.get(app, 0) + 1
            self.metrics.websockets_open.labels(app, self.metrics.provider_of_key(app)).set(self._open[app])
        self._ensure_thread()
        self._call(lambda: self._add(tunnel))

    def total(self) -> int:
        """Upgraded connections open (or being handed over) in this process, every app together."""
        with self._lock:
            return sum(self._open.values()) + self._reserved

    def open(self, app: str) -> int:
        """Upgraded connections of ``app`` open in this instance (every worker of it)."""
        return self.places.count(app)

    def close_app(self, app: str, timeout: float = CLOSE_GRACE + 1) -> None:
        """Close ``app``'s connections with 1001 "going away" (its app is being stopped); wait for them."""
        if not self._open.get(app):
            return
        log.info("closing %d upgraded connection(s) of %s before stopping it", self._open[app], app)
        self._call(lambda: self._go_away(lambda tunnel: tunnel.app == app))
        with self._lock:
            self._lock.wait_for(lambda: not self._open.get(app), timeout)

    def close(self, timeout: float = CLOSE_GRACE + 1) -> None:
        """Shut down: every connection is closed with 1001 "going away", then the loop ends."""
        with self._lock:
            self._stopping = True
            total = sum(self._open.values())
        if self._thread is None:
            self._wake_r.close()
            self._wake_w.close()
            self.bookkeeper.close()
            return
        if total:
            log.info("closing %d upgraded connection(s): paastis is shutting down", total)
        self._call(lambda: self._go_away(lambda tunnel: True))
        with self._lock:
            self._lock.wait_for(lambda: not any(self._open.values()), timeout)
        self._call(self._stop_loop)
        self._thread.join(timeout=2)
        self.bookkeeper.close()  # the ends of the connections just closed reach the registry

    # -- the loop -----------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ, None)
            self._thread = threading.Thread(target=self._run, name="paastis-relay", daemon=True)
            self._thread.start()

    def _call(self, command: Callable[[], None]) -> None:
        """Run ``command`` on the loop's thread, which alone touches tunnels and the selector."""
        self._commands.put(command)
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already woken (buffer full) or shut down

    def _run(self) -> None:
        assert self._selector is not None
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        while self._selector is not None:
            try:
                events = self._selector.select(timeout=max(0.0, next_sweep - time.monotonic()))
                for key, mask in events:
                    if key.data is None:
                        self._run_commands()
                    else:
                        self._serve(key.fileobj, mask)  # type: ignore[arg-type]
                if time.monotonic() >= next_sweep:
                    self._sweep()
                    next_sweep = time.monotonic() + SWEEP_INTERVAL
            except Exception:  # noqa: BLE001 - the loop serves every connection: it must not die
                log.exception("relay: unexpected error")

    def _run_commands(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while True:
            try:
                command = self._commands.get_nowait()
            except Empty:
                return
            command()

    def _stop_loop(self) -> None:
        for tunnel in {tunnel for tunnel, _ in self._tunnels.values()}:
            self._close(tunnel)
        assert self._selector is not None
        self._selector.close()
        self._selector = None
        self._wake_r.close()
        self._wake_w.close()

    def _add(self, tunnel: Tunnel) -> None:
        assert self._selector is not None
        for end in tunnel.ends():
            self._tunnels[end.sock] = (tunnel, end)
            self._selector.register(end.sock, selectors.EVENT_READ, end)
        if self._stopping:
            self._go_away(lambda t: t is tunnel)
        for end in tunnel.ends():
            self._flush(tunnel, end)
        self._update(tunnel)

    def _serve(self, sock: socket.socket, mask: int) -> None:
        found = self._tunnels.get(sock)
        if found is None:
            return
        tunnel, end = found
        if mask & selectors.EVENT_WRITE:
            self._flush(tunnel, end)
        if mask & selectors.EVENT_READ and sock in self._tunnels:
            self._read(tunnel, end)
        if sock in self._tunnels:
            self._update(tunnel)

    def _read(self, tunnel: Tunnel, end: End) -> None:
        while True:
            try:
                data = end.sock.recv(RECV_SIZE)
            except WOULD_BLOCK:
                return
            except OSError as error:
                log.debug("relay: %s of %s failed: %s", "client" if end is tunnel.client else "app", tunnel.app, error)
                self._ended(tunnel, end, failed=True)
                return
            if not data:
                self._ended(tunnel, end)
                return
            if tunnel.counts and not tunnel.going_away:
                self._traffic(tunnel)
            tunnel.deliver(end.peer, data)
            self._flush(tunnel, end.peer)
            if not (self._is_open(tunnel) and end.tls and end.sock.pending()):  # type: ignore[attr-defined]
                return  # TLS may hold decrypted bytes the selector cannot see: read them now

    def _flush(self, tunnel: Tunnel, end: End) -> None:
        while end.out and not end.write_done:
            try:
                sent = end.sock.send(memoryview(end.out)[:RECV_SIZE])
            except WOULD_BLOCK:
                return
            except OSError as error:
                log.debug("relay: writing to %s connection failed: %s", tunnel.app, error)
                self._close(tunnel)
                return
            del end.out[:sent]
        if end.sealed and not end.out and not end.write_done:
            self._shut_writes(tunnel, end)

    def _ended(self, tunnel: Tunnel, end: End, failed: bool = False) -> None:
        """``end`` sent its last byte: pass the end on to the other side, once its queue is out."""
        end.read_done = True
        if tunnel.deadline is None:
            tunnel.deadline = time.monotonic() + HALF_CLOSED_TIMEOUT
        if end is tunnel.upstream and not tunnel.going_away:
            tunnel.say_going_away(tunnel.client)  # an app that leaves without a Close frame died
        end.peer.pending_close = None  # nothing more will come from ``end`` to reach a frame boundary
        end.peer.sealed = True
        if failed or end.tls:
            end.write_done = True  # nothing more can be written to it
        self._flush(tunnel, end.peer)
        if tunnel.finished():
            self._close(tunnel)

    def _shut_writes(self, tunnel: Tunnel, end: End) -> None:
        """Everything for ``end`` is out: say so with a FIN (a TLS socket cannot half-close: it ends whole)."""
        end.write_done = True
        if end.tls:
            if end.peer.read_done:
                self._ended(tunnel, end)
            return
        try:
            end.sock.shutdown(socket.SHUT_WR)
        except OSError:
            end.read_done = True
        if tunnel.finished():
            self._close(tunnel)

    def _update(self, tunnel: Tunnel) -> None:
        """Watch each side for what it can do now: read (unless the other is backed up), write."""
        if self._selector is None or not self._is_open(tunnel):
            return
        for end in tunnel.ends():
            events = 0
            if not end.read_done and (end.peer.sealed or len(end.peer.out) < HIGH_WATER):
                events |= selectors.EVENT_READ
            if end.out and not end.write_done:
                events |= selectors.EVENT_WRITE
            try:
                key: selectors.SelectorKey | None = self._selector.get_key(end.sock)
            except KeyError:
                key = None
            if key is None and events:
                self._selector.register(end.sock, events, end)
            elif key is not None and not events:
                self._selector.unregister(end.sock)
            elif key is not None and key.events != events:
                self._selector.modify(end.sock, events, end)

    def _go_away(self, which: Callable[[Tunnel], bool]) -> None:
        now = time.monotonic()
        for tunnel in {tunnel for tunnel, _ in self._tunnels.values() if which(tunnel)}:
            tunnel.going_away = True
            tunnel.deadline = min(tunnel.deadline or now + CLOSE_GRACE, now + CLOSE_GRACE)
            for end in tunnel.ends():
                tunnel.say_going_away(end)
            for end in tunnel.ends():
                self._flush(tunnel, end)
            if self._is_open(tunnel):
                self._update(tunnel)

    def _sweep(self) -> None:
        """Quiet connections stop counting as activity; overdue endings are cut short."""
        now = time.monotonic()
        timeouts: dict[str, float] = {}
        for tunnel in {tunnel for tunnel, _ in self._tunnels.values()}:
            if tunnel.deadline is not None and now >= tunnel.deadline:
                self._close(tunnel)
                continue
            if tunnel.token is None:
                continue
            if tunnel.app not in timeouts:
                timeouts[tunnel.app] = self.idle_timeout_of(tunnel.app)
            if now - tunnel.last_traffic > timeouts[tunnel.app]:
                self._stop_counting(tunnel)

    def _traffic(self, tunnel: Tunnel) -> None:
        now = time.monotonic()
        tunnel.last_traffic = now
        tunnel.last_traffic_at = time.time()
        if tunnel.token is None:
            tunnel.token = next(self._refs)
            self.bookkeeper.begin(tunnel.app, tunnel.token)
        if now - self._touched.get(tunnel.app, 0.0) >= TOUCH_INTERVAL:
            self._touched[tunnel.app] = now
            self.bookkeeper.touch(tunnel.app)

    def _stop_counting(self, tunnel: Tunnel) -> None:
        token, tunnel.token = tunnel.token, None
        if token is not None:
            accessed = datetime.fromtimestamp(tunnel.last_traffic_at, UTC)
            self.bookkeeper.end(tunnel.app, token, accessed)  # type: ignore[arg-type]

    def _is_open(self, tunnel: Tunnel) -> bool:
        return tunnel.client.sock in self._tunnels

    def _close(self, tunnel: Tunnel) -> None:
        if not self._is_open(tunnel):
            return
        for end in tunnel.ends():
            self._tunnels.pop(end.sock, None)
            if self._selector is not None:
                try:
                    self._selector.unregister(end.sock)
                except (KeyError, ValueError):
                    pass
            try:
                end.sock.close()
            except OSError:
                pass
        self._stop_counting(tunnel)
        with self._lock:
            self._open[tunnel.app] -= 1
            count = self._open[tunnel.app]
            if not count:
                del self._open[tunnel.app]
                self._touched.pop(tunnel.app, None)
            self.metrics.websockets_open.labels(tunnel.app, self.metrics.provider_of_key(tunnel.app)).set(count)
            self._lock.notify_all()
        self.places.release(tunnel.app, tunnel.peer)
