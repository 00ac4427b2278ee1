"""Time windows: when an app must be awake (``awake_during``) or asleep (``asleep_during``).

A window is written as days and/or a time range, in a time zone::

    'mon-fri 08:30-19:00'     weekdays, from 08:30 to 19:00
    'sat-sun'                 all of Saturday and Sunday
    '20:00-07:00'             every evening until the next morning (spans midnight)
    'mon,wed 12:00-14:00'

Several parts (a list in ``paastis.yml``, ``;``-separated in environment variables) make
one schedule, their union. A time range that spans midnight belongs to the day it opens on:
``'fri 20:00-07:00'`` runs from Friday evening to Saturday morning. Times may carry seconds
(``08:30:15``). Local times are turned into instants with :mod:`zoneinfo`, so a window
keeps its wall-clock hours across daylight-saving changes.

What the leader acts on is an *opening*: the instant a stretch of window time began (parts
that touch or overlap count as one stretch). Openings are stable, so they can be stored
and compared to tell whether an opening was already handled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_SECONDS = 86_400
LOOK_BEHIND = 9  # days: every stretch of a schedule that is not always open is shorter than a week and a day
LOOK_AHEAD = 9
ALWAYS_OPEN_SINCE = datetime(1970, 1, 1, tzinfo=UTC)  # the opening of a schedule with no gap at all
TIME_RANGE = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?-(\d{1,2}):(\d{2})(?::(\d{2}))?$")


class ScheduleError(ValueError):
    """A window is malformed; the message says which part and why."""


@dataclass(frozen=True)
class Window:
    """One part of a schedule: the days it opens on (0 is Monday) and its hours, in seconds after midnight."""

    text: str
    days: frozenset[int]
    start: int = 0
    end: int = DAY_SECONDS  # <= start: the window ends the next day

    def spans(self, day: date, zone: ZoneInfo) -> tuple[datetime, datetime] | None:
        """The instants this window covers when it opens on ``day``, or None if it does not open that day."""
        if day.weekday() not in self.days:
            return None
        end_day = day if self.end > self.start else day + timedelta(days=1)
        return _instant(day, self.start, zone), _instant(end_day, self.end, zone)


def _instant(day: date, seconds: int, zone: ZoneInfo) -> datetime:
    """A wall-clock time on ``day`` as a UTC instant (24:00 is the next midnight).

    A time skipped by a daylight-saving change (02:30 on the spring-forward night) is read
    with the offset in force before the change, as zoneinfo does (it falls one hour later).
    """
    if seconds >= DAY_SECONDS:
        day, seconds = day + timedelta(days=1), seconds - DAY_SECONDS
    local = datetime.combine(day, time(seconds // 3600, seconds % 3600 // 60, seconds % 60), tzinfo=zone)
    return local.astimezone(UTC)


def parse_windows(value: object, separator: str = ";") -> tuple[Window, ...]:
    """Parse a string (parts separated by ``separator``) or a list of strings; None or empty means no window."""
    if value is None:
        return ()
    if isinstance(value, str):
        parts = value.split(separator)
    elif isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        parts = [piece for item in value for piece in item.split(separator)]
    else:
        raise ScheduleError("a window must be a string such as 'mon-fri 08:30-19:00', or a list of them")
    stripped = [part.strip() for part in parts]
    if len(stripped) == 1 and stripped[0].lower() in ("", "none"):
        return ()
    return tuple(parse_window(part) for part in stripped)


def parse_window(text: str) -> Window:
    """One part: ``days``, ``HH:MM-HH:MM``, or ``days HH:MM-HH:MM``."""
    tokens = text.split()
    if not tokens or len(tokens) > 2:
        raise ScheduleError(f"{text!r}: expected days (mon-fri), a time range (08:30-19:00), or both")
    days: frozenset[int] | None = None
    hours: tuple[int, int] | None = None
    for token in tokens:
        if any(char.isdigit() for char in token):
            if hours is not None:
                raise ScheduleError(f"{text!r}: more than one time range")
            hours = _parse_hours(text, token)
        else:
            if days is not None:
                raise ScheduleError(f"{text!r}: more than one list of days")
            days = _parse_days(text, token)
    start, end = hours or (0, DAY_SECONDS)
    return Window(text=text, days=days if days is not None else frozenset(range(7)), start=start, end=end)


def _parse_days(text: str, token: str) -> frozenset[int]:
    """``mon-fri``, ``sat-sun``, ``mon,wed``, ``fri-mon`` (a range may wrap round the week)."""
    days: set[int] = set()
    for item in token.lower().split(","):
        first, _, last = item.partition("-")
        for name in (first, last) if "-" in item else (first,):
            if name not in DAYS:
                raise ScheduleError(
                    f"{text!r}: {name!r} is not a day (use {', '.join(DAYS)}, or ranges such as mon-fri)"
                )
        begin, stop = DAYS.index(first), DAYS.index(last or first)
        days.update((begin + offset) % 7 for offset in range((stop - begin) % 7 + 1))
    return frozenset(days)


def _parse_hours(text: str, token: str) -> tuple[int, int]:
    match = TIME_RANGE.match(token)
    if not match:
        raise ScheduleError(f"{text!r}: {token!r} is not a time range such as 08:30-19:00")
    h1, m1, s1, h2, m2, s2 = (int(g) if g else 0 for g in match.groups())
    start, end = h1 * 3600 + m1 * 60 + s1, h2 * 3600 + m2 * 60 + s2
    if h1 > 23 or m1 > 59 or s1 > 59 or m2 > 59 or s2 > 59 or end > DAY_SECONDS:
        raise ScheduleError(f"{text!r}: {token!r} holds an impossible time (00:00 to 23:59, or 24:00 as an end)")
    if start == end % DAY_SECONDS:
        raise ScheduleError(f"{text!r}: {token!r} starts and ends at the same time")
    return start, end


def zone(name: str) -> ZoneInfo:
    """An IANA time zone, or :class:`ScheduleError` naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"{name!r} is not an IANA time zone name such as UTC or Europe/Paris") from None


