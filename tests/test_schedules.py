"""Window parsing and evaluation: days, midnight spans, daylight-saving changes, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from paastis.schedules import ALWAYS_OPEN_SINCE, AppSchedule, ScheduleError, Windows, parse_windows, zone

PARIS = ZoneInfo("Europe/Paris")


def windows(text, tz="Europe/Paris") -> Windows:
    return Windows(parse_windows(text), ZoneInfo(tz))


def paris(*args) -> datetime:
    return datetime(*args, tzinfo=PARIS)


def test_days_and_hours_parse():
    (office,) = parse_windows("mon-fri 08:30-19:00")
    assert office.days == frozenset(range(5)) and (office.start, office.end) == (8.5 * 3600, 19 * 3600)
    (weekend,) = parse_windows("sat-sun")
    assert weekend.days == {5, 6} and (weekend.start, weekend.end) == (0, 86_400)
    (some,) = parse_windows("MON,wed 12:00-14:00:30")
    assert some.days == {0, 2} and some.end == 14 * 3600 + 30
    (wrapping,) = parse_windows("fri-mon")
    assert wrapping.days == {4, 5, 6, 0}
    (every_day,) = parse_windows("20:00-07:00")
    assert every_day.days == frozenset(range(7))


def test_env_parts_and_lists():
    assert [w.text for w in parse_windows("mon-fri 20:00-07:00; sat-sun")] == ["mon-fri 20:00-07:00", "sat-sun"]
    assert [w.text for w in parse_windows(["mon-fri 20:00-07:00", "sat-sun"])] == ["mon-fri 20:00-07:00", "sat-sun"]
    assert parse_windows(None) == () and parse_windows("") == () and parse_windows("none") == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mon-fry", "'fry' is not a day"),
        ("monday 08:00-09:00", "'monday' is not a day"),
        ("mon-fri 8h-19h", "not a time range"),
        ("mon-fri 25:00-26:00", "impossible time"),
        ("08:60-09:00", "impossible time"),
        ("09:00-09:00", "starts and ends at the same time"),
        ("mon tue", "more than one list of days"),
        ("mon- 08:00-09:00", "'' is not a day"),
        ("08:00-09:00 10:00-11:00", "more than one time range"),
        ("mon-fri 08:00-09:00 extra", "expected days"),
        ("mon-fri;", "expected days"),
    ],
)
def test_malformed_windows_say_what_is_wrong(text, message):
    with pytest.raises(ScheduleError, match=message):
        parse_windows(text)


def test_not_a_string_is_refused():
    with pytest.raises(ScheduleError, match="must be a string"):
        parse_windows(42)
    with pytest.raises(ScheduleError, match="not an IANA time zone"):
        zone("Mars/Olympus")


def test_office_hours_in_a_time_zone():
    office = windows("mon-fri 08:30-19:00")
    monday_morning = paris(2026, 11, 30, 9, 0)  # a Monday
    assert office.opened_at(monday_morning) == paris(2026, 11, 30, 8, 30)
    assert office.closes_at(monday_morning) == paris(2026, 11, 30, 19, 0)
    assert office.opened_at(paris(2026, 11, 30, 8, 29)) is None
    assert office.opens_at(paris(2026, 11, 30, 8, 29)) == paris(2026, 11, 30, 8, 30)
    friday_night = paris(2026, 12, 4, 20, 0)
    assert office.opened_at(friday_night) is None
    assert office.opens_at(friday_night) == paris(2026, 12, 7, 8, 30)  # the next Monday
    assert office.opened_at(monday_morning.astimezone(UTC)) == paris(2026, 11, 30, 8, 30)  # any zone in, same answer


def test_a_window_spanning_midnight_belongs_to_the_day_it_opens():
    nights = windows("mon-fri 20:00-07:00")
    saturday_dawn = paris(2026, 12, 5, 6, 0)  # the Friday night's window, still open
    assert nights.opened_at(saturday_dawn) == paris(2026, 12, 4, 20, 0)
    assert nights.closes_at(saturday_dawn) == paris(2026, 12, 5, 7, 0)
    assert nights.opened_at(paris(2026, 12, 6, 6, 0)) is None  # Saturday night: no window opened on Saturday
    assert nights.opened_at(paris(2026, 11, 30, 3, 0)) is None  # Monday 03:00: Sunday opened none


def test_touching_parts_are_one_stretch_with_one_opening():
    nights_and_weekends = windows(["mon-fri 20:00-07:00", "sat-sun"])
    friday_evening = paris(2026, 12, 4, 20, 0)
    for hours in (0, 5, 11, 30, 51):
        assert nights_and_weekends.opened_at(friday_evening + timedelta(hours=hours)) == friday_evening
    assert nights_and_weekends.closes_at(friday_evening) == paris(2026, 12, 7, 0, 0)  # Monday midnight
    assert nights_and_weekends.opened_at(paris(2026, 12, 7, 1, 0)) is None  # Sunday opened no night window


def test_always_open_has_one_stable_opening():
    always = windows("mon-sun")
    assert always.opened_at(paris(2026, 12, 1, 12, 0)) == ALWAYS_OPEN_SINCE
    assert always.opened_at(paris(2027, 3, 9, 12, 0)) == ALWAYS_OPEN_SINCE
    assert always.closes_at(paris(2026, 12, 1, 12, 0)) is None


def test_wall_clock_hours_hold_across_daylight_saving_changes():
    office = windows("mon-fri 08:30-19:00")
    # Paris moves from UTC+1 to UTC+2 on Sunday 2026-03-29, and back on Sunday 2026-10-25.
    before, after = paris(2026, 3, 27, 12, 0), paris(2026, 3, 30, 12, 0)
    assert office.opened_at(before).astimezone(UTC).hour == 7  # 08:30 CET
    assert office.opened_at(after).astimezone(UTC).hour == 6  # 08:30 CEST
    assert office.opened_at(paris(2026, 10, 26, 12, 0)).astimezone(UTC) == datetime(2026, 10, 26, 7, 30, tzinfo=UTC)
    # A night window over the spring-forward night lasts an hour less in real time.
    nights = windows("sat 22:00-06:00")
    spring = nights.opened_at(paris(2026, 3, 29, 1, 0))
    assert nights.closes_at(paris(2026, 3, 29, 1, 0)) - spring == timedelta(hours=7)
    autumn = nights.opened_at(paris(2026, 10, 25, 1, 0))
    assert nights.closes_at(paris(2026, 10, 25, 1, 0)) - autumn == timedelta(hours=9)


def test_a_time_skipped_by_spring_forward_still_opens():
    skipped = windows("sun 02:30-04:00")  # 02:30 does not exist in Paris on 2026-03-29
    opened = skipped.opened_at(paris(2026, 3, 29, 3, 45))
    assert opened is not None and opened < paris(2026, 3, 29, 3, 45)


def test_asleep_wins_over_awake_and_next_change():
    plan = AppSchedule(windows("mon-fri 08:00-20:00"), windows("12:00-13:00"), wake_during_sleep=False)
    morning, lunch = paris(2026, 12, 1, 9, 0), paris(2026, 12, 1, 12, 30)
    assert plan.state(morning) == "awake" and plan.keeps_awake(morning)
    assert plan.next_change(morning) == paris(2026, 12, 1, 12, 0)
    assert plan.state(lunch) == "asleep" and not plan.keeps_awake(lunch)
    assert plan.refuses_wake(lunch) == paris(2026, 12, 1, 13, 0)
    assert plan.refuses_wake(morning) is None
    assert plan.to_json(lunch)["state"] == "asleep"
    assert AppSchedule(windows(None), windows(None)).next_change(morning) is None


def test_an_asleep_window_closing_inside_an_awake_one_opens_it_again():
    plan = AppSchedule(windows("mon-fri 08:00-20:00"), windows("12:00-13:00"))
    assert plan.awake_opened(paris(2026, 12, 1, 9, 0)) == paris(2026, 12, 1, 8, 0)
    assert plan.awake_opened(paris(2026, 12, 1, 12, 30)) is None
    assert plan.awake_opened(paris(2026, 12, 1, 13, 30)) == paris(2026, 12, 1, 13, 0)  # started again after lunch
    touching = AppSchedule(windows("mon-fri 07:00-19:00"), windows("20:00-07:00"))
    assert touching.awake_opened(paris(2026, 12, 1, 8, 0)) == paris(2026, 12, 1, 7, 0)
