"""The waiting page: what it says while an app wakes, and the status answer its script polls."""

from __future__ import annotations

import pytest

from paastis import create_app
from paastis.config import Settings
from paastis.events import Event
from tests.support import close_in_process, local_app, starts, wait_until, write_config

BROWSER = {"Host": "demo.localhost", "Accept": "text/html,application/xhtml+xml"}
STATUS = {"Host": "demo.localhost", "PaastisProxyWakeStatus": "1"}


@pytest.fixture
def paastis_app(tmp_path):
    demo, _ = local_app(tmp_path, "demo", BOOT_DELAY=1)
    config = write_config(tmp_path, [demo])
    app = create_app(
        Settings.from_env({"PAASTIS_CONFIG_FILE": str(config), "PAASTIS_STATE_DIR": str(tmp_path / "s")}, dotenv=False)
    )
    yield app
    close_in_process(app.extensions["paastis"])


def status(client) -> dict:
    with client.get("/", headers=STATUS) as response:
        assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
        return response.get_json()


def test_the_page_says_how_long_waking_takes_and_has_taken(paastis_app, tmp_path):
    client = paastis_app.test_client()
    first = client.get("/", headers=BROWSER)
    page = first.get_data(as_text=True)
    assert first.status_code == 503 and "<title>demo is starting</title>" in page
    assert "paastis has not seen it wake before" in page
    assert 'id="elapsed" data-elapsed="0.' in page  # it began just now
    assert '<noscript><meta http-equiv="refresh" content="2"></noscript>' in page  # the no-JS fallback
    waking = status(client)
    assert waking["state"] == "waking" and waking["app"] == "demo" and waking["elapsed_seconds"] >= 0
    ready = wait_until(lambda: status(client)["state"] == "ready" and status(client), 20, what="demo ready")
    assert ready["typical_seconds"] >= 1  # its own wake (BOOT_DELAY=1) now sets the expectation
    assert starts(tmp_path) == 1
    with client.get("/echo", headers=BROWSER) as response:
        assert response.status_code == 200 and response.get_json()["path"] == "/echo"


def test_the_page_quotes_the_median_of_past_wakes(paastis_app):
    events = paastis_app.extensions["paastis"].events
    for seconds in (3.0, 40.0, 4.0, 5.0, 6.0):
        events.add(Event(type="APP_STARTED", app="demo", reason="request", duration=seconds))
    page = paastis_app.test_client().get("/", headers=BROWSER).get_data(as_text=True)
    assert "It usually takes about 5.0 seconds to wake." in page
    assert '<progress id="progress" max="5.0"' in page


def test_the_status_answer_is_paastis_s_own_and_never_reaches_the_app(paastis_app, tmp_path):
    client = paastis_app.test_client()
    with client.get("/echo", headers={"Host": "demo.localhost"}) as response:  # wakes it (blocking)
        assert response.status_code == 200
    answer = status(client)
    assert answer["typical_seconds"] >= 1  # its own wake (BOOT_DELAY=1), however slow the machine
    assert answer == {
        "app": "demo",
        "state": "ready",
        "elapsed_seconds": None,
        "typical_seconds": answer["typical_seconds"],
        "message": None,
    }
    assert starts(tmp_path) == 1


def test_a_failed_wake_is_shown_with_its_reason(tmp_path):
    broken, _ = local_app(tmp_path, "demo", EXIT_CODE=3)
    config = write_config(tmp_path, [broken])
    app = create_app(
        Settings.from_env({"PAASTIS_CONFIG_FILE": str(config), "PAASTIS_STATE_DIR": str(tmp_path / "s")}, dotenv=False)
    )
    try:
        client = app.test_client()
        assert client.get("/", headers=BROWSER).status_code == 503
        failed = wait_until(lambda: status(client)["state"] == "failed" and status(client), 20, what="failure")
        assert "demo" in failed["message"] and "start" in failed["message"]  # the lifecycle's reason
        page = client.get("/", headers=BROWSER)
        assert page.status_code == 502 and "demo could not start" in page.get_data(as_text=True)
    finally:
        app.extensions["paastis"].close()
