"""The scheduler's sweeps with an injected clock, both databases: each warning, breach,
reminder, auto-close and digest exactly once; none after the first answer; none twice
after a restart; mails to people within support hours; catching up without flooding."""

from __future__ import annotations

import email
import json
import threading
from datetime import UTC, datetime
from email import policy
from zoneinfo import ZoneInfo

import pytest
from harness import Clock, cli_config, maild, offline_settings, raw_of, with_bytes
from sqlalchemy import select

from maild import db, sweeps
from maild.daemon import build_desk
from maild.intake import Intake
from maild.mail.fetched import Fetched
from maild.models import Event, OutboxMail, Ticket
from maild.sweeps import Sweeper

BERLIN = ZoneInfo("Europe/Berlin")
CUSTOMER = ("From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
            "Subject: Export bricht ab\r\nMessage-ID: <{n}@kunde.example>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n")


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN).astimezone(UTC)


THU_10 = at(2026, 11, 26, 10, 0)  # Thursday; 8 business hours → due Friday 11:00


class Desk:
    def __init__(self, tmp_path, factory, database_url, **sections) -> None:
        self.clock = Clock(THU_10)
        self.settings = offline_settings(
            database_url, tmp_path / "blobs",
            agents={"members": [{"address": "max@example.com", "name": "Max"}],
                    "team_address": "team@example.com"},
            sla={"lead_address": "lead@example.com", **sections.pop("sla", {})}, **sections)
        self.factory = factory
        self.desk = build_desk(self.settings, factory, THU_10)
        self.intake = Intake(factory, self.desk, "INBOX", 3, self.clock)
        self.uid = 0

    def sweeper(self) -> Sweeper:
        """A fresh one, as after a restart: nothing but the database remembers."""
        return Sweeper(self.factory, self.desk, self.settings.sla, self.clock)

    def sweep(self, when: datetime):
        self.clock.now = when
        return self.sweeper().run()

    def mail(self, text: str = "Der Export bricht ab.", when: datetime = THU_10) -> int:
        self.uid += 1
        self.clock.now = when
        raw = CUSTOMER.format(n=f"c{self.uid}", text=text).encode()
        outcome = self.intake.process(1, Fetched(self.uid, raw, when))
        assert outcome.ticket_number is not None
        return outcome.ticket_number

    def agent(self, body: str, when: datetime, number: int = 10001) -> None:
        self.uid += 1
        self.clock.now = when
        with db.transaction(self.factory) as s:
            notice = s.scalars(select(OutboxMail.message_id).where(
                OutboxMail.kind == "notify", OutboxMail.ticket_id == self.ticket(number).id)
            ).first()
        raw = (f"From: max@example.com\r\nTo: service@example.com\r\nSubject: Re: x\r\n"
               f"Message-ID: <a{self.uid}@example.com>\r\nIn-Reply-To: {notice}\r\n\r\n"
               f"{body}\r\n").encode()
        self.intake.process(1, Fetched(self.uid, raw, when))

    def outbox(self, *kinds: str) -> list[OutboxMail]:
        with db.transaction(self.factory) as s:
            return with_bytes(list(s.scalars(select(OutboxMail).where(
                OutboxMail.kind.in_(kinds)).order_by(OutboxMail.id))), self.intake.desk.store)

    def ticket(self, number: int = 10001) -> Ticket:
        with db.transaction(self.factory) as s:
            return s.scalars(select(Ticket).where(Ticket.number == number)).one()

    def events(self, kind: str) -> list[Event]:
        with db.transaction(self.factory) as s:
            return list(s.scalars(select(Event).where(Event.kind == kind)))


@pytest.fixture
def desk(tmp_path, factory, database_url) -> Desk:
    return Desk(tmp_path, factory, database_url, sla={"digest": False})


def test_warning_then_breach_each_exactly_once_and_within_support_hours(desk):
    desk.mail()
    assert desk.ticket().first_response_due == at(2026, 11, 27, 11, 0)
    desk.sweep(at(2026, 11, 26, 15, 0))  # 5 of 8 hours used
    assert not desk.outbox("sla_warning")
    # 75 % is reached at Thursday's closing: nobody is mailed in the evening ...
    desk.sweep(at(2026, 11, 26, 16, 30))
    assert not desk.outbox("sla_warning")
    # ... but first thing on Friday, once.
    desk.sweep(at(2026, 11, 27, 9, 0))
    desk.sweep(at(2026, 11, 27, 9, 5))
    desk.sweep(at(2026, 11, 27, 10, 0))
    [warning] = desk.outbox("sla_warning")
    assert warning.recipients == ["team@example.com"]
    msg = email.message_from_bytes(warning.raw, policy=policy.default)
    assert msg["Subject"] == "[#10001] Antwortfrist zu 75 % verstrichen: Export bricht ab"
    assert msg["Auto-Submitted"] == "auto-generated"
    desk.sweep(at(2026, 11, 27, 11, 0))  # due now: the breach, flagged and told
    desk.sweep(at(2026, 11, 27, 11, 1))
    desk.sweep(at(2026, 11, 27, 14, 0))
    [breach] = desk.outbox("sla_breach")
    assert breach.recipients == ["lead@example.com"]
    assert desk.ticket().breached_at == at(2026, 11, 27, 11, 0)
    assert len(desk.events("sla_breach")) == 1 and len(desk.events("sla_warning")) == 1
    assert len(desk.outbox("sla_warning")) == 1


