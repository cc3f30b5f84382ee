"""Business-calendar arithmetic for the response promise; pure, takes instants as values."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays

from maild.config import CalendarSettings


@dataclass(frozen=True, slots=True)
class BusinessCalendar:
    zone: ZoneInfo
    weekdays: frozenset[int]
    opens: time
    closes: time
    closed_days: Container[date]

    def window(self, day: date) -> tuple[datetime, datetime] | None:
        """Opening and closing instant of `day`, or None when closed all day."""
        if day.isoweekday() not in self.weekdays or day in self.closed_days:
            return None
        return (
            datetime.combine(day, self.opens, tzinfo=self.zone).astimezone(UTC),
            datetime.combine(day, self.closes, tzinfo=self.zone).astimezone(UTC),
        )


def calendar_from(settings: CalendarSettings) -> BusinessCalendar:
    closed = holidays.country_holidays(settings.country, subdiv=settings.subdivision or None)
    return BusinessCalendar(
        zone=ZoneInfo(settings.timezone),
        weekdays=frozenset(settings.weekdays),
        opens=settings.open,
        closes=settings.close,
        closed_days=closed,
    )


def add_business_hours(cal: BusinessCalendar, start: datetime, hours: float) -> datetime:
    """The instant `hours` of support time after `start` (a deadline at closing is due then)."""
    remaining = timedelta(hours=hours)
    cursor = start.astimezone(UTC)
    day = cursor.astimezone(cal.zone).date()
    for _ in range(3660):  # ten years of closed days would be a broken calendar
        window = cal.window(day)
        if window is not None:
            begin = max(cursor, window[0])
            if begin < window[1]:
                if remaining <= window[1] - begin:
                    return begin + remaining
                remaining -= window[1] - begin
        day += timedelta(days=1)
    raise ValueError("the business calendar has no open hours")
