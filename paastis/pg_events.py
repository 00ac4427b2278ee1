"""The events history in PostgreSQL (``EVENTS_STORE_TYPE=postgres``, ``DATABASE_URL``): months of it.

One table, ``paastis_events``, created at start-up if missing (under an advisory lock, so
that workers booting together do not race). Nothing is trimmed: savings over months are
computed from it. History is best effort, as with Redis: after a failure, writes are
refused for ``RETRY_AFTER`` seconds so that an outage costs no start or stop a timeout
each, and the connection is opened again on the next use. The URL is never logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

from .events import Event, EventStoreUnavailable, type_name
from .secrecy import Redactor, url_secrets

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_LOCK = 0x7061_6173  # pg_advisory_xact_lock key: "paas"
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS paastis_events (
        id bigserial PRIMARY KEY,
        type text NOT NULL,
        app text NOT NULL,
        reason text NOT NULL,
        at timestamptz NOT NULL,
        duration double precision,
        instance text NOT NULL,
        message text
    )""",
    "CREATE INDEX IF NOT EXISTS paastis_events_at ON paastis_events (at)",
    "CREATE INDEX IF NOT EXISTS paastis_events_app_at ON paastis_events (app, at)",
    # the id of an event replayed from the spool (paastis.spool): stored once however often it is replayed
    "ALTER TABLE paastis_events ADD COLUMN IF NOT EXISTS uid text",
    "CREATE UNIQUE INDEX IF NOT EXISTS paastis_events_uid ON paastis_events (uid)",
    # Added with several providers per instance; older tables gain it (NULL in their rows).
    "ALTER TABLE paastis_events ADD COLUMN IF NOT EXISTS provider text",
)
COLUMNS = "type, app, reason, at, duration, instance, message, provider"
READ_COLUMNS = COLUMNS + ", uid"  # the event's id (its uid column)


class PostgresEventStore:
    RETRY_AFTER = 2.0
    CONNECT_TIMEOUT = 3  # seconds
    STATEMENT_TIMEOUT = 5000  # milliseconds

    def __init__(self, url: str):
        self.url = url
        self.redact = Redactor(url_secrets(url))  # drivers quote a malformed URL, password included
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()  # one connection, one statement at a time
        self._failed_at: float | None = None
        self._schema_ready = False
        try:
            self._run(lambda conn: None)
        except EventStoreUnavailable as error:
            log.warning("events: PostgreSQL unreachable at start-up (%s); history is recorded once it answers", error)

    # -- the EventStore protocol ------------------------------------------------

    def add(self, event: Event) -> None:
        if self._failed_at is not None and time.monotonic() - self._failed_at < self.RETRY_AFTER:
            raise EventStoreUnavailable("postgresql was unreachable moments ago: event not recorded")
        row = (
            event.type,
            event.app,
            event.reason,
            event.timestamp,
            event.duration,
            event.instance,
            event.message,
            event.provider,
            event.id or None,
        )
        insert = f"INSERT INTO paastis_events ({COLUMNS}, uid) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        self._run(lambda conn: conn.execute(insert, row))

    def replay(self, items: list[tuple[str, Event]]) -> None:
        """Spooled events, in order, in one transaction; one already stored (same uid) is skipped."""
        if self._failed_at is not None and time.monotonic() - self._failed_at < self.RETRY_AFTER:
            raise EventStoreUnavailable("postgresql was unreachable moments ago")
        rows = [
            (e.type, e.app, e.reason, e.timestamp, e.duration, e.instance, e.message, e.provider, uid or None)
            for uid, e in items
        ]
        insert = (
            f"INSERT INTO paastis_events ({COLUMNS}, uid) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (uid) DO NOTHING"
        )

        def write(conn: psycopg.Connection) -> None:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(insert, rows)

        self._run(write)

    def query(self, app=None, type=None, since=None, limit=100) -> list[Event]:
        """Newest first."""
        where, params = _filters(app=app, type=type, since=since)
        sql = f"SELECT {READ_COLUMNS} FROM paastis_events {where} ORDER BY at DESC, id DESC LIMIT %s"
        return self._rows(sql, [*params, limit])

    def history(self, since: datetime, until: datetime, types: tuple[str, ...], app: str | None = None) -> list[Event]:
        """Each app's last event of ``types`` before ``since``, then those in ``[since, until)``, oldest first."""
        where, params = _filters(app=app, types=types)
        before = (
            f"SELECT * FROM (SELECT DISTINCT ON (app) {READ_COLUMNS}, id FROM paastis_events {where} AND at < %s "
            "ORDER BY app, at DESC, id DESC) AS last ORDER BY at, id"
        )
        during = f"SELECT {READ_COLUMNS} FROM paastis_events {where} AND at >= %s AND at < %s ORDER BY at, id"
        return self._rows(before, [*params, since]) + self._rows(during, [*params, since, until])

    def healthy(self) -> bool:
        try:
            self._run(lambda conn: conn.execute("SELECT 1"))
        except EventStoreUnavailable:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- internals ----------------------------------------------------------------

    def _rows(self, sql: str, params: list[Any]) -> list[Event]:
        rows = self._run(lambda conn: conn.cursor(row_factory=dict_row).execute(sql, params).fetchall())
        return [_event(row) for row in rows]

    def _run(self, work: Callable[[psycopg.Connection], T]) -> T:
        with self._lock:
            try:
                conn = self._connection()
                result = work(conn)
            except psycopg.Error as error:
                self._drop()
                self._failed_at = time.monotonic()
                raise EventStoreUnavailable(
                    f"postgresql: {type_name(error)}: {self.redact(_first_line(error))}"
                ) from None
        self._failed_at = None
        return result

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=self.CONNECT_TIMEOUT,
                options=f"-c statement_timeout={self.STATEMENT_TIMEOUT}",
                application_name="paastis",
            )
        if not self._schema_ready:
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", [SCHEMA_LOCK])
                for statement in SCHEMA:
                    self._conn.execute(statement)
            self._schema_ready = True
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None


def _filters(
    app: str | None = None, type: str | None = None, since: datetime | None = None, types: tuple[str, ...] = ()
) -> tuple[str, list[Any]]:
    clauses, params = ["TRUE"], []
    for clause, value in (("app = %s", app), ("type = %s", type), ("at >= %s", since)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    if types:
        clauses.append("type = ANY(%s)")
        params.append(list(types))
    return "WHERE " + " AND ".join(clauses), params


def _event(row: dict[str, Any]) -> Event:
    return Event(
        type=row["type"],
        app=row["app"],
        reason=row["reason"],
        timestamp=row["at"].astimezone(UTC),
        duration=row["duration"],
        instance=row["instance"],
        message=row["message"],
        provider=row.get("provider"),
        id=row.get("uid") or "",
    )


def _first_line(error: Exception) -> str:
    """One line is enough; psycopg quotes a malformed URL whole, so the caller masks it."""
    return (str(error).strip().splitlines() or [""])[0][:300]
