"""Business hours: Mon–Fri 09:00–16:00 Europe/Berlin, German holidays, configured extras.

Table tests with hand-checked dates, and properties (hypothesis) of the arithmetic."""

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maild.config import CalendarSettings
from maild.sla import add_business_hours, business_time, calendar_from

BERLIN = ZoneInfo("Europe/Berlin")
CAL = calendar_from(CalendarSettings())
NW = calendar_from(CalendarSettings(country="DE", subdivision="NW"))
CUSTOM = calendar_from(CalendarSettings(
    weekday_hours={"fri": "09:00-13:00", "sat": "10:00-12:00"}, weekdays=(1, 2, 3, 4, 5, 6),
    closed_days=(date(2026, 12, 31),), half_days={date(2026, 12, 23): time(12, 0)}))


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


@pytest.mark.parametrize(("cal", "start", "hours", "due"), [
    # The brief's example: Friday 15:30 + 8 business hours → Tuesday 09:30.
    (CAL, at(2026, 11, 27, 15, 30), 8, at(2026, 12, 1, 9, 30)),
    # A deadline exactly at closing time is due then, not at the next opening.
    (CAL, at(2026, 11, 26, 9, 0), 7, at(2026, 11, 26, 16, 0)),
    (CAL, at(2026, 11, 26, 2, 0), 1, at(2026, 11, 26, 10, 0)),  # at night: from opening
    (CAL, at(2026, 11, 28, 12, 0), 1, at(2026, 11, 30, 10, 0)),  # on Saturday
    (CAL, at(2026, 11, 26, 16, 0), 1, at(2026, 11, 27, 10, 0)),  # at closing
    # 24 Dec 2026 is a Thursday; 25 and 26 Dec are holidays, then a weekend.
    (CAL, at(2026, 12, 24, 15, 0), 2, at(2026, 12, 28, 10, 0)),
    # 29 March 2026 clocks go forward; business hours stay 09:00–16:00 local.
    (CAL, at(2026, 3, 27, 15, 0), 2, at(2026, 3, 30, 10, 0)),
    # 25 October 2026 clocks go back.
    (CAL, at(2026, 10, 23, 15, 0), 8, at(2026, 10, 26, 16, 0)),
    # Easter 2026: Good Friday 3 April and Easter Monday 6 April are national holidays.
    (CAL, at(2026, 4, 2, 15, 0), 2, at(2026, 4, 7, 10, 0)),
    # Corpus Christi (4 June 2026) is a holiday in NW, not nationally.
    (CAL, at(2026, 6, 3, 15, 0), 2, at(2026, 6, 4, 10, 0)),
    (NW, at(2026, 6, 3, 15, 0), 2, at(2026, 6, 5, 10, 0)),
    # Configured: Fridays until 13:00, Saturdays 10–12, a half day, a closed day.
    (CUSTOM, at(2026, 11, 27, 12, 0), 2, at(2026, 11, 28, 11, 0)),
    (CUSTOM, at(2026, 12, 23, 11, 0), 2, at(2026, 12, 24, 10, 0)),
    (CUSTOM, at(2026, 12, 30, 15, 0), 2, at(2027, 1, 2, 11, 0)),
])
def test_deadlines(cal, start, hours, due):
    assert add_business_hours(cal, start, hours) == due
    assert business_time(cal, start, due) == timedelta(hours=hours)


def test_business_time_between_instants():
    assert business_time(CAL, at(2026, 11, 27, 15, 0), at(2026, 11, 30, 10, 0)) == (
        timedelta(hours=2))
    assert business_time(CAL, at(2026, 11, 30, 10, 0), at(2026, 11, 27, 15, 0)) == timedelta(0)
    assert CAL.next_open(at(2026, 11, 28, 8, 0)) == at(2026, 11, 30, 9, 0)
    assert CAL.next_open(at(2026, 11, 30, 11, 0)) == at(2026, 11, 30, 11, 0)
    assert CAL.is_open(at(2026, 11, 30, 15, 59)) and not CAL.is_open(at(2026, 11, 30, 16, 0))


instants = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31),
                        timezones=st.just(UTC))
hours = st.floats(min_value=0.01, max_value=200, allow_nan=False).map(lambda h: round(h, 2))
calendars = st.sampled_from([CAL, NW, CUSTOM])


@settings(max_examples=300, deadline=None)
@given(cal=calendars, start=instants, h=hours)
def test_adding_then_measuring_gives_back_the_hours(cal, start, h):
    due = add_business_hours(cal, start, h)
    assert abs(business_time(cal, start, due) - timedelta(hours=h)) < timedelta(seconds=1)


@settings(max_examples=300, deadline=None)
@given(cal=calendars, start=instants, h=hours)
def test_a_deadline_always_falls_within_support_hours(cal, start, h):
    due = add_business_hours(cal, start, h)
    window = cal.window(due.astimezone(cal.zone).date())
    assert window is not None and window[0] < due <= window[1]  # closing time counts


@settings(max_examples=300, deadline=None)
@given(cal=calendars, a=instants, b=instants, h=hours)
def test_later_mail_is_never_due_earlier(cal, a, b, h):
    first, second = sorted((a, b))
    assert add_business_hours(cal, first, h) <= add_business_hours(cal, second, h)


@settings(max_examples=200, deadline=None)
@given(cal=calendars, a=instants, b=instants, c=instants)
def test_business_time_adds_up(cal, a, b, c):
    x, y, z = sorted((a, b, c))
    assert business_time(cal, x, y) + business_time(cal, y, z) == business_time(cal, x, z)
