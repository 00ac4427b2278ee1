"""How many slow clients one default paastis instance holds while still answering normal requests.

Run from the repository root (a minute or two, loopback only)::

    .venv/bin/python -m bench.slow_clients

For each count of "slowloris" connections (each sends part of a request head, then one more
byte every second: ``tests/support.py`` ``SlowClients``), a fresh ``gunicorn app:app`` with
``gunicorn.conf.py`` and default settings (one worker, 32 threads, ``CLIENT_HEADER_TIMEOUT=10``)
routes ``fast.localhost`` to nginx; once the slow connections are open, normal requests (each on
a new connection, one at a time) are timed to their full answer. The same is done with stock
gthread (``--worker-class gthread``) for comparison. A normal request that takes more than
``--patience`` seconds counts as not answered.

Nothing here runs under pytest; every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.proxy_bench import HOST, NGINX, Processes, check_answers, start_nginx, start_paastis
from tests.support import SlowClients, write_config

WORKERS = {"paastis": {}, "gthread": {"GUNICORN_CMD_ARGS": "--worker-class gthread"}}


def time_requests(port: int, count: int, patience: float) -> list[float | None]:
    """Seconds to each full answer (None: no answer within ``patience``)."""
    times: list[float | None] = []
    for _ in range(count):
        started = time.monotonic()
        try:
            response = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": HOST}, timeout=patience)
            ok = response.status_code == 200
        except requests.RequestException:
            ok = False
        times.append(time.monotonic() - started if ok else None)
    return times


def run_case(procs: Processes, config: Path, worker: str, slow: int, args: argparse.Namespace) -> dict:
    name = f"{worker}-{slow}"
    port = start_paastis(procs, name, config, **WORKERS[worker])
    check_answers(procs, name, port)
    with SlowClients(port, slow, pace=1.0) as clients:
        time.sleep(2)  # let every slow connection be accepted and start trickling
        times = time_requests(port, args.requests, args.patience)
        cut = clients.closed()
    procs.stop_last()
    answered = sorted(t for t in times if t is not None)
    return {
        "worker": worker,
        "slow": slow,
        "answered": len(answered),
        "asked": len(times),
        "p50_ms": statistics.median(answered) * 1000 if answered else None,
        "max_ms": answered[-1] * 1000 if answered else None,
        "cut": cut,
    }


def print_report(rows: list[dict], args: argparse.Namespace) -> None:
    print()
    print(f"Normal requests ({args.requests} per case, one at a time, new connection each) while slow clients hold on")
    print(f"(a request counts as answered within {args.patience:g}s; 'cut' = slow connections closed during the run)")
    print()
    print("| worker | slow connections | answered | p50 | max | slow ones cut |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        p50 = f"{row['p50_ms']:.1f} ms" if row["p50_ms"] is not None else "–"
        worst = f"{row['max_ms']:.1f} ms" if row["max_ms"] is not None else "–"
        answered = f"{row['answered']}/{row['asked']}"
        print(f"| {row['worker']} | {row['slow']} | {answered} | {p50} | {worst} | {row['cut']} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", default="0,32,256,512,900", help="comma-separated slow connection counts")
    parser.add_argument("--requests", type=int, default=20, help="normal requests timed per case")
    parser.add_argument("--patience", type=float, default=5.0, help="seconds a normal request may take at most")
    parser.add_argument("--gthread", default="32,256", help="slow counts also run with stock gthread ('' to skip)")
    args = parser.parse_args()
    args.slow = [int(n) for n in args.slow.split(",") if n]
    args.gthread = [int(n) for n in args.gthread.split(",") if n]
    return args


def main() -> None:
    args = parse_args()
    if not Path(NGINX).exists():
        raise SystemExit(f"{NGINX} is needed (apt-get install nginx-light)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="paastis-slow-") as tmp:
        procs = Processes(Path(tmp))
        try:
            nginx = start_nginx(procs)
            app = {"name": "fast", "url": f"http://127.0.0.1:{nginx}", "start": "true", "stop": "true"}
            config = write_config(Path(tmp), apps=[app])
            cases = [("paastis", n) for n in args.slow] + [("gthread", n) for n in args.gthread]
            for worker, slow in cases:
                print(f"{worker}: {slow} slow connection(s)…", flush=True)
                rows.append(run_case(procs, config, worker, slow, args))
        finally:
            procs.stop_all()
    print_report(rows, args)


if __name__ == "__main__":
    sys.exit(main())
