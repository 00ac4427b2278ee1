"""A real HTTP app for the tests, spawned by the local provider (``command:``) or directly.

Environment: ``PORT`` (required), ``BOOT_DELAY`` (seconds before listening),
``START_LOG`` (a file that gets one line per boot, to count starts),
``EXIT_CODE`` (exit at once with this code, to simulate a crash at boot).

Endpoints: ``/echo`` describes the request as JSON; ``/stream?chunks=N&delay=S`` sends
chunks slowly; ``/big?mb=N`` streams N MiB; ``/upload`` hashes the body it receives;
``/cookies`` sets two cookies; ``/env?name=X`` tells environment variables;
``/redirect`` answers 302; ``/status/<code>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MIB = 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline()
                length = int(line.split(b";")[0].strip(), 16)
                if length == 0:
                    self.rfile.readline()
                    break
                remaining = length
                while remaining:
                    data = self.rfile.read(min(remaining, MIB))
                    digest.update(data)
                    size += len(data)
                    remaining -= len(data)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(remaining, MIB))
                if not data:
                    break
                digest.update(data)
                size += len(data)
                remaining -= len(data)
        return size, digest.hexdigest()

    def handle_any(self):
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        size, sha = self._read_body()
        if parts.path == "/stream":
            return self._stream(int(query.get("chunks", ["5"])[0]), float(query.get("delay", ["0.5"])[0]))
        if parts.path == "/big":
            return self._big(int(query.get("mb", ["1"])[0]))
        if parts.path == "/cookies":
            return self._send(200, b"{}", extra=[("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/")])
        if parts.path == "/redirect":
            return self._send(302, b"", extra=[("Location", "/elsewhere")])
        if parts.path == "/env":
            names = query.get("name", [])
            return self._send(200, json.dumps({name: os.environ.get(name) for name in names}).encode())
        if parts.path.startswith("/status/"):
            return self._send(int(parts.path.rsplit("/", 1)[1]), b"{}")
        description = {
            "app": os.environ.get("PAASTIS_APP_NAME", ""),
            "port": int(os.environ["PORT"]),
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_size": size,
            "body_sha256": sha,
            "chunked": "chunked" in self.headers.get("Transfer-Encoding", "").lower(),
        }
        self._send(200, json.dumps(description).encode())

    def _stream(self, chunks: int, delay: float):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(chunks):
            data = f"chunk {i}\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
            time.sleep(delay)
        self.wfile.write(b"0\r\n\r\n")

    def _big(self, mib: int):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(mib * MIB))
        self.end_headers()
        block = b"x" * MIB
        for _ in range(mib):
            self.wfile.write(block)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any


def main() -> None:
    if os.environ.get("EXIT_CODE"):
        print("upstream_app: exiting at boot as asked", flush=True)
        sys.exit(int(os.environ["EXIT_CODE"]))
    time.sleep(float(os.environ.get("BOOT_DELAY", "0")))
    if os.environ.get("START_LOG"):
        with open(os.environ["START_LOG"], "a") as log:
            log.write(f"{os.getpid()}\n")
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
