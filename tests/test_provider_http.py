"""The providers' HTTP client retry policy, against real HTTP servers on 127.0.0.1.

Reads are retried on 5xx answers and network errors (they change nothing); writes never are,
because a scale whose answer was lost may well have been applied.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from paastis.metrics import Metrics
from paastis.providers import ProviderError
from paastis.providers.http import ApiClient


class ScriptedServer:
    """Answers each request with the next status of ``statuses`` (the last one repeats); counts requests."""

    def __init__(self, statuses: list[int]):
        self.statuses = statuses
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.requests.append(self.command)
                status = server.statuses[min(len(server.requests), len(server.statuses)) - 1]
                body = b'{"error": "scripted"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


class HangingUpServer:
    """Accepts each connection and closes it without a word: a network error for the client."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.recv(65536)
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., ScriptedServer | HangingUpServer]]:
    made: list[ScriptedServer | HangingUpServer] = []

    def make(statuses: list[int] | None = None) -> ScriptedServer | HangingUpServer:
        made.append(ScriptedServer(statuses) if statuses is not None else HangingUpServer())
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.fixture
def client_for() -> Iterator[Callable[[str], ApiClient]]:
    made: list[ApiClient] = []

    def make(url: str) -> ApiClient:
        made.append(ApiClient("test", url, Metrics(), "TEST_TOKEN"))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_a_read_is_retried_on_5xx_until_it_succeeds(servers, client_for):
    server = servers([503, 502, 200])
    response = client_for(server.url).call("GET", "/v1/apps", "list_apps")
    assert response.status_code == 200
    assert server.requests == ["GET", "GET", "GET"]


def test_a_write_is_never_retried_on_5xx(servers, client_for):
    server = servers([503, 200])
    with pytest.raises(ProviderError, match="scale failed with 503"):
        client_for(server.url).call("POST", "/v1/apps/shop/scale", "scale", "shop", json={"containers": []})
    assert server.requests == ["POST"]


def test_a_read_is_retried_on_network_errors_then_fails_clearly(servers, client_for):
    server = servers()
    with pytest.raises(ProviderError, match="list_apps failed: ConnectionError"):
        client_for(server.url).call("GET", "/v1/apps", "list_apps")
    assert server.connections > 1


def test_a_write_is_never_retried_on_network_errors(servers, client_for):
    server = servers()
    with pytest.raises(ProviderError, match="scale failed: ConnectionError"):
        client_for(server.url).call("POST", "/v1/apps/shop/scale", "scale", "shop", json={"containers": []})
    assert server.connections == 1


def test_a_client_error_is_not_retried_even_for_a_read(servers, client_for):
    server = servers([422, 200])
    with pytest.raises(ProviderError, match="get_app failed with 422"):
        client_for(server.url).call("GET", "/v1/apps/shop", "get_app", "shop")
    assert server.requests == ["GET"]
