"""End to end: what a client and an app see of the proxying itself (headers, paths, bodies, streams)."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support import Gunicorn, free_port, kill_local_apps, upstream_command, write_config

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def paastis(tmp_path_factory) -> Iterator[Gunicorn]:
    tmp = tmp_path_factory.mktemp("proxy")
    port = free_port()
    write_config(tmp, [{"name": "demo", "url": f"http://127.0.0.1:{port}", "command": upstream_command()}])
    env = {"PAASTIS_CONFIG_FILE": str(tmp / "paastis.yml"), "PAASTIS_STATE_DIR": str(tmp / "state")}
    server = Gunicorn(env, tmp).start()
    assert server.get("/echo").status_code == 200  # wake it once for the whole module
    yield server
    server.stop()
    kill_local_apps(tmp / "state")


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send bytes exactly as given and read the whole answer (Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def echoed(answer: bytes) -> dict:
    import json

    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def headers_of(description: dict) -> dict[str, str]:
    return {k.lower(): v for k, v in description["headers"]}


def test_path_and_query_are_forwarded_byte_for_byte(paastis):
    target = b"/echo//a/%2e%2E/b%2Fc;p=1?x=%20y&y=a+b&&z=%zz&empty="
    answer = raw_exchange(
        paastis.port, b"GET " + target + b" HTTP/1.1\r\nHost: demo.localhost\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200")
    assert echoed(answer)["path"].encode() == target


def test_absolute_form_request_line_cannot_reach_another_host(paastis):
    hits = []

    class Bait(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

    bait = ThreadingHTTPServer(("127.0.0.1", free_port()), Bait)
    threading.Thread(target=bait.serve_forever, daemon=True).start()
    try:
        line = f"GET http://127.0.0.1:{bait.server_address[1]}/echo?q=1 HTTP/1.1\r\n".encode()
        answer = raw_exchange(paastis.port, line + b"Host: demo.localhost\r\nConnection: close\r\n\r\n")
    finally:
        bait.shutdown()
    assert hits == []
    assert echoed(answer)["path"] == "/echo?q=1"


def test_forwarded_headers_host_and_hop_by_hop(paastis):
    response = paastis.get(
        "/echo",
        host=f"demo.localhost:{paastis.port}",
        headers={
            "Connection": "keep-alive, X-Hop-Secret",
            "X-Hop-Secret": "must not pass",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-End-To-End": "kept",
            "X-Forwarded-For": "203.0.113.9",
        },
    )
    seen = headers_of(response.json())
    assert seen["host"] == f"127.0.0.1:{response.json()['port']}"
    assert seen["x-forwarded-host"] == f"demo.localhost:{paastis.port}"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-end-to-end"] == "kept"
    for hop in ("x-hop-secret", "keep-alive", "proxy-authorization"):
        assert hop not in seen


def test_origin_is_rewritten_only_when_it_is_the_proxy_origin(paastis):
    host = f"demo.localhost:{paastis.port}"
    own = paastis.get("/echo", host=host, headers={"Origin": f"http://{host}"}).json()
    assert headers_of(own)["origin"] == f"http://127.0.0.1:{own['port']}"
    foreign = paastis.get("/echo", host=host, headers={"Origin": "https://evil.example"}).json()
    assert headers_of(foreign)["origin"] == "https://evil.example"


def test_repeated_set_cookie_redirects_and_statuses_pass_unchanged(paastis):
    cookies = paastis.get("/cookies")
    assert cookies.raw.headers.getlist("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    redirect = paastis.get("/redirect")
    assert redirect.status_code == 302
    assert redirect.headers["Location"] == "/elsewhere"
    assert paastis.get("/status/418").status_code == 418
    assert paastis.request("HEAD", "/echo").status_code == 200


def test_slow_stream_shows_its_first_bytes_at_once(paastis):
    started = time.monotonic()
    chunks = paastis.get("/stream?chunks=4&delay=1", stream=True).iter_content(chunk_size=None)
    first = next(chunks)
    first_after = time.monotonic() - started
    rest = b"".join(chunks)
    total = time.monotonic() - started
    assert first == b"chunk 0\n"
    assert rest == b"chunk 1\nchunk 2\nchunk 3\n"
    assert total - first_after >= 2  # the first chunk came while the upstream still had seconds to go


def worker_rss_kib(server: Gunicorn) -> int:
    return sum(
        int(line.split()[1])
        for pid in server.worker_pids()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )


class PeakRss:
    """Samples the workers' resident memory while a transfer runs."""

    def __init__(self, server: Gunicorn):
        self.server = server
        self.baseline = worker_rss_kib(server)
        self.peak = self.baseline
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, worker_rss_kib(self.server))

    def __enter__(self) -> PeakRss:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.baseline) / 1024


def test_big_download_streams_with_flat_memory(paastis):
    size_mib = 1024
    with PeakRss(paastis) as rss:
        response = paastis.get(f"/big?mb={size_mib}", stream=True)
        received = sum(len(chunk) for chunk in response.iter_content(chunk_size=MIB))
    assert response.headers["Content-Length"] == str(size_mib * MIB)
    assert received == size_mib * MIB
    assert rss.growth_mib < 40, f"worker memory grew by {rss.growth_mib:.0f} MiB for a {size_mib} MiB download"


def test_chunked_upload_streams_with_flat_memory(paastis):
    size_mib = 512
    block = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256()

    def body():
        for _ in range(size_mib):
            digest.update(block)
            yield block

    with PeakRss(paastis) as rss:
        response = paastis.request("POST", "/upload", data=body())
    seen = response.json()
    assert seen["chunked"] is True
    assert seen["body_size"] == size_mib * MIB
    assert seen["body_sha256"] == digest.hexdigest()
    assert rss.growth_mib < 40, f"worker memory grew by {rss.growth_mib:.0f} MiB for a {size_mib} MiB upload"


def test_upload_with_content_length_keeps_it(paastis):
    data = b"x" * (3 * MIB + 7)
    seen = paastis.request("PUT", "/upload", data=data).json()
    assert seen["chunked"] is False
    assert headers_of(seen)["content-length"] == str(len(data))
    assert seen["body_sha256"] == hashlib.sha256(data).hexdigest()


def test_an_app_whose_upstream_is_paastis_itself_is_a_508_not_a_loop(tmp_path):
    paastis = Gunicorn({"PAASTIS_CONFIG_FILE": str(tmp_path / "paastis.yml")}, tmp_path)
    # The app's upstream is paastis: what paastis sends it carries Via, so whatever its Host ("127.0.0.1:<port>",
    # which names no app), paastis answers 508 instead of serving it again.
    write_config(
        tmp_path, [{"name": "127", "url": f"http://127.0.0.1:{paastis.port}", "start": "true", "stop": "true"}]
    )
    paastis.env["PAASTIS_STATE_DIR"] = str(tmp_path / "state")
    paastis.start()
    try:
        response = paastis.get("/", host="127.localhost")
        assert response.status_code == 508
        assert "request loop" in response.json()["error"]
        seen = paastis.get("/echo", host="unknown.localhost")  # still serving
        assert seen.status_code == 404
    finally:
        paastis.stop()


def test_a_request_without_host_is_a_400(paastis):
    answer = raw_exchange(paastis.port, b"GET /echo HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    assert b"missing Host header" in answer
