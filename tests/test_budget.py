"""A budget per mail: time, memory and a crash counter, so one mail cannot stall maild."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from harness import Daemon, customer_mail, offline_settings, rows, wait_until
from hostile import analysis, hostile_mail
from sqlalchemy import select

from maild import db
from maild.analyse import Budget
from maild.daemon import build_desk
from maild.errors import StorageUnavailable, Temporary
from maild.intake import Intake
from maild.mail.fetched import Fetched
from maild.models import InboundMessage, OutboxMail, ParseAttempt, Ticket

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS.parent / "bench"))
from bigmail import write_mail  # noqa: E402  (a ~N MB mail, PDF-like attachment)

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


@pytest.fixture
def make_intake(tmp_path, factory, database_url):
    made: list[Intake] = []

    def make(workers: int = 1, seconds: float = 1.0, memory_mb: int = 1024,
             flight: Path | None = None) -> Intake:
        desk = build_desk(offline_settings(database_url, tmp_path / "blobs"), factory, NOW)
        intake = Intake(factory, desk, "INBOX", 3, lambda: NOW, workers=workers,
                        budget=Budget(seconds, memory_mb), analysis=analysis, flight=flight)
        intake.start()
        made.append(intake)
        return intake

    yield make
    for intake in made:
        intake.close()


def inbound(factory) -> dict[int, InboundMessage]:
    with db.transaction(factory) as s:
        return {row.uid: row for row in s.scalars(select(InboundMessage))}


def marks(factory) -> list[ParseAttempt]:
    with db.transaction(factory) as s:
        return list(s.scalars(select(ParseAttempt)))


@pytest.mark.parametrize(("how", "reason"), [
    ("hang", "parsing took longer than 1 s"),
    ("sleep", "parsing took longer than 1 s"),
    ("memory", "parsing exceeded the memory limit"),
    ("kill", "the parse worker died"),
])
def test_a_runaway_mail_is_quarantined_and_the_mails_behind_it_go_on(
        make_intake, factory, how, reason):
    # A mail whose analysis runs forever, eats memory or kills its worker, in a batch
    # between good mails: it is quarantined with a readable reason, the others get tickets,
    # and the next batch finds a working worker.
    intake = make_intake(seconds=1.0)
    began = time.monotonic()
    outcomes = intake.process_batch(7, [
        Fetched(1, customer_mail(1), NOW), Fetched(2, hostile_mail(2, how), NOW),
        Fetched(3, customer_mail(3), NOW)])
    assert time.monotonic() - began < 20
    assert [o.action for o in outcomes] == ["processed", "quarantine", "processed"]
    assert outcomes[1].reason == reason
    rows_ = inbound(factory)
    assert rows_[2].state == "quarantined" and rows_[2].reason == reason
    assert rows_[1].ticket_id and rows_[3].ticket_id
    assert intake.process(7, Fetched(4, customer_mail(4), NOW)).ticket_number == 10003
    assert marks(factory) == []  # every attempt closed with its outcome


def test_a_mail_over_the_memory_limit_is_quarantined_and_the_next_parsed(
        make_intake, factory, tmp_path):
    # A real mail too big for a worker limited to 200 MB (no hostile code): quarantined
    # for memory; a small mail after it is processed by a fresh worker.
    write_mail(tmp_path / "big.eml", 15)
    intake = make_intake(seconds=30, memory_mb=200)
    big = Fetched(1, (tmp_path / "big.eml").read_bytes(), NOW)
    first = intake.process_batch(7, [big, Fetched(2, customer_mail(2), NOW)])
    assert [(o.action, o.reason) for o in first] == [
        ("quarantine", "parsing exceeded the memory limit"), ("processed", "normal")]
    assert inbound(factory)[1].state == "quarantined"


def test_a_mail_that_kept_killing_the_process_is_quarantined_without_parsing(
        make_intake, factory, database_url, tmp_path):
    # maild analysing in its own process is killed (SIGKILL) by a mail three times: the
    # attempt marks count it, and the next run quarantines it without analysing it (the
    # analysis would kill the worker and say "the parse worker died").
    mail = tmp_path / "killer.eml"
    mail.write_bytes(hostile_mail(1, "kill"))
    for run in range(3):
        done = subprocess.run(
            [sys.executable, str(TESTS / "hostile.py"), database_url, str(tmp_path / "blobs"),
             str(mail)], cwd=TESTS, capture_output=True, text=True, timeout=120)
        assert done.returncode == -9, done.stderr
        [mark] = marks(factory)
        assert (mark.uid, mark.crashes) == (1, run)
    intake = make_intake(flight=tmp_path / "parsing.json")
    outcome = intake.process(7, Fetched(1, mail.read_bytes(), NOW))
    assert (outcome.action, outcome.reason) == (
        "quarantine", "killed the process 3 times while being parsed")
    row = inbound(factory)[1]
    assert row.state == "quarantined" and row.reason == outcome.reason
    assert marks(factory) == []
    assert rows(database_url, Ticket) == []


def test_an_open_mark_from_an_earlier_run_counts_once_and_the_mail_is_then_processed(
        make_intake, factory):
    # The process ended once under a mail (its mark still open): the next run counts it,
    # analyses it again (below max_crashes), processes it and closes the mark.
    with db.transaction(factory) as s:
        s.add(ParseAttempt(mailbox="INBOX", uidvalidity=7, uid=1, started_at=NOW, crashes=0))
    intake = make_intake()
    assert intake.process(7, Fetched(1, customer_mail(1), NOW)).action == "processed"
    assert marks(factory) == []
    [row] = inbound(factory).values()
    assert row.ticket_id is not None and row.state == "processed"


def test_the_daemon_survives_a_mail_over_the_worker_memory_limit(
        config, tmp_path, mailbox, smtp, database_url):
    # `maild run` with a small worker memory limit: a 20 MB mail goes to Quarantine with
    # the reason, the customer mail behind it is acknowledged within seconds, and the
    # daemon keeps running.
    write_mail(tmp_path / "big.eml", 15)
    with config.open("a") as fh:
        fh.write("parse_workers = 1\nparse_timeout = 20\nparse_memory_mb = 200\n")
    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        mailbox.append((tmp_path / "big.eml").read_bytes())
        mailbox.append(customer_mail(2))
        [ack] = smtp.wait_for(1, timeout=60)
        assert ack.recipients == ["kunde2@firma2.example"]
        assert wait_until(lambda: mailbox.count("Quarantine") == 1
                          and mailbox.count("Processed") == 1, timeout=30), daemon.output()
        [bad] = rows(database_url, InboundMessage, InboundMessage.state == "quarantined")
        assert bad.reason == "parsing exceeded the memory limit"
        assert daemon.process is not None and daemon.process.poll() is None
        mailbox.append(customer_mail(3))
        assert len(smtp.wait_for(2, timeout=30)) == 2
    finally:
        assert daemon.stop() == 0


def test_stopping_maild_under_a_long_analysis_is_no_verdict_on_the_mail(
        make_intake, factory):
    # maild is stopped while a mail is being analysed: the batch ends as a temporary
    # failure (nothing recorded, the mail stays for the next start), not as a quarantine.
    intake = make_intake(seconds=60)
    analysed = intake.analyse(7, [Fetched(1, hostile_mail(1, "sleep"), NOW)])
    time.sleep(1.0)
    began = time.monotonic()
    intake.close()
    with pytest.raises(Temporary):
        intake.process_batch(7, [Fetched(1, hostile_mail(1, "sleep"), NOW)], analysed)
    assert time.monotonic() - began < 10
    assert inbound(factory) == {}


def test_a_copy_of_a_processed_mail_that_runs_over_budget_stays_processed(
        make_intake, factory):
    # The same mail again (same Message-ID and body, another header) whose analysis now
    # runs over budget: the mail is done already, its record is not turned into a quarantine.
    intake = make_intake(seconds=1.0)
    raw = customer_mail(1)
    assert intake.process(7, Fetched(1, raw, NOW)).action == "processed"
    copy = raw.replace(b"\r\n\r\n", b"\r\nX-Hostile: hang\r\n\r\n", 1)
    assert intake.process(7, Fetched(2, copy, NOW)).reason == "already processed"
    [row] = inbound(factory).values()
    assert row.state == "processed" and row.ticket_id is not None


def test_a_blob_store_failure_in_the_worker_is_temporary_not_the_mails_fault(
        tmp_path, factory, database_url):
    # The worker cannot write the blobs (the store's folder is a file): the batch fails
    # temporarily, nothing is recorded and no crash counted; once the store works, the
    # same mail is processed.
    blob_dir = tmp_path / "blobs"
    blob_dir.write_text("not a folder")
    desk = build_desk(offline_settings(database_url, blob_dir), factory, NOW)
    intake = Intake(factory, desk, "INBOX", 3, lambda: NOW, workers=1)
    intake.start()
    try:
        with pytest.raises(StorageUnavailable):
            intake.process(7, Fetched(1, customer_mail(1), NOW))
        assert inbound(factory) == {}
        blob_dir.unlink()
        assert intake.process(7, Fetched(1, customer_mail(1), NOW)).action == "processed"
        assert marks(factory) == []
    finally:
        intake.close()


def test_only_the_mail_being_parsed_when_the_process_ended_counts_a_crash(
        make_intake, factory, tmp_path, caplog):
    # The daemon was killed during a batch of three: only the mail then in the parse
    # worker (the in-flight record says which) counts a crash, not its batch-mates.
    flight = tmp_path / "parsing.json"
    flight.write_text("[[7, 2]]")
    with db.transaction(factory) as s:
        for uid in (1, 2, 3):
            s.add(ParseAttempt(mailbox="INBOX", uidvalidity=7, uid=uid, started_at=NOW,
                               crashes=2))
    intake = make_intake(flight=flight)
    with caplog.at_level("WARNING", logger="maild.intake"):
        outcomes = intake.process_batch(7, [Fetched(n, customer_mail(n), NOW) for n in (1, 2, 3)])
    assert [o.action for o in outcomes] == ["processed", "quarantine", "processed"]
    assert outcomes[1].reason == "killed the process 3 times while being parsed"
    counted = [r.getMessage() for r in caplog.records if "when maild ended" in r.getMessage()]
    assert counted == ["mail was being parsed when maild ended uid=2 crashes=3"]
    assert marks(factory) == []


def test_a_mail_failing_inside_a_batch_fails_alone_and_nothing_is_doubled(
        make_intake, factory, database_url, monkeypatch, caplog):
    # A batch is written without a savepoint per mail; when one mail fails, the batch is
    # rolled back and written again with one savepoint each: the others are processed
    # once (one ticket, one acknowledgement each, no number skipped), the failing one is
    # counted against itself alone.
    import maild.intake
    real = maild.intake.open_ticket

    def failing(session, desk, parsed, *args, **kwargs):
        if parsed.from_addr == "kunde2@firma2.example":
            raise RuntimeError("boom for mail 2")
        return real(session, desk, parsed, *args, **kwargs)

    monkeypatch.setattr(maild.intake, "open_ticket", failing)
    intake = make_intake(workers=0)
    with caplog.at_level("WARNING", logger="maild.intake"):
        outcomes = intake.process_batch(7, [Fetched(n, customer_mail(n), NOW)
                                            for n in (1, 2, 3)])
    assert [o.action for o in outcomes] == ["processed", "retry", "processed"]
    # The log says the batch's first lines were rolled back, without the mail's words.
    [redo] = [r.getMessage() for r in caplog.records if "written again" in r.getMessage()]
    assert "(RuntimeError)" in redo and "boom" not in redo
    assert outcomes[0].ticket_number + 1 == outcomes[2].ticket_number
    tickets = rows(database_url, Ticket)
    assert sorted(t.customer_address for t in tickets) == ["kunde1@firma1.example",
                                                           "kunde3@firma3.example"]
    acks = rows(database_url, OutboxMail)
    assert sorted(a.recipient for a in acks) == ["kunde1@firma1.example",
                                                 "kunde3@firma3.example"]
    failed = inbound(factory)[2]
    assert (failed.state, failed.attempts) == ("failed", 1)
    assert "boom for mail 2" in failed.error
    assert marks(factory) == []


@pytest.fixture
def bad_row_from_mail_2(monkeypatch):
    """Mail 2's new ticket leaves an event that breaks a NOT NULL constraint once it is
    written out (after its turn, with the batch's pending rows)."""
    import maild.intake
    from maild.models import Event
    real = maild.intake.open_ticket

    def leaves_a_bad_row(session, desk, parsed, *args, **kwargs):
        ticket = real(session, desk, parsed, *args, **kwargs)
        if parsed.from_addr == "kunde2@firma2.example":
            session.add(Event(ticket_id=None, at=None, actor="maild", kind="x", detail={}))
        return ticket

    monkeypatch.setattr(maild.intake, "open_ticket", leaves_a_bad_row)


@pytest.mark.usefixtures("bad_row_from_mail_2")
def test_a_failure_when_the_batch_is_flushed_last_is_still_the_mails_own(
        make_intake, database_url):
    # The last mail of a batch leaves a row that breaks a constraint only when it is
    # written out, after its turn: still counted against that mail, the other processed.
    intake = make_intake(workers=0)
    outcomes = intake.process_batch(7, [Fetched(n, customer_mail(n), NOW) for n in (1, 2)])
    assert [o.action for o in outcomes] == ["processed", "retry"]
    assert [t.customer_address for t in rows(database_url, Ticket)] == ["kunde1@firma1.example"]
    assert [a.recipient for a in rows(database_url, OutboxMail)] == ["kunde1@firma1.example"]


@pytest.mark.usefixtures("bad_row_from_mail_2")
def test_a_failed_analysis_after_a_bad_pending_row_leaves_the_failure_where_it_belongs(
        make_intake, database_url, factory):
    # Mail 2 leaves a row that breaks a constraint when written; mail 3's analysis failed,
    # and recording that failure writes out what is pending first. The batch is still
    # written again mail by mail: mail 2 fails alone, mail 3's failure is its own (the
    # error used to escape the batch, which then failed the same way every round).
    intake = make_intake(workers=0)
    outcomes = intake.process_batch(7, [Fetched(1, customer_mail(1), NOW),
                                        Fetched(2, customer_mail(2), NOW),
                                        Fetched(3, hostile_mail(3, "raise"), NOW)])
    assert [o.action for o in outcomes] == ["processed", "retry", "retry"]
    assert [t.customer_address for t in rows(database_url, Ticket)] == ["kunde1@firma1.example"]
    failed = inbound(factory)
    assert (failed[2].state, failed[2].attempts) == ("failed", 1)
    assert (failed[3].state, failed[3].attempts) == ("failed", 1)
    assert "a parser bug on this mail" in failed[3].error

