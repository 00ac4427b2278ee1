"""End to end: WebSockets through real gunicorn to a real WebSocket app (the ``websockets`` library)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import threading
from pathlib import Path

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.redis_support import SHARED_URL
from tests.support import (
    PYTHON,
    Gunicorn,
    free_port,
    local_app,
    port_open,
    self_signed_cert,
    starts,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e

WS_APP = Path(__file__).resolve().parent / "ws_app.py"
MIB = 1024 * 1024
TOKEN = "ws-admin-token-0123456789abcdef"
ADMIN = {"ROUTING_SYSTEM_API_ENABLED": "true", "ROUTING_SYSTEM_API_TOKEN": TOKEN}


def ws_app(tmp_path: Path, name: str = "demo", scheme: str = "http", **env: object) -> tuple[dict, int]:
    """A paastis.yml app running tests/ws_app.py on a free port; it logs boots and the close codes it receives."""
    port = free_port()
    env = {"START_LOG": tmp_path / f"{name}-starts.log", "CLOSE_LOG": tmp_path / f"{name}-closes.log", **env}
    assignments = " ".join(f"{key}={value}" for key, value in env.items())
    command = f"{assignments} exec {PYTHON} {WS_APP}"
    return {"name": name, "url": f"{scheme}://127.0.0.1:{port}", "command": command}, port


def closes(tmp_path: Path, name: str = "demo") -> list[str]:
    """What the app saw at the end of each connection: ``<path> <close code received>``."""
    path = tmp_path / f"{name}-closes.log"
    return path.read_text().splitlines() if path.exists() else []


def open_ws(paastis: Gunicorn, path: str = "/echo", app: str = "demo", **kwargs) -> ClientConnection:
    sock = socket.create_connection(("127.0.0.1", paastis.port))
    kwargs.setdefault("open_timeout", 60)
    url = f"ws://{app}.localhost{path}"
    return connect(url, sock=sock, max_size=None, ping_interval=None, legacy=True, **kwargs)


def admin(paastis: Gunicorn, path: str) -> requests.Response:
    headers = {"PaastisProxyTarget": "system", "Authorization": f"Bearer {TOKEN}"}
    return requests.get(paastis.url + path, headers=headers, timeout=30)


def closed_with(connection: ClientConnection) -> int | None:
    """Wait for the connection to end; the close code paastis or the app sent, if any."""
    with pytest.raises(ConnectionClosed):
        while True:
            connection.recv(timeout=30)
    received = connection.protocol.close_rcvd
    return received.code if received else None


def test_text_and_binary_messages_of_every_size_go_both_ways(tmp_path, gunicorn_factory):
    app, _ = ws_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    big_text = "é" * (MIB // 2)  # 1 MiB once encoded
    big_binary = os.urandom(MIB)
    with open_ws(paastis) as ws:
        for message in ["hi", b"\x00\x01\x02", big_text, big_binary, "", b""]:
            ws.send(message)
            assert ws.recv(timeout=30) == message
        fragments = [b"a" * 70_000, b"b" * 3, b"c" * 200]
        ws.send(iter(fragments))  # one message in three frames
        assert ws.recv(timeout=30) == b"".join(fragments)


def test_the_handshake_reaches_the_app_with_its_headers(tmp_path, gunicorn_factory):
    app, _ = ws_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    headers = {"Cookie": "session=abc", "Origin": "http://demo.localhost", "X-Custom": "kept"}
    with open_ws(paastis, "/headers?x=%2e", additional_headers=headers, subprotocols=["chat"]) as ws:
        assert ws.subprotocol == "chat"  # the app's answer came back
        seen = json.loads(ws.recv(timeout=30))
    received = {name.lower(): value for name, value in seen["headers"]}
    assert seen["path"] == "/headers?x=%2e"
    assert received["cookie"] == "session=abc" and received["x-custom"] == "kept"
    assert received["upgrade"] == "websocket" and "upgrade" in received["connection"].lower()
    assert received["sec-websocket-protocol"] == "chat" and "sec-websocket-key" in received
    assert received["origin"] == app["url"]  # the client's own origin, rewritten as for other requests
    assert received["x-forwarded-for"] == "127.0.0.1" and received["x-forwarded-host"] == "demo.localhost"
    assert received["via"] == "1.1 paastis"
    assert received["host"] == app["url"].removeprefix("http://")


def test_what_the_app_sends_right_after_its_101_is_not_lost(tmp_path, gunicorn_factory):
    app, _ = ws_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    with open_ws(paastis, "/greet") as ws:
        assert ws.recv(timeout=30) == "hello"
        ws.send("and back")
        assert ws.recv(timeout=30) == "and back"


def test_a_handshake_wakes_a_sleeping_app_and_never_gets_the_waiting_page(tmp_path, gunicorn_factory):
    app, port = ws_app(tmp_path, BOOT_DELAY=0)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory({"WAKE_STRATEGY": "waiting-page"})
    assert not port_open(port)
    with open_ws(paastis, additional_headers={"Accept": "text/html"}) as ws:
        ws.send("awake?")
        assert ws.recv(timeout=30) == "awake?"
    assert starts(tmp_path) == 1


def test_an_app_that_cannot_start_answers_the_handshake_with_502(tmp_path, gunicorn_factory):
    write_config(tmp_path, [{"name": "broken", "url": f"http://127.0.0.1:{free_port()}", "command": "exit 3"}])
    paastis = gunicorn_factory({"PROVIDER_OPERATION_TIMEOUT": "10"})
    with pytest.raises(InvalidStatus) as refused:
        open_ws(paastis, app="broken")
    assert refused.value.response.status_code == 502
    assert b"broken" in refused.value.response.body


def test_an_upgrade_the_app_refuses_gets_its_answer_unchanged(tmp_path, gunicorn_factory):
    app, _ = ws_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    with pytest.raises(InvalidStatus) as refused:
        open_ws(paastis, "/refuse")
    response = refused.value.response
    assert response.status_code == 403
    assert response.body == b"no websockets here\n"
    assert response.headers["X-Refused-By"] == "ws_app"
    assert paastis.get("/echo").status_code == 426  # the same app, asked without Upgrade: its own answer


def test_h2c_upgrades_are_answered_over_http_1_1(tmp_path, gunicorn_factory):
    app, _ = local_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    response = paastis.get("/echo", headers={"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c"})
    assert response.status_code == 200
    seen = {name.lower() for name, _ in response.json()["headers"]}
    assert "upgrade" not in seen and "http2-settings" not in seen


def test_closing_from_either_side_closes_the_other(tmp_path, gunicorn_factory):
    app, _ = ws_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    ws = open_ws(paastis)
    ws.close(4001, "client leaves")
    wait_until(lambda: "/echo 4001" in closes(tmp_path), 15, what="the app to see the client's close")
    ws = open_ws(paastis, "/close")
    ws.send("close now")
    assert closed_with(ws) == 4000
    assert ws.protocol.close_rcvd.reason == "bye"


def test_open_websockets_do_not_hold_request_threads(tmp_path, gunicorn_factory):
    app, _ = ws_app(tmp_path)
    write_config(tmp_path, [app])
    # One request of the app at a time: a handshake gives its place back before its 101 goes out.
    paastis = gunicorn_factory({"PAASTIS_THREADS": "2", "MAX_IN_FLIGHT_PER_APP": "1"})
    sockets = [open_ws(paastis) for _ in range(10)]  # five times the threads
    assert paastis.get("/echo").status_code == 426  # an ordinary request still finds a thread
    for index, ws in enumerate(sockets):
        ws.send(f"still there {index}")
        assert ws.recv(timeout=30) == f"still there {index}"
    for ws in sockets:
        ws.close()


def test_open_connections_show_in_the_admin_api_and_metrics(tmp_path, gunicorn_factory):
    app, _ = ws_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory(ADMIN)
    sockets = [open_ws(paastis) for _ in range(3)]
    described = admin(paastis, "/apps/demo").json()
    assert described["websockets"] == 3
    assert described["requests_in_flight"] == 3  # they carry traffic: the registry counts them
    assert 'paastis_websockets_open{app="demo",provider="local"} 3.0' in admin(paastis, "/metrics").text
    sockets.pop().close()
    wait_until(lambda: admin(paastis, "/apps/demo").json()["websockets"] == 2, 10, what="one connection fewer")
    for ws in sockets:
        ws.close()


def test_max_websockets_answers_503_past_the_limit(tmp_path, gunicorn_factory):
    app, _ = ws_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory({"MAX_WEBSOCKETS": "2"})
    first, second = open_ws(paastis), open_ws(paastis)
    with pytest.raises(InvalidStatus) as refused:
        open_ws(paastis)
    assert refused.value.response.status_code == 503
    assert b"MAX_WEBSOCKETS=2" in refused.value.response.body
    first.close()
    wait_until(lambda: _opens(paastis), 10, what="a place to free up")
    second.close()


def _opens(paastis: Gunicorn) -> bool:
    try:
        open_ws(paastis).close()
        return True
    except InvalidStatus:
        return False


IDLE = {"START_AND_STOP_MAX_IDLE_TIME": "0.05", "START_AND_STOP_CHECKING_INTERVAL": "0.3"}  # 3 s


def keep_talking(ws) -> None:
    """10 s of echoed traffic, a message every 0.4 s: over three of the tests' idle times."""
    pause = threading.Event()
    for index in range(25):
        ws.send(f"tick {index}")
        assert ws.recv(timeout=30) == f"tick {index}"
        pause.wait(0.4)


