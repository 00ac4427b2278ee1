"""End to end, through real gunicorn, with compressed time: schedules, passive visitors, dry run, savings.

Windows are a few seconds long: they are computed from the current time in a chosen time
zone (``HH:MM:SS`` ranges), and instances check every 0.3 s.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis

from tests.fakes.platform import closing_factory
from tests.fakes.scalingo_api import ScalingoPlatform
from tests.redis_support import SHARED_URL
from tests.support import local_app, port_open, starts, wait_until, write_config

TOKEN = "s3cret-token-0123456789abcdef"
SYSTEM = {"PaastisProxyTarget": "system", "PaastisProxySystemApiToken": TOKEN}
API = {"ROUTING_SYSTEM_API_ENABLED": "true", "ROUTING_SYSTEM_API_TOKEN": TOKEN}
FAST = {"START_AND_STOP_CHECKING_INTERVAL": "0.3"}
LEADING = "now leading the idle checks"
MONITOR = {"User-Agent": "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)"}
HUMAN = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"}


def clock(zone: str, seconds: float) -> str:
    """The wall-clock time ``seconds`` from now in ``zone``, as HH:MM:SS."""
    return (datetime.now(ZoneInfo(zone)) + timedelta(seconds=seconds)).strftime("%H:%M:%S")


def api(instance, method: str, path: str, **kwargs):
    return instance.request(method, path, headers=SYSTEM, **kwargs)


def events(instance, **params) -> list[dict]:
    response = api(instance, "GET", "/events", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return response.json()["events"]


def schedule_events(instance) -> list[tuple[str, str]]:
    return [(e["type"], e["reason"]) for e in events(instance, app="demo")]


def count(instances, text: str) -> int:
    return sum(instance.logs().count(text) for instance in instances)


def leaders(instances) -> list:
    return [instance for instance in instances if LEADING in instance.logs()]


def test_window_openings_start_and_stop_an_app_once_across_three_instances_and_a_leader_change(
    tmp_path, gunicorn_factory, prefix
):
    zone = "Asia/Kathmandu"  # UTC+05:45: any mistake of zone shows
    app, port = local_app(tmp_path)
    opens, closes = 15, 30  # seconds from now: the awake window, then the asleep one
    rule = {
        "pattern": "demo",
        "timezone": zone,
        "app_max_idle_time": 60,
        "awake_during": f"{clock(zone, opens)}-{clock(zone, closes)}",
        "asleep_during": [f"{clock(zone, closes)}-{clock(zone, closes + 600)}"],
    }
    write_config(tmp_path, [app], [rule])
    env = {
        "REGISTRY_TYPE": "redis",
        "REGISTRY_REDIS_URL": SHARED_URL,
        "REGISTRY_REDIS_PREFIX": prefix,
        "EVENTS_STORE_TYPE": "redis",
        "SUPERVISOR_LOCK_TTL": "2",
        **FAST,
        **API,
    }
    instances = [gunicorn_factory(env, name=name) for name in ("one", "two", "three")]
    shown = api(instances[0], "GET", "/apps/demo").json()
    assert shown["schedule"]["timezone"] == zone and shown["schedule"]["awake_during"] == [rule["awake_during"]]
    assert shown["next_change"] is not None

    wait_until(lambda: port_open(port), opens + 30, what="the awake window to start the app")
    wait_until(lambda: count(instances, "starting demo (schedule)") == 1, 10, what="the start to be logged")
    raw = redis.Redis.from_url(SHARED_URL, decode_responses=True)
    wait_until(lambda: raw.hget(f"{prefix}marks:schedule", "awake:demo"), 10, what="the opening to be noted")
    raw.close()
    leader = wait_until(lambda: leaders(instances), 10, what="a leader")[0]
    leader.stop(signal.SIGKILL)  # no clean release: the next leader must not repeat the opening
    survivors = [instance for instance in instances if instance is not leader]
    wait_until(lambda: leaders(survivors), 15, what="a new leader")
    assert api(survivors[0], "GET", "/apps/demo").json()["schedule"]["state"] in ("awake", "asleep")

    stopped = ("APP_STOPPED", "schedule")
    wait_until(lambda: stopped in schedule_events(survivors[0]), closes + 30, what="the asleep window to stop the app")
    assert not port_open(port)
    time.sleep(1.5)  # five more checks by the new leader: nothing may happen twice
    assert starts(tmp_path) == 1
    assert count(instances, "starting demo (schedule)") == 1
    assert count(instances, "stopping demo (schedule)") == 1
    recorded = schedule_events(survivors[0])
    assert recorded.count(("APP_STARTED", "schedule")) == 1 and recorded.count(stopped) == 1
    assert api(survivors[0], "GET", "/apps/demo").json()["schedule"]["state"] == "asleep"


def test_a_monitor_neither_wakes_nor_keeps_an_app_awake(tmp_path, gunicorn_factory):
    demo, port = local_app(tmp_path)
    green, green_port = local_app(tmp_path, "green")
    rules = [
        {"pattern": "demo", "app_max_idle_time": 0.03},  # 1.8 s
        {"pattern": "green", "passive_paths": ["/health", "/status/.*"], "passive_answer": 200},
    ]
    write_config(tmp_path, [demo, green], rules)
    paastis = gunicorn_factory({**FAST, **API})

    asleep = paastis.get("/echo", headers=MONITOR)
    assert asleep.status_code == 503 and int(asleep.headers["Retry-After"]) > 0
    assert "passive requests do not wake it" in asleep.json()["error"]
    green_says = paastis.get("/health", host="green.localhost")
    assert green_says.status_code == 200 and green_says.json() == {"status": "asleep", "app": "green"}
    assert paastis.get("/health?verbose=1", host="green.localhost").json()["status"] == "asleep"  # path, not query
    assert starts(tmp_path) == 0 and starts(tmp_path, "green") == 0
    assert not port_open(port) and not port_open(green_port)

    assert paastis.get("/echo", headers=HUMAN).status_code == 200  # a person wakes it
    codes: list[int] = []
    stop = threading.Event()

    def monitor() -> None:
        while not stop.is_set():
            codes.append(paastis.get("/echo", headers=MONITOR, timeout=10).status_code)
            time.sleep(0.2)

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    try:
        wait_until(lambda: not port_open(port), 20, what="the app to sleep despite the monitor")
        seen = len(codes)
        wait_until(lambda: len(codes) > seen + 3, 10, what="more monitor requests")
    finally:
        stop.set()
        thread.join(timeout=15)
    assert 200 in codes and codes[-1] == 503  # proxied while awake, answered by paastis once asleep
    assert starts(tmp_path) == 1
    metrics = api(paastis, "GET", "/metrics").text
    assert 'paastis_passive_requests_total{app="demo",outcome="proxied",provider="local"}' in metrics
    assert 'paastis_passive_requests_total{app="demo",outcome="answered",provider="local"}' in metrics
    assert 'paastis_passive_requests_total{app="green",outcome="answered",provider="local"} 2.0' in metrics
    assert "stopping demo (idle)" in paastis.logs()


def test_a_no_wake_asleep_window_answers_browsers_and_clients_with_its_end(tmp_path, gunicorn_factory):
    zone = "America/New_York"
    app, port = local_app(tmp_path)
    rule = {
        "pattern": "demo",
        "timezone": zone,
        "asleep_during": f"{clock(zone, -60)}-{clock(zone, 600)}",
        "wake_during_sleep": False,
    }
    write_config(tmp_path, [app], [rule])
    paastis = gunicorn_factory({**FAST, **API})
    page = paastis.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 503 and page.headers["Content-Type"].startswith("text/html")
    assert "demo is asleep" in page.text and "wakes at" in page.text
    assert 500 < int(page.headers["Retry-After"]) <= 600
    client = paastis.get("/echo")
    assert client.status_code == 503 and 500 < int(client.headers["Retry-After"]) <= 600
    wakes_at = datetime.fromisoformat(client.json()["wakes_at"])
    assert wakes_at.astimezone(ZoneInfo(zone)).strftime("%H:%M") == rule["asleep_during"].split("-")[1][:5]
    assert starts(tmp_path) == 0 and not port_open(port)
    assert api(paastis, "GET", "/apps/demo").json()["schedule"]["state"] == "asleep"


def test_dry_run_stops_nothing_and_reports_the_projection(tmp_path, gunicorn_factory):
    app, port = local_app(tmp_path)
    write_config(tmp_path, [app], [{"pattern": "demo", "app_max_idle_time": 0.02, "cost_per_month": 730}])
    paastis = gunicorn_factory({**FAST, **API, "PAASTIS_DRY_RUN": "true"})
    assert paastis.get("/echo").status_code == 200
    would = wait_until(lambda: events(paastis, type="APP_WOULD_STOP"), 15, what="a would-be stop")
    assert [(e["app"], e["reason"]) for e in would] == [("demo", "idle")]
    assert "dry run: would stop demo (idle)" in paastis.logs()
    time.sleep(1.0)  # three more idle checks: recorded once, and still running
    assert len(events(paastis, type="APP_WOULD_STOP")) == 1
    assert port_open(port) and starts(tmp_path) == 1
    refused = api(paastis, "POST", "/apps/demo/stop")
    assert refused.status_code == 409 and "PAASTIS_DRY_RUN" in refused.json()["error"]
    assert port_open(port)

    time.sleep(1.0)  # a second of would-be sleep, then a request
    assert paastis.get("/echo").status_code == 200
    back = wait_until(lambda: events(paastis, type="APP_WOULD_START"), 10, what="the would-be wake")
    report = api(paastis, "GET", "/savings", params={"app": "demo"}).json()
    (demo,) = report["apps"]
    slept = datetime.fromisoformat(back[0]["timestamp"]) - datetime.fromisoformat(would[0]["timestamp"])
    assert demo["would_sleep_hours"] * 3600 == pytest.approx(slept.total_seconds(), abs=0.01)
    assert demo["would_sleep_hours"] * 3600 >= 2.0
    assert demo["money_would_save"] == pytest.approx(demo["would_sleep_hours"] * 1.0, abs=0.01)  # 730/month = 1/h
    assert demo["asleep_hours"] == 0 and demo["money_saved"] == 0
    assert report["dry_run"] is True and report["total"]["would_sleep_hours"] == demo["would_sleep_hours"]
    assert "paastis_app_would_sleep_seconds_total" in api(paastis, "GET", "/metrics").text
    assert "stopping demo" not in paastis.logs()


def test_savings_for_a_scripted_day_match_the_stops_and_starts(tmp_path, gunicorn_factory, database_url):
    app, port = local_app(tmp_path)
    write_config(tmp_path, [app], [{"pattern": "demo", "app_max_idle_time": 0.02, "cost_per_month": 73}])
    env = {**FAST, **API, "EVENTS_STORE_TYPE": "postgres", "DATABASE_URL": database_url}
    paastis = gunicorn_factory(env, name="first")
    began = datetime.now().astimezone()
    # The scripted day, compressed: morning use, an idle stop, a manual wake and stop, an evening visit.
    assert paastis.get("/echo").status_code == 200
    wait_until(lambda: not port_open(port), 15, what="the idle stop")
    time.sleep(1.0)
    assert api(paastis, "POST", "/apps/demo/start").status_code == 200
    time.sleep(0.5)
    assert api(paastis, "POST", "/apps/demo/stop").status_code == 200
    time.sleep(1.0)
    assert paastis.get("/echo").status_code == 200
    wait_until(lambda: not port_open(port), 15, what="the second idle stop")
    time.sleep(0.5)
    ended = datetime.now().astimezone()
    script = [(e["type"], e["reason"]) for e in reversed(events(paastis, app="demo"))]
    assert script == [
        ("APP_STARTED", "request"),
        ("APP_STOPPED", "idle"),
        ("APP_STARTED", "manual"),
        ("APP_STOPPED", "manual"),
        ("APP_STARTED", "request"),
        ("APP_STOPPED", "idle"),
    ]
    stamps = [datetime.fromisoformat(e["timestamp"]) for e in reversed(events(paastis, app="demo"))]
    awake = sum((stamps[i + 1] - stamps[i]).total_seconds() for i in (0, 2, 4))
    asleep = sum((stamps[i + 1] - stamps[i]).total_seconds() for i in (1, 3)) + (ended - stamps[5]).total_seconds()
    paastis.stop()

    again = gunicorn_factory(env, name="second")  # the history is in PostgreSQL: a new process reports the same
    period = {"since": began.isoformat(), "until": ended.isoformat()}
    report = api(again, "GET", "/savings", params=period).json()
    (demo,) = report["apps"]
    assert demo["awake_hours"] * 3600 == pytest.approx(awake, abs=0.01)
    assert demo["asleep_hours"] * 3600 == pytest.approx(asleep, abs=0.01)
    assert demo["asleep_hours"] * 3600 >= 2.0  # at least the pauses the script made while it slept
    assert demo["money_saved"] == pytest.approx(demo["asleep_hours"] * 0.1, abs=0.01)  # 73/month = 0.1/h
    assert report["currency"] == "EUR" and report["total"]["asleep_hours"] == demo["asleep_hours"]
    metrics = api(again, "GET", "/metrics").text
    assert 'paastis_app_asleep_seconds_total{app="demo",provider="local"}' in metrics
    assert 'paastis_app_awake_seconds_total{app="demo",provider="local"}' in metrics
    bad = api(again, "GET", "/savings", params={"since": "yesterday"})
    assert bad.status_code == 400 and "ISO 8601" in bad.json()["error"]
    backwards = api(again, "GET", "/savings", params={"since": ended.isoformat(), "until": began.isoformat()})
    assert backwards.status_code == 400


platforms = closing_factory(ScalingoPlatform)


def test_the_price_comes_from_the_formation_scalingo_returned_at_the_stop(platforms, paastis_for):
    platform = platforms(rate_limit=6000)  # idle checks every 0.3 s: 200 listings a minute
    platform.add_app("shop", formation={"web": (3, "L"), "worker": (0, "S"), "clock": (1, "S")}, running=True)
    paastis = paastis_for(
        platform, START_AND_STOP_MAX_IDLE_TIME="0.02", PROVIDER_SCALINGO_RATE_LIMIT="6000", **FAST, **API
    )
    wait_until(lambda: ("APP_STOPPED", "idle") in [(e["type"], e["reason"]) for e in events(paastis)], 20)
    (shop,) = api(paastis, "GET", "/savings", params={"app": "shop"}).json()["apps"]
    assert shop["price_per_hour"] == pytest.approx((3 * 28.80 + 7.20) / 730, abs=1e-6)
    assert shop["price_source"].startswith("scalingo 3xL + 1xS (list prices of")
    assert shop["money_saved"] == pytest.approx(shop["asleep_hours"] * shop["price_per_hour"], abs=0.01)
