"""Large accounts and long lives: idle ticks, stops within the API budget, wakes during a stop crowd, memory.

Against the fake Scalingo of the tests (tests/fakes/scalingo_api.py), run in a process of its
own (as a real API would be), with an account of thousands of apps. Apps whose process never
needs to answer use a light stand-in (no router, no process: scaling flips a flag, and their
URL is one shared upstream); the app woken during the stop crowd is a real one (router and
process), so its wake is measured end to end. paastis runs in this process, built by
``create_app`` (the supervisor thread is started where the scenario needs it).

Run from the repository root (each prints its figures; see BENCHMARKS.md)::

    .venv/bin/python -m bench.large_account tick         # idle-tick duration, 10,000 apps / 300 running
    .venv/bin/python -m bench.large_account stops        # stops/min and API calls per stop at 60/min
    .venv/bin/python -m bench.large_account memory       # worker memory, 10,000 apps come and go + 100,000 hosts
    .venv/bin/python -m bench.large_account idle-memory  # an idle instance, master + one worker, vs a bare proxy
    .venv/bin/python -m bench.large_account budget       # issue 20: the budget by priority, checks every 2 s

Options: ``--redis`` (the Redis registry, under a throwaway prefix), ``--apps``, ``--running``,
``--minutes``, ``--hosts``. The figures are noisy on a shared machine: run them twice.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/0"
FORMATION = {"containers": [{"name": "web", "amount": 1, "size": "M"}]}


# -- the fake account, in its own process ----------------------------------------------------


class _Upstream(BaseHTTPRequestHandler):
    """The one upstream every light app's URL points at: answers 200 at once."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in separate writes

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:
        pass


def _account_main(conn: Any, rate_limit: int) -> None:
    """Serve a fake Scalingo account; obey commands from ``conn`` until told to close."""
    sys.path.insert(0, str(ROOT))
    import tests.fakes.scalingo_api as fake

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    upstream_url = f"http://127.0.0.1:{upstream.server_address[1]}"
    real_names: set[str] = set()
    real_class = fake.PlatformApp

    class Light:
        """An app that is never asked to answer by itself: scaling flips a flag."""

        def __init__(self, name: str, boot_delay: float = 0.0, start_log: str | None = None):
            self.name, self.boot_delay, self.running, self.url = name, 0.0, False, upstream_url

        @property
        def answering(self) -> bool:
            return self.running

        def scale_up(self) -> None:
            self.running = True

        def scale_down(self) -> None:
            self.running = False

        def close(self) -> None:
            pass

    fake.PlatformApp = lambda name, **kw: real_class(name, **kw) if name in real_names else Light(name, **kw)
    platform = fake.ScalingoPlatform(rate_limit=rate_limit)
    conn.send(platform.paastis_env())
    while True:
        command, *args = conn.recv()
        if command == "add":
            names, running = args
            for name in names:
                platform.add_app(name, running=running)
            conn.send(len(names))
        elif command == "add_real":
            real_names.add(args[0])
            platform.add_app(args[0], boot_delay=0.5)
            conn.send(True)
        elif command == "delete":
            for name in args[0]:
                platform.apps.pop(name, None)
            conn.send(True)
        elif command == "calls":
            method, pattern = args
            conn.send(platform.calls(method, pattern))
        elif command == "forget_calls":  # the fake logs every call: keep its memory flat too
            for server in platform.regions.values():
                with server.lock:
                    server.requests.clear()
            conn.send(True)
        elif command == "budget":  # every regional call so far, the most in any 60 s, and the 429s
            with platform.lock:
                total = len(platform.call_times)
            conn.send((total, platform.most_calls_in_a_window(*args), platform.limit.rejected))
        elif command == "status":
            app = platform.apps.get(args[0])
            conn.send(app.status if app else None)
        elif command == "close":
            platform.apps = {k: v for k, v in platform.apps.items() if k in real_names}
            platform.close()
            upstream.shutdown()
            conn.send(True)
            return


class Account:
    """A handle on the fake account's process."""

    def __init__(self, rate_limit: int):
        context = multiprocessing.get_context("spawn")  # a clean process: nothing of paastis in it
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_account_main, args=(child, rate_limit), daemon=True)
        self.process.start()
        self.env: dict[str, str] = self.conn.recv()
        self.lock = threading.Lock()

    def ask(self, *command: Any) -> Any:
        with self.lock:
            self.conn.send(command)
            return self.conn.recv()

    def calls(self, method: str, pattern: str) -> int:
        return self.ask("calls", method, pattern)

    def close(self) -> None:
        self.ask("close")
        self.process.join(10)


