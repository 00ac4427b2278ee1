"""What each step of paastis's own request path costs, timed in-process (a few seconds).

Run from the repository root::

    .venv/bin/python -m bench.request_path

``bench.proxy_bench`` measures the whole request through gunicorn; this splits out the part
that is paastis's own (routing, registry, lifecycle checks, metrics, header rewriting) from
what any Flask + requests proxy pays (preparing and sending the upstream request), so that a
regression in one step shows up by name.
"""

from __future__ import annotations

import os
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

import requests
from flask import Flask, request

from bench.proxy_bench import Processes, start_nginx
from paastis import Paastis, create_app
from paastis import proxy as paastis_proxy
from paastis.config import Settings
from paastis.routing import app_key_from_host
from tests.support import write_config

HEADERS = {"Host": "fast.localhost", "Accept": "*/*", "User-Agent": "wrk"}


def per_call_us(step: Callable[[], object], number: int = 3000) -> float:
    """Best of three rounds, in microseconds per call (the least disturbed by other processes)."""
    return min(timeit.repeat(step, number=number, repeat=3)) / number * 1e6


def awake_and_touch(lifecycle, registry, app) -> None:
    """What paastis.proxy._serve_app does before forwarding, for an awake app."""
    group = lifecycle.group(app)
    lifecycle.is_awake(group)
    for linked in group[1:]:
        registry.touch(linked.key)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="paastis-path-") as tmp:
        procs = Processes(Path(tmp))
        try:
            nginx = start_nginx(procs)
            apps = [{"name": "fast", "url": f"http://127.0.0.1:{nginx}", "start": "true", "stop": "true"}]
            config = write_config(Path(tmp), apps=apps)
            environ = {"PAASTIS_CONFIG_FILE": str(config), "PAASTIS_STATE_DIR": f"{tmp}/state", "LOG_LEVEL": "warning"}
            flask_app = create_app(Settings.from_env({**os.environ, **environ}, dotenv=False))
            report(flask_app.extensions["paastis"], flask_app)
            flask_app.extensions["paastis"].close()
        finally:
            procs.stop_all()


def report(paastis: Paastis, flask_app: Flask) -> None:
    lifecycle, registry, proxy = paastis.lifecycle, paastis.registry, paastis.proxy
    with flask_app.test_request_context("/", headers=HEADERS):
        app = lifecycle.resolve("fast")
        lifecycle.ensure_awake(app)
        upstream = lifecycle.upstream_url(app)
        headers = paastis_proxy.request_headers(request, upstream)
        sample = proxy.send("GET", upstream, "/", headers, None, 300.0)
        own = {
            "system API check": lambda: paastis_proxy.is_system_request(request),
            "Host -> app key": lambda: app_key_from_host("fast.localhost"),
            "resolve (directory)": lambda: lifecycle.resolve("fast"),
            "sleep gate (passive visitor? window?)": lambda: paastis.gate.screen(request, app, lambda: True),
            "linked group + is_awake + touch linked": lambda: awake_and_touch(lifecycle, registry, app),
            "in-flight begin + end": lambda: registry.end_request("fast", registry.begin_request("fast")),
            "metrics counter": lambda: proxy.metrics.proxied_requests.labels("fast", "200").inc(),
            "upstream_url": lambda: lifecycle.upstream_url(app),
            "request body check": lambda: paastis_proxy.request_body(request),
            "raw target": lambda: paastis_proxy.raw_target(request),
            "request headers": lambda: paastis_proxy.request_headers(request, upstream),
            "response headers": lambda: paastis_proxy.response_headers(sample),
        }
        shared = {
            "PreparedRequest.prepare (paastis)": lambda: requests.PreparedRequest().prepare(
                method="GET", url=upstream + "/", headers=headers, hooks=requests.hooks.default_hooks()
            ),
            "Session.prepare_request (avoided)": lambda: proxy.session.prepare_request(
                requests.Request("GET", upstream + "/", headers=headers)
            ),
            "send + close, loopback nginx": lambda: proxy.send("GET", upstream, "/", headers, None, 300.0).close(),
        }
        sample.close()
        total = 0.0
        print(f"{'paastis own step':<36} {'us/call':>8}")
        for name, step in own.items():
            cost = per_call_us(step)
            total += cost
            print(f"{name:<36} {cost:>8.1f}")
        print(f"{'total':<36} {total:>8.1f}\n")
        print(f"{'upstream request (any requests proxy)':<36} {'us/call':>8}")
        for name, step in shared.items():
            print(f"{name:<36} {per_call_us(step, 1000):>8.1f}")


if __name__ == "__main__":
    main()
