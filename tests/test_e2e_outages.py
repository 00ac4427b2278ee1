"""Outages met through real gunicorn: a private Redis and a private PostgreSQL stopped and started mid-test.

The shared servers (6379, 5432) are never touched: each test runs its own ``redis-server``,
or its own PostgreSQL cluster (initdb as the ``postgres`` user into a temporary directory, on a
free port). What is checked is what a user would see: the events history after the outage,
the formation an app is woken with, an app in use that stays up, no process left behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.fakes.heroku_api import HerokuPlatform
from tests.fakes.platform import closing_factory
from tests.redis_support import RedisServer
from tests.support import (
    PYTHON,
    UPSTREAM_APP,
    echo,
    free_port,
    local_app,
    port_open,
    starts,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e

LEADING = "now leading the idle checks"
platforms = closing_factory(HerokuPlatform)


# -- a private PostgreSQL --------------------------------------------------------------


def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        pytest.skip(f"PostgreSQL's {name} is not installed")
    return str(found)


class PostgresServer:
    """A PostgreSQL cluster of the test's own (trust authentication), stopped and started at will."""

    def __init__(self, tmp: Path):
        self.dir = Path(f"/tmp/paastis-pg-{os.getpid()}-{free_port()}")  # the postgres user must reach it
        self.data = self.dir / "data"
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> PostgresServer:
        self.dir.mkdir(mode=0o700)
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        return self

    def start(self) -> PostgresServer:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} -c fsync=off"
        self._as_postgres(
            pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-l", str(self.dir / "log"), "start"
        )
        wait_until(self.answers, 20, what=f"PostgreSQL on {self.port}")
        return self

    def stop(self) -> None:
        self._as_postgres(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        wait_until(lambda: not port_open(self.port), 20, what=f"PostgreSQL on {self.port} to stop")

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def rows(self, sql: str) -> list[tuple]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _as_postgres(self, *command: str, check: bool = True) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=check, capture_output=True, cwd="/tmp")


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path).init().start()
    yield server
    server.remove()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- cleanup gets its own time ---------------------------------------------------------------


def test_a_start_command_that_times_out_leaves_no_process(tmp_path, gunicorn_factory):
    """The start: command launches the app (in a session of its own) and hangs: the wake times out, and
    the stop: command, run with the app's stop_timeout (not the nothing left of the wake's deadline), stops it."""
    port = free_port()
    pid_file = tmp_path / "svc.pid"
    launch = f"PORT={port} setsid {PYTHON} {UPSTREAM_APP} >/dev/null 2>&1 & echo $! > {pid_file}"
    app = {
        "name": "svc",
        "url": f"http://127.0.0.1:{port}",
        "start": f"{launch}; sleep 60",
        "stop": f"kill $(cat {pid_file})",
        "stop_timeout": 10,
    }
    write_config(tmp_path, [app])
    paastis = gunicorn_factory({"PROVIDER_OPERATION_TIMEOUT": "2"})
    response = paastis.get(host="svc.localhost")
    assert response.status_code == 504
    pid = int(pid_file.read_text())
    wait_until(lambda: not alive(pid), 15, what="the launched app to be stopped")
    assert not port_open(port)
    assert "stop command timed out" not in paastis.logs()


# -- events are never lost -------------------------------------------------------------------

FAST_IDLE = {"START_AND_STOP_MAX_IDLE_TIME": "0.01", "START_AND_STOP_CHECKING_INTERVAL": "0.3"}


@pytest.mark.parametrize("spool", ["file", "redis"])
def test_events_of_a_postgresql_outage_reach_it_afterwards_in_order_once_each(
    tmp_path, gunicorn_factory, postgres, redis_server, spool
):
    app, port = local_app(tmp_path)
    write_config(tmp_path, [app])
    env = {"EVENTS_STORE_TYPE": "postgres", "DATABASE_URL": postgres.url, **FAST_IDLE}
    if spool == "redis":  # the spool is then a Redis list (a container's disk may not outlive it)
        env.update({"REGISTRY_TYPE": "redis", "REGISTRY_REDIS_URL": redis_server.url})
    paastis = gunicorn_factory(env)
    assert paastis.get("/echo").status_code == 200
    wait_until(lambda: not port_open(port), 20, what="the idle app to be stopped before the outage")
    wait_until(lambda: postgres.rows("SELECT count(*) FROM paastis_events WHERE type = 'APP_STOPPED'")[0][0] == 1, 10)

    postgres.stop()
    for _ in range(3):  # three wakes and three idle stops while PostgreSQL is away
        assert paastis.get("/echo").status_code == 200
        wait_until(lambda: not port_open(port), 20, what="the idle app to be stopped during the outage")
    postgres.start()

    def outage_events() -> list[tuple]:
        return postgres.rows(
            "SELECT type, at FROM paastis_events WHERE type IN ('APP_STARTED', 'APP_STOPPED') ORDER BY id"
        )[2:]  # after the wake and stop made before the outage

    wait_until(lambda: len(outage_events()) >= 6, 30, what="the spooled events to reach PostgreSQL")
    events = outage_events()
    assert [type for type, _ in events] == ["APP_STARTED", "APP_STOPPED"] * 3
    assert [at for _, at in events] == sorted(at for _, at in events)  # stored in the order they happened
    assert postgres.rows("SELECT count(*) FROM (SELECT type, at FROM paastis_events GROUP BY type, at, app "
                         "HAVING count(*) > 1) AS twice")[0][0] == 0  # fmt: skip
    assert "spooling events to" in paastis.logs() and "replayed" in paastis.logs()


