"""End to end: bursts are queued, never refused, and no single client or app stalls paastis (issue 16).

Everything goes through a real ``gunicorn app:app`` with paastis's worker. Deadlines are
generous: these tests prove outcomes (every request answered, the other app answering), the
"under 1 s" figures are measured by ``bench/queue_bench.py`` (BENCHMARKS.md).
"""

from __future__ import annotations

import base64
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.recording_upstream import RecordingUpstream
from tests.redis_support import SHARED_URL
from tests.support import PYTHON, Gunicorn, free_port, local_app, starts, wait_until, write_config

pytestmark = pytest.mark.e2e

TOKEN = "queue-admin-token-0123456789abcdef"
ADMIN = {"ROUTING_SYSTEM_API_ENABLED": "true", "ROUTING_SYSTEM_API_TOKEN": TOKEN}


def metrics(paastis: Gunicorn) -> str:
    """``/metrics`` of the system API (never queued behind apps)."""
    headers = {"PaastisProxyTarget": "system", "Authorization": f"Bearer {TOKEN}"}
    return requests.get(paastis.url + "/metrics", headers=headers, timeout=30).text


def workers_env(workers: int, prefix: str) -> dict[str, str]:
    """One worker (the in-memory registry), or several sharing a Redis registry under the test's prefix."""
    if workers == 1:
        return {}
    return {
        "REGISTRY_TYPE": "redis",
        "REGISTRY_REDIS_URL": SHARED_URL,
        "REGISTRY_REDIS_PREFIX": prefix,
        "WEB_CONCURRENCY": str(workers),
    }


def burst(paastis: Gunicorn, count: int, path: str = "/echo", host: str = "demo.localhost") -> list[int]:
    """``count`` requests at once, each on its own connection; their statuses."""
    barrier = threading.Barrier(count)

    def one(_: int) -> int:
        barrier.wait(30)
        return paastis.get(path, host=host, timeout=120).status_code

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("count", [40, 60, 100])
def test_a_burst_on_a_sleeping_app_is_served_whole_after_one_start(tmp_path, gunicorn_factory, prefix, workers, count):
    app, _ = local_app(tmp_path, BOOT_DELAY=1)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory(workers_env(workers, prefix))  # otherwise default settings
    if workers > 1:
        wait_until(lambda: len(paastis.worker_pids()) == workers, 20, what=f"{workers} workers")
    statuses = burst(paastis, count)
    assert statuses == [200] * count
    assert starts(tmp_path) == 1
    assert "503" not in {str(status) for status in statuses}


# -- one app, or one client, cannot stall the others ------------------------------------


@pytest.fixture
def upstreams() -> Iterator[dict[str, RecordingUpstream]]:
    apps = {name: RecordingUpstream() for name in ("rec", "other", "third")}
    yield apps
    for upstream in apps.values():
        upstream.close()


@pytest.fixture
def paastis_with(
    tmp_path: Path, gunicorn_factory: Callable[..., Gunicorn], upstreams: dict[str, RecordingUpstream]
) -> Callable[..., Gunicorn]:
    """paastis routing ``rec``, ``other`` and ``third`` to recording upstreams (running, so awake)."""

    def start(rules: list[dict] | None = None, **env: str) -> Gunicorn:
        apps = [{"name": name, "url": up.url, "start": "true", "stop": "true"} for name, up in upstreams.items()]
        write_config(tmp_path, apps, rules)
        server = gunicorn_factory(env)
        for name in upstreams:
            assert server.get("/ready", host=f"{name}.localhost").status_code == 200
        return server

    return start


def test_64_hung_requests_on_one_app_leave_the_others_answering_and_all_wait_their_turn(paastis_with, upstreams):
    paastis = paastis_with([{"pattern": "rec", "upstream_read_timeout": 3}])  # default queue: 30 s
    hung = 64  # twice the threads
    with ThreadPoolExecutor(hung) as pool:
        futures = [pool.submit(paastis.get, "/hang", host="rec.localhost", timeout=120) for _ in range(hung)]
        wait_until(lambda: len(upstreams["rec"].hits_for("/hang")) == 32, 30, what="every thread to be taken")
        for _ in range(5):
            assert paastis.get("/fine", host="other.localhost", timeout=30).status_code == 200
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [504] * hung  # each waited its turn, none was refused
    assert len(upstreams["rec"].hits_for("/hang")) == hung
    assert len(upstreams["other"].hits_for("/fine")) == 5


