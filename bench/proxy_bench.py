"""How much paastis costs on the request path, and how soon a sleeping app answers once it is up.

Run from the repository root (about two minutes, loopback only)::

    .venv/bin/python -m bench.proxy_bench

Side by side, in one run, with the same ``wrk`` load:

1. ``direct``: nginx returning a tiny body, reached without any proxy (the floor);
2. ``bare``: ``bench/bare_proxy.py``, a dozen-line Flask + requests streaming proxy, under the
   same gunicorn settings as paastis (what the design costs at the very least);
3. ``paastis``: ``gunicorn app:app`` with ``gunicorn.conf.py``, the local provider, the in-memory
   registry and otherwise default settings, routing ``fast.localhost`` to the same nginx.

Then the wake: a request for a sleeping app (``tests/upstream_app.py`` with ``BOOT_DELAY``) is
timed to its first byte while the app's port is polled every millisecond; the difference
between the two moments is what paastis adds to the app's own boot time.

Nothing here runs under pytest; every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import requests

from tests.support import (
    PYTHON,
    ROOT,
    free_port,
    kill_local_apps,
    port_open,
    upstream_command,
    wait_until,
    write_config,
)

BENCH = Path(__file__).resolve().parent
WRK = shutil.which("wrk") or "/usr/bin/wrk"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TARGETS = ("direct", "bare", "paastis")
HOST = "fast.localhost"  # the app key paastis routes; nginx and the bare proxy ignore it

NGINX_CONF = """daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
}}
"""


# -- processes ------------------------------------------------------------------


class Processes:
    """The servers this run started, each in its own process group, all stopped at the end."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.started: list[subprocess.Popen] = []
        self.outputs: list[BinaryIO] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        self.outputs.append(log)
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started.append(process)
        try:
            wait_until(lambda: port_open(port) or process.poll() is not None, 30, what=f"{name} on {port}")
        except AssertionError:
            pass
        if process.poll() is not None or not port_open(port):
            raise SystemExit(f"{name} did not start; its output:\n{self.logs(name)}")
        return process

    def logs(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_last(self) -> None:
        """Stop the server started last (for benchmarks that start one per case)."""
        stop(self.started.pop())

    def stop_all(self) -> None:
        for process in reversed(self.started):
            stop(process)
        for output in self.outputs:
            output.close()


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a paastis (or bare proxy) process: no stray provider/registry/hook settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVIDER_", "REGISTRY_", "HOOKS_", "PAASTIS_"))}
    env.update({"HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def paastis_gunicorn_settings() -> dict[str, object]:
    """The settings ``gunicorn.conf.py`` gives paastis here (after its single-worker rule).

    Read in a child with paastis's own environment and working directory, so that the bare
    proxy gets exactly what paastis gets.
    """
    script = (
        "import json, runpy; conf = runpy.run_path('gunicorn.conf.py'); "
        "print(json.dumps({k: conf[k] for k in ('worker_class', 'workers', 'threads', 'keepalive')}))"
    )
    out = subprocess.run([PYTHON, "-c", script], cwd=ROOT, env=clean_env(), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_nginx(procs: Processes) -> int:
    port = free_port()
    conf = procs.tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=procs.tmp, port=port))
    procs.start(
        "nginx", [NGINX, "-e", str(procs.tmp / "nginx-error.log"), "-p", str(procs.tmp), "-c", str(conf)], {}, port
    )
    return port


def start_bare(procs: Processes, upstream: int, gunicorn: dict[str, object]) -> int:
    port = free_port()
    empty = procs.tmp / "bare.gunicorn.conf.py"  # else gunicorn would load ./gunicorn.conf.py and its paastis hooks
    empty.write_text("")
    argv = [PYTHON, "-m", "gunicorn", "bench.bare_proxy:app", "-c", str(empty), "-b", f"127.0.0.1:{port}"]
    argv += ["-k", str(gunicorn["worker_class"]), "-w", str(gunicorn["workers"])]
    argv += ["--threads", str(gunicorn["threads"]), "--keep-alive", str(gunicorn["keepalive"])]
    procs.start("bare", argv, clean_env(BARE_UPSTREAM=f"http://127.0.0.1:{upstream}"), port)
    return port


def start_paastis(procs: Processes, name: str, config: Path, **env: str) -> int:
    port = free_port()
    full = clean_env(
        PORT=str(port), PAASTIS_CONFIG_FILE=str(config), PAASTIS_STATE_DIR=str(config.parent / "state"), **env
    )
    procs.start(name, [PYTHON, "-m", "gunicorn", "app:app"], full, port)
    return port


# -- throughput and latency -----------------------------------------------------


@dataclass
class Result:
    target: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def run_wrk(port: int, connections: int, seconds: int) -> dict:
    argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    argv += ["-s", str(BENCH / "wrk_report.lua"), "-H", f"Host: {HOST}", f"http://127.0.0.1:{port}/"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 30)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(target: str, port: int, connections: int, seconds: int, warmup: int) -> Result:
    if warmup > 0:
        run_wrk(port, connections, warmup)
    raw = run_wrk(port, connections, seconds)
    errors = sum(raw[k] for k in ("non2xx", "connect", "read", "write", "timeout"))
    return Result(
        target,
        connections,
        rps=raw["requests"] / (raw["duration_us"] / 1e6),
        p50_ms=raw["p50"] / 1000,
        p99_ms=raw["p99"] / 1000,
        errors=errors,
    )


def check_answers(procs: Processes, name: str, port: int) -> None:
    """One request first: a wrong setup must fail loudly, not benchmark a stream of errors."""
    try:
        response = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": HOST}, timeout=30)
    except requests.RequestException as error:
        raise SystemExit(f"{name} did not answer: {error}\n{procs.logs(name)[-3000:]}") from None
    if response.status_code != 200 or response.text != "ok\n":
        raise SystemExit(f"{name} answered {response.status_code}: {response.text[:200]!r}")


def median_result(runs: list[Result]) -> Result:
    first = runs[0]
    return Result(
        first.target,
        first.connections,
        rps=statistics.median(r.rps for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        errors=sum(r.errors for r in runs),
    )


# -- waking ---------------------------------------------------------------------


@dataclass
class Wake:
    boot_s: float  # request sent -> the app's port accepts connections
    ttfb_s: float  # request sent -> first byte of the answer through paastis

    @property
    def added_s(self) -> float:
        return self.ttfb_s - self.boot_s


class PortWatch(threading.Thread):
    """Polls a port every millisecond and notes when it first accepts a connection."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.opened_at: float | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.05):
                    self.opened_at = time.monotonic()
                    return
            except OSError:
                time.sleep(0.001)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def timed_request(port: int, host: str) -> tuple[float, float, bytes]:
    """Send a blocking (non-browser) GET; return when it was sent, when its first byte came, and the answer."""
    request = f"GET /echo HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sent = time.monotonic()
        sock.sendall(request.encode())
        first = sock.recv(1)
        first_at = time.monotonic()
        rest = [first]
        while chunk := sock.recv(65536):
            rest.append(chunk)
    return sent, first_at, b"".join(rest)


def measure_wakes(procs: Processes, samples: int, boot_delay: float) -> list[Wake]:
    """Wake a sleeping app ``samples`` times; paastis puts it back to sleep (idle) between samples."""
    app_port = free_port()
    directory = procs.tmp / "wake"
    directory.mkdir()
    config = write_config(
        directory,
        apps=[
            {
                "name": "sleepy",
                "url": f"http://127.0.0.1:{app_port}",
                "command": upstream_command(BOOT_DELAY=boot_delay),
            }
        ],
        rules=[{"pattern": "sleepy", "app_max_idle_time": 0.01}],  # 0.6 s idle, so that samples follow quickly
    )
    port = start_paastis(procs, "paastis-wake", config, START_AND_STOP_CHECKING_INTERVAL="0.2")
    pid_file = directory / "state" / "sleepy.pid"
    wakes = []
    for _ in range(samples):
        wait_until(lambda: not pid_file.exists() and not port_open(app_port), 30, what="the app to be put to sleep")
        time.sleep(0.1)  # the stop's bookkeeping ends right after its pid file goes
        watch = PortWatch(app_port)
        watch.start()
        sent, first_at, answer = timed_request(port, "sleepy.localhost")
        watch.stop()
        if not answer.startswith(b"HTTP/1.1 200") or watch.opened_at is None:
            raise SystemExit(f"the wake request failed: {answer[:300]!r}\n{procs.logs('paastis-wake')[-2000:]}")
        wakes.append(Wake(boot_s=watch.opened_at - sent, ttfb_s=first_at - sent))
    return wakes


# -- report ---------------------------------------------------------------------


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def print_report(
    results: list[Result], wakes: list[Wake], gunicorn: dict[str, object], args: argparse.Namespace
) -> None:
    print(f"\nmachine: {machine()}")
    print(f"load average (1/5/15 min) now: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(
        f"gunicorn (bare and paastis): {gunicorn['worker_class']}, {gunicorn['workers']} worker(s), "
        f"{gunicorn['threads']} threads, keep-alive {gunicorn['keepalive']} s"
    )
    print(f"wrk: 1 thread, {args.duration} s per case after {args.warmup} s warm-up, median of {args.repeat} run(s)\n")
    by = {(r.target, r.connections): r for r in results}
    print(f"{'target':<9} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for connections in args.connections:
        for target in TARGETS:
            r = by[(target, connections)]
            print(f"{target:<9} {connections:>5} {r.rps:>9.0f} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f} {r.errors:>6}")
    print("\ngoals:")
    for connections in args.connections:
        ratio = by[("paastis", connections)].rps / by[("bare", connections)].rps
        print(
            f"  throughput, {connections:>2} conn: paastis = {ratio:.0%} of bare proxy (goal >= 80%)",
            verdict(ratio >= 0.8),
        )
    lowest = min(args.connections)
    added = by[("paastis", lowest)].p50_ms - by[("direct", lowest)].p50_ms
    bare_added = by[("bare", lowest)].p50_ms - by[("direct", lowest)].p50_ms
    print(
        f"  p50 added over direct at {lowest} conn: {added:.3f} ms (bare proxy: {bare_added:.3f} ms; goal < 1 ms) "
        f"{verdict(added < 1.0)}"
    )
    if wakes:
        print(f"\nwake of a sleeping app (BOOT_DELAY={args.boot_delay:g} s), {len(wakes)} samples:")
        print(f"  {'sample':>6} {'port open s':>11} {'first byte s':>12} {'added s':>8}")
        for i, wake in enumerate(wakes, 1):
            print(f"  {i:>6} {wake.boot_s:>11.3f} {wake.ttfb_s:>12.3f} {wake.added_s:>8.3f}")
        worst = max(w.added_s for w in wakes)
        median = statistics.median(w.added_s for w in wakes)
        print(
            f"  first byte after port open: median {median:.3f} s, worst {worst:.3f} s (goal < 0.5 s)",
            verdict(worst < 0.5),
        )


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="whole seconds of load per case (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="whole seconds of warm-up per case (default 2, 0: none)")
    parser.add_argument("--connections", default="1,8,32", help="comma-separated connection counts (default 1,8,32)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all cases; medians are reported")
    parser.add_argument("--boot-delay", type=float, default=1.0, help="sleeping app's boot time in seconds")
    parser.add_argument("--wake-samples", type=int, default=5, help="wakes to time (0 to skip)")
    args = parser.parse_args()
    args.connections = [int(c) for c in args.connections.split(",")]
    return args


def main() -> None:
    args = parse_args()
    for tool in (WRK, NGINX):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} is needed (apt-get install wrk nginx-light)")
    gunicorn = paastis_gunicorn_settings()
    with tempfile.TemporaryDirectory(prefix="paastis-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            nginx = start_nginx(procs)
            config = write_config(
                Path(tmp), apps=[{"name": "fast", "url": f"http://127.0.0.1:{nginx}", "start": "true", "stop": "true"}]
            )
            ports = {
                "direct": nginx,
                "bare": start_bare(procs, nginx, gunicorn),
                "paastis": start_paastis(procs, "paastis", config),
            }
            for name, port in ports.items():
                check_answers(procs, "nginx" if name == "direct" else name, port)
            runs: dict[tuple[str, int], list[Result]] = {}
            for round_ in range(args.repeat):
                for connections in args.connections:
                    for target in TARGETS:
                        print(f"round {round_ + 1}/{args.repeat}: {target}, {connections} connection(s)…", flush=True)
                        result = measure(target, ports[target], connections, args.duration, args.warmup)
                        runs.setdefault((target, connections), []).append(result)
            results = [median_result(r) for r in runs.values()]
            wakes = measure_wakes(procs, args.wake_samples, args.boot_delay) if args.wake_samples else []
            print_report(results, wakes, gunicorn, args)
        finally:
            procs.stop_all()
            kill_local_apps(Path(tmp) / "wake" / "state")  # the sleepy app, if it is awake


if __name__ == "__main__":
    sys.exit(main())
