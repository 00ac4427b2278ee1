"""How much of their idle time apps spend asleep, with and without passive visitors (a simulated day).

Run from the repository root::

    .venv/bin/python -m bench.sleep_policy [--seed 7] [--apps 30]

A scripted day of 30 apps in simulated time: people use each app in a few sessions during
office hours (seeded random), and an uptime monitor (UptimeRobot's real User-Agent) checks a
third of them every 5 minutes, all day. Three policies are compared:

- ``passive off``: ``PAASTIS_PASSIVE_USER_AGENTS=none``, monitors count as visitors (what every
  idle-timer proxy does);
- ``passive on``: the default list, monitors neither wake nor keep awake;
- ``passive on + nights``: the same, plus ``asleep_during: '20:00-07:00'``;
- ``... + no wake at night``: and ``wake_during_sleep: false``.

Three apps also have a browser tab left open after their last session, polling every 2 minutes
until midnight (a person's User-Agent: not passive).

Which request is passive is decided by paastis's own :class:`~paastis.passive.PassiveVisitors`
with the default list, window openings by its own :class:`~paastis.schedules.AppSchedule`, and
the hours asleep are added up by its own :func:`~paastis.savings.measure` from the APP_STARTED /
APP_STOPPED events the simulation records. The idle rule is the one ``IdleCheck`` applies
(``START_AND_STOP_MAX_IDLE_TIME`` 15 minutes, checked every ``START_AND_STOP_CHECKING_INTERVAL``
60 seconds), replayed here on a simulated clock rather than by waiting a day.

"Idle app-time" is the time no person is using an app (outside their sessions); the figure is
the share of it the app spent asleep. It also times the per-request cost of telling a passive
visitor apart (in-process, microseconds).
"""

from __future__ import annotations

import argparse
import random
import timeit
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from paastis.events import Event
from paastis.passive import DEFAULT_USER_AGENTS, PassiveVisitors, compile_user_agents
from paastis.savings import measure
from paastis.schedules import AppSchedule, Windows, parse_windows

DAY = datetime(2026, 12, 1, tzinfo=UTC)  # a Tuesday
MONITOR_UA = "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)"
HUMAN_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"
MAX_IDLE = 15 * 60  # seconds
CHECK_EVERY = 60
MONITOR_EVERY = 5 * 60


@dataclass
class App:
    name: str
    monitored: bool
    sessions: list[tuple[int, int]] = field(default_factory=list)  # (start, end) in seconds after midnight
    forgotten_tab: bool = False  # a page left open after the last session, polling every 2 minutes

    def requests(self) -> list[tuple[int, str]]:
        """(second, User-Agent) of every request of the day, in order."""
        found = [(t, HUMAN_UA) for start, end in self.sessions for t in range(start, end + 1, 30)]
        if self.forgotten_tab and self.sessions:
            found += [(t, HUMAN_UA) for t in range(self.sessions[-1][1], 86_400, 120)]
        if self.monitored:
            found += [(t, MONITOR_UA) for t in range(7, 86_400, MONITOR_EVERY)]
        return sorted(found)

    def human_seconds(self) -> int:
        return sum(end - start for start, end in self.sessions)


def script(apps: int, seed: int) -> list[App]:
    """Sessions of 5 to 40 minutes between 08:00 and 20:00; some apps nobody opens all day."""
    rng = random.Random(seed)
    day = []
    for i in range(apps):
        app = App(f"review-{i:02d}", monitored=i % 3 == 0, forgotten_tab=i % 10 == 4)
        for _ in range(rng.choice([0, 1, 2, 3, 4, 6])):
            start = rng.randrange(8 * 3600, 20 * 3600)
            app.sessions.append((start, min(86_399, start + rng.randrange(5 * 60, 40 * 60))))
        app.sessions.sort()
        day.append(app)
    return day


