"""Fuzzing: thousands of mutated raw requests through a real gunicorn, and never a 500 or a traceback.

The mutations are seeded, so a failure names the seed and the request that caused it and
replays the same way. Seeds cover plain, chunked and ``Content-Length`` bodies, the admin API
and absolute-form targets; mutations flip, insert, delete, duplicate and truncate bytes, and add
conflicting or absurd headers.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.recording_upstream import RecordingUpstream
from tests.support import Gunicorn, write_config

pytestmark = pytest.mark.e2e

REQUESTS = 1500
SEED = 8
TOKEN = "fuzz-token-0123456789abcdef"

SEEDS = [
    b"GET /echo?a=1 HTTP/1.1\r\nHost: rec.localhost\r\nUser-Agent: fuzz\r\nAccept: */*\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: rec.localhost\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n"
    b"hello world",
    b"POST /upload HTTP/1.1\r\nHost: rec.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
    b"PUT /put HTTP/1.1\r\nHost: rec.localhost:3000\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
    b"HEAD / HTTP/1.1\r\nHost: rec.localhost\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: rec.localhost\r\n\r\n",
    b"GET http://rec.localhost/abs HTTP/1.1\r\nHost: rec.localhost\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET /apps HTTP/1.1\r\nHost: x\r\nPaastisProxyTarget: system\r\nAuthorization: Bearer "
    + TOKEN.encode()
    + b"\r\n\r\n",
    b"POST /apps/rec/start HTTP/1.1\r\nHost: x\r\nPaastisProxyTarget: system\r\nAuthorization: Bearer "
    + TOKEN.encode()
    + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: rec.localhost\r\nCookie: a=1; b=2\r\nX-Forwarded-For: 203.0.113.1\r\n"
    b"Origin: http://rec.localhost\r\nVia: 1.0 other\r\n\r\n",
]
BYTES = [b"\x00", b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b";", b"%", b"%zz", b"\xff", b"\x80", b"/", b"\\", b"0"]
HEADERS = [
    b"Content-Length: -1",
    b"Content-Length: 99999999999999999999999",
    b"Content-Length: 5, 6",
    b"Content-Length: 3",
    b"Content-Length: 0x10",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked, identity",
    b"Transfer-Encoding: \x0bchunked",
    b"Expect: 100-continue",
    b"Expect: nonsense",
    b"Connection: Upgrade\r\nUpgrade: websocket",
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
    b"Host: ",
    b"Host: a..b",
    b"Host: rec.localhost\r\nHost: other.localhost",
    b"Host: \xff\xfe.localhost",
    b"Via: 1.1 paastis",
    b"X-Forwarded-Proto: javascript",
    b"PaastisProxyTarget: system",
    b"Authorization: Bearer short",
    b"Cookie: " + b"a" * 9000,
    b"X-Long: " + b"b" * 70000,
    b"Bad Header: 1",
    b" folded: continuation",
    b"Trailer: Content-Length",
]
METHODS = [b"GET", b"get", b"CONNECT", b"TRACE", b"PRI", b"G\x00T", b"PATCH", b"BREW", b"DELETE", b"X" * 300]
TARGETS = [b"*", b"http://evil.example/", b"//", b"/%", b"/\xff", b"?", b"/" + b"a" * 9000, b"", b"/..%2f..", b"/a b"]


def mutate(request: bytes, rng: random.Random) -> bytes:
    data = bytearray(request)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(8)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[at - 1 : at] = rng.choice(BYTES)
        elif op == 1:
            data[at:at] = rng.choice(BYTES)
        elif op == 2 and data:
            data[at : at + rng.randint(1, 16)] = b""
        elif op == 3 and data:
            start = rng.randrange(len(data))
            data[at:at] = data[start : start + rng.randint(1, 64)]
        elif op == 4:
            data = data[:at]
        elif op == 5:
            line_end = data.find(b"\r\n")
            if line_end >= 0:
                data[line_end + 2 : line_end + 2] = rng.choice(HEADERS) + b"\r\n"
        elif op == 6:
            space = data.find(b" ")
            if space > 0:
                data[:space] = rng.choice(METHODS)
        else:
            first, second = data.find(b" "), data.find(b" ", data.find(b" ") + 1)
            if 0 < first < second:
                data[first + 1 : second] = rng.choice(TARGETS)
    return bytes(data)


def send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # paastis may answer (and close) before reading it all: what it said still counts
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def statuses(answer: bytes) -> list[int]:
    """Every status line in an answer (several when a kept-alive connection served several requests)."""
    found = []
    for line in answer.split(b"\r\n"):
        parts = line.split(b" ", 2)
        if len(parts) >= 2 and parts[0] in (b"HTTP/1.0", b"HTTP/1.1") and parts[1].isdigit():
            found.append(int(parts[1]))
    return found


@pytest.fixture
def fuzzed(tmp_path: Path, gunicorn_factory) -> Iterator[tuple[Gunicorn, RecordingUpstream]]:
    upstream = RecordingUpstream()
    write_config(tmp_path, [{"name": "rec", "url": upstream.url, "start": "true", "stop": "true"}])
    paastis = gunicorn_factory(
        {
            "ROUTING_SYSTEM_API_ENABLED": "true",
            "ROUTING_SYSTEM_API_TOKEN": TOKEN,
            "CLIENT_BODY_TIMEOUT": "5",
            "UPSTREAM_READ_TIMEOUT": "10",
        }
    )
    yield paastis, upstream
    upstream.close()


def test_mutated_requests_never_get_a_500_nor_a_traceback(fuzzed):
    paastis, _ = fuzzed
    rng = random.Random(SEED)
    cases = [mutate(rng.choice(SEEDS), rng) for _ in range(REQUESTS)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda data: send(paastis.port, data), cases))
    failures = [(case, answer[:300]) for case, answer in zip(cases, answers, strict=True) if 500 in statuses(answer)]
    assert not failures, f"{len(failures)} request(s) got a 500, e.g. {failures[0][0][:500]!r} -> {failures[0][1]!r}"
    answered = sum(1 for answer in answers if statuses(answer))
    assert answered > REQUESTS / 2  # most mutations still make a request worth an answer
    logs = paastis.logs()
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 2000 : logs.index("Traceback") + 3000]
    assert "Error handling request" not in logs
    assert paastis.get("/still-serving", host="rec.localhost").status_code == 200