# -- paastis, in this process -------------------------------------------------------------------


def build_paastis(account: Account, tmp: Path, redis: bool, **env: str) -> Any:
    sys.path.insert(0, str(ROOT))
    from paastis import create_app
    from paastis.config import Settings
    from tests.support import write_config

    config = write_config(tmp, rules=env.pop("rules", None))
    full = {**account.env, "PAASTIS_CONFIG_FILE": str(config), "LOG_LEVEL": "warning", **env}
    if redis:
        full.update(
            REGISTRY_TYPE="redis", REGISTRY_REDIS_URL=REDIS_URL, REGISTRY_REDIS_PREFIX=f"bench-{uuid.uuid4().hex[:8]}:"
        )
    return create_app(Settings.from_env(full, dotenv=False))


def drop_redis_prefix(paastis: Any) -> None:
    link = paastis.redis_link
    if link is not None:
        keys = list(link.client.scan_iter(match=link.prefix + "*", count=1000))
        for start in range(0, len(keys), 500):
            link.client.delete(*keys[start : start + 500])


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        return int(next(line for line in rollup if line.startswith("Pss:")).split()[1])


def names(prefix: str, count: int, start: int = 0) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(start, start + count)]


def make_idle(paastis: Any, keys: list[str]) -> None:
    """As if nobody had used them for an hour."""
    from paastis.registry import RunningApp, utcnow

    old = utcnow() - timedelta(hours=1)
    for key in keys:
        paastis.registry.register(RunningApp(key=key, started_at=old, last_accessed_at=old))


# -- scenarios ----------------------------------------------------------------------------------


def bench_tick(args: argparse.Namespace) -> None:
    account = Account(rate_limit=1_000_000)
    try:
        running = names("run", args.running)
        account.ask("add", names("app", args.apps - args.running), False)
        account.ask("add", running, True)
        with tempfile.TemporaryDirectory() as tmp:
            app = build_paastis(account, Path(tmp), args.redis, STOP_CONCURRENCY="4")
            paastis = app.extensions["paastis"]
            idle = paastis.lifecycle.idle
            try:
                paastis.lifecycle.check_idle()  # learns the running apps
                first = (idle.last_listing_seconds, idle.last_own_seconds)
                steady = []
                for _ in range(args.rounds):
                    paastis.lifecycle.check_idle()
                    steady.append((idle.last_listing_seconds, idle.last_own_seconds))
                crowd = []
                for _ in range(args.rounds):
                    make_idle(paastis, running)
                    idle.close()  # no stop runs: the queued stops are dropped, the decisions are timed
                    idle._pool = _NoPool()
                    idle._stopping.clear()
                    paastis.lifecycle.check_idle()
                    crowd.append((idle.last_listing_seconds, idle.last_own_seconds))
                report_tick(args, first, steady, crowd)
            finally:
                drop_redis_prefix(paastis)
                paastis.close()
    finally:
        account.close()


class _NoPool:
    """Takes the idle check's stops and runs none of them (the tick's own work is what is timed)."""

    def submit(self, *args: Any) -> None:
        pass

    def shutdown(self, **kwargs: Any) -> None:
        pass


def report_tick(args, first, steady, crowd) -> None:
    registry = "redis" if args.redis else "in-memory"
    print(f"idle tick, {args.apps} apps listed, {args.running} running, registry={registry}")
    print(f"  first tick (registers {args.running}):     listing {first[0]:.3f}s, own work {first[1]:.3f}s")
    for label, rounds in (("steady tick (none idle)", steady), (f"tick finding {args.running} idle", crowd)):
        own = [r[1] for r in rounds]
        listing = [r[0] for r in rounds]
        print(
            f"  {label:<30} listing median {statistics.median(listing):.3f}s, "
            f"own work median {statistics.median(own):.3f}s, max {max(own):.3f}s ({len(rounds)} rounds)"
        )


def bench_stops(args: argparse.Namespace) -> None:
    for known in (True, False):
        account = Account(rate_limit=60)
        try:
            run_stop_crowd(account, args, known)
        finally:
            account.close()


