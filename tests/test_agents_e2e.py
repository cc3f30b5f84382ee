"""Agents by reply, end to end: `maild run` against Dovecot and the SMTP capture, both
databases. The mails an agent and a customer would send, built from what they received."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import (
    Captured,
    Daemon,
    SmtpCapture,
    outbox_settled,
    rows,
    wait_until,
    write_config,
)
from sqlalchemy import select

from maild import db
from maild.models import Event, OutboxMail, Ticket, TicketMessage

AGENTS = """
[agents]
team_address = "team@example.com"
members = [{ address = "max@example.com", name = "Max Agent" }]
"""
CUSTOMER = ("From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
            "Subject: Auftragsliste leer\r\nMessage-ID: <start@kunde.example>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            "Seit heute früh ist die Auftragsliste leer. Windows 11, Version 5.1.\r\n")


def plain(mail: Captured) -> str:
    return mail.message.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")


def sent_to(smtp: SmtpCapture, address: str) -> list[Captured]:
    return [m for m in smtp.mails if address in m.recipients]


def reply(sender: str, to: Captured, body: str, n: int, *, subject: str | None = None,
          refs: bool = True) -> bytes:
    """What a mail client sends when `sender` answers the mail `to`."""
    msg = to.message
    head = (f"From: {sender}\r\nTo: service@example.com\r\n"
            f"Subject: {subject or 'AW: ' + msg['Subject']}\r\n"
            f"Message-ID: <reply{n}@{sender.rpartition('@')[2].rstrip('>')}>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n")
    if refs:
        head += (f"In-Reply-To: {msg['Message-ID']}\r\n"
                 f"References: {msg.get('References', '')} {msg['Message-ID']}\r\n")
    return (head + "\r\n" + body.replace("\n", "\r\n")).encode()


@pytest.fixture
def daemon(tmp_path: Path, dovecot, mailbox, smtp, database_url):
    config = write_config(tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
                          password=mailbox.password, smtp_port=smtp.port,
                          database_url=database_url, extra=AGENTS)
    d = Daemon(config, tmp_path / "maild.log").start()
    yield d
    d.kill()


def test_customer_agent_customer_round_trip(daemon, mailbox, smtp, database_url):
    mailbox.append(CUSTOMER.encode())
    smtp.wait_for(2)
    [ack] = sent_to(smtp, "anna@kunde.example")
    [notice] = sent_to(smtp, "team@example.com")
    assert notice.message["Subject"] == "[#10001] Neues Ticket: Auftragsliste leer"
    assert "Seit heute früh ist die Auftragsliste leer." in plain(notice)

    # Max answers the notification: a command, his text, his client's quote below.
    quoted = "\n".join("> " + line for line in plain(notice).splitlines())
    mailbox.append(reply("Max Agent <max@example.com>", notice,
                         "#status in_progress\n\nHallo Anna,\nbitte melde Dich einmal ab "
                         "und wieder an.\n\nMax\n\nAm 26.11.2026 schrieb Example Support:\n"
                         + quoted, 1))
    smtp.wait_for(4)
    to_customer = sent_to(smtp, "anna@kunde.example")
    relay = next(m for m in to_customer if "Auftragsliste leer" in m.message["Subject"]
                 and m.message["Subject"].startswith("Re:"))
    status = next(m for m in to_customer if "Wir arbeiten" in m.message["Subject"])
    msg = relay.message
    assert msg["From"].addresses[0].addr_spec == "service@example.com"
    assert msg["From"].addresses[0].display_name == "Max Agent (Example Support)"
    assert msg["Subject"] == "Re: [#10001] Auftragsliste leer"
    assert msg["In-Reply-To"] == ack.message["Message-ID"]
    assert msg["References"].split() == ["<start@kunde.example>", ack.message["Message-ID"]]
    assert msg["Auto-Submitted"] is None and msg["X-Maild-Loop"] == "service@example.com"
    text = plain(relay)
    assert text.startswith("Hallo Anna,\nbitte melde Dich einmal ab und wieder an.")
    assert "#status" not in text and "Neues Ticket" not in text and "max@example.com" not in text
    assert status.message["Subject"] == "[#10001] Wir arbeiten an Deinem Ticket: Auftragsliste leer"
    assert status.message["Auto-Submitted"] == "auto-generated"
    assert status.message["In-Reply-To"] in (ack.message["Message-ID"], msg["Message-ID"])

    # Anna answers the relayed mail: same ticket, and the team hears of it.
    mailbox.append(reply("Anna Berger <anna@kunde.example>", relay,
                         "Hat leider nicht geholfen.\n\nAm ... schrieb Max:\n> Hallo Anna", 2))
    smtp.wait_for(5)
    follow = sent_to(smtp, "team@example.com")[-1]
    assert follow.message["Subject"] == "[#10001] Antwort vom Kunden: Auftragsliste leer"
    assert "Hat leider nicht geholfen." in plain(follow)
    assert follow.message["In-Reply-To"] == notice.message["Message-ID"]
    assert wait_until(lambda: mailbox.count("Processed") == 3 and mailbox.count("INBOX") == 0)
    assert wait_until(lambda: outbox_settled(database_url))  # all three are through
    assert len(smtp.mails) == len(rows(database_url, OutboxMail)) == 5
    assert len(smtp.by_message_id()) == 5
    [ticket] = rows(database_url, Ticket)
    assert ticket.status == "in_progress" and ticket.first_response_at is not None
    kinds = [m.kind for m in rows(database_url, TicketMessage)]
    assert kinds == ["customer", "ack", "notify", "agent", "relay", "status", "customer",
                     "notify"]
    assert [(e.kind, e.actor) for e in rows(database_url, Event)] == [
        ("created", "anna@kunde.example"), ("status", "max@example.com"),
        ("first_response", "max@example.com"), ("follow_up", "anna@kunde.example")]


def test_notes_wrong_commands_forged_agents_and_strangers(daemon, mailbox, smtp, database_url):
    mailbox.append(CUSTOMER.encode())
    smtp.wait_for(2)
    [ack] = sent_to(smtp, "anna@kunde.example")
    [notice] = sent_to(smtp, "team@example.com")
    # An internal note: nothing goes anywhere.
    mailbox.append(reply("max@example.com", notice, "#note\nKunde kennt den Fehler schon.", 1))
    assert wait_until(lambda: mailbox.count("Processed") == 2)
    # A typo: nothing is done, Max is told what was wrong.
    mailbox.append(reply("max@example.com", notice, "#stauts resolved\nIst gelöst.", 2))
    smtp.wait_for(3)
    [rejected] = sent_to(smtp, "max@example.com")
    assert "Nicht ausgeführt" in rejected.message["Subject"]
    assert "'#stauts resolved': unknown command" in plain(rejected)
    # Someone forges Max's From with the ticket's tag: no command runs, the team is warned.
    mailbox.append(reply("max@example.com", ack, "#status closed\nErledigt.", 3, refs=False))
    # A stranger uses the tag: a new ticket that refers to #10001, not an entry in it.
    mailbox.append(reply("mallory@evil.example", ack, "Ich will auch.", 4, refs=False))
    assert wait_until(lambda: mailbox.count("Processed") == 5 and mailbox.count("INBOX") == 0)
    assert wait_until(lambda: not rows(database_url, OutboxMail,
                                       OutboxMail.state != "sent"))
    warning = [m for m in sent_to(smtp, "team@example.com") if "Warnung" in m.message["Subject"]]
    assert len(warning) == 1 and "max@example.com" in plain(warning[0])
    assert sent_to(smtp, "anna@kunde.example") == [ack]  # the customer saw nothing more
    first = rows(database_url, Ticket, Ticket.number == 10001)[0]
    assert first.status == "new" and first.closed_at is None
    authors = {m.author for m in rows(database_url, TicketMessage,
                                      TicketMessage.ticket_id == first.id)}
    assert "mallory@evil.example" not in authors
    created = rows(database_url, Event, Event.kind == "created")
    assert [e.detail.get("refers_to") for e in created] == [None, 10001, 10001]
    assert not rows(database_url, Event, Event.kind == "status")
    assert len(smtp.by_message_id()) == len(smtp.mails)


SWEEPING = AGENTS + """
[sla]
sweep_seconds = 0.5
digest_time = 00:00:00

