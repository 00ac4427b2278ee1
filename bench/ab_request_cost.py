"""Warm-request cost of two paastis trees, A/B, interleaved: throughput and worker CPU per request.

Run from the repository root, giving two checkouts (e.g. ``git archive <commit> | tar -x -C /tmp/before``)::

    .venv/bin/python -m bench.ab_request_cost /tmp/before . --rounds 4

Each round starts, for each tree in turn, ``gunicorn app:app`` from that tree (its own
``gunicorn.conf.py``, default settings, the ``local`` provider) in front of the same nginx, and
drives it with ``wrk`` (keep-alive, ``GET /``, ``Host: fast.localhost``). Besides requests per
second it reads the gunicorn worker's CPU time from ``/proc`` before and after the load:
CPU microseconds per request barely move when other processes compete for the cores, so on
a shared, noisy machine they compare two versions far better than throughput does.

Extra environment for the paastis processes can be given with ``--env NAME=VALUE`` (e.g.
``MAX_IN_FLIGHT_PER_APP=32`` to compare 32 connections on one app without the bulkhead's 503s),
and for tree A only with ``--a-env``: ``. . --a-env GUNICORN_CMD_ARGS=--worker-class=gthread``
compares one tree under stock gthread and under its own worker class.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.proxy_bench import NGINX, WRK, Processes, clean_env, run_wrk, start_nginx, stop
from tests.support import PYTHON, free_port, port_open, wait_until, write_config

TICK = os.sysconf("SC_CLK_TCK")


def worker_cpu_seconds(master: int) -> float:
    """User + system CPU time of the master's children (the gunicorn workers)."""
    children = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True, check=False).stdout.split()
    total = 0
    for pid in children:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / TICK


def start_tree(root: Path, config: Path, tmp: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    full = clean_env(PORT=str(port), PAASTIS_CONFIG_FILE=str(config), PAASTIS_STATE_DIR=str(tmp / "state"), **env)
    log = open(tmp / f"paastis-{port}.log", "ab")  # noqa: SIM115 - closed with the process by the OS
    process = subprocess.Popen(
        [PYTHON, "-m", "gunicorn", "app:app"],
        cwd=root,
        env=full,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_until(lambda: port_open(port) or process.poll() is not None, 30, what=f"paastis from {root}")
    return process, port


def measure(
    root: Path, config: Path, tmp: Path, env: dict[str, str], args: argparse.Namespace
) -> tuple[float, float, int]:
    process, port = start_tree(root, config, tmp, env)
    try:
        run_wrk(port, args.connections, 2)  # warm-up: the app is registered, pools are filled
        before = worker_cpu_seconds(process.pid)
        raw = run_wrk(port, args.connections, args.duration)
        cpu = worker_cpu_seconds(process.pid) - before
    finally:
        stop(process)
    errors = sum(raw[k] for k in ("non2xx", "connect", "read", "write", "timeout"))
    rps = raw["requests"] / (raw["duration_us"] / 1e6)
    return rps, cpu * 1e6 / max(1, raw["requests"]), errors


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="the first tree (e.g. before the change)")
    parser.add_argument("b", type=Path, help="the second tree (e.g. after it)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the paastis processes")
    parser.add_argument("--a-env", action="append", default=[], help="NAME=VALUE for tree A only")
    args = parser.parse_args()
    args.env = dict(item.split("=", 1) for item in args.env)
    args.a_env = dict(item.split("=", 1) for item in args.a_env)
    return args


def main() -> None:
    args = parse_args()
    for tool in (WRK, NGINX):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} is needed (apt-get install wrk nginx-light)")
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    results: dict[str, list[tuple[float, float, int]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="paastis-ab-") as tmp:
        procs = Processes(Path(tmp))
        try:
            nginx = start_nginx(procs)
            app = {"name": "fast", "url": f"http://127.0.0.1:{nginx}", "start": "true", "stop": "true"}
            config = write_config(Path(tmp), apps=[app])
            for round_ in range(args.rounds):
                for name in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
                    env = {**args.env, **(args.a_env if name == "A" else {})}
                    rps, cpu_us, errors = measure(trees[name], config, Path(tmp), env, args)
                    results[name].append((rps, cpu_us, errors))
                    print(f"round {round_ + 1} {name}: {rps:.0f} req/s, {cpu_us:.0f} µs CPU/request, {errors} errors")
        finally:
            procs.stop_all()
    env = f"{args.env or '{}'}, A only: {args.a_env or '{}'}"
    print(f"\n{args.connections} connection(s), {args.duration} s per run, {args.rounds} rounds, env {env}")
    print("| tree | median req/s | median worker CPU per request | errors |")
    print("|---|---:|---:|---:|")
    for name, rows in results.items():
        rps = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        print(f"| {name} ({trees[name]}) | {rps:.0f} | {cpu:.0f} µs | {sum(r[2] for r in rows)} |")
    a_cpu = statistics.median(r[1] for r in results["A"])
    b_cpu = statistics.median(r[1] for r in results["B"])
    a_rps = statistics.median(r[0] for r in results["A"])
    b_rps = statistics.median(r[0] for r in results["B"])
    print(f"B vs A: throughput {100 * b_rps / a_rps:.1f} %, CPU per request {100 * b_cpu / a_cpu:.1f} %")


if __name__ == "__main__":
    sys.exit(main())
