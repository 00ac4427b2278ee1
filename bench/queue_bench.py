"""Bursts and fairness: warm throughput on one app, a 200-request burst, and a second app meanwhile.

Run from the repository root (loopback only)::

    .venv/bin/python -m bench.queue_bench throughput --tree main=/tmp/paastis-main --tree branch=.
    .venv/bin/python -m bench.queue_bench burst --tree branch=.
    .venv/bin/python -m bench.queue_bench isolation

Each ``--tree NAME=DIR`` is a paastis source tree (a ``git archive`` of main, say), run as
``gunicorn app:app`` from that directory with its own ``gunicorn.conf.py`` and default settings
(local provider, in-memory registry: one worker, 32 threads). All trees run side by side and
their runs are interleaved round by round, so a shared machine's load falls on each alike.
The apps are ``bench/fast_upstream.py`` (asyncio, keep-alive), so paastis is what is measured.

- ``throughput``: ``wrk`` on ``fast.localhost`` at each ``--connections`` count: req/s, p99 and
  the count of non-2xx answers and socket errors (median of ``--rounds``).
- ``burst``: ``--burst`` concurrent requests (200) to one app whose answers take ``--app-ms``
  (100 ms), each on its own connection, while another app is asked one request at a time: the
  statuses, how long the burst's requests waited for a thread (their time minus the app's own),
  and the second app's latencies (p50, p99, max).
- ``isolation`` (the branch only): the other apps' answer times while one client stalls paastis
  in each of the three ways of issue 16: 64 hung requests on one app, 40 slow uploads over two
  apps, and 2,000 clients that never close after ``Connection: close``.

Nothing here runs under pytest; every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.proxy_bench import WRK, Processes, clean_env, machine
from tests.support import PYTHON, ROOT, free_port, port_open, wait_until, write_config

BENCH = Path(__file__).resolve().parent


def start_upstream(procs: Processes, name: str) -> int:
    """One ``bench/fast_upstream.py`` per app (paastis wants one port per app)."""
    port = free_port()
    procs.start(f"upstream-{name}", [PYTHON, "-m", "bench.fast_upstream", str(port)], clean_env(), port)
    return port


def start_tree(procs: Processes, name: str, tree: Path, config: Path, **env: str) -> int:
    """``gunicorn app:app`` from ``tree`` (its own paastis package comes first on the path)."""
    port = free_port()
    full = clean_env(
        PORT=str(port),
        PAASTIS_CONFIG_FILE=str(config),
        PAASTIS_STATE_DIR=str(config.parent / f"state-{name}"),
        PYTHONPATH=str(tree),
        **env,
    )
    log = open(procs.tmp / f"{name}.log", "ab")
    procs.outputs.append(log)
    process = subprocess.Popen(
        [PYTHON, "-m", "gunicorn", "app:app"],
        cwd=tree,
        env=full,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    procs.started.append(process)
    wait_until(lambda: port_open(port) or process.poll() is not None, 30, what=f"{name} on {port}")
    if process.poll() is not None:
        raise SystemExit(f"{name} did not start:\n{procs.logs(name)}")
    answer = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": "fast.localhost"}, timeout=30)
    if answer.status_code != 200:
        raise SystemExit(f"{name} answered {answer.status_code}: {answer.text[:200]}")
    return port


def run_wrk(port: int, connections: int, seconds: int, host: str = "fast.localhost") -> dict:
    argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    argv += ["-s", str(BENCH / "wrk_report.lua"), "-H", f"Host: {host}", f"http://127.0.0.1:{port}/"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def throughput(procs: Processes, trees: dict[str, Path], config: Path, args: argparse.Namespace) -> None:
    ports = {name: start_tree(procs, name, tree, config) for name, tree in trees.items()}
    runs: dict[tuple[str, int], list[dict]] = {}
    for round_ in range(args.rounds):
        for connections in args.connections:
            for name, port in ports.items():
                print(f"round {round_ + 1}/{args.rounds}: {name}, {connections} connection(s)…", flush=True)
                run_wrk(port, connections, args.warmup)
                raw = run_wrk(port, connections, args.duration)
                runs.setdefault((name, connections), []).append(raw)
    print(f"\nmachine: {machine()}")
    print(f"wrk: 1 thread, {args.duration} s per run after {args.warmup} s warm-up; median of {args.rounds} rounds\n")
    print(
        f"{'tree':<10} {'conns':>5} {'req/s':>8} {'2xx/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'sockerr':>8}"
    )
    for connections in args.connections:
        for name in ports:
            raws = runs[(name, connections)]
            rps = statistics.median(r["requests"] / (r["duration_us"] / 1e6) for r in raws)
            ok = statistics.median((r["requests"] - r["non2xx"]) / (r["duration_us"] / 1e6) for r in raws)
            p50 = statistics.median(r["p50"] for r in raws) / 1000
            p99 = statistics.median(r["p99"] for r in raws) / 1000
            non2xx = sum(r["non2xx"] for r in raws)
            sock = sum(r[k] for r in raws for k in ("connect", "read", "write", "timeout"))
            print(f"{name:<10} {connections:>5} {rps:>8.0f} {ok:>8.0f} {p50:>8.2f} {p99:>8.2f} {non2xx:>8} {sock:>8}")


def one_request(port: int, host: str, path: str, results: list, timeout: float = 120) -> None:
    started = time.monotonic()
    try:
        status = requests.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}, timeout=timeout).status_code
    except requests.RequestException as error:
        status = type(error).__name__
    results.append((status, time.monotonic() - started))


class Prober(threading.Thread):
    """Asks ``host`` one request at a time until stopped; keeps each answer time."""

    def __init__(self, port: int, host: str):
        super().__init__(daemon=True)
        self.port, self.host = port, host
        self.results: list = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            one_request(self.port, self.host, "/", self.results, timeout=60)
            time.sleep(0.02)

    def stop(self) -> list:
        self.halt.set()
        self.join()
        return self.results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def describe(label: str, results: list, minus: float = 0.0) -> None:
    statuses: dict = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    times = [max(0.0, t - minus) for _, t in results]
    print(
        f"  {label}: {len(results)} requests, statuses {dict(sorted(statuses.items(), key=str))}; "
        f"p50 {percentile(times, 0.5) * 1000:.0f} ms, p99 {percentile(times, 0.99) * 1000:.0f} ms, "
        f"max {max(times) * 1000:.0f} ms"
    )


def burst(procs: Processes, trees: dict[str, Path], config: Path, args: argparse.Namespace) -> None:
    ports = {name: start_tree(procs, name, tree, config) for name, tree in trees.items()}
    print(f"\nmachine: {machine()}")
    for round_ in range(args.rounds):
        for name, port in ports.items():
            prober = Prober(port, "other.localhost")
            prober.start()
            time.sleep(0.5)
            results: list = []
            threads = [
                threading.Thread(target=one_request, args=(port, "fast.localhost", f"/sleep?ms={args.app_ms}", results))
                for _ in range(args.burst)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            time.sleep(0.5)
            other = prober.stop()
            print(
                f"round {round_ + 1}, {name}: {args.burst} concurrent requests to one app answering in {args.app_ms} ms"
            )
            describe("burst, time waited beyond the app's own", results, minus=args.app_ms / 1000)
            describe("second app meanwhile, answer time", other)


def isolation(procs: Processes, trees: dict[str, Path], config: Path, args: argparse.Namespace) -> None:
    name, tree = next(iter(trees.items()))
    port = start_tree(procs, name, tree, config)
    print(f"\nmachine: {machine()}\ntree: {name}")
    for case, stall in (
        ("64 hung requests on one app", hang),
        ("40 slow uploads over two apps", slow_uploads),
        ("2000 clients lingering after Connection: close", lingering),
    ):
        prober = Prober(port, "other.localhost")
        undo = stall(port)
        time.sleep(1.0)
        prober.start()
        time.sleep(args.duration)
        other = prober.stop()
        undo()
        print(f"{case}:")
        describe("another app's answer time", other)
        time.sleep(2)


def hang(port: int):
    socks = []
    for _ in range(64):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /hang HTTP/1.1\r\nHost: fast.localhost\r\n\r\n")
        socks.append(sock)
    return lambda: [s.close() for s in socks]


def slow_uploads(port: int):
    socks: list[socket.socket] = []
    halt = threading.Event()
    for i in range(40):
        sock = socket.create_connection(("127.0.0.1", port))
        host = "fast.localhost" if i % 2 else "slow.localhost"
        sock.sendall(f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\n".encode())
        socks.append(sock)

    def trickle() -> None:
        while not halt.wait(2.0):
            for sock in socks:
                try:
                    sock.send(b"x")
                except OSError:
                    pass

    threading.Thread(target=trickle, daemon=True).start()
    return lambda: (halt.set(), [s.close() for s in socks])


def lingering(port: int):
    socks: list[socket.socket] = []
    halt = threading.Event()

    def open_more() -> None:
        while not halt.is_set() and len(socks) < 2000:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(b"GET / HTTP/1.1\r\nHost: fast.localhost\r\nConnection: close\r\n\r\n")
                socks.append(sock)  # never read, never closed: the client lingers
            except OSError:
                time.sleep(0.05)
            time.sleep(0.002)

    threading.Thread(target=open_more, daemon=True).start()
    return lambda: (halt.set(), [s.close() for s in list(socks)])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("throughput", "burst", "isolation"))
    parser.add_argument("--tree", action="append", default=[], help="NAME=DIR of a paastis tree (default: this one)")
    parser.add_argument("--connections", default="1,8,32,128", help="throughput: connection counts")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (isolation: per case)")
    parser.add_argument("--warmup", type=int, default=2, help="throughput: warm-up seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--burst", type=int, default=200, help="burst: concurrent requests")
    parser.add_argument("--app-ms", type=int, default=100, help="burst: the app's own answer time")
    args = parser.parse_args()
    args.connections = [int(c) for c in args.connections.split(",")]
    trees = dict(item.split("=", 1) for item in args.tree) or {"branch": str(ROOT)}
    args.trees = {name: Path(path).resolve() for name, path in trees.items()}
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="paastis-queue-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            ports = {name: start_upstream(procs, name) for name in ("fast", "slow", "other")}
            apps = [
                {"name": name, "url": f"http://127.0.0.1:{port}", "start": "true", "stop": "true"}
                for name, port in ports.items()
            ]
            config = write_config(Path(tmp), apps=apps)
            {"throughput": throughput, "burst": burst, "isolation": isolation}[args.mode](
                procs, args.trees, config, args
            )
        finally:
            procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