@dataclass
class _Stretch:
    """Where ``at`` stands: inside ``[opened, closes)`` or in the gap before ``opens``, valid over ``[lo, hi)``."""

    lo: datetime
    hi: datetime
    opened: datetime | None  # the current stretch's opening (None: outside the window)
    closes: datetime | None  # when the current stretch ends (None: never, within sight)
    opens: datetime | None  # the next opening, when outside
    closed: datetime | None = None  # when the last stretch ended, when outside (None: not within sight)


@dataclass
class Windows:
    """The union of some windows in one time zone, asked about instants."""

    windows: tuple[Window, ...]
    zone: ZoneInfo
    _cache: _Stretch | None = field(default=None, repr=False, compare=False)

    def __bool__(self) -> bool:
        return bool(self.windows)

    def describe(self) -> list[str]:
        return [window.text for window in self.windows]

    def opened_at(self, at: datetime) -> datetime | None:
        """The opening of the stretch ``at`` is in, or None when outside every window."""
        return self._where(at).opened

    def closes_at(self, at: datetime) -> datetime | None:
        """When the stretch ``at`` is in ends (None when outside, or open for as far as can be seen)."""
        return self._where(at).closes

    def opens_at(self, at: datetime) -> datetime | None:
        """The next opening after ``at`` when outside every window."""
        return self._where(at).opens

    def closed_at(self, at: datetime) -> datetime | None:
        """When the last stretch before ``at`` ended, when outside every window."""
        return self._where(at).closed

    def _where(self, at: datetime) -> _Stretch:
        cached = self._cache
        if cached is not None and cached.lo <= at < cached.hi:
            return cached
        self._cache = stretch = self._compute(at)
        return stretch

    def _compute(self, at: datetime) -> _Stretch:
        local_day = at.astimezone(self.zone).date()
        horizon_lo = _instant(local_day - timedelta(days=LOOK_BEHIND), 0, self.zone)
        horizon_hi = _instant(local_day + timedelta(days=LOOK_AHEAD), 0, self.zone)
        spans = []
        for offset in range(-LOOK_BEHIND - 1, LOOK_AHEAD + 1):
            day = local_day + timedelta(days=offset)
            spans.extend(span for window in self.windows if (span := window.spans(day, self.zone)))
        merged = _merge(sorted(spans))
        previous_end = horizon_lo
        closed = None
        for start, end in merged:
            if start <= at < end:
                opened = ALWAYS_OPEN_SINCE if start <= horizon_lo else start
                closes = None if end >= horizon_hi else end
                return _Stretch(
                    lo=max(start, horizon_lo), hi=min(end, horizon_hi), opened=opened, closes=closes, opens=None
                )
            if at < start:
                return _Stretch(lo=previous_end, hi=start, opened=None, closes=None, opens=start, closed=closed)
            previous_end = closed = end
        return _Stretch(
            lo=max(previous_end, horizon_lo), hi=horizon_hi, opened=None, closes=None, opens=None, closed=closed
        )