def test_an_active_websocket_keeps_its_app_awake_past_its_idle_time(tmp_path, gunicorn_factory):
    app, port = ws_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory(IDLE)
    with open_ws(paastis) as ws:
        keep_talking(ws)
        assert port_open(port) and starts(tmp_path) == 1
    wait_until(lambda: not port_open(port), 20, what="the app to be stopped once the connection closed")


def test_a_quiet_websocket_lets_its_app_sleep_and_is_closed_with_1001_first(tmp_path, gunicorn_factory):
    app, port = ws_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory(IDLE)
    ws = open_ws(paastis)
    ws.send("one message, then silence")
    assert ws.recv(timeout=30) == "one message, then silence"
    assert closed_with(ws) == 1001
    wait_until(lambda: not port_open(port), 20, what="the quiet app to be stopped")
    assert "/echo 1001" in closes(tmp_path)  # the app was told too, before it stopped
    assert "stopping demo (idle)" in paastis.logs()


def test_websocket_idle_timeout_lets_a_quiet_connection_count_longer(tmp_path, gunicorn_factory):
    app, port = ws_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory({**IDLE, "WEBSOCKET_IDLE_TIMEOUT": "0.2"})  # 12 s of silence still counts
    ws = open_ws(paastis)
    threading.Event().wait(6)  # twice the app's idle time, silent
    assert port_open(port)
    ws.send("still here")
    assert ws.recv(timeout=30) == "still here"
    assert closed_with(ws) == 1001
    wait_until(lambda: not port_open(port), 30, what="the app to be stopped after 12 s of silence")


