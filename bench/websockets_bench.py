"""1,000 open WebSockets on one default paastis, and ordinary requests alongside.

Run from the repository root (about a minute and a half, loopback only)::

    .venv/bin/python -m bench.websockets_bench [--sockets 1000] [--duration 20]

One ``gunicorn app:app`` with paastis's defaults (one worker, 32 threads, in-memory registry)
routes ``fast.localhost`` to nginx (a tiny body) and ``chat.localhost`` to ``tests/ws_app.py``
(a ``websockets`` echo server). The run:

1. ``wrk`` against ``fast.localhost`` alone: ordinary requests' p50/p99 with no WebSocket open;
2. opens ``--sockets`` WebSockets through paastis (10 handshakes at a time: paastis's default
   bulkhead lets 16 requests of one app run at once, see docs/robustness.md), each then sending
   a message every second and checking its echo;
3. ``wrk`` again while they are all open and talking: p50/p99 meanwhile;
4. the worker's threads and resident memory, read from ``/proc``, before and during.

Each connection holds two descriptors in paastis (and two in this process and the app): the
run raises this process's soft open-files limit to its hard limit (children inherit it) and
says so if that is not enough. Nothing here runs under pytest; every process is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from websockets.asyncio.client import connect
from websockets.sync.client import connect as sync_connect

from bench.proxy_bench import NGINX, WRK, Processes, machine, run_wrk, start_nginx, start_paastis
from tests.support import PYTHON, free_port, write_config

WS_APP = Path(__file__).resolve().parent.parent / "tests" / "ws_app.py"


def raise_open_files_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < needed:
        raise SystemExit(f"the open-files hard limit is {hard}, {needed} are needed: raise it (ulimit -Hn) first")
    return hard


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def worker_of(master: int) -> int:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True, check=False)
    return int(out.stdout.split()[0])


def footprint(pid: int) -> tuple[int, float]:
    """Threads, and resident memory in MiB."""
    status = proc_status(pid)
    return int(status["Threads"]), int(status["VmRSS"].split()[0]) / 1024


class Chatter:
    """Many WebSockets in one asyncio loop (in a thread), each sending a message a second."""

    def __init__(self, port: int, sockets: int):
        self.port = port
        self.sockets = sockets
        self.open = 0
        self.failed_handshakes = 0
        self.failures: dict[str, int] = {}
        self.echoes: list[float] = []
        self.errors = 0
        self.loop = asyncio.new_event_loop()
        self.stopping: asyncio.Event | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.stopping is not None:
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(timeout=60)

    async def _main(self) -> None:
        self.stopping = asyncio.Event()
        gate = asyncio.Semaphore(10)
        tasks = [asyncio.create_task(self._one(index, gate)) for index in range(self.sockets)]
        await asyncio.gather(*tasks)

    async def _one(self, index: int, gate: asyncio.Semaphore) -> None:
        assert self.stopping is not None
        try:
            async with gate:
                ws = await connect(
                    f"ws://chat.localhost:{self.port}/echo",
                    host="127.0.0.1",
                    port=self.port,
                    open_timeout=120,
                    ping_interval=None,
                    close_timeout=5,
                )
        except Exception as error:  # noqa: BLE001 - counted and reported
            self.failed_handshakes += 1
            self.failures[str(error)[:80]] = self.failures.get(str(error)[:80], 0) + 1
            self._count()
            return
        self.open += 1
        self._count()
        await asyncio.sleep(index % 1000 / 1000)  # spread the ticks over the second
        async with ws:
            while not self.stopping.is_set():
                sent = time.perf_counter()
                try:
                    await ws.send(f"tick {index}")
                    await asyncio.wait_for(ws.recv(), 10)
                    self.echoes.append(time.perf_counter() - sent)
                except Exception:  # noqa: BLE001
                    self.errors += 1
                    return
                try:
                    await asyncio.wait_for(self.stopping.wait(), 1.0)
                except TimeoutError:
                    pass

    def _count(self) -> None:
        if self.open + self.failed_handshakes == self.sockets:
            self.ready.set()


def probe(paastis: int, app: int, samples: int = 200) -> dict[str, tuple[float, float]]:
    """Echo round trips of one more WebSocket, through paastis and straight to the app, alternately."""
    through = sync_connect(f"ws://chat.localhost:{paastis}/echo", sock=socket.create_connection(("127.0.0.1", paastis)))
    direct = sync_connect(f"ws://127.0.0.1:{app}/echo")
    times: dict[str, list[float]] = {"paastis": [], "direct": []}
    with through, direct:
        for _ in range(samples):
            for name, ws in (("paastis", through), ("direct", direct)):
                sent = time.perf_counter()
                ws.send("probe")
                ws.recv(timeout=10)
                times[name].append((time.perf_counter() - sent) * 1000)
            time.sleep(0.02)
    return {name: (statistics.median(t), sorted(t)[int(len(t) * 0.99)]) for name, t in times.items()}


def wrk(port: int, connections: int, seconds: int) -> dict:
    raw = run_wrk(port, connections, seconds)
    raw["errors"] = sum(raw[k] for k in ("non2xx", "connect", "read", "write", "timeout"))
    raw["rps"] = raw["requests"] / (raw["duration_us"] / 1e6)
    return raw


def line(name: str, connections: int, raw: dict) -> str:
    p50, p99 = raw["p50"] / 1000, raw["p99"] / 1000
    return f"| {name} | {connections} | {raw['rps']:.0f} | {p50:.2f} | {p99:.2f} | {raw['errors']} |"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(args, limit, opened_in, chatter, before, during, idle, busy) -> None:  # type: ignore[no-untyped-def]
    echoes = sorted(chatter.echoes)
    print(f"\nmachine: {machine()}")
    print(f"open-files limit: {limit}; paastis: gunicorn app:app with its defaults (1 worker, 32 threads)")
    print(f"wrk -t1, {args.duration} s per run, against fast.localhost (nginx behind paastis)")
    print(
        f"\nWebSockets: {chatter.open} of {args.sockets} opened in {opened_in:.1f} s "
        f"({chatter.failed_handshakes} failed handshakes), {len(echoes)} echoes, {chatter.errors} errors"
    )
    for failure, count in chatter.failures.items():
        print(f"  {count} handshake(s) failed: {failure}")
    if echoes:
        p50, p99 = echoes[len(echoes) // 2], echoes[int(len(echoes) * 0.99)]
        print(f"echo round trip through paastis: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")
    print("\n| ordinary requests | wrk connections | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for count in before:
        print(line("no WebSocket open", count, before[count]))
        print(line(f"{chatter.open} WebSockets open, 1 msg/s each", count, during[count]))
    print("\n| paastis worker | threads | RSS MiB |")
    print("|---|---|---|")
    print(f"| no WebSocket open | {idle[0]} | {idle[1]:.1f} |")
    print(f"| {chatter.open} WebSockets open | {busy[0]} | {busy[1]:.1f} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=20, help="seconds per wrk run")
    parser.add_argument("--connections", default="1,8", help="wrk connection counts, comma-separated")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    for tool in (WRK, NGINX):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} is needed (apt-get install wrk nginx-light)")
    limit = raise_open_files_limit(2 * args.sockets + 200)
    with tempfile.TemporaryDirectory(prefix="paastis-ws-bench-") as tmp:
        procs = Processes(Path(tmp))
        chatter = None
        try:
            nginx = start_nginx(procs)
            chat = free_port()
            procs.start("ws_app", [PYTHON, str(WS_APP)], {"PORT": str(chat)}, chat)
            apps = [
                {"name": "fast", "url": f"http://127.0.0.1:{nginx}", "start": "true", "stop": "true"},
                {"name": "chat", "url": f"http://127.0.0.1:{chat}", "start": "true", "stop": "true"},
            ]
            port = start_paastis(procs, "paastis", write_config(Path(tmp), apps=apps))
            master = procs.started[-1].pid
            worker = worker_of(master)
            requests.get(f"http://127.0.0.1:{port}/", headers={"Host": "fast.localhost"}, timeout=30)
            counts = [int(c) for c in args.connections.split(",")]
            wrk(port, max(counts), 3)  # warm-up
            idle_threads, idle_rss = footprint(worker)
            before = {c: wrk(port, c, args.duration) for c in counts}

            chatter = Chatter(port, args.sockets)
            started = time.perf_counter()
            chatter.start()
            chatter.ready.wait(600)
            opened_in = time.perf_counter() - started
            time.sleep(3)  # every connection has ticked at least once
            cpu, wall = cpu_seconds(worker), time.perf_counter()
            time.sleep(10)  # the WebSockets alone: what relaying them costs the worker
            relay_cpu = (cpu_seconds(worker) - cpu) / (time.perf_counter() - wall)
            probes = probe(port, chat)
            chatter.echoes.clear()
            during = {c: wrk(port, c, args.duration) for c in counts}
            busy_threads, busy_rss = footprint(worker)
            chatter.stop()
            report(args, limit, opened_in, chatter, before, during, (idle_threads, idle_rss), (busy_threads, busy_rss))
            print(f"\nthe worker's CPU relaying the WebSockets alone (no wrk): {relay_cpu * 100:.0f} % of one core")
            print(
                "one more WebSocket's echo round trip meanwhile (200 samples each, ms): "
                f"through paastis p50 {probes['paastis'][0]:.2f} / p99 {probes['paastis'][1]:.2f}; "
                f"straight to the app p50 {probes['direct'][0]:.2f} / p99 {probes['direct'][1]:.2f}"
            )
            chatter = None
        finally:
            if chatter is not None:
                chatter.stop()
            procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
