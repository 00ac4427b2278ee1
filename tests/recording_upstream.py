"""An upstream app that records what it received, and can misbehave on demand (for the robustness tests).

It speaks HTTP/1.1 over raw sockets so that it can tell a complete body from an aborted
one exactly as an app would: a body is ``complete`` only when all the bytes its
``Content-Length`` announced, or the last chunk of a chunked body, arrived.

Paths:
- ``/hang``: never answers (until :meth:`RecordingUpstream.close`).
- ``/hangup-once``: the first request of each method is met with a close, before any byte of answer;
  ``/reset-once``: the same with a TCP reset. Later ones are answered.
- anything else: ``200`` with a JSON description, once the body was read.
"""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    body: str  # "none", "complete" or "aborted"
    size: int


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        head = self._head()
        if head is None:
            return
        method, path, headers = head
        upstream = self.server.owner
        if path == "/hang":
            upstream.record(Hit(method, path, "none", 0))
            upstream.released.wait()
            return
        if path in ("/hangup-once", "/reset-once") and upstream.first_time(method, path):
            upstream.record(Hit(method, path, "none", 0))
            if path == "/reset-once":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return  # closing without a byte of answer
        outcome, size = self._body(headers)
        upstream.record(Hit(method, path, outcome, size))
        if outcome == "aborted":
            return
        payload = json.dumps({"method": method, "path": path, "body": outcome, "size": size}).encode()
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )

    def _head(self) -> tuple[str, str, dict[str, str]] | None:
        line = self.rfile.readline(65536)
        if not line:
            return None
        parts = line.decode("latin-1").split()
        if len(parts) != 3:
            return None
        headers: dict[str, str] = {}
        while True:
            raw = self.rfile.readline(65536)
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return parts[0], parts[1], headers

    def _body(self, headers: dict[str, str]) -> tuple[str, int]:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._chunked()
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            return "aborted", 0
        if length <= 0:
            return "none", 0
        data = self.rfile.read(min(length, 1 << 30))
        return ("complete" if len(data) == length else "aborted"), len(data)

    def _chunked(self) -> tuple[str, int]:
        size = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                length = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                return "aborted", size
            if length == 0:
                return ("complete" if self.rfile.readline(1024) == b"\r\n" else "aborted"), size
            data = self.rfile.read(length)
            size += len(data)
            if len(data) < length or self.rfile.readline(1024) != b"\r\n":
                return "aborted", size


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: RecordingUpstream


class RecordingUpstream:
    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.owner = self
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.hits: list[Hit] = []
        self.released = threading.Event()
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def record(self, hit: Hit) -> None:
        with self._lock:
            self.hits.append(hit)

    def first_time(self, method: str, path: str) -> bool:
        with self._lock:
            if (method, path) in self._seen:
                return False
            self._seen.add((method, path))
            return True

    def hits_for(self, path: str) -> list[Hit]:
        with self._lock:
            return [hit for hit in self.hits if hit.path == path]

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