def test_past_its_queue_timeout_a_request_gets_503_naming_its_app(paastis_with, upstreams):
    rules = [{"pattern": "rec", "upstream_read_timeout": 20, "queue_timeout": 1}]
    paastis = paastis_with(rules, PAASTIS_THREADS="4", MAX_IN_FLIGHT_PER_APP="2")
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(paastis.get, "/hang", host="rec.localhost", timeout=120) for _ in range(6)]
        wait_until(lambda: sum(f.done() for f in futures) == 2, 30, what="the two queued requests to be refused")
        assert paastis.get("/fine", host="other.localhost", timeout=30).status_code == 200
        refused = [f.result() for f in futures if f.done()]
        reached = len(upstreams["rec"].hits_for("/hang"))
        for upstream in upstreams.values():
            upstream.released.set()  # the hung ones answer now
        answers = [f.result() for f in futures]
    assert [a.status_code for a in refused] == [503, 503]
    assert refused[0].headers["Retry-After"] == "1"
    assert "app 'rec' is busy" in refused[0].json()["error"]
    assert "QUEUE_TIMEOUT" in refused[0].json()["error"]
    assert sorted(a.status_code for a in answers).count(503) == 2
    assert reached == 4  # the refused ones never reached the app
    logs = paastis.logs()
    assert logs.count("app rec: answering 503") == 1  # one line per app per 10 s, not one per refusal


def test_a_full_queue_refuses_at_once(paastis_with, upstreams):
    paastis = paastis_with(PAASTIS_THREADS="2", MAX_IN_FLIGHT_PER_APP="1", MAX_QUEUED_PER_APP="2", **ADMIN)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(paastis.get, "/hang", host="rec.localhost", timeout=120) for _ in range(4)]
        wait_until(lambda: len(upstreams["rec"].hits_for("/hang")) == 2, 30, what="both threads to be taken")
        queued = 'paastis_queued_requests{app="rec",provider="local"} 2.0'
        wait_until(lambda: queued in metrics(paastis), 30, what="the two others to be queued")
        extra = paastis.get("/hang", host="rec.localhost", timeout=30)
        upstreams["rec"].released.set()
        answers = [f.result() for f in futures]
    assert extra.status_code == 503
    assert "MAX_QUEUED_PER_APP" in extra.json()["error"]
    assert 503 not in [a.status_code for a in answers]
    assert 'paastis_refused_requests_total{reason="queue_full"} 1.0' in metrics(paastis)
    assert "paastis_queue_wait_seconds_count 7.0" in metrics(paastis)  # 3 /ready requests, then these 4


