"""Shared fixtures: real gunicorn instances with the local provider, cleaned up after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Gunicorn, kill_local_apps


@pytest.fixture
def gunicorn_factory(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """Start ``gunicorn app:app`` instances; each gets the test's config file and state dir by default."""
    started: list[Gunicorn] = []
    state_dir = tmp_path / "state"

    def start(env: dict[str, str] | None = None, wait: bool = True, name: str = "paastis") -> Gunicorn:
        full = {
            "PAASTIS_CONFIG_FILE": str(tmp_path / "paastis.yml"),
            "PAASTIS_STATE_DIR": str(state_dir),
            "WEB_CONCURRENCY": "1",
            **(env or {}),
        }
        server = Gunicorn(full, tmp_path, name)
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        server.stop()
    kill_local_apps(state_dir)