[calendar]
country = ""
weekdays = [1, 2, 3, 4, 5, 6, 7]
open = 00:00:00
close = 23:59:59
"""


def sweeping_daemon(tmp_path, dovecot, mailbox, smtp, database_url) -> Daemon:
    """A started daemon with agents, always open, sweeping every half second."""
    config = write_config(tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
                          password=mailbox.password, smtp_port=smtp.port,
                          database_url=database_url, extra=SWEEPING)
    return Daemon(config, tmp_path / "maild.log").start()


def overdue(url: str, number: int) -> None:
    """Ticket `number`'s first response is long overdue, as if years had passed."""
    engine = db.make_engine(url)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            ticket = s.scalars(select(Ticket).where(Ticket.number == number)).one()
            ticket.first_response_due = ticket.opened_at.replace(year=2020)
    finally:
        engine.dispose()


def test_the_daemon_sweeps_breaches_and_warnings_once_across_a_restart(
        tmp_path, dovecot, mailbox, smtp, database_url):
    # Always open, so mails to people go out at once; the deadlines are moved in the
    # database, as time passing would move them.
    daemon = sweeping_daemon(tmp_path, dovecot, mailbox, smtp, database_url)
    try:
        for name in ("start@", "second@", "third@", "fourth@"):
            mailbox.append(CUSTOMER.replace("start@", name).encode())
        smtp.wait_for(8)  # four acknowledgements, four notifications
        engine = db.make_engine(database_url)
        try:
            with db.transaction(db.session_factory(engine)) as s:
                first, second = s.scalars(select(Ticket).order_by(Ticket.number)).all()[:2]
                first.first_response_due = first.opened_at.replace(year=2020)  # long overdue
                second.first_response_due = second.opened_at + (
                    second.first_response_due - second.opened_at) / 100  # 1 % left
                second.opened_at = second.opened_at - (
                    second.first_response_due - second.opened_at) * 99
        finally:
            engine.dispose()
        smtp.wait_for(11)  # breach, warning, and the day's digest
        # Sent marks are committed in groups: a SIGKILL before that may send a mail again
        # (the same Message-ID, by design). Kill once they are in, to count sweeps here.
        assert wait_until(lambda: outbox_settled(database_url))
        daemon.kill()
        daemon.start()
        # Proof that the restarted daemon swept whole sweeps: #10003 made overdue now is
        # flagged by one sweep, #10004 made overdue after that by a later one.
        overdue(database_url, 10003)
        smtp.wait_for(12)
        overdue(database_url, 10004)
        smtp.wait_for(13)
        assert wait_until(lambda: outbox_settled(database_url))
        subjects = [m.message["Subject"] for m in smtp.mails]
        breaches = [s for s in subjects if "Antwortfrist überschritten" in s]
        assert [s.split("]")[0] for s in breaches] == ["[#10001", "[#10003", "[#10004"], subjects
        assert sum("Antwortfrist zu 75 %" in s for s in subjects) == 1, subjects
        breach = next(m for m in smtp.mails if "überschritten" in m.message["Subject"])
        assert breach.recipients == ["team@example.com"]  # the lead defaults to the team
        assert sum(s.startswith("Support-Übersicht") for s in subjects) == 1  # today's digest
        assert len(smtp.mails) == 13 and len(smtp.by_message_id()) == 13
        assert [t.breached_at is not None for t in rows(database_url, Ticket)] == [
            True, False, True, True]
    finally:
        daemon.kill()


def test_after_a_restart_the_backlogs_acknowledgements_are_queued_before_the_sweeps_mails(
        tmp_path, dovecot, mailbox, smtp, database_url):
    # Mail came in while maild was down, and a deadline passed: the customers waiting in
    # the inbox get their acknowledgements first, then the catch-up sweep flags the breach.
    daemon = sweeping_daemon(tmp_path, dovecot, mailbox, smtp, database_url)
    try:
        mailbox.append(CUSTOMER.encode())
        smtp.wait_for(2)  # the acknowledgement and the notification
        assert wait_until(lambda: outbox_settled(database_url))
        daemon.kill()
        overdue(database_url, 10001)
        for n in range(30):
            mailbox.append(CUSTOMER.replace("start@", f"later{n}@").replace(
                "anna@kunde.example", f"kunde{n}@kunde.example").encode())
        daemon.start()
        assert wait_until(lambda: any(o.kind == "sla_breach"
                                      for o in rows(database_url, OutboxMail)), timeout=60)
        queued = rows(database_url, OutboxMail)
        acks = [o.id for o in queued if o.kind == "ack"]
        [breach] = [o.id for o in queued if o.kind == "sla_breach"]
        assert len(acks) == 31 and max(acks) < breach
    finally:
        daemon.kill()
