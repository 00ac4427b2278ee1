"""What a hung Redis costs WebSocket traffic: round trips through the relay while Redis answers nothing.

Run from the repository root (about 15 s, loopback only)::

    .venv/bin/python -m bench.relay_redis_hang [--connections 50] [--seconds 5] [--timeout 0.5]

It starts a private ``redis-server``, a Redis registry (``REGISTRY_REDIS_SOCKET_TIMEOUT`` =
``--timeout``) and one relay with ``--connections`` upgraded connections over socket pairs. Each
connection goes quiet until it stops counting as activity, then Redis is frozen (``SIGSTOP``:
it accepts connections and answers nothing) and every connection talks again: each message is
echoed by the test's "app" and timed client -> app -> client. Resuming traffic makes the
connection count again, which the registry must tell Redis. Figures: round trips, median, p99
and worst round trip, and how long the relay loop was blocked at worst (the longest gap
between two of its sweeps' heartbeats is not observable from outside, so the worst round trip
stands for it). Then the same with Redis answering, for comparison.

Nothing here runs under pytest; every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from paastis.metrics import Metrics
from paastis.redis_link import RedisLink
from paastis.redis_registry import RedisRegistry
from paastis.registry import RunningApp, utcnow
from paastis.relay import Relay
from tests.redis_support import RedisServer
from tests.support import wait_until

HEAD = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
QUIET = 0.3  # seconds a quiet connection still counts


def echo_app(sock: socket.socket, stop: threading.Event) -> None:
    """The app's side: send back every byte."""
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return
        if not data:
            return
        sock.sendall(data)


def talk(sock: socket.socket, seconds: float, times: list[float]) -> None:
    """The client's side: one 8-byte message at a time, timing each round trip."""
    sock.settimeout(30)
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        began = time.perf_counter()
        sock.sendall(b"ping1234")
        received = b""
        while len(received) < 8:
            received += sock.recv(8 - len(received))
        times.append(time.perf_counter() - began)
        time.sleep(0.01)


def scenario(
    registry: RedisRegistry, clients: list[socket.socket], seconds: float, before: Callable[[], None]
) -> list[float]:
    wait_until(lambda: registry.in_flight("demo") == 0, 30, what="connections to stop counting")
    time.sleep(2.5)  # the in-flight entry lingers a second, then the flusher retires it: traffic must publish again
    before()  # Redis frozen only now: the link does not know yet, as in a real hang
    times: list[float] = []
    threads = [threading.Thread(target=talk, args=(sock, seconds, times)) for sock in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def report(name: str, times: list[float]) -> None:
    ordered = sorted(times)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    print(
        f"{name:<22} round trips {len(times):>6}  median {statistics.median(times) * 1000:7.2f} ms  "
        f"p99 {p99 * 1000:7.2f} ms  worst {max(times) * 1000:7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        registry = RedisRegistry(RedisLink(server.url, "bench:", args.timeout))
        now = utcnow()
        registry.register(RunningApp("demo", now, now))
        relay = Relay(registry, Metrics(), lambda key: QUIET, max_connections=args.connections + 1)
        stop = threading.Event()
        clients, apps = [], []
        for _ in range(args.connections):
            client, client_end = socket.socketpair()
            app, app_end = socket.socketpair()
            assert relay.reserve()
            relay.adopt("demo", client_end, app_end, websocket=False, head=HEAD)
            client.settimeout(10)
            assert client.recv(len(HEAD)) == HEAD
            threading.Thread(target=echo_app, args=(app, stop), daemon=True).start()
            clients.append(client)
            apps.append(app)
        try:
            report("redis answering", scenario(registry, clients, args.seconds, lambda: None))
            freeze = lambda: server.process.send_signal(signal.SIGSTOP)  # noqa: E731
            report("redis hung (SIGSTOP)", scenario(registry, clients, args.seconds, freeze))
        finally:
            server.process.send_signal(signal.SIGCONT)
            stop.set()
            for sock in clients + apps:
                sock.close()
            relay.close()
            registry.close()
            server.stop()


if __name__ == "__main__":
    main()
