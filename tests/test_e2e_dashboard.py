"""The dashboard and the waiting page in a real Chromium (the system's, driven by Playwright) against real gunicorn.

Chromium resolves every ``*.localhost`` name to this machine, so the dashboard
(``paastis.localhost``) and the apps (``demo.localhost``) are reached by name as in production.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests

from tests.support import ROOT, local_app, port_open, starts, wait_until, write_config

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-dev.txt")

CHROMIUM = os.environ.get("PAASTIS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-token-0123456789abcdef"
SECRET = "browser-secret-" + "0123456789" * 4
SCREENSHOT = ROOT / "docs" / "dashboard.png"
WAIT_MS = 30_000
SYSTEM = {"PaastisProxyTarget": "system", "PaastisProxySystemApiToken": TOKEN}

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def served(tmp_path, gunicorn_factory):
    """paastis with its dashboard on ``paastis.localhost``, a sleeping ``demo`` and an unmanaged ``legacy``."""
    demo, port = local_app(tmp_path, "demo", BOOT_DELAY=1.5)
    legacy, _ = local_app(tmp_path, "legacy")
    write_config(tmp_path, [demo, legacy], [{"pattern": "demo", "app_max_idle_time": 10}])
    server = gunicorn_factory(
        {
            "PAASTIS_DASHBOARD_HOST": "paastis.localhost",
            "ROUTING_SYSTEM_API_TOKEN": TOKEN,
            "PAASTIS_SECRET_KEY": SECRET,
            "REGISTRY_IGNORED_APPS": "legacy",
            "ROUTING_SYSTEM_API_ENABLED": "true",
        }
    )
    server.dashboard = f"http://paastis.localhost:{server.port}"
    server.demo_port = port
    return server


@pytest.fixture
def page(browser):
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    yield page
    context.close()


def sign_in(page, served, token: str = TOKEN) -> None:
    page.goto(served.dashboard + "/")
    page.fill("#token", token)
    page.click("button:has-text('Sign in')")


def row(page, app: str):
    return page.locator(f"tr#app-{app}")


def test_sign_in_refuses_a_wrong_token_and_accepts_the_right_one(page, served):
    page.goto(served.dashboard + "/")
    assert page.url.endswith("/dashboard/sign-in?next=/dashboard/")
    sign_in(page, served, "not-the-token-0123456789")
    assert page.locator(".flash.error").inner_text() == "That is not the admin token (ROUTING_SYSTEM_API_TOKEN)."
    assert "/dashboard/sign-in" in page.url
    sign_in(page, served)
    page.wait_for_url(served.dashboard + "/dashboard/")
    assert page.locator("h1").inner_text() == "Apps"
    assert row(page, "demo").get_attribute("data-status") == "stopped"
    assert row(page, "legacy").locator("th").inner_text() == "legacy unmanaged"
    cookie = next(c for c in page.context.cookies() if c["name"] == "paastis_dashboard")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # plain HTTP here


def test_wake_and_stop_buttons_update_the_row_without_reloading(page, served, tmp_path):
    sign_in(page, served)
    page.wait_for_url(served.dashboard + "/dashboard/")
    page.evaluate("window.notReloaded = true")
    demo = row(page, "demo")
    demo.locator("button:has-text('Wake')").click()
    assert re.match(r"waking…", demo.locator(".progress").inner_text())  # progress while it wakes
    page.wait_for_selector("tr#app-demo[data-status='running']")
    assert port_open(served.demo_port) and starts(tmp_path) == 1
    demo = row(page, "demo")
    assert re.fullmatch(r"\d+ min \d\d s", demo.locator(".countdown").inner_text())
    assert re.match(r"[\d.]+ seconds \(\d+ s ago\)", demo.locator("td[data-label='Last wake']").inner_text())

    dialogs = []
    page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    demo.locator("button:has-text('Stop')").click()
    page.wait_for_selector("tr#app-demo[data-status='stopped']")
    assert dialogs == ["Stop demo? The next request will wake it again."]
    wait_until(lambda: not port_open(served.demo_port), what="demo to be down")
    assert page.evaluate("window.notReloaded") is True  # the same page all along

    page.click("nav >> text=Events")
    types = page.locator("table.events tbody tr td[data-label='Type']").all_inner_texts()
    assert types[:2] == ["APP_STOPPED", "APP_STARTED"]  # newest first
    page.select_option("select[name=type]", "APP_STARTED")
    page.click("button:has-text('Filter')")
    assert page.locator("table.events tbody tr td[data-label='Type']").all_inner_texts() == ["APP_STARTED"]
    assert page.locator("table.events tbody tr td[data-label='Reason']").all_inner_texts() == ["manual"]

    page.click("nav >> text=Savings")
    assert page.locator("figure.chart svg rect.bar").count() == 14  # one bar per day, drawn by the server
    assert page.locator("table.savings tbody th").all_inner_texts() == ["demo"]


def test_declining_the_confirmation_stops_nothing(page, served):
    requests.get(served.url + "/echo", headers={"Host": "demo.localhost"}, timeout=30).raise_for_status()
    sign_in(page, served)
    page.wait_for_selector("tr#app-demo[data-status='running']")
    page.once("dialog", lambda dialog: dialog.dismiss())
    row(page, "demo").locator("button:has-text('Stop')").click()
    assert row(page, "demo").get_attribute("data-status") == "running"
    assert port_open(served.demo_port)


def test_a_forged_post_without_the_csrf_token_is_refused(page, served, tmp_path):
    sign_in(page, served)
    page.wait_for_url(served.dashboard + "/dashboard/")
    session = next(c["value"] for c in page.context.cookies() if c["name"] == "paastis_dashboard")
    forged = page.context.request.post(  # Playwright's own client does not resolve *.localhost: Host by hand
        served.url + "/dashboard/apps/demo/wake",
        form={"x": "1"},
        headers={"Host": "paastis.localhost", "Cookie": f"paastis_dashboard={session}"},
    )
    assert forged.status == 403  # a signed-in session, but no token
    from_script = page.evaluate(
        "fetch('/dashboard/apps/demo/wake', {method: 'POST', body: new URLSearchParams({csrf_token: 'guess'})})"
        ".then(r => r.status)"
    )
    assert from_script == 403
    assert starts(tmp_path) == 0 and not port_open(served.demo_port)


def test_sign_out_ends_the_session(page, served):
    sign_in(page, served)
    page.wait_for_url(served.dashboard + "/dashboard/")
    page.click("button:has-text('Sign out')")
    page.wait_for_url(served.dashboard + "/dashboard/sign-in")
    assert page.locator(".flash").inner_text() == "You are signed out."
    page.goto(served.dashboard + "/dashboard/events")
    assert "/dashboard/sign-in" in page.url


def test_the_waiting_page_moves_on_to_the_app_by_itself(page, served, tmp_path):
    page.goto(f"http://demo.localhost:{served.port}/echo?from=browser")
    assert page.title() == "demo is starting"
    assert "paastis has not seen it wake before" in page.inner_text("#typical")
    page.wait_for_function('document.body.innerText.includes(\'"path": "/echo?from=browser"\')')
    assert starts(tmp_path) == 1

    stopped = requests.post(served.url + "/apps/demo/stop", headers=SYSTEM, timeout=30)  # back to sleep
    assert stopped.status_code == 200, stopped.text
    page.goto(f"http://demo.localhost:{served.port}/")
    assert page.title() == "demo is starting"
    assert re.match(r"It usually takes about \d+(\.\d)? seconds to wake\.", page.inner_text("#typical"))
    page.wait_for_function("document.title !== 'demo is starting'")
    assert starts(tmp_path) == 2


def test_without_javascript_the_pages_still_work(browser, served, tmp_path):
    context = browser.new_context(java_script_enabled=False)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    try:
        sign_in(page, served)
        page.wait_for_url(served.dashboard + "/dashboard/")
        row(page, "demo").locator("button:has-text('Wake')").click()  # a plain form post, answered after the wake
        page.wait_for_url(served.dashboard + "/dashboard/")
        assert page.locator(".flash").inner_text().startswith("demo is awake (after ")
        assert row(page, "demo").get_attribute("data-status") == "running"
        row(page, "demo").locator("button:has-text('Stop')").click()
        assert page.locator("h1").inner_text() == "Stop demo?"  # the confirmation is a page
        page.click("button:has-text('Stop demo')")
        page.wait_for_url(served.dashboard + "/dashboard/")
        assert row(page, "demo").get_attribute("data-status") == "stopped"
        assert starts(tmp_path) == 1
    finally:
        context.close()


def test_readable_on_a_phone_and_a_screenshot_for_the_readme(browser, served, tmp_path):
    requests.get(served.url + "/", headers={"Host": "demo.localhost"}, timeout=30).raise_for_status()
    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    page = phone.new_page()
    try:
        sign_in(page, served)
        page.wait_for_selector("tr#app-demo[data-status='running']")
        page.wait_for_load_state("load")  # the stylesheet is applied (a row can be in the DOM before it is)
        label = (
            "getComputedStyle(document.querySelector('tr#app-demo td[data-label=Status]'), '::before').content"
        )
        page.wait_for_function(f"{label} === '\"Status\"'")  # each row is a card of labelled lines
        overflow = page.evaluate("Math.max(0, document.documentElement.scrollWidth - window.innerWidth)")
        assert overflow == 0, f"the page is {overflow}px wider than the phone's screen (sideways scrolling)"
    finally:
        phone.close()
    desktop = browser.new_context(viewport={"width": 1280, "height": 560})
    page = desktop.new_page()
    try:
        sign_in(page, served)
        page.wait_for_selector("tr#app-demo[data-status='running']")
        target = SCREENSHOT if os.environ.get("PAASTIS_UPDATE_SCREENSHOTS") else tmp_path / "dashboard.png"
        page.screenshot(path=str(target))
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        desktop.close()


def test_the_session_cookie_is_secure_behind_a_trusted_https_front(served):
    """gunicorn trusts X-Forwarded-Proto from FORWARDED_ALLOW_IPS (127.0.0.1 by default): the test is that front."""
    plain = requests.get(served.url + "/dashboard/sign-in", headers={"Host": "paastis.localhost"}, timeout=10)
    https = requests.get(
        served.url + "/dashboard/sign-in",
        headers={"Host": "paastis.localhost", "X-Forwarded-Proto": "https"},
        timeout=10,
    )
    assert "Secure" not in plain.headers["Set-Cookie"]
    assert "Secure" in https.headers["Set-Cookie"] and "SameSite=Strict" in https.headers["Set-Cookie"]
