"""What the dashboard and the waiting page cost paastis, timed in-process (a few seconds).

Run from the repository root::

    .venv/bin/python -m bench.dashboard_bench

The dashboard is for a few operators, but its apps page asks the provider about every app and
reads the event history: this says how that grows with the number of apps, what one poll of
the waiting page costs (every waiting browser sends one a second), and what a proxied request
pays for the dashboard being on (the Host comparisons and the null session).
"""

from __future__ import annotations

import re
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

from flask import request

from paastis import create_app
from paastis.config import Settings
from paastis.events import Event
from paastis.proxy import is_dashboard_request
from tests.support import free_port, write_config

TOKEN = "bench-token-0123456789abcdef"
HOST = "paastis.localhost"


def per_call_ms(step: Callable[[], object], number: int) -> float:
    """Best of three rounds, in milliseconds per call (the least disturbed by other processes)."""
    return min(timeit.repeat(step, number=number, repeat=3)) / number * 1e3


def build(tmp: Path, apps: int, dashboard: bool = True):
    listed = [
        {"name": f"app-{i}", "url": f"http://127.0.0.1:{free_port()}", "start": "true", "stop": "true"}
        for i in range(apps)
    ]
    config = write_config(tmp, listed)
    env = {"PAASTIS_CONFIG_FILE": str(config), "PAASTIS_STATE_DIR": str(tmp / "state")}
    if dashboard:
        env |= {"PAASTIS_DASHBOARD_HOST": HOST, "ROUTING_SYSTEM_API_TOKEN": TOKEN, "PAASTIS_SECRET_KEY": "k" * 40}
    return create_app(Settings.from_env(env, dotenv=False))


def signed_in_client(app):
    client = app.test_client()
    form = client.get("/dashboard/sign-in", headers={"Host": HOST}).get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    client.post("/dashboard/sign-in", data={"csrf_token": csrf, "token": TOKEN}, headers={"Host": HOST})
    return client


def apps_page(apps: int, events: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        app = build(Path(tmp), apps)
        paastis = app.extensions["paastis"]
        for i in range(events):
            paastis.events.add(Event(type="APP_STARTED", app=f"app-{i % max(apps, 1)}", reason="request", duration=2.0))
        client = signed_in_client(app)
        assert client.get("/dashboard/", headers={"Host": HOST}).status_code == 200
        try:
            return per_call_ms(lambda: client.get("/dashboard/", headers={"Host": HOST}), 5 if apps > 100 else 20)
        finally:
            paastis.close()


def wake_status_poll() -> float:
    """One ``PaastisProxyWakeStatus`` answer for an app that is still asleep (its wake is not started here)."""
    with tempfile.TemporaryDirectory() as tmp:
        app = build(Path(tmp), 1)
        paastis = app.extensions["paastis"]
        paastis.lifecycle.wake_in_background = lambda *args, **kwargs: None  # keep it asleep: time the answer alone
        for _ in range(5):
            paastis.events.add(Event(type="APP_STARTED", app="app-0", reason="request", duration=2.0))
        client = app.test_client()
        headers = {"Host": "app-0.localhost", "PaastisProxyWakeStatus": "1"}
        assert client.get("/", headers=headers).get_json()["state"] == "waking"
        try:
            return per_call_ms(lambda: client.get("/", headers=headers).close(), 2000)
        finally:
            paastis.close()


def dashboard_steps_per_proxied_request() -> float:
    """What the dashboard adds to a request for an app: the Host comparison (twice) and the null session."""
    with tempfile.TemporaryDirectory() as tmp:
        app = build(Path(tmp), 1)
        try:
            with app.test_request_context("/", headers={"Host": "app-0.localhost", "Cookie": "session=abc"}):
                sessions = app.session_interface

                def steps() -> None:
                    is_dashboard_request(request)
                    is_dashboard_request(request)
                    sessions.open_session(app, request)

                return per_call_ms(steps, 20_000)
        finally:
            app.extensions["paastis"].close()


def main() -> None:
    print("dashboard apps page (GET /dashboard/, signed in, in-process):")
    for apps, events in ((10, 100), (100, 1000), (500, 5000)):
        print(f"  {apps:4d} apps, {events:5d} events: {apps_page(apps, events):8.2f} ms per page")
    print(f"waiting page status poll (PaastisProxyWakeStatus): {wake_status_poll() * 1000:8.1f} µs per answer")
    added = dashboard_steps_per_proxied_request() * 1000
    print(f"added to each proxied request while the dashboard is on: {added:8.1f} µs")


if __name__ == "__main__":
    main()
