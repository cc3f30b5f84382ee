"""Replies land in their ticket: by our Message-IDs, a reply address, or a tag — safely."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from harness import Clock, offline_settings
from sqlalchemy import event, select

from maild import db, links
from maild.daemon import build_desk
from maild.intake import Intake
from maild.mail import thread
from maild.mail.fetched import Fetched
from maild.mail.parse import parse
from maild.models import Event, OutboxMail, Ticket, TicketMessage

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
FIRST = ("From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
         "Cc: Chef <chef@kunde.example>\r\nSubject: App stuerzt ab\r\n"
         "Message-ID: <first@kunde.example>\r\n\r\nDie App stürzt ab. Android 14.\r\n")


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def intake(tmp_path, factory, database_url, clock) -> Intake:
    settings = offline_settings(database_url, tmp_path / "blobs")
    return Intake(factory, build_desk(settings, factory, NOW), "INBOX", 3, clock)


def reply(n: int, sender: str, headers: str, body: str = "Noch eine Info.",
          subject: str = "Re: App stuerzt ab") -> Fetched:
    raw = (f"From: {sender}\r\nTo: service@example.com\r\nSubject: {subject}\r\n"
           f"Message-ID: <r{n}@x.example>\r\n{headers}\r\n{body}\r\n").encode()
    return Fetched(n, raw, NOW)


def ack_id(factory) -> str:
    with db.transaction(factory) as s:
        return s.scalars(select(OutboxMail.message_id)).first()


def tickets(factory) -> list[Ticket]:
    with db.transaction(factory) as s:
        return list(s.scalars(select(Ticket).order_by(Ticket.number)))


def test_a_reply_to_our_answer_joins_the_ticket_and_completes_its_facts(intake, factory):
    # Anna answers our acknowledgement with her app version: same ticket, facts merged,
    # fewer things missing, no second acknowledgement.
    intake.process(1, Fetched(1, FIRST.encode(), NOW))
    outcome = intake.process(2, reply(2, "anna@kunde.example",
                                      f"In-Reply-To: {ack_id(factory)}\r\n",
                                      "App-Version: 4.2.1\r\n\r\nAm Mo schrieb Support:\r\n> x"))
    assert outcome.reason == "follow-up" and outcome.ticket_number == 10001
    [t] = tickets(factory)
    assert t.facts.software_version == "4.2.1" and t.facts.os == "Android 14"
    assert "software_version" not in t.missing
    assert t.participants == ["chef@kunde.example"]
    with db.transaction(factory) as s:
        assert len(s.scalars(select(OutboxMail)).all()) == 1
        msgs = s.scalars(select(TicketMessage).where(TicketMessage.direction == "in")).all()
        assert [m.new_text for m in msgs][1] == "App-Version: 4.2.1"
        assert s.scalars(select(Event.kind).order_by(Event.id)).all() == [
            "created", "follow_up"]


def test_in_one_batch_a_reply_joins_a_ticket_opened_earlier_in_that_batch(intake, factory):
    # One batch, written in one go: Bob's mail opens #10002, Anna's second matter #10003;
    # her reply to that mail and her mail tagged [#10003] join #10003 although its rows
    # are not written yet when they are read; a tag of an older ticket works as ever.
    intake.process(1, Fetched(1, FIRST.encode(), NOW))  # #10001, committed before
    mails = [
        Fetched(2, (b"From: Bob <bob@firma.example>\r\nTo: service@example.com\r\n"
                    b"Subject: Rechnung\r\nMessage-ID: <bob@firma.example>\r\n\r\n"
                    b"Bitte Rechnung.\r\n"), NOW),
        Fetched(3, FIRST.replace("first@", "second@").replace("App stuerzt", "Drucker")
                .encode(), NOW),
        reply(4, "anna@kunde.example", "In-Reply-To: <second@kunde.example>\r\n",
              subject="Re: Drucker"),
        reply(5, "anna@kunde.example", "", subject="Re: [#10003] Drucker"),
        reply(6, "anna@kunde.example", "", subject="Re: [#10001] App stuerzt ab"),
    ]
    outcomes = intake.process_batch(1, mails)
    assert [(o.reason, o.ticket_number) for o in outcomes] == [
        ("normal", 10002), ("normal", 10003), ("follow-up", 10003), ("follow-up", 10003),
        ("follow-up", 10001)]
    with db.transaction(factory) as s:
        numbers = {t.id: t.number for t in s.scalars(select(Ticket))}
        joined = [numbers[m.ticket_id] for m in s.scalars(
            select(TicketMessage).where(TicketMessage.direction == "in")
            .order_by(TicketMessage.id))]
        assert joined == [10001, 10002, 10003, 10003, 10003, 10001]
        assert len(s.scalars(select(OutboxMail).where(OutboxMail.kind == "ack")).all()) == 3
        counter = s.scalar(select(db.Counter.value).where(db.Counter.name == "ticket"))
        assert counter == 10003  # the numbers reserved and not used were given back


def test_a_batch_of_replies_to_earlier_tickets_reads_what_they_point_at_once(
        intake, factory):
    # Ten customers answer their acknowledgements in one batch, eight by In-Reply-To only,
    # two by the [#NUMBER] tag only: each joins its own ticket, and the batch looks up the
    # messages and tickets they point at in one query per table, not one per mail.
    for n in range(10):
        intake.process(1, Fetched(n + 1, FIRST.replace("anna@", f"kunde{n}@").replace(
            "first@", f"first{n}@").encode(), NOW))
    with db.transaction(factory) as s:
        acks = {t.number: m for t, m in s.execute(select(Ticket, OutboxMail.message_id)
                                                   .join(OutboxMail,
                                                         OutboxMail.ticket_id == Ticket.id))}
    mails = [reply(100 + n, f"kunde{n}@kunde.example", f"In-Reply-To: {acks[10001 + n]}\r\n",
                   subject="Re: App stuerzt ab") for n in range(8)]
    mails += [reply(100 + n, f"kunde{n}@kunde.example", "",
                    subject=f"Re: [#{10001 + n}] App stuerzt ab") for n in (8, 9)]
    reads: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "max(" not in statement and (
                "FROM ticket_messages" in statement or "FROM tickets" in statement):
            reads.append(statement)

    engine = factory.kw["bind"]
    event.listen(engine, "before_cursor_execute", count)
    try:
        outcomes = intake.process_batch(1, mails)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert [(o.reason, o.ticket_number) for o in outcomes] == [
        ("follow-up", 10001 + n) for n in range(10)]
    assert len(reads) <= 3, reads


def test_a_batch_reads_only_ticket_numbers_a_valid_reply_address_names(intake, factory):
    # A hostile mail can list thousands of plus addresses: only those with a valid token
    # are looked up with the batch (as `find` looks up only those), at most MAX_NUMBERS.
    from maild import threader

    desk = intake.desk
    bogus = ", ".join(f"service+{n}.a0000000@example.com" for n in range(1, 400))
    valid = ", ".join(links.reply_address("service@example.com", desk.secret, n)
                      for n in range(1, 80))
    with db.transaction(factory) as s:
        assert threader.preread(s, desk, [parse(reply(1, "x@y.example", f"Cc: {bogus}\r\n",
                                                      subject="Hallo").raw)], NOW) is None
        known = threader.preread(s, desk, [parse(reply(2, "x@y.example", f"Cc: {valid}\r\n",
                                                       subject="Hallo").raw)], NOW)
    assert known is not None and len(known.numbers) == threader.MAX_NUMBERS


def test_the_tag_attaches_for_the_customer_and_participants_not_for_strangers(
        intake, factory):
    intake.process(1, Fetched(1, FIRST.encode(), NOW))
    tag = "Re: [#10001] Dein Support-Ticket: App stuerzt ab"
    assert intake.process(2, reply(2, "anna@kunde.example", "", subject=tag)).reason == (
        "follow-up")
    assert intake.process(3, reply(3, "chef@kunde.example", "", subject=tag)).reason == (
        "follow-up")
    stranger = intake.process(4, reply(4, "mallory@evil.example", "", subject=tag))
    assert stranger.ticket_number == 10002 and stranger.reason == "normal"
    with db.transaction(factory) as s:
        created = s.scalars(select(Event).where(Event.kind == "created")
                            .order_by(Event.id)).all()
        assert created[-1].detail["refers_to"] == 10001


def test_a_valid_reply_address_attaches_a_forged_one_does_not(intake, factory):
    intake.process(1, Fetched(1, FIRST.encode(), NOW))
    good = links.reply_address("service@example.com", intake.desk.secret, 10001)
    bad = "service+10001.0123456789abcdef0123@example.com"
    ok = intake.process(2, reply(2, "someone@else.example", f"Delivered-To: {good}\r\n",
                                 subject="Hallo"))
    forged = intake.process(3, reply(3, "someone@else.example", f"Delivered-To: {bad}\r\n",
                                     subject="Hallo"))
    assert ok.reason == "follow-up" and forged.ticket_number == 10002


def test_resolved_reopens_within_the_window_later_a_new_ticket_refers_to_it(
        intake, factory, clock):
    intake.process(1, Fetched(1, FIRST.encode(), NOW))
    with db.transaction(factory) as s:
        t = s.scalars(select(Ticket)).one()
        t.status, t.resolved_at = "resolved", NOW
    clock.now = NOW + timedelta(days=3)
    headers = f"In-Reply-To: {ack_id(factory)}\r\n"
    assert intake.process(2, reply(2, "anna@kunde.example", headers)).reason == "follow-up"
    [t] = tickets(factory)
    assert t.status == "in_progress" and t.resolved_at is None
    with db.transaction(factory) as s:
        t = s.scalars(select(Ticket)).one()
        t.status, t.resolved_at = "resolved", clock.now
    clock.now += timedelta(days=30)
    late = intake.process(3, reply(3, "anna@kunde.example", headers))
    assert late.ticket_number == 10002
    assert [t.status for t in tickets(factory)] == ["resolved", "new"]


def test_an_out_of_office_reply_is_recorded_but_changes_nothing(intake, factory):
    intake.process(1, Fetched(1, FIRST.encode(), NOW))
    with db.transaction(factory) as s:
        s.scalars(select(Ticket)).one().status = "waiting"
    outcome = intake.process(2, reply(2, "anna@kunde.example",
                                      f"In-Reply-To: {ack_id(factory)}\r\n"
                                      "Auto-Submitted: auto-replied\r\n",
                                      "Ich bin bis Montag nicht im Büro.",
                                      subject="Abwesenheitsnotiz: App stuerzt ab"))
    assert outcome.ticket_number == 10001
    [t] = tickets(factory)
    assert t.status == "waiting" and "Ich bin" not in str(t.facts)
    with db.transaction(factory) as s:
        last = s.scalars(select(TicketMessage).order_by(TicketMessage.id.desc())).first()
        assert last.automatic and last.direction == "in"
        assert s.scalars(select(Event.kind).order_by(Event.id.desc())).first() == (
            "automatic_reply")


def test_header_helpers():
    mail = parse(b"From: a@b.example\r\nTo: service+10001.abcdefgh@example.com\r\n"
                 b"Subject: AW: Re[2]: [#10001] x\r\nIn-Reply-To: <c@x>\r\n"
                 b"References: <a@x> <b@x> <c@x>\r\n\r\nhi\r\n")
    assert thread.referenced_ids(mail) == ["<c@x>", "<b@x>", "<a@x>"]
    assert thread.subject_tag(mail.subject) == 10001
    assert thread.plus_tokens(mail, "service@example.com") == [(10001, "abcdefgh")]
    assert thread.plus_tokens(mail, "other@example.com") == []


def test_a_reload_that_shortens_the_reopen_window_applies_to_the_next_reply(
        intake, factory, clock, tmp_path, database_url):
    # Resolved 10 days ago: inside the default 14 days, outside the 7 a reload set. The
    # reply opens a new ticket (the decision and the ticket agree on the new window).
    intake.process(1, Fetched(1, FIRST.encode(), NOW))
    with db.transaction(factory) as s:
        t = s.scalars(select(Ticket)).one()
        t.status, t.resolved_at = "resolved", NOW
    clock.now = NOW + timedelta(days=10)
    settings = offline_settings(database_url, tmp_path / "blobs", threading={"reopen_days": 7})
    intake.use(build_desk(settings, factory, NOW), 3, 3)
    late = intake.process(2, reply(2, "anna@kunde.example",
                                   f"In-Reply-To: {ack_id(factory)}\r\n"))
    assert late.action == "processed" and late.ticket_number == 10002
    assert [t.status for t in tickets(factory)] == ["resolved", "new"]
