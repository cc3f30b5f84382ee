"""Nothing recorded is lost, nothing personal is left: integrity failures that are not
duplicates count against the mail; a purge leaves no byte of the customer; what an
attacker controls (Message-IDs, control characters) never reaches our headers or terminal."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from harness import offline_settings
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from test_sweeps import Desk as SweepDesk
from test_sweeps import at

from maild import db
from maild.daemon import build_desk
from maild.intake import Fetched, Intake
from maild.models import Event, InboundMessage, SweepMark, Ticket
from maild.sweeps import _claim

DATA = Path(__file__).parent / "data"
NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.fixture
def intake(tmp_path, factory, database_url) -> Intake:
    desk = build_desk(offline_settings(database_url, tmp_path / "blobs"), factory, NOW)
    return Intake(factory, desk, "INBOX", max_attempts=2, clock=lambda: NOW)


def _bad_row(session) -> None:
    """Flush a row that breaks a NOT NULL constraint: an IntegrityError, not a duplicate."""
    session.add(Event(ticket_id=None, at=None, actor="maild", kind="x", detail={}))
    session.flush()


# -- integrity failures ------------------------------------------------------------------------

def test_an_integrity_failure_that_is_no_duplicate_is_retried_then_quarantined(
        intake, factory, monkeypatch, caplog):
    # Opening the ticket breaks a NOT NULL constraint: the mail is not "processed", it is
    # retried and then quarantined with the error and an error id.
    def broken(session, *args, **kwargs):
        _bad_row(session)
    monkeypatch.setattr("maild.intake.open_ticket", broken)
    raw = (DATA / "customer_de.eml").read_bytes()
    caplog.set_level(logging.ERROR, "maild.intake")
    outcomes = [intake.process(7, Fetched(1, raw, NOW)) for _ in range(2)]
    assert [o.action for o in outcomes] == ["retry", "quarantine"]
    with db.transaction(factory) as s:
        row = s.scalars(select(InboundMessage)).one()
        assert (row.state, row.attempts) == ("quarantined", 2)
        assert "processing failed 2 times" in row.reason and "error id" in row.reason
        assert "[SQL:" not in row.error  # the driver's message, not the statement
        error_id = row.error.rsplit("error id ", 1)[1].rstrip("]")
        assert s.scalars(select(Ticket)).all() == []
    assert any(error_id in r.getMessage() for r in caplog.records)


def test_the_same_mail_recorded_by_another_process_is_still_processed(intake, factory,
                                                                       monkeypatch):
    # Another process recorded the mail between our look and our insert: the unique key
    # refuses ours, a fresh look finds theirs processed, and the mail is done once.
    raw = (DATA / "customer_de.eml").read_bytes()
    assert intake.process(7, Fetched(1, raw, NOW)).action == "processed"
    monkeypatch.setattr("maild.intake._find", lambda session, key: None)  # the race
    outcome = intake.process(7, Fetched(2, raw, NOW))
    assert (outcome.action, outcome.reason) == ("processed", "recorded concurrently")
    with db.transaction(factory) as s:
        assert len(s.scalars(select(Ticket)).all()) == 1


def test_a_sweep_failing_on_integrity_is_logged_with_an_error_id(tmp_path, factory,
                                                                database_url, monkeypatch,
                                                                caplog):
    # Writing the breach notice breaks a constraint: not taken for a lost claim and
    # skipped in silence, but logged and counted with an error id.
    desk = SweepDesk(tmp_path, factory, database_url, sla={"digest": False})
    desk.mail()
    monkeypatch.setattr("maild.sweeps.Sweeper._agents_mail",
                        lambda self, session, *a, **k: _bad_row(session))
    caplog.set_level(logging.ERROR, "maild.sweeps")
    counts = desk.sweep(at(2026, 11, 27, 11, 0))
    [error] = counts.errors
    assert "error id" in error and "[SQL:" not in error
    error_id = error.rsplit("error id ", 1)[1].rstrip("]")
    assert any(error_id in r.getMessage() for r in caplog.records)
    assert desk.ticket().breached_at is None  # rolled back: tried again next sweep


def test_a_claim_is_lost_only_to_an_existing_mark(factory):
    # A mark already there: the claim is lost. A mark that cannot be written: an error.
    with db.transaction(factory) as s:
        assert _claim(s, "digest:2026-11-26", NOW) is True
    with db.transaction(factory) as s:
        assert _claim(s, "digest:2026-11-26", NOW) is False
    with pytest.raises(sa_exc.IntegrityError), db.transaction(factory) as s:
        _claim(s, "digest:2026-11-27", None)
    with db.transaction(factory) as s:
        assert s.scalars(select(SweepMark.key)).all() == ["digest:2026-11-26"]
