"""What the Redis registry costs on the request path: Redis commands per proxied request, and throughput.

Run from the repository root (about 75 s, loopback only)::

    .venv/bin/python -m bench.redis_commands [--duration 10] [--rounds 3] [--connections 16] [--workers 1]

It starts a private ``redis-server`` (so that ``INFO commandstats`` counts only paastis), nginx as
one warm app (``fast``, declared to the local provider with no-op start/stop commands), and
``gunicorn app:app`` twice with the same settings but the registry: ``in-memory`` and ``redis``.
It runs ``wrk`` against each in alternating rounds (so that machine noise hits both alike) and
reports requests per second and latency; for Redis, also the commands Redis ran during the
load, per proxied request and by name. A last scenario sends sparse requests (one every
1.5 s), the worst case for the request path: each request then publishes its in-flight entry
and the flusher writes the access and retires the entry after it.

Nothing here runs under pytest; every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.proxy_bench import BENCH, HOST, NGINX, NGINX_CONF, WRK, stop
from tests.redis_support import RedisServer
from tests.support import PYTHON, ROOT, free_port, port_open, wait_until, write_config

SKIPPED = ("info", "client", "hello")  # our own INFO, connection handshakes
REPORT_LUA = BENCH / "wrk_report.lua"


def start(argv: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    with open(log, "ab") as output:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    wait_until(lambda: port_open(port) or process.poll() is not None, 30, what=f"{argv[0]} on {port}")
    if process.poll() is not None:
        raise SystemExit(f"{argv} exited:\n{log.read_text(errors='replace')}")
    return process


def paastis_env(tmp: Path, port: int, workers: int, registry: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVIDER_", "REGISTRY_", "HOOKS_"))}
    env.update(
        {
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "WEB_CONCURRENCY": str(workers),
            "PAASTIS_CONFIG_FILE": str(tmp / "paastis.yml"),
            "PAASTIS_STATE_DIR": str(tmp / "state"),
            "LOG_LEVEL": "warning",
            **registry,
        }
    )
    return env


def failures(load: dict) -> int:
    """Non-2xx answers and socket errors of one wrk run (see bench/wrk_report.lua)."""
    return load["non2xx"] + load["connect"] + load["read"] + load["write"] + load["timeout"]


def wrk(port: int, duration: float, connections: int, lua: Path) -> dict:
    argv = [WRK, "-t2", f"-c{connections}", f"-d{duration:g}s", "-H", f"Host: {HOST}", "-s", str(lua)]
    out = subprocess.run([*argv, f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def data_commands(server: RedisServer) -> dict[str, int]:
    return {name: calls for name, calls in server.command_calls().items() if not name.startswith(SKIPPED)}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: calls - before.get(name, 0) for name, calls in after.items() if calls > before.get(name, 0)}


def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="paastis-redis-bench-"))
    lua = REPORT_LUA
    upstream_port = free_port()
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=upstream_port))
    write_config(tmp, [{"name": "fast", "url": f"http://127.0.0.1:{upstream_port}", "start": "true", "stop": "true"}])
    nginx = start(
        [NGINX, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], dict(os.environ), upstream_port, tmp / "nginx.log"
    )
    server = RedisServer(tmp).start()
    proxies: dict[str, tuple[subprocess.Popen, int]] = {}
    results: dict = {"duration": args.duration, "connections": args.connections, "workers": args.workers}
    try:
        for name, registry in (
            ("in-memory", {"REGISTRY_TYPE": "in-memory"}),
            ("redis", {"REGISTRY_TYPE": "redis", "REGISTRY_REDIS_URL": server.url}),
        ):
            port = free_port()
            env = paastis_env(tmp, port, args.workers, registry)
            proxies[name] = start([PYTHON, "-m", "gunicorn", "app:app"], env, port, tmp / f"paastis-{name}.log"), port
            for _ in range(20):  # warm: the app is registered, connections pooled
                assert requests.get(f"http://127.0.0.1:{port}/", headers={"Host": HOST}, timeout=10).status_code == 200
            results[name] = {"rounds": []}
        for _ in range(args.rounds):  # alternate, so that noise from the machine hits both alike
            for name, (_, port) in proxies.items():
                before = data_commands(server)
                load = wrk(port, args.duration, args.connections, lua)
                load["rps"] = round(load["requests"] / (load["duration_us"] / 1e6))
                if name == "redis":
                    load["redis_commands"] = delta(before, data_commands(server))
                results[name]["rounds"].append(load)
        for name in proxies:
            rounds = results[name]["rounds"]
            results[name]["rps"] = statistics.median(load["rps"] for load in rounds)
            results[name]["p50"] = statistics.median(load["p50"] for load in rounds)
            results[name]["p99"] = statistics.median(load["p99"] for load in rounds)
            results[name]["failed"] = sum(failures(load) for load in rounds)
        shared = results["redis"]
        commands: dict[str, int] = {}
        for load in shared["rounds"]:
            for command, calls in load["redis_commands"].items():
                commands[command] = commands.get(command, 0) + calls
        shared["requests"] = sum(load["requests"] for load in shared["rounds"])
        shared["redis_commands"] = commands
        shared["commands_per_request"] = sum(commands.values()) / max(1, shared["requests"])
        shared["sparse"] = sparse(f"http://127.0.0.1:{proxies['redis'][1]}/", server, args.sparse)
    finally:
        for process, _ in proxies.values():
            stop(process)
        server.stop()
        stop(nginx)
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def sparse(url: str, server: RedisServer, count: int) -> dict:
    """One request every 1.5 s: each one publishes, and the flusher writes and retires after it."""
    time.sleep(2)  # let the flusher retire the entry left by the load
    before = data_commands(server)
    for _ in range(count):
        assert requests.get(url, headers={"Host": HOST}, timeout=10).status_code == 200
        time.sleep(1.5)
    commands = delta(before, data_commands(server))
    return {"requests": count, "redis_commands": commands, "commands_per_request": sum(commands.values()) / count}


def report(results: dict) -> None:
    memory, shared = results["in-memory"], results["redis"]
    print(
        f"wrk -t2 -c{results['connections']} -d{results['duration']:g}s x {len(memory['rounds'])} alternating rounds, "
        f"one warm app (nginx), {results['workers']} gunicorn worker(s); medians"
    )
    print(f"{'registry':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}  rounds (req/s)")
    for name, load in (("in-memory", memory), ("redis", shared)):
        rounds = ", ".join(str(r["rps"]) for r in load["rounds"])
        print(
            f"{name:<10} {load['rps']:>8.0f} {load['p50'] / 1000:>8.2f} {load['p99'] / 1000:>8.2f} "
            f"{load['failed']:>7}  {rounds}"
        )
    print(f"redis / in-memory throughput (medians): {shared['rps'] / memory['rps']:.1%}")
    print(
        f"Redis commands at steady load: {sum(shared['redis_commands'].values())} for {shared['requests']} "
        f"requests = {shared['commands_per_request']:.4f} per request {shared['redis_commands']}"
    )
    light = shared["sparse"]
    print(
        f"Redis commands with sparse traffic (1 request / 1.5 s, {light['requests']} requests): "
        f"{light['commands_per_request']:.1f} per request {light['redis_commands']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk load per registry")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per registry")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (in-memory always runs 1)")
    parser.add_argument("--sparse", type=int, default=6, help="sparse requests to count commands for")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    args = parser.parse_args()
    if not Path(WRK).exists() or not Path(NGINX).exists():
        sys.exit("this benchmark needs wrk and nginx")
    results = run(args)
    report(results)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
