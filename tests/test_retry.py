"""The one backoff rule (maild/retry.py): no database, no clock."""

from __future__ import annotations

import random

from maild.retry import Backoff, delay


def test_delays_double_up_to_the_cap() -> None:
    assert [delay(1, 60, n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert delay(30, 3600, 0) == 30  # no failure yet counts as the first


def test_jitter_spreads_within_its_share() -> None:
    rng = random.Random(7)
    spread = [delay(100, 1000, 1, 0.2, rng) for _ in range(200)]
    assert 80 <= min(spread) < 90 and 110 < max(spread) <= 120


def test_backoff_runs_and_resets() -> None:
    b = Backoff(1, 5)
    assert [b.next() for _ in range(5)] == [1, 2, 4, 5, 5]
    b.reset()
    assert b.next() == 1


def test_an_outage_is_told_once_and_its_end_once(caplog):
    import logging

    from maild.retry import Outage
    log = logging.getLogger("maild.test_outage")
    outage = Outage(log, "sending again")
    with caplog.at_level(logging.DEBUG, logger="maild.test_outage"):
        outage.over()  # nothing failed: nothing to say
        outage.failed("connection refused")
        outage.failed("connection reset")
        outage.failed("connection refused")
        outage.over()
        outage.over()
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [("WARNING", "connection refused; retrying with backoff"),
                    ("DEBUG", "still failing: connection reset"),
                    ("DEBUG", "still failing: connection refused"),
                    ("INFO", "sending again after: connection refused")]