def simulate(app: App, visitors: PassiveVisitors, plan: AppSchedule | None) -> tuple[list[Event], int]:
    """Replay the day: the app's events (starts and stops), and how many wakes it took."""
    events = [Event(type="APP_STOPPED", app=app.name, reason="idle", timestamp=DAY)]  # asleep at midnight
    awake, last_use, wakes = False, 0, 0
    pending = app.requests()
    handled_opening = None
    for second in range(86_400):
        now = DAY + timedelta(seconds=second)
        while pending and pending[0][0] == second:
            _, agent = pending.pop(0)
            if visitors.is_passive(agent, "/", None):
                continue  # proxied if awake, answered if asleep: no trace either way
            if plan is not None and plan.refuses_wake(now) is not None:
                continue  # wake_during_sleep: false: answered by paastis, the app sleeps on
            if not awake:
                awake, wakes = True, wakes + 1
                events.append(Event(type="APP_STARTED", app=app.name, reason="request", timestamp=now))
            last_use = second
        if second % CHECK_EVERY:
            continue
        opened = plan.asleep_opened(now) if plan else None
        if awake and opened is not None and opened != handled_opening:
            handled_opening = opened
            awake = False
            events.append(Event(type="APP_STOPPED", app=app.name, reason="schedule", timestamp=now))
        elif awake and second - last_use > MAX_IDLE:
            awake = False
            events.append(Event(type="APP_STOPPED", app=app.name, reason="idle", timestamp=now))
    return events, wakes


def run(apps: list[App], visitors: PassiveVisitors, plan: AppSchedule | None) -> dict[str, float]:
    idle = asleep = 0.0
    idle_monitored = asleep_monitored = 0.0
    wakes = 0
    for app in apps:
        events, woken = simulate(app, visitors, plan)
        wakes += woken
        times = measure(events, DAY, DAY + timedelta(days=1))[app.name]
        app_idle = 86_400 - app.human_seconds()
        idle += app_idle
        asleep += times.asleep
        if app.monitored:
            idle_monitored += app_idle
            asleep_monitored += times.asleep
    return {
        "all": asleep / idle,
        "monitored": asleep_monitored / idle_monitored,
        "unmonitored": (asleep - asleep_monitored) / (idle - idle_monitored),
        "asleep_hours": asleep / 3600,
        "wakes": wakes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--apps", type=int, default=30)
    args = parser.parse_args()
    apps = script(args.apps, args.seed)
    utc = ZoneInfo("UTC")
    nights = AppSchedule(Windows((), utc), Windows(parse_windows("20:00-07:00"), utc))
    strict_nights = AppSchedule(Windows((), utc), Windows(parse_windows("20:00-07:00"), utc), wake_during_sleep=False)
    policies = {
        "passive off": (PassiveVisitors(()), None),
        "passive on": (PassiveVisitors(DEFAULT_USER_AGENTS), None),
        "passive on + nights": (PassiveVisitors(DEFAULT_USER_AGENTS), nights),
        "... + no wake at night": (PassiveVisitors(DEFAULT_USER_AGENTS), strict_nights),
    }
    monitored = sum(app.monitored for app in apps)
    people = sum(app.human_seconds() for app in apps) / 3600
    tabs = sum(app.forgotten_tab and bool(app.sessions) for app in apps)
    print(f"{len(apps)} apps, {monitored} with an uptime monitor every {MONITOR_EVERY // 60} min, seed {args.seed}")
    print(f"{tabs} with a browser tab left open after the last session (polling every 2 min until midnight)")
    print(f"people use them {people:.1f} app-hours in the day; idle app-time is {len(apps) * 24 - people:.1f} h")
    print(f"{'policy':<22} {'asleep/idle':>11} {'monitored':>10} {'unmonitored':>12} {'asleep h':>9} {'wakes':>6}")
    for name, (visitors, plan) in policies.items():
        r = run(apps, visitors, plan)
        print(
            f"{name:<22} {r['all']:>11.1%} {r['monitored']:>10.1%} {r['unmonitored']:>12.1%}"
            f" {r['asleep_hours']:>9.1f} {r['wakes']:>6}"
        )
    visitors = PassiveVisitors(DEFAULT_USER_AGENTS)
    one_regex = compile_user_agents(DEFAULT_USER_AGENTS)
    for label, agent in (("a browser", HUMAN_UA), ("UptimeRobot", MONITOR_UA)):
        words = per_request_us(lambda a=agent: visitors.is_passive(a, "/", None))
        regex = per_request_us(lambda a=agent: one_regex.search(a))
        print(f"telling {label} apart: {words:.2f} µs per request (as one case-insensitive regex: {regex:.2f} µs)")


def per_request_us(step, number: int = 20_000) -> float:
    """Best of three rounds (the least disturbed by other processes), in microseconds."""
    return min(timeit.repeat(step, number=number, repeat=3)) / number * 1e6


if __name__ == "__main__":
    main()
