"""Business-calendar arithmetic for the response promise; pure, takes instants as values.

Support hours per weekday (default Mon–Fri 09:00–16:00 Europe/Berlin), public holidays
from the `holidays` package, extra closed days and half days from the config. A deadline
that falls exactly at closing time is due then.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays

from maild.config import CalendarSettings

_MAX_DAYS = 3660  # ten years without an open hour would be a broken calendar


@dataclass(frozen=True, slots=True)
class BusinessCalendar:
    zone: ZoneInfo
    weekdays: frozenset[int]
    opens: time
    closes: time
    closed_days: Container[date]
    # ISO weekday → (opens, closes) where a weekday differs from the default hours.
    weekday_hours: Mapping[int, tuple[time, time]] = field(default_factory=dict)
    # A date → its closing time (a half day, e.g. Christmas Eve until 12:00).
    half_days: Mapping[date, time] = field(default_factory=dict)

    def window(self, day: date) -> tuple[datetime, datetime] | None:
        """Opening and closing instant of `day`, or None when closed all day."""
        if day.isoweekday() not in self.weekdays or day in self.closed_days:
            return None
        opens, closes = self.weekday_hours.get(day.isoweekday(), (self.opens, self.closes))
        closes = min(closes, self.half_days.get(day, closes))
        if closes <= opens:
            return None
        return (
            datetime.combine(day, opens, tzinfo=self.zone).astimezone(UTC),
            datetime.combine(day, closes, tzinfo=self.zone).astimezone(UTC),
        )

    def is_open(self, moment: datetime) -> bool:
        window = self.window(moment.astimezone(self.zone).date())
        return window is not None and window[0] <= moment < window[1]

    def next_open(self, moment: datetime) -> datetime:
        """`moment` if support is open then, else the next opening."""
        moment = moment.astimezone(UTC)
        day = moment.astimezone(self.zone).date()
        for _ in range(_MAX_DAYS):
            window = self.window(day)
            if window is not None and moment < window[1]:
                return max(moment, window[0])
            day += timedelta(days=1)
        raise ValueError("the business calendar has no open hours")


class _ExtraClosed:
    """Public holidays plus the configured closed days."""

    def __init__(self, public: Container[date], extra: frozenset[date]) -> None:
        self.public, self.extra = public, extra

    def __contains__(self, day: object) -> bool:
        return day in self.extra or day in self.public


def calendar_from(settings: CalendarSettings) -> BusinessCalendar:
    public: Container[date] = (
        holidays.country_holidays(settings.country, subdiv=settings.subdivision or None)
        if settings.country else frozenset())
    return BusinessCalendar(
        zone=ZoneInfo(settings.timezone),
        weekdays=frozenset(settings.weekdays),
        opens=settings.open,
        closes=settings.close,
        closed_days=_ExtraClosed(public, frozenset(settings.closed_days)),
        weekday_hours=dict(settings.weekday_hours_parsed),
        half_days=dict(settings.half_days),
    )


def add_business_hours(cal: BusinessCalendar, start: datetime, hours: float) -> datetime:
    """The instant `hours` of support time after `start` (a deadline at closing is due then)."""
    remaining = timedelta(hours=hours)
    cursor = start.astimezone(UTC)
    day = cursor.astimezone(cal.zone).date()
    for _ in range(_MAX_DAYS):
        window = cal.window(day)
        if window is not None:
            begin = max(cursor, window[0])
            if begin < window[1] or (remaining == timedelta(0) and begin <= window[1]):
                if remaining <= window[1] - begin:
                    return begin + remaining
                remaining -= window[1] - begin
        day += timedelta(days=1)
    raise ValueError("the business calendar has no open hours")


def business_time(cal: BusinessCalendar, start: datetime, end: datetime) -> timedelta:
    """Support time between two instants (zero when `end` is not after `start`)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    total = timedelta(0)
    if end <= start:
        return total
    day = start.astimezone(cal.zone).date()
    last = end.astimezone(cal.zone).date()
    while day <= last:
        window = cal.window(day)
        if window is not None:
            begin, finish = max(start, window[0]), min(end, window[1])
            if finish > begin:
                total += finish - begin
        day += timedelta(days=1)
    return total


def add_business_days(cal: BusinessCalendar, start: datetime, days: int) -> datetime:
    """The opening of the `days`-th open day after the day of `start` (a reminder after
    three business days goes out first thing in the morning)."""
    day = start.astimezone(cal.zone).date()
    left = days
    for _ in range(_MAX_DAYS):
        day += timedelta(days=1)
        window = cal.window(day)
        if window is not None:
            left -= 1
            if left <= 0:
                return window[0]
    raise ValueError("the business calendar has no open hours")
