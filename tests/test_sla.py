"""Business hours: Mon–Fri 09:00–16:00 Europe/Berlin, German holidays."""

from datetime import datetime
from zoneinfo import ZoneInfo

from maild.config import CalendarSettings
from maild.sla import add_business_hours, calendar_from

BERLIN = ZoneInfo("Europe/Berlin")
CAL = calendar_from(CalendarSettings())


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


def test_friday_afternoon_is_due_tuesday_morning():
    # The brief's example: Friday 15:30 + 8 business hours → Tuesday 09:30.
    assert add_business_hours(CAL, at(2026, 11, 27, 15, 30), 8) == at(2026, 12, 1, 9, 30)


def test_deadline_exactly_at_closing_is_due_then():
    assert add_business_hours(CAL, at(2026, 11, 26, 9, 0), 7) == at(2026, 11, 26, 16, 0)


def test_mail_at_night_starts_counting_at_opening():
    assert add_business_hours(CAL, at(2026, 11, 26, 2, 0), 1) == at(2026, 11, 26, 10, 0)


def test_public_holidays_are_skipped():
    # 24 Dec 2026 is a Thursday; 25 and 26 Dec are holidays, then a weekend.
    assert add_business_hours(CAL, at(2026, 12, 24, 15, 0), 2) == at(2026, 12, 28, 10, 0)


def test_across_the_change_to_summer_time():
    # 29 March 2026 clocks go forward; business hours stay 09:00–16:00 local.
    assert add_business_hours(CAL, at(2026, 3, 27, 15, 0), 2) == at(2026, 3, 30, 10, 0)
