"""Upstream TLS is verified, and a custom CA bundle (REQUESTS_CA_BUNDLE) is honoured."""

from __future__ import annotations

import shutil
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support import free_port, self_signed_cert, write_config

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


class Hello(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"secure")


@pytest.fixture
def https_upstream(tmp_path) -> Iterator[tuple[int, Path]]:
    """A real HTTPS server on 127.0.0.1 with a self-signed certificate; yields its port and certificate."""
    cert, key = self_signed_cert(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], cert
    server.shutdown()


def configure(tmp_path: Path, port: int) -> None:
    write_config(tmp_path, [{"name": "secure", "url": f"https://127.0.0.1:{port}", "start": "true", "stop": "true"}])


def test_an_untrusted_upstream_certificate_is_refused(tmp_path, https_upstream, gunicorn_factory):
    port, _ = https_upstream
    configure(tmp_path, port)
    paastis = gunicorn_factory()
    response = paastis.get(host="secure.localhost")
    assert response.status_code == 502
    assert "secure" in response.json()["error"]


def test_requests_ca_bundle_makes_a_private_ca_trusted(tmp_path, https_upstream, gunicorn_factory):
    port, cert = https_upstream
    configure(tmp_path, port)
    paastis = gunicorn_factory({"REQUESTS_CA_BUNDLE": str(cert)})
    response = paastis.get(host="secure.localhost")
    assert response.status_code == 200
    assert response.content == b"secure"