def run_stop_crowd(account: Account, args: argparse.Namespace, known: bool) -> None:
    crowd = names("idle", args.running)
    account.ask("add", crowd, True)
    account.ask("add_real", "wake-me")
    interval = 20
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "START_AND_STOP_CHECKING_INTERVAL": str(interval),
            "START_AND_STOP_MAX_IDLE_TIME": "0.05",  # 3 s
            "PROVIDER_SCALINGO_RATE_LIMIT": "60",
            "PROVIDER_OPERATION_TIMEOUT": "120",
            "rules": [{"pattern": "wake-me", "app_max_idle_time": 600}],
        }
        app = build_paastis(account, Path(tmp), args.redis, **env)
        paastis = app.extensions["paastis"]
        lifecycle = paastis.lifecycle
        try:
            if known:  # remembered at wake time, as for apps paastis woke
                for key in crowd:
                    paastis.registry.remember(key, FORMATION)
            wake_me = lifecycle.resolve("wake-me")
            quiet = timed_wake(lifecycle, wake_me)
            lifecycle.stop(wake_me, "manual")
            wait(lambda: account.ask("status", "wake-me") == "stopped", 120)
            before = crowd_calls(account)
            paastis.supervisor.start()
            wait(lambda: stops_done(paastis) > 0, 90)
            crowd_began = time.monotonic()
            time.sleep(args.wake_after)
            during = timed_wake(lifecycle, wake_me)
            remaining = args.minutes * 60 - (time.monotonic() - crowd_began)
            time.sleep(max(0.0, remaining))
            elapsed = time.monotonic() - crowd_began
            stops = stops_done(paastis)
            after = crowd_calls(account)
            scales, reads, others = (after[kind] - before[kind] for kind in ("scale", "formation", "other"))
            listings = after["listings"] - before["listings"]
            print(f"stop crowd, {args.running} idle apps, 60 calls/min, formation {'known' if known else 'unknown'}")
            print(f"  stops: {stops} in {elapsed:.0f}s = {stops / elapsed * 60:.1f}/min")
            print(
                f"  API calls per stop: {(scales + reads + others) / max(1, stops):.2f} "
                f"({scales} scales, {reads} formation reads, {others} other calls about these apps)"
            )
            print(
                f"  listings during the crowd: {listings} in {elapsed:.0f}s "
                f"(one per {interval}s would be {elapsed / interval:.1f})"
            )
            print(f"  wake of a sleeping app: quiet {quiet:.2f}s, during the crowd {during:.2f}s")
        finally:
            paastis.close()
            drop_redis_prefix(paastis)


def crowd_calls(account: Account) -> dict[str, int]:
    """API calls about the crowd's apps so far, by kind, and the listings."""
    scale = account.calls("POST", r"/v1/apps/idle-[^/]+/scale")
    formation = account.calls("GET", r"/v1/apps/idle-[^/]+/containers")
    everything = account.calls("GET", r"/v1/apps/idle-.*") + account.calls("POST", r"/v1/apps/idle-.*")
    return {
        "scale": scale,
        "formation": formation,
        "other": everything - scale - formation,
        "listings": account.calls("GET", "/v1/apps"),
    }


def stops_done(paastis: Any) -> int:
    return int(
        sum(
            sample.value for sample in paastis.metrics.idle_stops.collect()[0].samples if sample.name.endswith("_total")
        )
    )


def timed_wake(lifecycle: Any, app: Any) -> float:
    started = time.monotonic()
    lifecycle.ensure_awake(app, reason="bench")
    return time.monotonic() - started


def wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.2)


# -- issue 20: one budget, spent by priority ------------------------------------------------------

DASHBOARD_HOST = "paastis.localhost"
ADMIN_TOKEN = "bench-admin-token-0123456789"


def bench_budget(args: argparse.Namespace) -> None:
    """10,000 apps, 300 running, 60 calls/min, idle checks every 2 s, listings counted in the budget.

    1. A quiet account: the wake of a sleeping real app is timed.
    2. Ten dashboard tabs poll the apps page (every 5 s, as the page's script does) for a minute:
       the provider calls they add are counted (the supervisor is not running yet: nothing else calls).
    3. Warm-up: the supervisor starts; the 300 running apps are registered, in use (not idle);
       their formations are read ahead while the budget has room, up to ``--warmup`` seconds.
    4. The 300 apps all become idle at once; the crowd of stops is watched for ``--minutes``,
       and the real app is woken ``--wake-after`` seconds into it.
    Every regional call of the account is logged by the fake with its time (429s included).
    """
    account = Account(rate_limit=60)
    try:
        run_budget(account, args)
    finally:
        account.close()