def test_an_app_that_dies_closes_its_connections_with_1001(tmp_path, gunicorn_factory):
    app, port = ws_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    ws = open_ws(paastis)
    ws.send("ping")
    assert ws.recv(timeout=30) == "ping"
    os.killpg(int((tmp_path / "state" / "demo.pid").read_text()), signal.SIGKILL)
    assert closed_with(ws) == 1001


def test_sigterm_closes_open_connections_with_1001(tmp_path, gunicorn_factory):
    app, _ = ws_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    sockets = [open_ws(paastis) for _ in range(3)]
    sockets[0].send("traffic")
    assert sockets[0].recv(timeout=30) == "traffic"
    os.kill(paastis.process.pid, signal.SIGTERM)
    for ws in sockets:
        assert closed_with(ws) == 1001
    wait_until(lambda: closes(tmp_path).count("/echo 1001") == 3, 15, what="the app to be told as well")
    paastis.process.wait(timeout=30)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_wss_upstream_is_verified_and_trusts_requests_ca_bundle(tmp_path, gunicorn_factory):
    cert, key = self_signed_cert(tmp_path)
    app, _ = ws_app(tmp_path, scheme="https", CERT_FILE=cert, KEY_FILE=key)
    write_config(tmp_path, [app])
    untrusting = gunicorn_factory()
    with pytest.raises(InvalidStatus) as refused:
        open_ws(untrusting)
    assert refused.value.response.status_code == 502
    assert b"CERTIFICATE_VERIFY_FAILED" in refused.value.response.body
    trusting = gunicorn_factory({"REQUESTS_CA_BUNDLE": str(cert)}, name="trusting")
    with open_ws(trusting, "/greet") as ws:
        assert ws.recv(timeout=30) == "hello"
        payload = os.urandom(MIB)
        ws.send(payload)
        assert ws.recv(timeout=30) == payload


