"""Redis for the tests: the shared server on 6379 under a unique key prefix, or a private server.

Tests never flush a database: they write under their own prefix and delete only those keys.
A test that stops Redis starts its own ``redis-server`` on a free port.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import redis

from tests.support import free_port, port_open, wait_until

SHARED_URL = "redis://127.0.0.1:6379/0"


def unique_prefix(name: str = "test") -> str:
    return f"paastis-test:{name}:{uuid.uuid4().hex[:10]}:"


def delete_prefix(url: str, prefix: str) -> None:
    """Delete the keys a test wrote, and only those."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix.replace("*", r"\*") + "*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class RedisServer:
    """A private ``redis-server`` (no persistence) that a test may stop and start again on the same port."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.dir = tmp
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (.ci/run installs it)"
        self.process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, 10, what=f"redis-server on {self.port}")
        return self

    def ping(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        wait_until(lambda: not port_open(self.port), 10, what=f"redis-server on {self.port} to stop")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)

    def command_calls(self) -> dict[str, int]:
        """``INFO commandstats``: calls per command since the server started."""
        client = redis.Redis(port=self.port)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}

    def data_commands(self) -> int:
        """Calls of commands other than our own INFO and connection handshakes (CLIENT, HELLO)."""
        skip = ("info", "client", "hello")
        return sum(calls for name, calls in self.command_calls().items() if not name.startswith(skip))
