"""Reloads under traffic: what clients see while paastis applies (or refuses) a new configuration.

Run from the repository root (loopback only)::

    .venv/bin/python -m bench.reload_bench [--clients 16] [--reloads 6] [--seconds 2]

One ``gunicorn app:app`` (local provider, in-memory registry: one worker of 32 threads) serves
an app ``fast`` (``bench/fast_upstream.py``). ``--clients`` threads send requests without pause,
half on a new connection each time, half on kept-alive connections (``requests.Session``), while
the master gets a SIGHUP every ``--seconds``: good configurations (a rule's idle time changes)
alternating with a broken one (invalid YAML). Printed: requests answered, errors by kind (a
connection refused, reset or closed under a request), answers other than 200, latencies (p50,
p99, max) over the run and within a second after each good reload, and how many reloads were
applied and refused.

Nothing here runs under pytest; every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests

from bench.proxy_bench import Processes, clean_env, machine
from bench.queue_bench import start_upstream
from tests.support import PYTHON, free_port, write_config


def client(  # one thread of traffic: a request after another, timed
    port: int, keep_alive: bool, stop: threading.Event, record: list, errors: Counter, statuses: Counter
) -> None:
    session = requests.Session() if keep_alive else None
    url = f"http://127.0.0.1:{port}/"
    headers = {"Host": "fast.localhost"} if keep_alive else {"Host": "fast.localhost", "Connection": "close"}
    while not stop.is_set():
        started = time.monotonic()
        try:
            answer = (session or requests).get(url, headers=headers, timeout=30)
            statuses[answer.status_code] += 1
            record.append((started, time.monotonic() - started))
        except requests.RequestException as error:
            kind = "kept-alive" if keep_alive else "new"
            errors[f"{kind} connection: {type(error).__name__}: {str(error)[-60:]}"] += 1


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--reloads", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="paastis-reload-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            run(procs, Path(tmp), args)
        finally:
            procs.stop_all()


def run(procs: Processes, tmp: Path, args: argparse.Namespace) -> None:
    app = {"name": "fast", "url": f"http://127.0.0.1:{start_upstream(procs, 'fast')}", "start": "true", "stop": "true"}
    config = write_config(tmp, [app], [{"pattern": "fast", "app_max_idle_time": 10}])
    port = free_port()
    env = clean_env(PORT=str(port), PAASTIS_CONFIG_FILE=str(config), PAASTIS_STATE_DIR=str(tmp / "state"))
    master = procs.start("paastis", [PYTHON, "-m", "gunicorn", "app:app"], env, port)
    stop, record, errors, statuses = threading.Event(), [], Counter(), Counter()
    threads = [
        threading.Thread(target=client, args=(port, i % 2 == 1, stop, record, errors, statuses), daemon=True)
        for i in range(args.clients)
    ]
    for thread in threads:
        thread.start()
    time.sleep(args.seconds)
    good_reloads: list[float] = []
    for index in range(args.reloads):
        if index % 3 == 2:
            config.write_text("rules: [\n")  # broken: refused, nothing changes
        else:
            write_config(tmp, [app], [{"pattern": "fast", "app_max_idle_time": 11 + index}])
            good_reloads.append(time.monotonic())
        os.kill(master.pid, signal.SIGHUP)
        time.sleep(args.seconds)
    stop.set()
    for thread in threads:
        thread.join(35)
    report(procs, args, record, errors, statuses, good_reloads)


def report(procs, args, record, errors, statuses, good_reloads) -> None:  # type: ignore[no-untyped-def]
    latencies = [took for _, took in record]
    after = [took for at, took in record if any(0 <= at - reload < 1.0 for reload in good_reloads)]
    log = procs.logs("paastis")
    print(f"machine: {machine()}")
    print(f"clients: {args.clients} (half new connections, half kept alive)")
    print(f"reloads: {args.reloads}, every {args.seconds:g}s")
    print(f"answered: {sum(statuses.values())}  statuses: {dict(statuses)}")
    print(f"errors: {sum(errors.values())}  {dict(errors) or ''}")
    ms = 1000
    print(
        f"latency ms, whole run: p50 {statistics.median(latencies) * ms:.1f}  p99 {percentile(latencies, .99) * ms:.1f}"
        f"  max {max(latencies) * ms:.1f}"
    )
    if after:
        print(
            f"latency ms, 1 s after each applied reload: p50 {statistics.median(after) * ms:.1f}"
            f"  p99 {percentile(after, .99) * ms:.1f}  max {max(after) * ms:.1f}"
        )
    print(f"reloads applied: {log.count('paastis reloaded:')}  refused: {log.count('reload refused')}")


if __name__ == "__main__":
    sys.exit(main())
