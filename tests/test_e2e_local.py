"""End to end: real gunicorn, real upstream processes managed by the local provider."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support import free_port, port_open, upstream_command, write_config


def demo_app(tmp_path: Path, name: str = "demo", **env) -> tuple[dict, int]:
    port = free_port()
    env.setdefault("START_LOG", tmp_path / f"{name}-starts.log")
    return {"name": name, "url": f"http://127.0.0.1:{port}", "command": upstream_command(**env)}, port


def starts(tmp_path: Path, name: str = "demo") -> int:
    path = tmp_path / f"{name}-starts.log"
    return len(path.read_text().split()) if path.exists() else 0


def test_wake_on_request_then_proxy(tmp_path, gunicorn_factory):
    app, port = demo_app(tmp_path, BOOT_DELAY=0.5)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory()
    assert not port_open(port)
    response = paastis.get("/echo?a=1&b=%2F", host=f"demo.localhost:{paastis.port}")
    assert response.status_code == 200
    seen = response.json()
    assert seen["path"] == "/echo?a=1&b=%2F"
    assert starts(tmp_path) == 1


def test_coalesced_wake_one_start_for_100_requests(tmp_path, gunicorn_factory):
    app, _ = demo_app(tmp_path, BOOT_DELAY=1)
    write_config(tmp_path, [app])
    paastis = gunicorn_factory({"PAASTIS_THREADS": "128"})
    with ThreadPoolExecutor(100) as pool:
        codes = list(pool.map(lambda _: paastis.get("/echo").status_code, range(100)))
    assert codes == [200] * 100
    assert starts(tmp_path) == 1
