"""PostgreSQL for the tests: a database of this test session's own on 127.0.0.1:5432, dropped at the end.

The server runs with trust authentication for the ``postgres`` user (``.ci/run`` sets it up).
Each test that uses it starts from an empty ``paastis_events`` table.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

SERVER_URL = os.environ.get("PAASTIS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin() -> psycopg.Connection:
    return psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The URL of a database created for this session (unique name), dropped when the session ends."""
    name = f"paastis_test_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = SERVER_URL.rpartition("/")
    yield f"{base}/{name}"
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_database: str) -> str:
    """The session's database with an empty events table."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS paastis_events")
    return pg_database


def rows(url: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()
