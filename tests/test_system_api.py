"""The admin API: every route with and without the token, through Flask's test client and real gunicorn."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis
import yaml

from paastis import create_app
from paastis.config import Settings
from paastis.registry import utcnow
from tests.fakes.scalingo_api import ScalingoPlatform
from tests.redis_support import SHARED_URL, RedisServer, delete_prefix, unique_prefix
from tests.support import close_in_process, free_port, port_open, upstream_command, wait_until, write_config

TOKEN = "s3cret-token-0123456789abcdef"
SYSTEM = {"PaastisProxyTarget": "system", "PaastisProxySystemApiToken": TOKEN}
BEARER = {"PaastisProxyTarget": "system", "Authorization": f"Bearer {TOKEN}"}
ROUTES = [
    ("GET", "/apps"),
    ("GET", "/apps/demo"),
    ("POST", "/apps/demo/start"),
    ("POST", "/apps/demo/stop"),
    ("POST", "/apps/refresh"),
    ("DELETE", "/apps"),
    ("GET", "/events"),
    ("GET", "/health"),
    ("GET", "/metrics"),
]


def local_app(tmp_path: Path, name: str, **env) -> dict:
    return {"name": name, "url": f"http://127.0.0.1:{free_port()}", "command": upstream_command(**env)}


@pytest.fixture
def instance(tmp_path):
    """A wired paastis with the API on, a demo app, an ignored app and one whose stop fails."""
    built = []

    def build(enabled: bool = True, **env: str):
        stubborn = {"name": "stubborn", "url": f"http://127.0.0.1:{free_port()}", "start": "true", "stop": "exit 4"}
        apps = [local_app(tmp_path, "demo"), local_app(tmp_path, "legacy"), stubborn]
        config = write_config(tmp_path, apps, [{"pattern": "demo", "app_max_idle_time": 5, "linked_apps": []}])
        values = {
            "PAASTIS_CONFIG_FILE": str(config),
            "PAASTIS_STATE_DIR": str(tmp_path / "state"),
            "REGISTRY_IGNORED_APPS": "legacy",
            "HOOKS_BEFORE_START": f'echo "$PAASTIS_APP_NAME $PAASTIS_REASON" >> {tmp_path / "hooks.log"}',
            **env,
        }
        if enabled:
            values |= {"ROUTING_SYSTEM_API_ENABLED": "true", "ROUTING_SYSTEM_API_TOKEN": TOKEN}
        app = create_app(Settings.from_env(values, dotenv=False))
        built.append(app.extensions["paastis"])
        return app

    yield build
    for paastis in built:
        close_in_process(paastis)


@pytest.fixture
def client(instance):
    return instance().test_client()


def call(client, method: str, path: str, headers=SYSTEM, **kwargs):
    return client.open(path, method=method, headers={"Host": "paastis.example.com", **headers}, **kwargs)


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_refuses_a_missing_or_wrong_token(client, method, path, paastis_caplog):
    for headers in (
        {"PaastisProxyTarget": "system"},
        {"PaastisProxyTarget": "system", "PaastisProxySystemApiToken": "wrong" + TOKEN},
        {"PaastisProxyTarget": "system", "Authorization": "Bearer " + TOKEN[:-1]},
        {"PaastisProxyTarget": "system", "Authorization": f"Basic {TOKEN}"},
    ):
        response = call(client, method, path, headers)
        assert response.status_code == 401
        assert response.get_json() == {"error": "wrong or missing system API token", "status": 401}
    assert "system API: refused" in paastis_caplog.text
    assert TOKEN[:-1] not in paastis_caplog.text


@pytest.mark.parametrize("headers", [SYSTEM, BEARER], ids=["original-header", "bearer"])
def test_either_header_form_is_accepted(client, headers):
    response = call(client, "GET", "/health", headers)
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"


def test_while_the_api_is_off_the_headers_change_nothing(instance):
    client = instance(enabled=False).test_client()
    response = client.get("/apps", headers={"Host": "demo.localhost", **SYSTEM})
    assert response.status_code == 200
    assert response.get_json()["path"] == "/apps"  # the demo app's echo answered, not the API
    assert ["Paastisproxytarget", "system"] in response.get_json()["headers"]


def test_without_the_target_header_a_request_goes_to_its_app(client):
    response = client.get("/apps", headers={"Host": "demo.localhost", "PaastisProxySystemApiToken": TOKEN})
    assert response.status_code == 200
    assert response.get_json()["path"] == "/apps" and "apps" not in response.get_json()  # the demo app's echo


def test_get_apps_lists_provider_apps_merged_with_the_registry(client):
    apps = {app["name"]: app for app in call(client, "GET", "/apps").get_json()["apps"]}
    assert sorted(apps) == ["demo", "legacy", "stubborn"]
    demo = apps["demo"]
    assert demo["status"] == "stopped" and demo["monitored"] is False and demo["managed"] is True
    assert demo["max_idle_time"] == 5 and demo["last_accessed_at"] is None
    assert apps["legacy"]["managed"] is False
    assert client.get("/echo", headers={"Host": "demo.localhost"}).status_code == 200
    demo = call(client, "GET", "/apps/demo").get_json()
    assert demo["status"] == "running" and demo["monitored"] is True
    assert datetime.fromisoformat(demo["last_accessed_at"]).utcoffset() == timedelta(0)
    assert demo["provider"] == "local"  # the one provider, named by its type without providers:
    assert set(demo) == {
        "name",
        "provider",
        "provider_app_name",
        "region",
        "status",
        "managed",
        "monitored",
        "started_at",
        "last_accessed_at",
        "idle_seconds",
        "max_idle_time",
        "linked_apps",
        "wake_strategy",
        "requests_in_flight",
        "websockets",
        "starting",
        "stop_queued",
        "schedule",
        "next_change",
    }


def test_get_one_app_validates_and_resolves_the_name(client):
    assert call(client, "GET", "/apps/nope").status_code == 404
    assert "unknown app 'nope'" in call(client, "GET", "/apps/nope").get_json()["error"]
    bad = call(client, "GET", "/apps/bad_name")
    assert bad.status_code == 400 and "DNS label" in bad.get_json()["error"]
    assert call(client, "GET", "/apps/DEMO").get_json()["name"] == "demo"


def test_manual_start_and_stop_go_through_the_lifecycle(client, tmp_path):
    started = call(client, "POST", "/apps/demo/start")
    assert started.status_code == 200
    assert started.get_json()["status"] == "running" and started.get_json()["monitored"] is True
    port = int(client.application.extensions["paastis"].provider.apps["demo"].url.rsplit(":", 1)[1])
    assert port_open(port)
    stopped = call(client, "POST", "/apps/demo/stop")
    assert stopped.status_code == 200
    assert stopped.get_json()["status"] == "stopped" and stopped.get_json()["monitored"] is False
    assert not port_open(port)
    events = call(client, "GET", "/events?app=demo").get_json()["events"]
    assert [(e["type"], e["reason"]) for e in events] == [("APP_STOPPED", "manual"), ("APP_STARTED", "manual")]
    assert (tmp_path / "hooks.log").read_text().splitlines() == ["demo manual"]


def test_stop_refuses_an_unmanaged_app_and_reports_a_failed_stop(client, tmp_path):
    refused = call(client, "POST", "/apps/legacy/stop")
    assert refused.status_code == 409 and "not managed" in refused.get_json()["error"]
    apps = yaml.safe_load((tmp_path / "paastis.yml").read_text())["apps"]
    port = int(next(app for app in apps if app["name"] == "stubborn")["url"].rsplit(":", 1)[1])
    with socket.create_server(("127.0.0.1", port)):  # stubborn answers, and its stop command fails
        failed = call(client, "POST", "/apps/stubborn/stop")
    assert failed.status_code == 502
    assert "could not stop 'stubborn'" in failed.get_json()["error"] and "exit" in failed.get_json()["error"]
    # Down now: stopping it again is a no-op that succeeds, without running its failing stop command.
    assert call(client, "POST", "/apps/stubborn/stop").status_code == 200


def test_a_failed_manual_start_answers_its_status(client):
    not_managed = call(client, "POST", "/apps/legacy/start")
    assert not_managed.status_code == 503 and "not managed" in not_managed.get_json()["error"]
    assert call(client, "POST", "/apps/ghost/start").status_code == 404


def test_delete_apps_forgets_the_registry_and_touches_no_app(client):
    assert call(client, "POST", "/apps/demo/start").status_code == 200
    forgotten = call(client, "DELETE", "/apps")
    assert forgotten.status_code == 200 and forgotten.get_json() == {"forgotten": 1}
    demo = call(client, "GET", "/apps/demo").get_json()
    assert demo["monitored"] is False and demo["status"] == "running"  # still up, just no longer tracked
    latest = call(client, "GET", "/events?limit=1").get_json()["events"][0]
    assert (latest["type"], latest["app"], latest["reason"]) == ("APP_UNREGISTERED", "demo", "manual")


def test_events_are_filtered_and_parameters_validated(client):
    call(client, "POST", "/apps/demo/start")
    call(client, "POST", "/apps/demo/stop")
    call(client, "POST", "/apps/demo/stop")  # already stopped: no second APP_STOPPED
    call(client, "POST", "/apps/stubborn/stop")  # never started: nothing to stop, nothing recorded
    all_events = call(client, "GET", "/events").get_json()
    assert [(e["type"], e["app"]) for e in all_events["events"]] == [("APP_STOPPED", "demo"), ("APP_STARTED", "demo")]
    first = all_events["events"][0]
    assert set(first) == {"id", "type", "app", "reason", "timestamp", "duration", "instance", "message", "provider"}
    assert datetime.fromisoformat(first["timestamp"]).tzinfo is not None
    assert [e["app"] for e in call(client, "GET", "/events?type=app_stopped").get_json()["events"]] == ["demo"]
    assert call(client, "GET", "/events?limit=1").get_json()["count"] == 1
    since = (utcnow() + timedelta(minutes=1)).isoformat()
    assert call(client, "GET", "/events", query_string={"since": since}).get_json()["count"] == 0
    assert call(client, "GET", "/events?since=2000-01-01T00:00:00Z").get_json()["count"] == 2
    for query, fragment in [
        ("type=APP_EXPLODED", "type must be one of"),
        ("since=yesterday", "since must be an ISO 8601 date"),
        ("limit=0", "limit must be a whole number from 1 to 1000"),
        ("limit=abc", "limit must be"),
        ("app=$(id)", "DNS label"),
    ]:
        response = call(client, "GET", f"/events?{query}")
        assert response.status_code == 400 and fragment in response.get_json()["error"], query


def test_health_reports_process_provider_redis_and_leadership(client):
    health = call(client, "GET", "/health").get_json()
    assert health["status"] == "ok"
    assert health["provider"] == {"name": "local", "status": "ok", "apps": 3}
    assert health["redis"] == "not_used" and health["leader"] is False
    assert health["process"]["pid"] > 0 and datetime.fromisoformat(health["process"]["started_at"]).tzinfo


def test_health_is_degraded_while_redis_is_down(instance, tmp_path):
    server = RedisServer(tmp_path).start()
    app = instance(EVENTS_STORE_TYPE="redis", REGISTRY_REDIS_URL=server.url, REGISTRY_REDIS_PREFIX=unique_prefix())
    client = app.test_client()
    assert call(client, "GET", "/health").get_json()["redis"] == "ok"
    server.stop()
    response = call(client, "GET", "/health")
    assert response.status_code == 503
    assert response.get_json()["status"] == "degraded" and response.get_json()["redis"] == "unreachable"
    events = call(client, "GET", "/events")
    assert events.status_code == 503 and "event history unavailable" in events.get_json()["error"]


def test_metrics_move_when_requests_flow(client):
    for _ in range(3):
        assert client.get("/echo", headers={"Host": "demo.localhost"}).status_code == 200
    assert client.get("/status/418", headers={"Host": "demo.localhost"}).status_code == 418
    response = call(client, "GET", "/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = response.get_data(as_text=True)
    assert 'paastis_proxied_requests_total{app="demo",provider="local",status="200"} 3.0' in text
    assert 'paastis_proxied_requests_total{app="demo",provider="local",status="418"} 1.0' in text
    assert 'paastis_wakes_total{app="demo",outcome="success",provider="local"} 1.0' in text
    assert 'paastis_wake_duration_seconds_count{app="demo",provider="local"} 1.0' in text
    assert 'paastis_hook_runs_total{hook="before_start",outcome="success"} 1.0' in text
    assert "paastis_registry_size 1.0" in text
    assert "paastis_leader 0.0" in text


def test_unknown_routes_and_methods_answer_json(client):
    missing = call(client, "GET", "/nope")
    assert missing.status_code == 404 and missing.get_json()["status"] == 404
    wrong = call(client, "PUT", "/apps")
    assert wrong.status_code == 405 and wrong.get_json()["status"] == 405
    assert call(client, "GET", "/nope", {"PaastisProxyTarget": "system"}).status_code == 401  # auth first


# -- through real gunicorn ------------------------------------------------------------


def test_the_api_through_gunicorn(tmp_path, gunicorn_factory):
    demo = local_app(tmp_path, "demo")
    write_config(tmp_path, [demo])
    port = int(demo["url"].rsplit(":", 1)[1])
    paastis = gunicorn_factory(
        {
            "ROUTING_SYSTEM_API_ENABLED": "true",
            "ROUTING_SYSTEM_API_TOKEN": TOKEN,
            "START_AND_STOP_MAX_IDLE_TIME": "0.01",
            "START_AND_STOP_CHECKING_INTERVAL": "0.3",
        }
    )
    assert paastis.get("/apps", host="paastis.localhost", headers={"PaastisProxyTarget": "system"}).status_code == 401
    assert paastis.get("/echo").status_code == 200
    wait_until(lambda: not port_open(port), 15, what="the idle app to be stopped")

    def listed_status() -> str:
        apps = paastis.get("/apps", host="paastis.localhost", headers=BEARER)
        assert apps.status_code == 200
        return apps.json()["apps"][0]["status"]

    wait_until(lambda: listed_status() == "stopped", 5, what="GET /apps to show the app stopped")
    metrics = paastis.get("/metrics", host="paastis.localhost", headers=SYSTEM).text
    assert 'paastis_idle_stops_total{app="demo",provider="local"} 1.0' in metrics
    assert "paastis_leader 1.0" in metrics
    started = paastis.request("POST", "/apps/demo/start", host="paastis.localhost", headers=SYSTEM)
    assert started.status_code == 200 and port_open(port)
    assert TOKEN not in paastis.logs()


def test_provider_api_calls_and_errors_are_counted_and_health_tells_them(tmp_path):
    platform = ScalingoPlatform()
    platform.add_app("shop")
    write_config(tmp_path)
    env = {
        "PAASTIS_CONFIG_FILE": str(tmp_path / "paastis.yml"),
        "PROVIDER_NAME": "scalingo",
        "PROVIDER_SCALINGO_API_TOKEN": platform.api_token,
        "PROVIDER_REGION": platform.region_names,
        "PROVIDER_SCALINGO_API_URL": platform.api_urls,
        "PROVIDER_SCALINGO_AUTH_URL": platform.auth.url,
        "ROUTING_SYSTEM_API_ENABLED": "true",
        "ROUTING_SYSTEM_API_TOKEN": TOKEN,
        "PROVIDER_REFRESH_INTERVAL": "0",
    }
    app = create_app(Settings.from_env(env, dotenv=False))
    client = app.test_client()
    try:
        assert call(client, "GET", "/health").get_json()["provider"] == {"name": "scalingo", "status": "ok", "apps": 1}
        listings = platform.calls("GET", "/v1/apps")
        assert call(client, "GET", "/health").status_code == 200
        assert platform.calls("GET", "/v1/apps") == listings  # the health check reads the last listing's outcome
        platform.refuse_all_bearers = True  # as when the account is suspended: every call answers 401
        platform.revoke_bearers()
        refreshed = call(client, "POST", "/apps/refresh")  # (the idle check's next listing would do the same)
        assert refreshed.status_code == 502 and "credentials refused" in refreshed.get_json()["error"]
        health = call(client, "GET", "/health")
        assert health.status_code == 503 and health.get_json()["provider"]["status"] == "unreachable"
        text = call(client, "GET", "/metrics").get_data(as_text=True)
        by_class = [line for line in text.splitlines() if line.startswith("paastis_provider_calls_total{")]
        # The refused listing, the token exchange for a new bearer, the listing again (refused too):
        assert 'paastis_provider_calls_total{class="background",provider="scalingo"} 3.0' in by_class, by_class
        assert 'paastis_provider_budget_remaining{provider="scalingo"} 57.0' in text.splitlines()  # 3 of 60 spent
        calls = [line for line in text.splitlines() if line.startswith("paastis_provider_api_calls_total{")]
        assert any('provider="scalingo"' in line and 'outcome="success"' in line for line in calls), calls
        assert any('outcome="auth_error"' in line and not line.endswith(" 0.0") for line in calls), calls
    finally:
        app.extensions["paastis"].close()
        platform.close()


def test_delete_apps_with_redis_forgets_only_the_registry(instance):
    prefix = unique_prefix("api")
    foreign = unique_prefix("foreign") + "key"  # another app's key in the same Redis
    raw = redis.Redis.from_url(SHARED_URL, decode_responses=True)
    raw.set(foreign, "kept")
    app = instance(
        REGISTRY_TYPE="redis", EVENTS_STORE_TYPE="redis", REGISTRY_REDIS_URL=SHARED_URL, REGISTRY_REDIS_PREFIX=prefix
    )
    client = app.test_client()
    try:
        assert call(client, "POST", "/apps/demo/start").status_code == 200
        assert call(client, "GET", "/health").get_json()["redis"] == "ok"
        assert call(client, "DELETE", "/apps").get_json() == {"forgotten": 1}
        assert call(client, "GET", "/apps/demo").get_json()["monitored"] is False
        assert raw.get(foreign) == "kept"
        assert raw.xlen(prefix + "events") == 2  # the history is not the registry: it only grows
        events = call(client, "GET", "/events").get_json()["events"]
        assert [e["type"] for e in events] == ["APP_UNREGISTERED", "APP_STARTED"]
    finally:
        raw.delete(foreign)
        delete_prefix(SHARED_URL, prefix)
        raw.close()


def test_each_idle_check_is_timed_and_counts_the_apps_it_saw(instance):
    app = instance()
    client = app.test_client()
    assert client.get("/echo", headers={"Host": "demo.localhost"}).status_code == 200  # one app running
    app.extensions["paastis"].lifecycle.check_idle()
    text = call(client, "GET", "/metrics").get_data(as_text=True)
    assert "paastis_idle_check_duration_seconds_count 1.0" in text
    assert 'paastis_idle_check_apps{state="listed"} 3.0' in text  # demo, legacy and stubborn
    assert 'paastis_idle_check_apps{state="running"} 1.0' in text
    assert 'paastis_idle_check_apps{state="idle"} 0.0' in text  # demo's 5 minutes have not run out


def test_an_explicit_refresh_lists_once_and_is_rate_limited(client):
    paastis = client.application.extensions["paastis"]
    listings = []
    list_apps = paastis.directory.provider.list_apps
    paastis.directory.provider.list_apps = lambda: listings.append(1) or list_apps()
    for _ in range(5):
        assert call(client, "GET", "/apps").status_code == 200
    assert len(listings) == 1  # the first read fills the list; the others read it
    answer = call(client, "GET", "/apps").get_json()
    assert answer["listed_at"] and answer["listing_error"] is None
    assert all(app["stop_queued"] is False for app in answer["apps"])

    refused = call(client, "POST", "/apps/refresh")
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 10
    assert "the apps were listed less than 10s ago: try again in" in refused.get_json()["error"]
    assert len(listings) == 1
    paastis.directory._listed_at -= 10  # as if ten seconds had passed
    refreshed = call(client, "POST", "/apps/refresh")
    assert refreshed.status_code == 200 and refreshed.get_json()["apps"] == 3
    assert len(listings) == 2
