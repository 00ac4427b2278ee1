"""The relay over real socket pairs: bytes both ways, Close frames only between frames, activity."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from paastis.metrics import Metrics
from paastis.registry import InMemoryRegistry, RunningApp, utcnow
from paastis.relay import Relay
from tests.support import wait_until

HEAD = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
GOING_AWAY = b"\x88\x0c\x03\xe9going away"


def frame(payload: bytes) -> bytes:
    return bytes([0x82, 126]) + struct.pack("!H", len(payload)) + payload


def read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    return bytes(received)


def unmask(data: bytes) -> bytes:
    """A masked frame's header byte, and its payload unmasked."""
    key, payload = data[2:6], data[6:]
    return bytes([data[0]]) + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@pytest.fixture
def relay() -> Iterator[tuple[Relay, InMemoryRegistry]]:
    registry = InMemoryRegistry()
    now = utcnow()
    registry.register(RunningApp("demo", now, now))
    relay = Relay(registry, Metrics(), lambda key: 0.3, max_connections=2)
    yield relay, registry
    relay.close()


def tunnel(relay: Relay, websocket: bool = True) -> tuple[socket.socket, socket.socket]:
    """A relayed connection: the test's ends (client side, app side)."""
    client, client_end = socket.socketpair()
    app, app_end = socket.socketpair()
    assert relay.reserve("demo") is None
    relay.adopt("demo", client_end, app_end, websocket=websocket, head=HEAD)
    return client, app


def test_bytes_pass_both_ways_and_the_101_goes_first(relay):
    relay, registry = relay
    client, app = tunnel(relay)
    client.settimeout(10)
    app.settimeout(10)
    app.sendall(frame(b"hello"))
    assert client.recv(len(HEAD)) == HEAD
    assert client.recv(100) == frame(b"hello")
    client.sendall(b"\x81\x82abcd" + bytes(b ^ k for b, k in zip(b"hi", b"ab", strict=True)))
    assert app.recv(100)[:6] == b"\x81\x82abcd"
    assert relay.open("demo") == 1 and registry.in_flight("demo") == 1


def test_going_away_waits_for_the_end_of_the_frame_under_way(relay):
    relay, registry = relay
    client, app = tunnel(relay)
    whole = frame(b"x" * 1000)
    app.sendall(whole[:300])  # a frame cut in the middle
    client.settimeout(10)
    received = bytearray()
    while len(received) < len(HEAD) + 300:  # the relay has passed that much on
        received += client.recv(65536)
    closing = threading.Thread(target=relay.close_app, args=("demo",))
    closing.start()
    threading.Event().wait(0.3)
    app.sendall(whole[300:])
    received += read_until_closed(client)
    closing.join(10)
    assert received == HEAD + whole + GOING_AWAY  # the frame whole, then the Close frame
    to_app = read_until_closed(app)
    assert unmask(to_app) == b"\x88" + GOING_AWAY[2:]  # the app is told too, masked as a client must
    # The relay's own thread counts the connection out once both sides are closed: a loaded machine may lag.
    wait_until(lambda: relay.open("demo") == 0 and registry.in_flight("demo") == 0, 30, what="the count to drop")


def test_an_app_that_leaves_without_a_close_frame_is_going_away_for_the_client(relay):
    relay, _ = relay
    client, app = tunnel(relay)
    app.sendall(frame(b"last words"))
    app.close()
    assert read_until_closed(client) == HEAD + frame(b"last words") + GOING_AWAY


def test_other_protocols_are_relayed_without_frames(relay):
    relay, _ = relay
    client, app = tunnel(relay, websocket=False)
    app.sendall(b"\x88 not a websocket")
    app.shutdown(socket.SHUT_WR)
    assert read_until_closed(client) == HEAD + b"\x88 not a websocket"  # half-close passed on, nothing added
    client.sendall(b"still talking")
    client.close()
    assert read_until_closed(app) == b"still talking"


def test_a_quiet_connection_stops_counting_without_touching_the_app(relay):
    relay, registry = relay
    ends = tunnel(relay)  # noqa: F841 - kept open
    opened = utcnow()
    assert registry.in_flight("demo") == 1
    wait_until(lambda: registry.in_flight("demo") == 0, 10, what="the quiet connection to stop counting")
    assert registry.get("demo").last_accessed_at <= opened  # its last traffic, not the end of its silence
    assert relay.open("demo") == 1  # still open: only the app's stop closes it


def test_past_the_limit_no_place_is_booked(relay):
    relay, _ = relay
    ends = [tunnel(relay), tunnel(relay)]
    assert relay.reserve("demo") == "max_websockets"
    ends.pop()[0].close()  # one client leaves: its place is free again
    wait_until(lambda: relay.reserve("demo") is None, 10, what="a place to free up")
