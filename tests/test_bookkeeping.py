"""The relay's registry bookkeeping runs off its selector thread: a hung Redis never holds WebSocket traffic."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from paastis.metrics import Metrics
from paastis.redis_link import RedisLink
from paastis.redis_registry import RedisRegistry
from paastis.registry import RunningApp, utcnow
from paastis.relay import Relay
from tests.redis_support import RedisServer
from tests.support import wait_until

HEAD = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis_server = RedisServer(tmp_path).start()
    yield redis_server
    if redis_server.process is not None:
        redis_server.process.send_signal(signal.SIGCONT)
    redis_server.stop()


def test_traffic_flows_while_the_registry_waits_on_a_hung_redis(server):
    registry = RedisRegistry(RedisLink(server.url, "p:", socket_timeout=10.0))  # a Redis call may hang 10 s
    now = utcnow()
    registry.register(RunningApp("demo", now, now))
    relay = Relay(registry, Metrics(), lambda key: 0.3, max_connections=4)
    client, client_end = socket.socketpair()
    app, app_end = socket.socketpair()
    client.settimeout(10)
    app.settimeout(10)
    try:
        assert relay.reserve("demo") is None
        relay.adopt("demo", client_end, app_end, websocket=False, head=HEAD)
        assert client.recv(len(HEAD)) == HEAD
        wait_until(lambda: registry.in_flight("demo") == 0, 10, what="the quiet connection to stop counting")
        applied = relay.bookkeeper.batches
        server.process.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
        for i in range(20):  # traffic again: the connection counts again, and the registry must be told
            client.sendall(b"ping %d\n" % i)
            assert app.recv(100) == b"ping %d\n" % i
            app.sendall(b"pong %d\n" % i)
            assert client.recv(100) == b"pong %d\n" % i
        assert relay.bookkeeper.batches == applied  # all of it relayed while the bookkeeping still waited on Redis
        server.process.send_signal(signal.SIGCONT)
        wait_until(lambda: relay.bookkeeper.batches > applied, 20, what="the bookkeeping to go on once Redis answers")
    finally:
        client.close()
        app.close()
        relay.close()
        registry.close()