def test_no_warning_or_breach_after_the_first_answer(desk):
    desk.mail()
    desk.agent("Wir schauen uns das an.", at(2026, 11, 26, 12, 0))
    for when in (at(2026, 11, 27, 9, 0), at(2026, 11, 27, 12, 0), at(2026, 12, 1, 9, 0)):
        desk.sweep(when)
    assert not desk.outbox("sla_warning", "sla_breach")
    assert desk.ticket().breached_at is None


def test_a_daemon_down_for_days_sends_only_what_is_not_moot(desk):
    desk.mail()
    # Back on Monday: the warning is moot (already breached), the breach is told once.
    counts = desk.sweep(at(2026, 11, 30, 9, 0))
    assert (counts.warnings, counts.breaches) == (0, 1)
    desk.sweep(at(2026, 11, 30, 9, 1))
    assert not desk.outbox("sla_warning") and len(desk.outbox("sla_breach")) == 1


def test_a_breach_found_at_night_is_flagged_at_once_and_mailed_at_opening(desk):
    desk.mail()
    desk.sweep(at(2026, 11, 27, 20, 0))  # Friday evening, after the due time
    assert desk.ticket().breached_at == at(2026, 11, 27, 11, 0)
    [breach] = desk.outbox("sla_breach")
    assert breach.next_attempt_at == at(2026, 11, 30, 9, 0)  # Monday morning
    assert breach.created_at == breach.next_attempt_at  # its age counts from then


def test_waiting_reminds_after_three_business_days_and_closes_after_ten(desk):
    desk.mail()
    desk.agent("#status waiting\nWelche Version nutzt Du?", at(2026, 11, 26, 12, 0))
    assert desk.ticket().waiting_since == at(2026, 11, 26, 12, 0)
    desk.sweep(at(2026, 11, 30, 15, 0))  # Monday: two business days
    assert not desk.outbox("reminder")
    desk.sweep(at(2026, 12, 1, 9, 0))  # Tuesday morning: the third
    desk.sweep(at(2026, 12, 1, 9, 30))
    [reminder] = desk.outbox("reminder")
    assert reminder.recipients == ["anna@kunde.example"]
    msg = email.message_from_bytes(reminder.raw, policy=policy.default)
    assert msg["Subject"] == ("[#10001] Erinnerung: Wir warten auf Deine Antwort: "
                              "Export bricht ab")
    assert msg["In-Reply-To"] and msg["Auto-Submitted"] == "auto-generated"
    # Closed on the morning of the seventh business day after this one (Dec 10).
    assert "in 7 Arbeitstagen" in msg.get_body(preferencelist=("html",)).get_content()
    desk.sweep(at(2026, 12, 10, 8, 59))  # before opening on the tenth business day
    assert desk.ticket().status == "waiting"
    desk.sweep(at(2026, 12, 10, 9, 0))
    desk.sweep(at(2026, 12, 10, 9, 1))
    [closed] = desk.outbox("autoclose")
    assert closed.recipients == ["anna@kunde.example"]
    t = desk.ticket()
    assert t.status == "closed" and t.closed_at == at(2026, 12, 10, 9, 0)
    assert len(desk.outbox("reminder")) == 1


def test_after_downtime_a_waiting_ticket_is_closed_without_a_late_reminder(desk):
    desk.mail()
    desk.agent("#status waiting", at(2026, 11, 26, 12, 0))
    desk.sweep(at(2026, 12, 14, 10, 0))
    assert desk.ticket().status == "closed"
    assert not desk.outbox("reminder") and len(desk.outbox("autoclose")) == 1


def test_the_customer_answering_stops_the_reminder(desk):
    desk.mail()
    desk.agent("#status waiting", at(2026, 11, 26, 12, 0))
    with db.transaction(desk.factory) as s:
        ack = s.scalars(select(OutboxMail.message_id).where(OutboxMail.kind == "ack")).one()
    desk.uid += 1
    desk.clock.now = at(2026, 11, 27, 10, 0)
    desk.intake.process(1, Fetched(desk.uid, (
        f"From: anna@kunde.example\r\nTo: service@example.com\r\nSubject: Re: x\r\n"
        f"Message-ID: <r@kunde.example>\r\nIn-Reply-To: {ack}\r\n\r\nVersion 5.1\r\n"
    ).encode(), desk.clock.now))
    assert desk.ticket().status == "in_progress" and desk.ticket().waiting_since is None
    desk.sweep(at(2026, 12, 2, 10, 0))
    assert not desk.outbox("reminder", "autoclose")