def _merge(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Overlapping or touching spans become one stretch (sat-sun is one weekend, not two days)."""
    merged: list[list[datetime]] = []
    for start, end in spans:
        if end <= start:
            continue  # a window swallowed by a daylight-saving change
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


@dataclass
class AppSchedule:
    """One app's windows. An open ``asleep_during`` window wins over an open ``awake_during`` one."""

    awake: Windows
    asleep: Windows
    wake_during_sleep: bool = True

    def __bool__(self) -> bool:
        return bool(self.awake) or bool(self.asleep)

    def asleep_opened(self, at: datetime) -> datetime | None:
        return self.asleep.opened_at(at) if self.asleep else None

    def awake_opened(self, at: datetime) -> datetime | None:
        """The opening of the awake window ``at`` is in, unless an asleep window is open too.

        An asleep window that closed inside the awake one opens it again: after a lunch break
        in ``asleep_during``, the app is started again as when the awake window first opened.
        """
        if not self.awake or self.asleep_opened(at) is not None:
            return None
        opened = self.awake.opened_at(at)
        closed = self.asleep.closed_at(at) if self.asleep else None
        if opened is not None and closed is not None and closed > opened:
            return closed
        return opened

    def keeps_awake(self, at: datetime) -> bool:
        """Inside an awake window (and no asleep one): never stopped for idleness."""
        return self.awake_opened(at) is not None

    def refuses_wake(self, at: datetime) -> datetime | None:
        """Inside an asleep window that requests may not end (``wake_during_sleep: false``): when it ends.

        A window open for as far as can be seen ends, for this answer, at the edge of sight.
        """
        if self.wake_during_sleep or self.asleep_opened(at) is None:
            return None
        return self.asleep.closes_at(at) or at + timedelta(days=LOOK_AHEAD)

    def state(self, at: datetime) -> str | None:
        if self.asleep_opened(at) is not None:
            return "asleep"
        if self.awake_opened(at) is not None:
            return "awake"
        return None

    def next_change(self, at: datetime) -> datetime | None:
        """The next instant a window opens or closes (None when nothing changes within sight)."""
        moments = []
        for windows in (self.awake, self.asleep):
            if windows:
                moments.extend(m for m in (windows.closes_at(at), windows.opens_at(at)) if m is not None)
        return min(moments) if moments else None

    def to_json(self, at: datetime) -> dict[str, object]:
        return {
            "timezone": self.awake.zone.key,
            "awake_during": self.awake.describe(),
            "asleep_during": self.asleep.describe(),
            "wake_during_sleep": self.wake_during_sleep,
            "state": self.state(at),
        }
