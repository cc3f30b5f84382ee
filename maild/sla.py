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
from babel.dates import format_date

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


# -- the support hours in words ---------------------------------------------------------------

_DAY_NAMES = {
    "de": ("Mo", "Di", "Mi", "Do", "Fr", "Sa", "So"),
    "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
}
# Zones whose readers need no zone named after a German "Uhr".
_HOME_ZONES = frozenset({"Europe/Berlin", "Europe/Vienna", "Europe/Zurich", "Europe/Busingen"})
HALF_DAYS_AHEAD = 14


def hours_text(cal: BusinessCalendar, language: str, today: date) -> str:
    """The support hours as a customer reads them, e.g. 'Mon–Thu 09:00–16:00, Fri
    09:00–13:00 (Europe/Berlin)' or 'Mo–Fr 09:00–16:00 Uhr'; half days of the next two
    weeks are named ('; on 24 Dec until 12:00 only')."""
    names = _DAY_NAMES["de" if language == "de" else "en"]
    groups: dict[tuple[time, time], list[int]] = {}
    for day in sorted(cal.weekdays):
        opens, closes = cal.weekday_hours.get(day, (cal.opens, cal.closes))
        if opens < closes:
            groups.setdefault((opens, closes), []).append(day)
    parts = [f"{_day_ranges(days, names)} {_clock(opens)}–{_clock(closes)}"
             for (opens, closes), days in groups.items()]
    text = ", ".join(parts)
    zone = str(cal.zone.key)
    if language == "de":
        text += " Uhr" + ("" if zone in _HOME_ZONES else f" ({zone})")
    else:
        text += f" ({zone})"
    halves = _half_days_ahead(cal, today)
    if halves:
        text += "; " + ", ".join(_half_day(day, closes, language) for day, closes in halves)
    return text


def _clock(moment: time) -> str:
    return f"{moment:%H:%M}"


def _day_ranges(days: list[int], names: tuple[str, ...]) -> str:
    """[1, 2, 3, 5] → 'Mon–Wed, Fri'; two neighbours stay a list ('Sat, Sun')."""
    runs: list[list[int]] = []
    for day in days:
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ", ".join(
        f"{names[run[0] - 1]}–{names[run[-1] - 1]}" if len(run) > 2
        else ", ".join(names[d - 1] for d in run) for run in runs)


def _half_days_ahead(cal: BusinessCalendar, today: date) -> list[tuple[date, time]]:
    """Half days from `today` for two weeks on which support opens at all, in date order."""
    end = today + timedelta(days=HALF_DAYS_AHEAD)
    found = []
    for day, closes in sorted(cal.half_days.items()):
        regular = cal.weekday_hours.get(day.isoweekday(), (cal.opens, cal.closes))[1]
        if today <= day < end and closes < regular and cal.window(day) is not None:
            found.append((day, closes))
    return found


def _half_day(day: date, closes: time, language: str) -> str:
    if language == "de":
        return f"am {day.day}.{day.month}. nur bis {_clock(closes)} Uhr"
    return f"on {format_date(day, 'd MMM', locale='en_GB')} until {_clock(closes)} only"