def test_the_daily_digest_goes_to_the_lead_once_on_business_days(
        tmp_path, factory, database_url):
    desk = Desk(tmp_path, factory, database_url)
    desk.mail()
    desk.mail("Alles steht still, Ausfall!", when=at(2026, 11, 26, 11, 0))
    desk.sweep(at(2026, 11, 28, 9, 0))  # Saturday: no digest
    assert not desk.outbox("digest")
    desk.sweep(at(2026, 11, 30, 8, 59))  # Monday before opening (the digest time)
    assert not desk.outbox("digest")
    desk.sweep(at(2026, 11, 30, 9, 0))
    desk.sweep(at(2026, 11, 30, 9, 5))
    desk.sweeper().run()
    [digest] = desk.outbox("digest")
    assert digest.recipients == ["lead@example.com"]
    msg = email.message_from_bytes(digest.raw, policy=policy.default)
    assert msg["Subject"] == ("Support-Übersicht 30.11.2026: 2 offen, 0 heute fällig, "
                              "2 überfällig")
    text = msg.get_content()
    assert "Überfällig (2):" in text and "#10002" in text and "Eskaliert (0):" in text
    desk.sweep(at(2026, 12, 1, 9, 45))
    assert len(desk.outbox("digest")) == 2


def test_a_shorter_promise_for_urgent_tickets(tmp_path, factory, database_url):
    desk = Desk(tmp_path, factory, database_url,
                calendar={"first_response_by_priority": {"urgent": 2}})
    desk.mail("Totalausfall, niemand kann arbeiten.")
    t = desk.ticket()
    assert t.priority == "urgent" and t.first_response_due == at(2026, 11, 26, 12, 0)
    with db.transaction(desk.factory) as s:
        ack = s.scalars(select(OutboxMail).where(OutboxMail.kind == "ack")).one()
    msg = email.message_from_bytes(raw_of(ack, desk.intake.desk.store), policy=policy.default)
    assert "innerhalb von 2 Stunden" in msg.get_body(preferencelist=("plain",)).get_content()


def test_two_processes_sweeping_at_once_mail_once(tmp_path, factory, database_url):
    desk = Desk(tmp_path, factory, database_url, sla={"digest": False})
    for _ in range(5):
        desk.mail()
    desk.clock.now = at(2026, 11, 27, 9, 30)
    engines = [db.make_engine(database_url) for _ in range(2)]
    sweepers = [Sweeper(db.session_factory(e), desk.desk, desk.settings.sla, desk.clock)
                for e in engines]
    barrier = threading.Barrier(2)

    def run(s: Sweeper) -> None:
        barrier.wait()
        s.run()

    threads = [threading.Thread(target=run, args=(s,)) for s in sweepers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in engines:
        e.dispose()
    assert len(desk.outbox("sla_warning")) == 5


def test_sla_report(desk, tmp_path, database_url):
    desk.mail()  # answered after 2 business hours
    desk.agent("Antwort.", at(2026, 11, 26, 12, 0))
    desk.mail(when=at(2026, 11, 26, 11, 0))  # 10002: never answered → breached
    desk.mail(when=at(2026, 11, 26, 12, 0))  # 10003: answered late, Monday 10:00
    desk.agent("Spät.", at(2026, 11, 30, 10, 0), number=10003)
    cfg = cli_config(tmp_path / "cli.toml", database_url)
    out = maild("sla", "report", "--json", "--since", "2026-11-01", config=cfg)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert (r["tickets"], r["answered"], r["within_promise"], r["breaches"]) == (3, 2, 1, 2)
    assert r["response_hours_median"] == 7.0  # (2 + 12) / 2
    assert r["response_hours_p90"] == 12.0
    assert r["breaches_by_week"] == {"2026-W48": 2}
    assert r["breaches_by_company"] == {"(no company)": 2}
    assert r["share_within_promise"] == pytest.approx(1 / 3, abs=1e-3)
    text = maild("sla", "report", config=cfg).stdout
    assert "Within the promise: 1 of 3" in text
    later = json.loads(maild("sla", "report", "--json", "--since", "2026-12-01",
                             config=cfg).stdout)
    assert later["tickets"] == 0


def test_the_digest_lists_are_capped_and_the_counts_complete(
        tmp_path, factory, database_url, monkeypatch):
    monkeypatch.setattr(sweeps, "DIGEST_LIST", 2)
    desk = Desk(tmp_path, factory, database_url)
    for _ in range(3):
        desk.mail()
    desk.sweep(at(2026, 11, 30, 9, 0))
    [digest] = desk.outbox("digest")
    msg = email.message_from_bytes(digest.raw, policy=policy.default)
    assert msg["Subject"] == ("Support-Übersicht 30.11.2026: 3 offen, 0 heute fällig, "
                              "3 überfällig")
    text = msg.get_content()
    assert "Überfällig (3, die ersten 2):" in text and "Offen (3, die ersten 2):" in text
    assert "#10001" in text and "#10003" not in text
