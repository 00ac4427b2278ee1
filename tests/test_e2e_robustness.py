"""End to end: no slow or broken client, and no hung app, stalls paastis (issue 8).

Everything goes through a real gunicorn with paastis's own worker class, over raw sockets
where a well-behaved HTTP client could not misbehave enough. The apps are
:class:`RecordingUpstream` instances, which tell a complete body from an aborted one.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.recording_upstream import RecordingUpstream
from tests.support import Gunicorn, SlowClients, local_app, wait_until, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture
def upstreams() -> Iterator[dict[str, RecordingUpstream]]:
    apps = {"rec": RecordingUpstream(), "other": RecordingUpstream()}
    yield apps
    for upstream in apps.values():
        upstream.close()


@pytest.fixture
def paastis_with(
    tmp_path: Path, gunicorn_factory: Callable[..., Gunicorn], upstreams: dict[str, RecordingUpstream]
) -> Callable[..., Gunicorn]:
    """paastis routing ``rec`` and ``other`` to recording upstreams (already running, so already awake)."""

    def start(rules: list[dict] | None = None, **env: str) -> Gunicorn:
        apps = [{"name": name, "url": up.url, "start": "true", "stop": "true"} for name, up in upstreams.items()]
        write_config(tmp_path, apps, rules)
        server = gunicorn_factory(env)
        for name in upstreams:
            assert server.get("/ready", host=f"{name}.localhost").status_code == 200
        return server

    return start


def exchange(port: int, data: bytes, *, shut: bool = True, timeout: float = 30) -> bytes:
    """Send raw bytes (then end our side, unless ``shut`` is False) and read until paastis closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


# -- slow clients -------------------------------------------------------------------


def test_256_slow_heads_do_not_stall_normal_requests(paastis_with, upstreams):
    paastis = paastis_with()  # default settings: one worker, 32 threads
    with SlowClients(paastis.port, 256) as slow:
        for _ in range(5):
            response = paastis.get("/normal", host="rec.localhost", timeout=10)  # generous: stock gthread never answers
            assert response.status_code == 200
        assert slow.closed() == 0  # still trickling, within CLIENT_HEADER_TIMEOUT
    assert len(upstreams["rec"].hits_for("/slow")) == 0


def test_a_head_past_client_header_timeout_gets_408_and_a_close(paastis_with):
    paastis = paastis_with(CLIENT_HEADER_TIMEOUT="1")
    with SlowClients(paastis.port, 3, pace=0.2) as slow:
        wait_until(lambda: slow.closed() == 3, 20, what="the slow heads to be cut off")
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in slow.answers())
    assert "(CLIENT_HEADER_TIMEOUT): closed" in paastis.logs()
    assert paastis.get("/after", host="rec.localhost").status_code == 200


def test_a_silent_body_gets_408_and_never_reaches_the_app(paastis_with, upstreams):
    paastis = paastis_with(CLIENT_BODY_TIMEOUT="1")
    head = b"POST /silent HTTP/1.1\r\nHost: rec.localhost\r\nContent-Length: 100\r\n\r\n"
    answer = exchange(paastis.port, head + b"x" * 10, shut=False)
    assert status_of(answer) == 408
    assert b"CLIENT_BODY_TIMEOUT" in answer
    assert paastis.get("/after", host="rec.localhost").status_code == 200  # the app has seen what came before
    assert upstreams["rec"].hits_for("/silent") == []  # buffered by paastis, never half-sent to the app


# -- broken bodies ------------------------------------------------------------------

BROKEN_BODIES = {
    "short content-length": b"POST /broken HTTP/1.1\r\nHost: rec.localhost\r\nContent-Length: 1000\r\n\r\n"
    + b"x" * 100,
    "invalid chunk size": b"POST /broken HTTP/1.1\r\nHost: rec.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n",
    "missing last chunk": b"POST /broken HTTP/1.1\r\nHost: rec.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"5\r\nhello\r\n5\r\nworld\r\n",
    "chunk shorter than its size": b"POST /broken HTTP/1.1\r\nHost: rec.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"ff\r\nhello",
}


@pytest.mark.parametrize("case", sorted(BROKEN_BODIES))
def test_a_broken_body_is_a_400_and_never_reaches_the_app_complete(paastis_with, upstreams, case):
    paastis = paastis_with()
    answer = exchange(paastis.port, BROKEN_BODIES[case])
    assert status_of(answer) == 400, answer[:300]
    assert b"request body" in answer
    hits = lambda: upstreams["rec"].hits_for("/broken")  # noqa: E731
    wait_until(lambda: hits() and all(hit.body != "none" for hit in hits()), 10, what="the app to see the request")
    assert {hit.body for hit in hits()} == {"aborted"}
    logs = paastis.logs()
    assert "client error on POST /broken for rec" in logs
    assert "Traceback" not in logs
    assert paastis.get("/after", host="rec.localhost").status_code == 200


def test_a_client_gone_mid_body_aborts_the_upload(paastis_with, upstreams):
    paastis = paastis_with()
    with socket.create_connection(("127.0.0.1", paastis.port), timeout=10) as sock:
        sock.sendall(b"PUT /gone HTTP/1.1\r\nHost: rec.localhost\r\nContent-Length: 5000\r\n\r\n" + b"y" * 2000)
    wait_until(lambda: upstreams["rec"].hits_for("/gone"), 10, what="the app to see the request")
    assert [hit.body for hit in upstreams["rec"].hits_for("/gone")] == ["aborted"]
    assert "Traceback" not in paastis.logs()


# -- hung apps: see tests/test_e2e_queue.py (the per-app queue and its fairness rule, issue 16) ------------


# -- retries ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/hangup-once", "/reset-once"])
def test_an_idempotent_request_is_retried_once_when_the_app_hangs_up(paastis_with, upstreams, path):
    paastis = paastis_with()
    response = paastis.get(path, host="rec.localhost")
    assert response.status_code == 200
    assert len(upstreams["rec"].hits_for(path)) == 2


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_request_whose_body_was_sent_is_never_retried(paastis_with, upstreams, method):
    paastis = paastis_with()
    response = paastis.request(method, "/hangup-once", host="rec.localhost", data=b"pay once")
    assert response.status_code == 502
    assert "app 'rec' did not answer" in response.json()["error"]
    assert len(upstreams["rec"].hits_for("/hangup-once")) == 1


# -- graceful shutdown ------------------------------------------------------------------


def test_sigterm_lets_an_inflight_download_finish(tmp_path, gunicorn_factory):
    app, _ = local_app(tmp_path)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    response = paastis.get("/stream?chunks=8&delay=0.5", stream=True)
    chunks = response.iter_content(chunk_size=None)
    assert next(chunks) == b"chunk 0\n"
    os.killpg(paastis.process.pid, signal.SIGTERM)  # the whole group, as a PaaS stopping the container does
    rest = b"".join(chunks)
    assert rest == b"".join(f"chunk {i}\n".encode() for i in range(1, 8))
    wait_until(lambda: paastis.process.poll() is not None, 30, what="gunicorn to exit")
    assert "Traceback" not in paastis.logs()
