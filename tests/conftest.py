"""Shared fixtures: real gunicorn instances with the local provider, cleaned up after each test.

Every test in a ``test_e2e_*`` file, and every other test that starts gunicorn (through
``gunicorn_factory`` or a fixture built on it), is marked ``e2e``,
so ``pytest -m "not e2e"`` runs the fast in-process tests alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pg_support import database_url, pg_database  # noqa: F401 - fixtures
from tests.redis_support import SHARED_URL, delete_prefix, unique_prefix
from tests.support import Gunicorn, kill_local_apps, write_config


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name.startswith("test_e2e_") or "gunicorn_factory" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


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


@pytest.fixture(autouse=True)
def _restore_paastis_logger() -> Iterator[None]:
    """``create_app`` configures the ``paastis`` logger (no propagation); undo it so ``caplog`` works in later tests."""
    logger = logging.getLogger("paastis")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:] = saved[0]
    logger.propagate, logger.level = saved[1], saved[2]


@pytest.fixture
def paastis_caplog(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """``caplog`` for the ``paastis`` logger, which does not propagate once :mod:`paastis.logs` configured it."""
    logger = logging.getLogger("paastis")
    propagate = logger.propagate
    logger.propagate = False  # one copy of each record, whether or not create_app ran before
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="paastis")
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis key prefix of this test's own on the shared server; only its keys are deleted afterwards."""
    value = unique_prefix(request.node.module.__name__.rsplit(".", 1)[-1])
    yield value
    delete_prefix(SHARED_URL, value)


@pytest.fixture
def paastis_for(tmp_path: Path, gunicorn_factory: Callable[..., Gunicorn]) -> Callable[..., Gunicorn]:
    """Start paastis against a fake PaaS platform (anything with ``paastis_env()``), no local apps."""

    def start(platform: Any, **extra: str) -> Gunicorn:
        write_config(tmp_path)
        return gunicorn_factory({**platform.paastis_env(), "PROVIDER_OPERATION_TIMEOUT": "30", **extra})

    return start