# -- write-behind: a formation remembered during a Redis outage ---------------------------------

TOKEN = "outage-token-0123456789abcdef"
ADMIN = {"PaastisProxyTarget": "system", "Authorization": f"Bearer {TOKEN}"}


def test_a_heroku_app_stopped_during_a_redis_outage_is_woken_with_its_full_formation(
    platforms, paastis_for, redis_server
):
    platform = platforms()
    formation = {"web": (2, "Standard-2X"), "worker": (0, "Basic"), "clock": (1, "Basic")}
    shop = platform.add_app("shop", formation=formation, running=True)
    wait_until(lambda: shop.process.answering, 15, what="the shop to have booted")
    paastis = paastis_for(
        platform,
        REGISTRY_TYPE="redis",
        REGISTRY_REDIS_URL=redis_server.url,
        WEB_CONCURRENCY="2",
        ROUTING_SYSTEM_API_ENABLED="true",
        ROUTING_SYSTEM_API_TOKEN=TOKEN,
    )
    assert echo(paastis, "shop")["app"] == "shop"

    redis_server.stop()
    response = paastis.request("POST", "/apps/shop/stop", host="admin.localhost", headers=ADMIN)
    assert response.status_code == 200, response.text  # an operator's stop works while Redis is away
    assert shop.quantities() == {"web": 0, "worker": 0, "clock": 0}
    redis_server.start()  # empty: the formation lives only in the worker that stopped the shop

    client = redis_server.client()
    try:
        wait_until(lambda: client.hget("paastis:registry:memos", "shop"), 15, what="the memo to reach Redis")
    finally:
        client.close()
    wait_until(lambda: echo(paastis, "shop")["app"] == "shop", 30, what="the shop to answer again")
    assert shop.quantities() == {"web": 2, "worker": 0, "clock": 1}
    assert shop.sizes()["web"] == "Standard-2X"


# -- no stop on stale data -------------------------------------------------------------------------


def test_an_app_used_through_a_follower_during_a_20s_redis_outage_is_not_stopped(
    tmp_path, gunicorn_factory, redis_server
):
    app, port = local_app(tmp_path)
    write_config(tmp_path, [app])
    env = {
        "REGISTRY_TYPE": "redis",
        "REGISTRY_REDIS_URL": redis_server.url,
        "START_AND_STOP_MAX_IDLE_TIME": "0.05",  # 3 s
        "START_AND_STOP_CHECKING_INTERVAL": "0.5",
    }
    instances = [gunicorn_factory(env, name="one"), gunicorn_factory(env, name="two")]
    leader = wait_until(lambda: [i for i in instances if LEADING in i.logs()], 15, what="a leader")[0]
    follower = next(instance for instance in instances if instance is not leader)
    assert follower.get("/echo").status_code == 200

    codes: list[int] = []
    using = threading.Event()
    using.set()

    def use() -> None:
        while using.is_set():
            codes.append(follower.get("/echo", timeout=30).status_code)
            time.sleep(0.3)

    user = threading.Thread(target=use)
    user.start()
    try:
        wait_until(lambda: len(codes) >= 5, 10, what="the app to be in use")
        redis_server.stop()
        outage_ends = time.monotonic() + 20
        while time.monotonic() < outage_ends:
            assert port_open(port), "the app in use was stopped during the outage"
            time.sleep(0.5)
        redis_server.start()
        marker = len(codes)
        wait_until(lambda: len(codes) >= marker + 15, 30, what="the app to be used after the outage")
        wait_until(lambda: LEADING in leader.logs() + follower.logs(), 15, what="a leader after the outage")
    finally:
        using.clear()
        user.join()
    assert set(codes) == {200}
    assert starts(tmp_path) == 1  # never stopped, so never woken again
    wait_until(lambda: not port_open(port), 30, what="the app to sleep once no longer used")