def run_budget(account: Account, args: argparse.Namespace) -> None:
    crowd = names("idle", args.running)
    account.ask("add", names("app", args.apps - args.running - 1), False)
    account.ask("add", crowd, True)
    account.ask("add_real", "wake-me")
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "START_AND_STOP_CHECKING_INTERVAL": "2",
            "START_AND_STOP_MAX_IDLE_TIME": "30",  # in use during the warm-up; made idle (an hour ago) after
            "PROVIDER_SCALINGO_RATE_LIMIT": "60",
            "PROVIDER_OPERATION_TIMEOUT": "120",
            "STOP_CONCURRENCY": "4",
            "PAASTIS_DASHBOARD_HOST": DASHBOARD_HOST,
            "ROUTING_SYSTEM_API_TOKEN": ADMIN_TOKEN,
            "PAASTIS_SECRET_KEY": "s" * 40,
            "rules": [{"pattern": "wake-me", "app_max_idle_time": 600}],
        }
        app = build_paastis(account, Path(tmp), args.redis, **env)
        paastis = app.extensions["paastis"]
        lifecycle = paastis.lifecycle
        try:
            wake_me = lifecycle.resolve("wake-me")  # the first listing
            quiet = timed_wake(lifecycle, wake_me)
            lifecycle.stop(wake_me, "manual")
            wait(lambda: account.ask("status", "wake-me") == "stopped", 120)
            tabs = dashboard_tabs(app, account, tabs=10, seconds=60)
            began = time.monotonic()
            warm = warm_up(account, paastis, crowd, args.warmup)
            crowd_figures = watch_crowd(account, paastis, crowd, wake_me, args)
            total, most, rejected = account.ask("budget", began)
            report_budget(args, quiet, tabs, warm, crowd_figures, most, rejected, paastis)
        finally:
            paastis.close()
            drop_redis_prefix(paastis)