def test_an_upgrade_with_a_body_reaches_a_plain_http_app_which_answers_as_usual(tmp_path, gunicorn_factory):
    app, _ = local_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    body = os.urandom(200_000)
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket"}
    response = paastis.request("POST", "/echo", headers=upgrade, data=body)
    assert response.status_code == 200
    seen = response.json()
    assert seen["body_size"] == len(body) and seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert ["Upgrade", "websocket"] in seen["headers"]
    chunked = paastis.request("POST", "/echo", headers=upgrade, data=iter([body[:1000], body[1000:]]))
    assert chunked.status_code == 200 and chunked.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_with_redis_a_websocket_on_one_instance_keeps_the_app_awake_for_all(tmp_path, gunicorn_factory, prefix):
    app, port = ws_app(tmp_path)
    write_config(tmp_path, [app])
    shared = {**IDLE, "REGISTRY_TYPE": "redis", "REGISTRY_REDIS_URL": SHARED_URL, "REGISTRY_REDIS_PREFIX": prefix}
    leader = gunicorn_factory(shared, name="leader")
    wait_until(lambda: "now leading the idle checks" in leader.logs(), 20, what="the first instance to lead")
    other = gunicorn_factory(shared, name="other")  # the WebSocket goes through it; the leader must see its traffic
    ws = open_ws(other)
    keep_talking(ws)
    assert port_open(port) and starts(tmp_path) == 1
    assert closed_with(ws) == 1001  # once quiet: the leader stops the app, and the other instance says "going away"
    wait_until(lambda: not port_open(port), 20, what="the quiet app to be stopped")


def test_a_manual_stop_closes_even_busy_connections_with_1001_first(tmp_path, gunicorn_factory):
    app, port = ws_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory(ADMIN)
    ws = open_ws(paastis)
    ws.send("busy")
    assert ws.recv(timeout=30) == "busy"
    headers = {"PaastisProxyTarget": "system", "Authorization": f"Bearer {TOKEN}"}
    assert requests.post(paastis.url + "/apps/demo/stop", headers=headers, timeout=60).status_code == 200
    assert closed_with(ws) == 1001
    assert "/echo 1001" in closes(tmp_path)  # told before it was stopped
    assert not port_open(port)


def test_a_passive_visitors_websocket_does_not_keep_the_app_awake(tmp_path, gunicorn_factory):
    app, port = ws_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory({**IDLE, "PAASTIS_PASSIVE_USER_AGENTS": "probe-bot"})
    with open_ws(paastis) as ws:  # a real visitor wakes the app, then leaves
        ws.send("hello")
        assert ws.recv(timeout=30) == "hello"
    probe = open_ws(paastis, additional_headers={"User-Agent": "probe-bot/1.0"})
    with pytest.raises(ConnectionClosed):
        for index in range(100):  # talks all along: 40 s, far past the app's 3 s idle time
            probe.send(f"tick {index}")
            assert probe.recv(timeout=30) == f"tick {index}"
            threading.Event().wait(0.4)
    assert probe.protocol.close_rcvd.code == 1001
    wait_until(lambda: not port_open(port), 20, what="the app to be stopped")
    assert starts(tmp_path) == 1
