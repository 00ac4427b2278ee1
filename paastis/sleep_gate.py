"""Before a request may wake or keep awake an app: passive visitors and windows where the app must sleep.

The proxy asks :meth:`SleepGate.screen` once it knows the app. Three answers:

- ``None``: an ordinary request, served as usual;
- :data:`PASSIVE`: a passive visitor to an awake app, proxied without any registry
  bookkeeping (so it neither refreshes the idle timer nor counts as in flight);
- a response paastis gives itself: a passive visitor to a sleeping app (``503`` with
  ``Retry-After``, or ``200 {"status": "asleep", ...}`` with ``passive_answer: 200``), or any
  request during an ``asleep_during`` window of a rule that says ``wake_during_sleep: false``
  (browsers get a page saying when the app wakes, other clients a ``503`` with ``Retry-After``
  pointing at the window's end). With ``PAASTIS_DRY_RUN`` windows refuse nothing.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from datetime import datetime

from flask import Request, Response

from .metrics import Metrics
from .passive import PassiveVisitors, retry_after
from .providers import AppInfo
from .registry import utcnow
from .rules import AppPolicy, Rules

PASSIVE = object()

ASLEEP_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{app} is asleep</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:20vh auto;padding:0 1rem;color:#222}}</style>
</head><body><h1>{app} is asleep</h1>
<p>It sleeps on schedule and wakes at <time datetime="{iso}">{local}</time>.</p></body></html>
"""


class SleepGate:
    def __init__(
        self,
        rules: Rules,
        visitors: PassiveVisitors,
        metrics: Metrics,
        dry_run: bool,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.rules = rules
        self.visitors = visitors
        self.metrics = metrics
        self.dry_run = dry_run
        self.clock = clock

    def screen(self, req: Request, app: AppInfo, awake: Callable[[], bool]) -> Response | object | None:
        policy = self.rules.policy(app.key)
        passive = self.visitors.is_passive(req.headers.get("User-Agent"), req.path, policy.passive_paths)
        asleep_until = None
        if policy.schedule is not None and not self.dry_run:
            asleep_until = policy.schedule.refuses_wake(self.clock())
        if not passive and asleep_until is None:
            return None
        now = self.clock()
        if passive:
            if asleep_until is None and awake():
                self.metrics.passive_requests.labels(app.key, "proxied", self.metrics.provider_of(app)).inc()
                return PASSIVE
            self.metrics.passive_requests.labels(app.key, "answered", self.metrics.provider_of(app)).inc()
            return passive_answer(app, policy, now, asleep_until or _next_awake(policy, now))
        return asleep_answer(req, app, policy, now, asleep_until)


def _next_awake(policy: AppPolicy, now: datetime) -> datetime | None:
    """When an awake window will start the app, if one is coming."""
    if policy.schedule is None or not policy.schedule.awake:
        return None
    return policy.schedule.awake.opens_at(now)


def passive_answer(app: AppInfo, policy: AppPolicy, now: datetime, wakes_at: datetime | None) -> Response:
    """What a monitor or crawler gets from a sleeping app: the app is not woken for it."""
    if policy.passive_answer == 200:
        return _json(200, {"status": "asleep", "app": app.key})
    response = _json(503, {"error": f"app {app.key!r} is asleep (passive requests do not wake it)", "status": 503})
    response.headers["Retry-After"] = str(retry_after(now, wakes_at))
    return response


def asleep_answer(req: Request, app: AppInfo, policy: AppPolicy, now: datetime, until: datetime) -> Response:
    """During a no-wake asleep window: a page for browsers, a 503 for the rest, both saying when."""
    zone = policy.schedule.asleep.zone if policy.schedule is not None else None
    local = until.astimezone(zone)
    if "text/html" in req.headers.get("Accept", ""):
        body = ASLEEP_PAGE.format(
            app=html.escape(app.key),
            iso=until.isoformat(),
            local=html.escape(f"{local:%A %d %B %Y, %H:%M} ({local.tzname()})"),
        )
        response = Response(body, status=503, mimetype="text/html")
    else:
        message = f"app {app.key!r} is asleep on schedule until {local.isoformat()}"
        response = _json(503, {"error": message, "status": 503, "wakes_at": until.isoformat()})
    response.headers["Retry-After"] = str(retry_after(now, until))
    response.headers["Cache-Control"] = "no-store"
    return response


def _json(status: int, body: dict) -> Response:
    response = Response(json.dumps(body) + "\n", status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response