def slow_upload(port: int, host: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\n".encode())
    return sock


def test_40_slow_uploads_over_two_apps_leave_a_third_answering(paastis_with, upstreams):
    paastis = paastis_with()  # default settings: 32 threads
    socks = [slow_upload(paastis.port, ("rec", "other")[i % 2] + ".localhost") for i in range(40)]
    halt = threading.Event()

    def trickle() -> None:
        while not halt.wait(2.0):
            for sock in socks:
                try:
                    sock.send(b"x")
                except OSError:
                    pass

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        time.sleep(2.5)  # each upload has sent its head and, by now, a byte of its body
        for _ in range(5):
            assert paastis.get("/fine", host="third.localhost", timeout=30).status_code == 200
        assert paastis.get("/fine", host="rec.localhost", timeout=30).status_code == 200
    finally:
        halt.set()
        thread.join()
        for sock in socks:
            sock.close()
    assert upstreams["rec"].hits_for("/upload") == [] and upstreams["other"].hits_for("/upload") == []


def test_a_slow_upload_reaches_the_app_whole_once_complete(paastis_with, upstreams):
    paastis = paastis_with()
    with socket.create_connection(("127.0.0.1", paastis.port), timeout=30) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: rec.localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            sock.sendall(b"5\r\nhello\r\n")
            time.sleep(0.3)  # a slow client, not a clock the test depends on
        sock.sendall(b"0\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200")
    assert [(hit.body, hit.size) for hit in upstreams["rec"].hits_for("/upload")] == [("complete", 15)]


def test_thousands_of_lingering_clients_leave_other_apps_answering(paastis_with, upstreams):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    paastis = paastis_with()
    lingering: list[socket.socket] = []
    try:
        for _ in range(2000):  # each asks for a close, gets its answer, and never closes its side
            sock = socket.create_connection(("127.0.0.1", paastis.port), timeout=30)
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: rec.localhost\r\nConnection: close\r\n\r\n")
            lingering.append(sock)
            if len(lingering) % 250 == 0:
                assert paastis.get("/fine", host="other.localhost", timeout=30).status_code == 200
        wait_until(lambda: len(upstreams["rec"].hits_for("/x")) == 2000, 120, what="every request to be served")
        for _ in range(5):
            assert paastis.get("/fine", host="other.localhost", timeout=30).status_code == 200
        assert lingering[0].recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for sock in lingering:
            sock.close()


# -- WebSockets: 500 handshakes at once, limits per instance ------------------------------

WS_APP = Path(__file__).resolve().parent / "ws_app.py"


def ws_app_config(tmp_path: Path) -> dict:
    """``tests/ws_app.py`` as a local app (asleep until the first request); it logs each boot."""
    command = f"START_LOG={tmp_path / 'demo-starts.log'} exec {PYTHON} {WS_APP}"
    return {"name": "demo", "url": f"http://127.0.0.1:{free_port()}", "command": command}


def handshake(port: int, source: str = "127.0.0.1") -> tuple[int, bytes, socket.socket]:
    """A raw WebSocket handshake from ``source`` (any 127.x address is this machine); status, answer, socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120, source_address=(source, 0))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /echo HTTP/1.1\r\nHost: demo.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
        answer += chunk
    return (int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0), answer, sock


def apps_demo(paastis: Gunicorn) -> dict:
    headers = {"PaastisProxyTarget": "system", "Authorization": f"Bearer {TOKEN}"}
    return requests.get(paastis.url + "/apps/demo", headers=headers, timeout=30).json()


@pytest.mark.parametrize("workers", [1, 3])
def test_500_handshakes_at_once_to_a_sleeping_app_all_get_101_after_one_start(
    tmp_path, gunicorn_factory, prefix, workers
):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    write_config(tmp_path, [ws_app_config(tmp_path)])
    paastis = gunicorn_factory({**workers_env(workers, prefix), **ADMIN})  # default limits: 100 per client
    if workers > 1:
        wait_until(lambda: len(paastis.worker_pids()) == workers, 20, what=f"{workers} workers")
    sources = [f"127.0.0.{2 + i // 50}" for i in range(500)]  # ten clients, 50 connections each
    barrier = threading.Barrier(500)

    def one(source: str) -> tuple[int, bytes, socket.socket]:
        barrier.wait(60)
        return handshake(paastis.port, source)

    with ThreadPoolExecutor(500) as pool:
        results = list(pool.map(one, sources))
    try:
        assert [status for status, _, _ in results] == [101] * 500, next(a for s, a, _ in results if s != 101)
        assert starts(tmp_path) == 1
        assert apps_demo(paastis)["websockets"] == 500  # the whole instance, whichever worker answers
    finally:
        for _, _, sock in results:
            sock.close()
    wait_until(lambda: apps_demo(paastis)["websockets"] == 0, 60, what="every place to be given back")


def test_max_websockets_counts_every_worker_of_an_instance(tmp_path, gunicorn_factory, prefix):
    write_config(tmp_path, [ws_app_config(tmp_path)])
    paastis = gunicorn_factory({**workers_env(3, prefix), **ADMIN, "MAX_WEBSOCKETS": "4"})
    wait_until(lambda: len(paastis.worker_pids()) == 3, 20, what="3 workers")
    opened = [handshake(paastis.port) for _ in range(4)]
    try:
        assert [status for status, _, _ in opened] == [101] * 4
        for _ in range(6):  # whichever worker takes it, the instance is full
            status, answer, sock = handshake(paastis.port)
            sock.close()
            assert status == 503 and b"MAX_WEBSOCKETS=4" in answer
            assert apps_demo(paastis)["websockets"] == 4
    finally:
        for _, _, sock in opened:
            sock.close()
    wait_until(lambda: opens(paastis.port), 30, what="places to free up")


def opens(port: int) -> bool:
    status, _, sock = handshake(port)
    sock.close()
    return status == 101


def test_one_client_cannot_take_every_websocket(tmp_path, gunicorn_factory):
    write_config(tmp_path, [ws_app_config(tmp_path)])
    paastis = gunicorn_factory({**ADMIN, "MAX_WEBSOCKETS_PER_CLIENT": "2"})
    opened = [handshake(paastis.port, "127.0.0.2") for _ in range(2)]
    try:
        status, answer, sock = handshake(paastis.port, "127.0.0.2")
        sock.close()
        assert status == 503
        assert b"MAX_WEBSOCKETS_PER_CLIENT=2" in answer and b"127.0.0.2" in answer
        assert b"Retry-After: 1" in answer
        status, _, other = handshake(paastis.port, "127.0.0.3")  # another client still gets in
        other.close()
        assert status == 101
    finally:
        for _, _, sock in opened:
            sock.close()
    assert 'paastis_refused_requests_total{reason="max_websockets_per_client"} 1.0' in metrics(paastis)
