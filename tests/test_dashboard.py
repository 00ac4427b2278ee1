"""The dashboard through Flask's test client: its host, sign-in, sessions, CSRF, pages and forms."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from paastis import create_app
from paastis.config import ConfigError, Settings
from paastis.events import Event
from tests.redis_support import SHARED_URL
from tests.support import close_in_process, local_app, wait_until, write_config

TOKEN = "dashboard-token-0123456789"
SECRET = "s" * 40
HOST = "paastis.localhost"


@pytest.fixture
def build(tmp_path):
    built = []

    def make(**env: str):
        demo, _ = local_app(tmp_path, "demo")
        # An app whose key is the dashboard host's first label: the dashboard must still win.
        shadow, _ = local_app(tmp_path, "paastis")
        config = write_config(tmp_path, [demo, shadow], [{"pattern": "demo", "app_max_idle_time": 5}])
        values = {
            "PAASTIS_CONFIG_FILE": str(config),
            "PAASTIS_STATE_DIR": str(tmp_path / "state"),
            "ROUTING_SYSTEM_API_TOKEN": TOKEN,
            "PAASTIS_DASHBOARD_HOST": HOST,
            "PAASTIS_SECRET_KEY": SECRET,
            **env,
        }
        app = create_app(Settings.from_env(values, dotenv=False))
        app.extensions["paastis"].dashboard.throttle.delay = 0  # the brake itself is tested, not its sleep
        built.append(app.extensions["paastis"])
        return app

    yield make
    for paastis in built:
        close_in_process(paastis)


@pytest.fixture
def client(build):
    return build().test_client()


def get(client, path, **kwargs):
    return client.get(path, headers={"Host": HOST, **kwargs.pop("headers", {})}, **kwargs)


def post(client, path, data=None, **kwargs):
    return client.post(path, data=data or {}, headers={"Host": HOST, **kwargs.pop("headers", {})}, **kwargs)


def csrf_of(response) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', response.get_data(as_text=True)).group(1)


def sign_in(client, token=TOKEN, next_path=None):
    form = get(client, "/dashboard/sign-in")
    data = {"csrf_token": csrf_of(form), "token": token}
    if next_path:
        data["next"] = next_path
    return post(client, "/dashboard/sign-in", data)


def cookie_header(response) -> str:
    return next(v for k, v in response.headers.items() if k == "Set-Cookie" and v.startswith("paastis_dashboard="))


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ROUTING_SYSTEM_API_TOKEN": "", "PAASTIS_SECRET_KEY": SECRET}, "ROUTING_SYSTEM_API_TOKEN"),
        ({"ROUTING_SYSTEM_API_TOKEN": "short", "PAASTIS_SECRET_KEY": SECRET}, "ROUTING_SYSTEM_API_TOKEN"),
        ({"ROUTING_SYSTEM_API_TOKEN": TOKEN}, "PAASTIS_SECRET_KEY"),
        ({"ROUTING_SYSTEM_API_TOKEN": TOKEN, "PAASTIS_SECRET_KEY": "x" * 31}, "PAASTIS_SECRET_KEY"),
        (
            {"ROUTING_SYSTEM_API_TOKEN": TOKEN, "PAASTIS_SECRET_KEY": SECRET, "PAASTIS_DASHBOARD_SESSION_HOURS": "0"},
            "PAASTIS_DASHBOARD_SESSION_HOURS",
        ),
    ],
)
def test_start_up_refuses_a_dashboard_without_its_secrets(env, named):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"PAASTIS_DASHBOARD_HOST": HOST, **env}, dotenv=False)
    assert named in str(raised.value) and "\n" not in str(raised.value)


def test_the_dashboard_is_off_unless_its_host_is_set():
    settings = Settings.from_env({"PAASTIS_SECRET_KEY": SECRET}, dotenv=False)
    assert settings.dashboard_host is None
    with pytest.raises(ConfigError, match="PAASTIS_DASHBOARD_HOST"):
        Settings.from_env({"PAASTIS_DASHBOARD_HOST": "http://x/", "ROUTING_SYSTEM_API_TOKEN": TOKEN}, dotenv=False)


def test_its_host_never_reaches_an_app_and_asks_to_sign_in(client, tmp_path):
    response = get(client, "/")
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard/"
    page = get(client, "/dashboard/")
    assert page.status_code == 302 and page.headers["Location"].startswith("/dashboard/sign-in?next=/dashboard/")
    assert get(client, "/echo").status_code == 404  # not the "paastis" app's echo
    assert get(client, "/dashboard/static/dashboard.css").status_code == 200  # the sign-in page needs it
    with_port = client.get("/dashboard/sign-in", headers={"Host": f"{HOST.upper()}:3000"})
    assert with_port.status_code == 200 and "Admin token" in with_port.get_data(as_text=True)
    assert not (tmp_path / "paastis-starts.log").exists()  # the shadowing app was never woken


def test_apps_still_get_their_requests_and_their_own_cookies(client):
    sign_in(client)
    client.set_cookie("paastis_dashboard", "the-app-s-own", domain="demo.localhost")
    client.set_cookie("session", "x", domain="demo.localhost")
    response = client.get("/echo", headers={"Host": "demo.localhost"})
    assert response.status_code == 200
    sent = dict((name, value) for name, value in response.get_json()["headers"])
    assert sent["Cookie"] in (
        "paastis_dashboard=the-app-s-own; session=x",
        "session=x; paastis_dashboard=the-app-s-own",
    )
    assert "Set-Cookie" not in response.headers


def test_admin_api_routes_are_not_reachable_through_the_dashboard_host(build):
    client = build(ROUTING_SYSTEM_API_ENABLED="true").test_client()
    sign_in(client)
    assert get(client, "/apps").status_code == 404  # the API's route, without the API's token
    assert get(client, "/health").status_code == 404
    system = get(client, "/apps", headers={"PaastisProxyTarget": "system", "PaastisProxySystemApiToken": TOKEN})
    assert system.status_code == 200 and "apps" in system.get_json()  # the API itself answers as ever
    assert (
        get(
            client, "/dashboard/", headers={"PaastisProxyTarget": "system", "PaastisProxySystemApiToken": TOKEN}
        ).status_code
        == 404
    )


def test_sign_in_with_the_token_sets_a_strict_http_only_cookie(client):
    wrong = sign_in(client, "wrong-token-0123456789")
    assert wrong.status_code == 401 and "not the admin token" in wrong.get_data(as_text=True)
    assert get(client, "/dashboard/").status_code == 302
    right = sign_in(client)
    assert right.status_code == 303 and right.headers["Location"] == "/dashboard/"
    cookie = cookie_header(right)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # plain HTTP
    assert "Expires=" in cookie and "Domain" not in cookie  # host-only: apps on sibling hosts never see it
    page = get(client, "/dashboard/")
    assert page.status_code == 200 and 'id="app-demo"' in page.get_data(as_text=True)
    assert page.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"


def test_the_cookie_is_secure_when_the_request_came_over_https(build):
    client = build().test_client()
    form = client.get("/dashboard/sign-in", headers={"Host": HOST}, base_url=f"https://{HOST}")
    signed = client.post(
        "/dashboard/sign-in",
        data={"csrf_token": csrf_of(form), "token": TOKEN},
        headers={"Host": HOST},
        base_url=f"https://{HOST}",
    )
    assert "Secure" in cookie_header(signed)


def test_a_session_ends_after_its_hours(build):
    app = build(PAASTIS_DASHBOARD_SESSION_HOURS="2")
    client = app.test_client()
    cookie = cookie_header(sign_in(client))
    expires = re.search(r"Expires=([^;]+)", cookie).group(1)
    assert time.strptime(expires, "%a, %d %b %Y %H:%M:%S GMT").tm_hour == time.gmtime(time.time() + 7200).tm_hour
    serializer = app.session_interface.get_signing_serializer(app)
    sid = serializer.loads(cookie.split(";")[0].split("=", 1)[1])["sid"]  # the live session's registry id
    old = serializer.dumps({"signed_in_at": time.time() - 2 * 3600 - 5, "sid": sid, "csrf": "t", "_permanent": True})
    client.set_cookie("paastis_dashboard", old, domain=HOST)
    assert get(client, "/dashboard/").status_code == 302  # signed by us, but too old
    fresh = serializer.dumps({"signed_in_at": time.time() - 60, "sid": sid, "csrf": "t", "_permanent": True})
    client.set_cookie("paastis_dashboard", fresh, domain=HOST)
    assert get(client, "/dashboard/").status_code == 200


def test_a_forged_cookie_is_refused(client):
    client.set_cookie("paastis_dashboard", '{"signed_in_at": 9999999999}', domain=HOST)
    assert get(client, "/dashboard/").status_code == 302


def test_posts_without_the_csrf_token_are_forbidden(client, tmp_path):
    sign_in(client)
    assert post(client, "/dashboard/apps/demo/wake").status_code == 403
    assert post(client, "/dashboard/apps/demo/wake", {"csrf_token": "forged"}).status_code == 403
    assert post(client, "/dashboard/sign-out").status_code == 403
    token = csrf_of(get(client, "/dashboard/"))
    foreign = post(client, "/dashboard/apps/demo/wake", {"csrf_token": token}, headers={"Origin": "https://evil.test"})
    assert foreign.status_code == 403
    assert not (tmp_path / "demo-starts.log").exists()  # nothing was woken
    assert get(client, "/dashboard/").status_code == 200  # still signed in
    assert post(client, "/dashboard/sign-in", {"token": TOKEN}).status_code == 403  # sign-in forms too


def test_failed_sign_ins_lock_the_address_out(client):
    for _ in range(5):
        assert sign_in(client, "wrong-token-0123456789").status_code == 401
    locked = sign_in(client)  # even the right token: no guess is checked while locked out
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert "Too many failed sign-ins" in locked.get_data(as_text=True)
    assert get(client, "/dashboard/").status_code == 302


def test_the_next_page_is_only_ever_a_dashboard_page(client):
    assert sign_in(client, next_path="/dashboard/events?type=APP_STARTED").headers["Location"] == (
        "/dashboard/events?type=APP_STARTED"
    )
    client.delete_cookie("paastis_dashboard", domain=HOST)
    for target in ("//evil.test/x", "https://evil.test/", "/\\evil.test"):
        assert sign_in(client, next_path=target).headers["Location"] == "/dashboard/"
        client.delete_cookie("paastis_dashboard", domain=HOST)


def test_sign_out_ends_the_session(client):
    cookie = cookie_header(sign_in(client)).split(";")[0].split("=", 1)[1]
    token = csrf_of(get(client, "/dashboard/"))
    out = post(client, "/dashboard/sign-out", {"csrf_token": token})
    assert out.status_code == 303 and out.headers["Location"] == "/dashboard/sign-in"
    assert get(client, "/dashboard/").status_code == 302
    client.set_cookie("paastis_dashboard", cookie, domain=HOST)  # a copy taken before sign-out
    assert get(client, "/dashboard/").status_code == 302


def test_a_signed_cookie_without_a_live_session_is_refused(build):
    app = build()
    serializer = app.session_interface.get_signing_serializer(app)
    client = app.test_client()
    made_up = serializer.dumps({"signed_in_at": time.time(), "sid": "made-up", "csrf": "t", "_permanent": True})
    client.set_cookie("paastis_dashboard", made_up, domain=HOST)  # what anyone holding the secret key could sign
    assert get(client, "/dashboard/").status_code == 302


def test_sessions_in_redis_end_when_the_token_changes_or_all_are_revoked(build, prefix):
    shared = {"REGISTRY_TYPE": "redis", "REGISTRY_REDIS_URL": SHARED_URL, "REGISTRY_REDIS_PREFIX": prefix}
    first = build(**shared, ROUTING_SYSTEM_API_ENABLED="true")
    client = first.test_client()
    cookie = cookie_header(sign_in(client)).split(";")[0].split("=", 1)[1]
    same = build(**shared).test_client()  # another instance, same secrets: the session is shared
    same.set_cookie("paastis_dashboard", cookie, domain=HOST)
    assert get(same, "/dashboard/").status_code == 200
    rotated = build(**shared, ROUTING_SYSTEM_API_TOKEN="a-new-admin-token-0123456789").test_client()
    rotated.set_cookie("paastis_dashboard", cookie, domain=HOST)
    assert get(rotated, "/dashboard/").status_code == 302  # a new admin token ends every session
    revoked = client.delete("/sessions", headers={"PaastisProxyTarget": "system", "Authorization": f"Bearer {TOKEN}"})
    assert revoked.status_code == 200 and revoked.get_json() == {"revoked": 1}
    assert get(client, "/dashboard/").status_code == 302 and get(same, "/dashboard/").status_code == 302


def test_wake_and_stop_work_as_plain_forms(client, tmp_path):
    sign_in(client)
    token = csrf_of(get(client, "/dashboard/"))
    woke = post(client, "/dashboard/apps/demo/wake", {"csrf_token": token})
    assert woke.status_code == 303
    page = get(client, "/dashboard/").get_data(as_text=True)
    assert "demo is awake (after" in page
    demo_row = re.search(r'<tr id="app-demo".*?</tr>', page, re.S).group(0)
    assert (
        'data-status="running"' in demo_row
        and 'class="countdown"' in demo_row
        and re.search(r"\d min \d\d s<", demo_row)
    )
    confirm = post(client, "/dashboard/apps/demo/stop", {"csrf_token": token})
    assert confirm.status_code == 200 and "Stop demo?" in confirm.get_data(as_text=True)
    assert get(client, "/dashboard/apps/demo/row").get_data(as_text=True).count('data-status="running"') == 1
    stopped = post(client, "/dashboard/apps/demo/stop", {"csrf_token": token, "confirmed": "yes"})
    assert stopped.status_code == 303
    assert "demo is stopped." in get(client, "/dashboard/").get_data(as_text=True)
    assert 'data-status="stopped"' in get(client, "/dashboard/apps/demo/row").get_data(as_text=True)
    assert get(client, "/dashboard/apps/ghost/row").status_code == 404


def test_the_script_gets_the_fresh_row(client):
    sign_in(client)
    token = csrf_of(get(client, "/dashboard/"))
    headers = {"X-Requested-With": "paastis-dashboard", "X-CSRF-Token": token}
    row = post(client, "/dashboard/apps/demo/wake", headers=headers)
    assert row.status_code == 200
    html = row.get_data(as_text=True).strip()
    assert html.startswith('<tr id="app-demo"') and 'data-status="running"' in html
    last_wake = re.search(r'<td data-label="Last wake">(.*?)</td>', html, re.S).group(1)
    assert re.match(r"[\d.]+ seconds <span", last_wake), last_wake  # the wake that just happened
    rows = get(client, "/dashboard/apps/rows", headers=headers).get_data(as_text=True)
    assert rows.count("<tr ") == 2
    client.delete_cookie("paastis_dashboard", domain=HOST)
    assert get(client, "/dashboard/apps/rows", headers=headers).status_code == 401  # the script reloads then


def test_events_page_filters_and_pages(client):
    sign_in(client)
    paastis = client.application.extensions["paastis"]

    for i in range(60):
        paastis.events.add(
            Event(type="APP_STARTED" if i % 2 else "APP_STOPPED", app="demo", reason="idle", duration=1.5)
        )
    paastis.events.add(Event(type="APP_STARTED", app="other", reason="request", message="newest"))
    first = get(client, "/dashboard/events").get_data(as_text=True)
    assert first.count('<tr class="event') == 50 and "newest" in first and "Older →" in first
    assert first.index("other") < first.index("demo")  # newest first
    second = get(client, "/dashboard/events?page=2").get_data(as_text=True)
    assert second.count('<tr class="event') == 11 and "Older →" not in second and "← Newer" in second
    only = get(client, "/dashboard/events?app=demo&type=APP_STARTED").get_data(as_text=True)
    assert only.count('<tr class="event') == 30 and "APP_STOPPED</span>" not in only and "other" not in only
    bad = get(client, "/dashboard/events?type=nope&app=a_b").get_data(as_text=True)
    assert "Unknown event type" in bad and "must be an app name" in bad


def test_savings_page_shows_the_savings_report(build):
    app = build()
    paastis = app.extensions["paastis"]
    now = datetime.now(UTC)
    paastis.events.add(Event(type="APP_STARTED", app="demo", reason="request", timestamp=now - timedelta(hours=3)))
    paastis.events.add(Event(type="APP_STOPPED", app="demo", reason="idle", timestamp=now - timedelta(hours=2)))
    client = app.test_client()
    sign_in(client)
    assert "Savings</a>" in get(client, "/dashboard/").get_data(as_text=True)
    page = get(client, "/dashboard/savings")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert '<th scope="row" data-label="App">demo</th>' in text
    assert "<strong>2.0 h</strong> asleep" in text and "1.0 h awake" in text
    assert "unknown" in text  # the local provider has no price without cost_per_month


def test_a_running_app_counts_down_from_its_last_request(client):
    sign_in(client)
    with client.get("/echo", headers={"Host": "demo.localhost"}) as response:  # closed: the request is over
        assert response.status_code == 200
    wait_until(lambda: 'data-status="running"' in get(client, "/dashboard/apps/demo/row").get_data(as_text=True))
    row = get(client, "/dashboard/apps/demo/row").get_data(as_text=True)
    deadline = int(re.search(r'data-deadline="(\d+)"', row).group(1)) / 1000
    assert 4 * 60 < deadline - time.time() <= 5 * 60  # max idle 5 min, used just now


def test_an_app_s_schedule_and_next_change_are_shown(tmp_path):
    hour = datetime.now(UTC).hour
    window = f"{hour:02d}:00-{(hour + 2) % 24:02d}:00"  # open now, closes within two hours
    demo, _ = local_app(tmp_path, "demo")
    config = write_config(tmp_path, [demo], [{"pattern": "demo", "awake_during": window, "timezone": "UTC"}])
    env = {"PAASTIS_CONFIG_FILE": str(config), "PAASTIS_STATE_DIR": str(tmp_path / "state")}
    app = create_app(
        Settings.from_env(
            {**env, "ROUTING_SYSTEM_API_TOKEN": TOKEN, "PAASTIS_DASHBOARD_HOST": HOST, "PAASTIS_SECRET_KEY": SECRET},
            dotenv=False,
        )
    )
    try:
        client = app.test_client()
        sign_in(client)
        with client.get("/echo", headers={"Host": "demo.localhost"}) as response:
            assert response.status_code == 200
        row = get(client, "/dashboard/apps/demo/row").get_data(as_text=True)
        schedule = re.search(r'<td data-label="Schedule">(.*?)</td>', row, re.S).group(1)
        assert f"awake {window}" in schedule and "UTC, now in an awake window" in schedule
        assert re.search(r"next change <time datetime=\"[^\"]+\">in (\d+ min \d\d s|[12] h \d\d min)", schedule)
        stops = re.search(r'<td data-label="Stops in">(.*?)</td>', row, re.S).group(1)
        assert stops == "not inside its awake window"  # the idle timer does not apply there
    finally:
        close_in_process(app.extensions["paastis"])


def test_the_apps_page_reads_the_list_and_its_refresh_button_lists_once(client):
    paastis = client.application.extensions["paastis"]
    listings = []
    list_apps = paastis.directory.provider.list_apps
    paastis.directory.provider.list_apps = lambda: listings.append(1) or list_apps()
    sign_in(client)
    page = get(client, "/dashboard/")
    assert "Refresh from the provider" in page.get_data(as_text=True)
    for _ in range(10):  # the page's script polls the rows every 5 s
        assert get(client, "/dashboard/apps/rows", headers={"X-Requested-With": "paastis-dashboard"}).status_code == 200
    assert len(listings) == 1  # the first look filled the list; polling reads it

    refused = post(client, "/dashboard/apps/refresh", {"csrf_token": csrf_of(page)})
    assert refused.status_code == 303
    assert "Could not refresh: the apps were listed less than 10s ago" in get(client, "/dashboard/").get_data(
        as_text=True
    )
    paastis.directory._listed_at -= 10  # as if ten seconds had passed
    assert post(client, "/dashboard/apps/refresh", {"csrf_token": csrf_of(page)}).status_code == 303
    assert "Listed 2 apps from the provider." in get(client, "/dashboard/").get_data(as_text=True)
    assert len(listings) == 2