def dashboard_tabs(app: Any, account: Account, tabs: int, seconds: float) -> dict[str, Any]:
    """``tabs`` signed-in tabs, each fetching the apps page's rows every 5 s for ``seconds``."""
    import re

    def signed_in() -> Any:
        client = app.test_client()
        form = client.get("/dashboard/sign-in", headers={"Host": DASHBOARD_HOST}).get_data(as_text=True)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        data = {"csrf_token": csrf, "token": ADMIN_TOKEN}
        client.post("/dashboard/sign-in", data=data, headers={"Host": DASHBOARD_HOST})
        return client

    clients = [signed_in() for _ in range(tabs)]
    before = account.ask("budget", 0.0)[0]
    polls: list[int] = []
    stop_at = time.monotonic() + seconds
    headers = {"Host": DASHBOARD_HOST, "X-Requested-With": "paastis-dashboard"}

    def tab(client: Any) -> None:
        while time.monotonic() < stop_at:
            asked = time.monotonic()
            response = client.get("/dashboard/apps/rows", headers=headers)
            assert response.status_code == 200, response.status_code
            polls.append(1)
            time.sleep(max(0.0, 5.0 - (time.monotonic() - asked)))

    threads = [threading.Thread(target=tab, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"polls": len(polls), "added": account.ask("budget", 0.0)[0] - before}


def warm_up(account: Account, paastis: Any, crowd: list[str], limit: float) -> dict[str, Any]:
    """Idle checks every 2 s while the crowd is in use; formations read ahead with the room left."""
    before = crowd_calls(account)
    started = time.monotonic()
    paastis.supervisor.start()
    wait(lambda: all(paastis.registry.get(key) is not None for key in crowd), 120)
    known = 0
    while time.monotonic() - started < limit:
        known = sum(1 for key in crowd if paastis.registry.recall(key) is not None)
        if known == len(crowd):
            break
        time.sleep(2)
    after = crowd_calls(account)
    return {
        "seconds": time.monotonic() - started,
        "known": known,
        "reads": after["formation"] - before["formation"],
        "listings": after["listings"] - before["listings"],
    }


def watch_crowd(account: Account, paastis: Any, crowd: list[str], wake_me: Any, args: argparse.Namespace) -> dict:
    scheduler = paastis.provider.scheduler
    granted = dict(scheduler.granted)
    listed = dict(paastis.lifecycle.idle.listings)
    stops_before = stops_done(paastis)
    before = crowd_calls(account)
    crowd_began = time.monotonic()
    make_idle(paastis, crowd)
    time.sleep(args.wake_after)
    queued = sum(1 for key in crowd if paastis.lifecycle.stop_queued(key))
    during = timed_wake(paastis.lifecycle, wake_me)
    time.sleep(max(0.0, args.minutes * 60 - (time.monotonic() - crowd_began)))
    elapsed = time.monotonic() - crowd_began
    after = crowd_calls(account)
    return {
        "elapsed": elapsed,
        "stops": stops_done(paastis) - stops_before,
        "calls": {kind: after[kind] - before[kind] for kind in after},
        "queued_at_wake": queued,
        "wake": during,
        "by_class": {k.label: scheduler.granted[k] - granted[k] for k in granted},
        "listed": {k: paastis.lifecycle.idle.listings[k] - listed[k] for k in listed},
    }


def report_budget(args, quiet, tabs, warm, crowd, most, rejected, paastis) -> None:
    calls = crowd["calls"]
    per_stop = (calls["scale"] + calls["formation"] + calls["other"]) / max(1, crowd["stops"])
    minutes = crowd["elapsed"] / 60
    print(f"API budget by priority: {args.apps} apps, {args.running} running, 60 calls/min, idle checks every 2 s")
    print(f"  dashboard: 10 tabs for 60 s, {tabs['polls']} polls of the apps page: {tabs['added']} provider calls")
    print(
        f"  warm-up: {warm['seconds']:.0f}s, formations read ahead {warm['reads']} "
        f"({warm['known']}/{args.running} known), listings {warm['listings']}"
    )
    print(
        f"  crowd: {crowd['stops']} stops in {crowd['elapsed']:.0f}s = {crowd['stops'] / minutes:.1f}/min, "
        f"{per_stop:.2f} calls per stop ({calls['scale']} scales, {calls['formation']} formation reads, "
        f"{calls['other']} other calls about these apps)"
    )
    print(
        f"  crowd: listings {calls['listings']} ({crowd['listed']['listed']} ticks listed, "
        f"{crowd['listed']['skipped']} decided from the last list); calls by class {crowd['by_class']}"
    )
    print(f"  most calls received in any 60 s (whole run, from the warm-up): {most}; 429 answers: {rejected}")
    ratio = crowd["wake"] / quiet if quiet else float("nan")
    print(
        f"  wake of a sleeping app: quiet {quiet:.2f}s, during the crowd {crowd['wake']:.2f}s ({ratio:.2f}x), "
        f"{crowd['queued_at_wake']} stops queued when it was asked"
    )


def bench_memory(args: argparse.Namespace) -> None:
    account = Account(rate_limit=1_000_000)
    batch = 500
    try:
        with tempfile.TemporaryDirectory() as tmp:
            app = build_paastis(account, Path(tmp), args.redis, PROVIDER_SCALINGO_RATE_LIMIT="100000")
            paastis = app.extensions["paastis"]
            client = app.test_client()
            try:
                baseline = None
                batches = args.apps // batch
                for number in range(batches):
                    started = time.monotonic()
                    come_and_go(account, paastis, client, names(f"review{number}", batch))
                    print(f"  batch {number + 1}/{batches}: {time.monotonic() - started:.1f}s", file=sys.stderr)
                    if number == 1:  # after a warm-up of two batches: every lazy structure exists
                        baseline = measure()
                after_apps = measure()
                for i in range(args.hosts):
                    with client.get("/", headers={"Host": f"random-{uuid.uuid4().hex[:12]}-{i}.localhost"}):
                        pass
                after_hosts = measure()
                print(f"worker memory, registry={'redis' if args.redis else 'in-memory'} (RSS after gc)")
                print(f"  after 2 warm-up batches of {batch} apps: {baseline / 1024:.1f} MB")
                print(
                    f"  after {batches * batch} apps came and went: {after_apps / 1024:.1f} MB "
                    f"({(after_apps - baseline) / 1024:+.1f} MB)"
                )
                print(
                    f"  after {args.hosts} random hosts:        {after_hosts / 1024:.1f} MB "
                    f"({(after_hosts - baseline) / 1024:+.1f} MB)"
                )
                series = sum(len(m._metrics) for m in vars(paastis.metrics).values() if hasattr(m, "_metrics"))
                print(
                    f"  kept: {len(paastis.registry.all())} registered, {series} metric label sets, "
                    f"{paastis.rules._cached.cache_info().currsize} cached policies, "
                    f"{len(paastis.events.query(limit=100_000))} events (EVENTS_MAX bounds them)"
                )
            finally:
                drop_redis_prefix(paastis)
                paastis.close()
    finally:
        account.close()


def come_and_go(account: Account, paastis: Any, client: Any, batch: list[str]) -> None:
    """Review apps are created running, used, some stopped by hand, then deleted."""
    account.ask("add", batch, True)
    paastis.lifecycle.check_idle()  # registered
    for name in batch:
        with client.get("/", headers={"Host": f"{name}.localhost"}) as response:
            assert response.status_code == 200, response.get_data(as_text=True)
    for name in batch[: len(batch) // 10]:
        paastis.lifecycle.stop(paastis.lifecycle.resolve(name), "manual")  # leaves a memo
    account.ask("delete", batch)
    paastis.lifecycle.check_idle()  # unregistered, pruned
    account.ask("forget_calls")


def measure() -> int:
    gc.collect()
    time.sleep(1.5)  # the registry's flusher retires the last requests
    gc.collect()
    return rss_kib()


def bench_idle_memory(args: argparse.Namespace) -> None:
    python = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        env = {"PAASTIS_STATE_DIR": tmp, "WEB_CONCURRENCY": "1", "BARE_UPSTREAM": "http://127.0.0.1:9"}
        paastis = idle_instance(python, ["app:app"], env)
        bare = idle_instance(
            python, ["bench.bare_proxy:app", "-c", "/dev/null", "-k", "gthread", "--threads", "8"], env
        )
    print("idle instance (master + one worker), default settings: local provider, example paastis.yml")
    for label, (master, worker) in (("paastis", paastis), ("bare Flask + requests proxy", bare)):
        (m_rss, m_pss), (w_rss, w_pss) = master, worker
        print(
            f"  {label:<28} RSS {(m_rss + w_rss) / 1024:.1f} MB "
            f"(master {m_rss / 1024:.1f}, worker {w_rss / 1024:.1f}); "
            f"PSS {(m_pss + w_pss) / 1024:.1f} MB"
        )


def idle_instance(python: str, argv: list[str], env: dict[str, str]) -> tuple[tuple[int, int], tuple[int, int]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    full = {**os.environ, **env, "PORT": str(port), "HOST": "127.0.0.1"}
    process = subprocess.Popen(
        [python, "-m", "gunicorn", *argv, "--bind", f"127.0.0.1:{port}", "-w", "1"],
        cwd=ROOT,
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait(lambda: _answers(port), 30)
        time.sleep(3)  # idle
        worker = int(
            subprocess.run(
                ["pgrep", "-P", str(process.pid)], check=False, capture_output=True, text=True
            ).stdout.split()[0]
        )
        return (rss_kib(process.pid), pss_kib(process.pid)), (rss_kib(worker), pss_kib(worker))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=("tick", "stops", "memory", "idle-memory", "budget"))
    parser.add_argument("--redis", action="store_true", help="the Redis registry (127.0.0.1:6379)")
    parser.add_argument("--apps", type=int, default=10_000)
    parser.add_argument("--running", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=1.0, help="how long the stop crowd is watched")
    parser.add_argument("--wake-after", type=float, default=20.0, help="seconds into the crowd the wake is timed")
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--warmup", type=float, default=900.0, help="budget: longest warm-up (formations read ahead)")
    args = parser.parse_args()
    scenarios = {
        "tick": bench_tick,
        "stops": bench_stops,
        "memory": bench_memory,
        "idle-memory": bench_idle_memory,
        "budget": bench_budget,
    }
    scenarios[args.scenario](args)


if __name__ == "__main__":
    main()
