"""A bar chart drawn on the server as SVG: no script and no chart library in the browser."""

from __future__ import annotations

from dataclasses import dataclass

WIDTH = 640
HEIGHT = 220
LEFT = 44  # room for the hour labels
BOTTOM = 28  # room for the day labels
TOP = 12


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    hours: float
    money: float | None


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    ticks: list[tuple[float, str]]  # (y, label) of the horizontal grid lines
    baseline: float
    left: int


def daily_chart(days: list[tuple[str, float, float | None]]) -> Chart:
    """One bar per ``(label, hours asleep, money saved)``; the scale rounds up to a readable number."""
    plot_height = HEIGHT - TOP - BOTTOM
    top_value = nice_ceiling(max((hours for _, hours, _ in days), default=0.0))
    slot = (WIDTH - LEFT) / max(len(days), 1)
    bars = []
    for index, (label, hours, money) in enumerate(days):
        height = plot_height * hours / top_value
        bars.append(
            Bar(
                x=round(LEFT + index * slot + slot * 0.15, 1),
                y=round(TOP + plot_height - height, 1),
                width=round(slot * 0.7, 1),
                height=round(height, 1),
                label=label,
                hours=hours,
                money=money,
            )
        )
    ticks = [(round(TOP + plot_height * (1 - i / 4), 1), f"{top_value * i / 4:g} h") for i in range(5)]
    return Chart(WIDTH, HEIGHT, bars, ticks, TOP + plot_height, LEFT)


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 4, 5 or 10 times a power of ten that is at least ``value`` (at least 1)."""
    if value <= 1:
        return 1.0
    power = 1.0
    while power * 10 < value:
        power *= 10
    for step in (1, 2, 4, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power
