"""Agents work by reply: notifications, proof, commands, relays, notes, status mails, history.

In-process against both databases (intake + outbox rows); the whole path over Dovecot and
SMTP is in test_agents_e2e.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from harness import Clock, Feeder, cli_config, maild, message, offline_settings, text_of
from sqlalchemy import select

from maild import db, links
from maild.daemon import build_desk
from maild.intake import Intake
from maild.mail import auth, commands
from maild.mail.fetched import Fetched
from maild.models import TicketMessage

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)  # a Thursday, within support hours
FIRST = ("From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
         "Cc: Chef <chef@kunde.example>\r\nSubject: App stuerzt ab\r\n"
         "Message-ID: <first@kunde.example>\r\n\r\nDie App stürzt ab. Android 14.\r\n")
AGENTS = {"members": [{"address": "max@example.com", "name": "Max Agent"},
                      {"address": "lea@example.com", "name": "Lea Lead", "lead": True}],
          "team_address": "team@example.com", "trusted_authserv_ids": ["mx.example.com"]}


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


def make_intake(tmp_path, factory, database_url, clock, **sections) -> Intake:
    settings = offline_settings(database_url, tmp_path / "blobs",
                                agents={**AGENTS, **sections.pop("agents", {})}, **sections)
    return Intake(factory, build_desk(settings, factory, NOW), "INBOX", 3, clock)


@pytest.fixture
def intake(tmp_path, factory, database_url, clock) -> Intake:
    return make_intake(tmp_path, factory, database_url, clock)


class Desk(Feeder):
    """Feeds mails to the intake and reads what it queued (see harness.Feeder)."""

    def agent_reply(self, body: str, sender: str = "max@example.com", headers: str = "",
                    to_notice: bool = True, subject: str = "Re: [#10001] App stuerzt ab") -> str:
        notice = self.outbox("notify")[-1].message_id if to_notice else ""
        irt = f"In-Reply-To: {notice}\r\nReferences: {notice}\r\n" if notice else ""
        return self.feed(f"From: Max Agent <{sender}>\r\nTo: service@example.com\r\n"
                         f"Subject: {subject}\r\nMessage-ID: <a{self.uid}@example.com>\r\n"
                         f"{irt}{headers}\r\n{body}\r\n")


@pytest.fixture
def desk(intake, factory) -> Desk:
    return Desk(intake, factory)


def test_a_new_ticket_notifies_the_team_with_text_facts_missing_and_a_reply_path(desk):
    desk.feed(FIRST)
    [ack] = desk.outbox("ack")
    [notice] = desk.outbox("notify")
    msg = message(notice)
    assert notice.recipients == ["team@example.com"]
    assert msg["Subject"] == "[#10001] Neues Ticket: App stuerzt ab"
    assert msg["Auto-Submitted"] == "auto-generated" and msg["X-Maild-Loop"]
    assert msg["From"].addresses[0].addr_spec == "service@example.com"
    text = text_of(notice)
    assert "Die App stürzt ab. Android 14." in text
    assert "os" in text and "Android 14" in text  # the facts found
    assert "Es fehlen:" in text and "Software-Version" in text  # labels, not keys
    assert "software_version" not in text
    assert "chef@kunde.example" in text and "#status" in text
    with db.transaction(desk.factory) as s:
        row = s.scalars(select(TicketMessage).where(
            TicketMessage.message_id == notice.message_id)).one()
        assert row.internal and row.kind == "notify"
    assert ack.message_id != notice.message_id


def test_an_owned_ticket_notifies_its_owner_on_each_customer_follow_up(desk):
    desk.feed(FIRST)
    desk.agent_reply("#assign me")
    ack = desk.outbox("ack")[0].message_id
    desk.feed(f"From: anna@kunde.example\r\nTo: service@example.com\r\nSubject: Re: x\r\n"
              f"Message-ID: <f1@kunde.example>\r\nIn-Reply-To: {ack}\r\n\r\nApp-Version 4.2\r\n")
    notices = desk.outbox("notify")
    assert [n.recipients for n in notices] == [["team@example.com"], ["max@example.com"]]
    follow = message(notices[-1])
    assert follow["Subject"] == "[#10001] Antwort vom Kunden: App stuerzt ab"
    assert follow["In-Reply-To"] == notices[0].message_id  # one thread in the agent's client
    assert "App-Version 4.2" in text_of(notices[-1])


def test_notices_of_one_batch_about_one_ticket_form_one_thread(desk, intake):
    # Two follow-ups to one ticket in one batch (written in one go): the second notice
    # answers the first, though that one is not written yet when the second is made.
    desk.feed(FIRST)
    ack = desk.outbox("ack")[0].message_id
    follow_ups = [Fetched(uid, (
        f"From: anna@kunde.example\r\nTo: service@example.com\r\nSubject: Re: x\r\n"
        f"Message-ID: <f{uid}@kunde.example>\r\nIn-Reply-To: {ack}\r\n\r\n"
        f"Noch etwas ({uid}).\r\n").encode(), NOW) for uid in (101, 102)]
    assert [o.reason for o in intake.process_batch(1, follow_ups)] == ["follow-up"] * 2
    first, second, third = desk.outbox("notify")
    assert message(second)["In-Reply-To"] == first.message_id
    assert message(third)["In-Reply-To"] == second.message_id


def test_agent_reply_is_relayed_from_the_support_address_under_the_agents_name(desk):
    desk.feed(FIRST)
    outcome = desk.agent_reply("#status in_progress\n#priority high\n\nHallo Anna,\n"
                               "bitte einmal die App neu installieren.\n\n"
                               "Am Do schrieb Example Support:\n> Neues Ticket #10001\n"
                               "> #status ...")
    assert outcome.reason == "agent reply"
    [relay] = desk.outbox("relay")
    [status] = desk.outbox("status")
    msg = message(relay)
    assert msg["From"].addresses[0].addr_spec == "service@example.com"
    assert msg["From"].addresses[0].display_name == "Max Agent (Example Support)"
    assert "max@example.com" not in str(msg["From"]) + str(msg["Reply-To"] or "")
    assert relay.recipients == ["anna@kunde.example", "chef@kunde.example"]
    assert msg["Cc"] == "chef@kunde.example"
    assert msg["Subject"] == "Re: [#10001] App stuerzt ab"
    assert msg["Auto-Submitted"] is None  # written by a person
    ack = desk.outbox("ack")[0].message_id
    assert msg["In-Reply-To"] == ack
    assert msg["References"] == f"<first@kunde.example> {ack}"
    text = text_of(relay)
    assert text.startswith("Hallo Anna,\nbitte einmal die App neu installieren.")
    assert "#status" not in text and "Neues Ticket" not in text  # commands, notification gone
    assert "> Die App stürzt ab. Android 14." in text  # the customer's words quoted
    assert message(status)["Subject"] == (
        "[#10001] Wir arbeiten an Deinem Ticket: App stuerzt ab")
    assert message(status)["Auto-Submitted"] == "auto-generated"
    t = desk.ticket()
    assert (t.status, t.priority, t.first_response_at) == ("in_progress", "high", NOW)
    kinds = [(e.kind, e.actor) for e in desk.events()]
    assert ("status", "max@example.com") in kinds and ("priority", "max@example.com") in kinds
    assert ("first_response", "max@example.com") in kinds
    assert not desk.outbox("agent_notice")  # text was relayed: no confirmation needed


def test_the_notification_never_reaches_the_customer_whatever_the_client_quotes(desk):
    # A client that quotes without ">" and with a header the reply parser does not know:
    # everything from our "reply above this line" marker down is cut.
    desk.feed(FIRST)
    notice = text_of(desk.outbox("notify")[0])
    assert notice.startswith("##- Bitte oberhalb dieser Zeile antworten")
    desk.agent_reply("Hallo Anna,\nbitte einmal neu starten.\n\nMax\n\n"
                     "======== Weitergeleitet von Ticketsystem, 26.11.2026 ========\n"
                     + notice)
    text = text_of(desk.outbox("relay")[0])
    assert text.startswith("Hallo Anna,\nbitte einmal neu starten.\n\nMax")
    for internal in ("Neues Ticket", "Befehle", "Es fehlen", "#status", "oberhalb"):
        assert internal not in text.split("Viele Grüße")[0], internal


def test_an_answer_without_commands_starts_the_work_and_stops_the_clock(desk, clock):
    desk.feed(FIRST)
    clock.now = NOW + timedelta(hours=2)
    desk.agent_reply("Danke, wir prüfen das.")
    t = desk.ticket()
    assert t.status == "in_progress" and t.first_response_at == clock.now
    [first] = [e for e in desk.events() if e.kind == "first_response"]
    assert first.detail["in_time"] is True and first.detail["what"] == "answer"
    assert not desk.outbox("status")  # the answer itself is what the customer sees
    clock.now += timedelta(hours=1)
    desk.agent_reply("Noch etwas.")
    assert desk.ticket().first_response_at == NOW + timedelta(hours=2)  # recorded once


def test_commands_only_get_a_confirmation_and_each_change_is_an_event(desk):
    desk.feed(FIRST)
    desk.agent_reply("#assign lea@example.com\n#cause customer\n#priority urgent")
    [confirm] = desk.outbox("agent_notice")
    assert confirm.recipients == ["max@example.com"]
    text = text_of(confirm)
    assert "owner - -> lea@example.com" in text and "cause - -> customer" in text
    assert not desk.outbox("relay") and not desk.outbox("status")
    t = desk.ticket()
    assert (t.owner, t.cause, t.priority, t.first_response_at) == (
        "lea@example.com", "customer", "urgent", None)
    [cause] = [e for e in desk.events() if e.kind == "cause"]
    assert cause.detail == {"from": "", "to": "customer", "callback_billable": True}


def test_a_wrong_command_executes_nothing_and_tells_the_agent(desk):
    desk.feed(FIRST)
    outcome = desk.agent_reply("#status resolved\n#stauts closed\n#assign nobody@x.example\n"
                               "Das ist gelöst.")
    assert outcome.reason.startswith("agent mail rejected")
    [notice] = desk.outbox("agent_notice")
    text = text_of(notice)
    assert "#stauts closed" in text and "unknown command" in text
    assert "nobody@x.example is not an agent" in text
    assert notice.recipients == ["max@example.com"]
    assert not desk.outbox("relay") and not desk.outbox("status")
    assert desk.ticket().status == "new"
    assert "commands_rejected" in [e.kind for e in desk.events()]


def test_a_note_reaches_no_customer_and_a_reply_to_it_stays_internal(desk):
    desk.feed(FIRST)
    desk.agent_reply("#note\nKunde hat altes Gerät, siehe CRM.")
    note_id = "<a1@example.com>"
    assert not desk.outbox("relay")
    # Lea answers the note (e.g. it was copied to her): stays internal too.
    desk.feed(f"From: Lea Lead <lea@example.com>\r\nTo: service@example.com\r\n"
              f"Subject: Re: [#10001] App stuerzt ab\r\nMessage-ID: <lea1@example.com>\r\n"
              f"In-Reply-To: {note_id}\r\n"
              f"Authentication-Results: mx.example.com; dkim=pass header.d=example.com\r\n"
              f"\r\nIch rufe ihn an.\r\n")
    assert not desk.outbox("relay") and not desk.outbox("status")
    with db.transaction(desk.factory) as s:
        notes = s.scalars(select(TicketMessage).where(TicketMessage.kind == "note")).all()
        assert [(n.author, n.internal, n.new_text) for n in notes] == [
            ("max@example.com", True, "Kunde hat altes Gerät, siehe CRM."),
            ("lea@example.com", True, "Ich rufe ihn an.")]


def test_a_forged_agent_from_executes_nothing_and_warns_the_team(desk):
    desk.feed(FIRST)
    outcome = desk.agent_reply("#status closed\nForged!", to_notice=False)
    assert outcome.ticket_number == 10002  # a stranger's tag: a new ticket, as a customer's
    assert desk.ticket().status == "new"
    assert not desk.outbox("relay")
    [warning] = desk.outbox("warning")
    assert warning.recipients == ["team@example.com"]
    assert "max@example.com" in text_of(warning)
    # In the thread of the new ticket's notice (written in the same batch as it).
    notice = [m for m in desk.outbox("notify") if m.ticket_id == warning.ticket_id]
    assert message(warning)["In-Reply-To"] == notice[-1].message_id
    # Authentication-Results from a server we do not trust prove nothing either.
    desk.agent_reply("#status closed", to_notice=False, subject="Re: x", headers=(
        "In-Reply-To: <first@kunde.example>\r\n"
        "Authentication-Results: evil.example; dkim=pass header.d=example.com\r\n"))
    assert desk.ticket().status == "new" and len(desk.outbox("warning")) == 2


def test_dkim_from_a_trusted_server_or_the_agent_token_prove_the_agent(
        tmp_path, factory, database_url, clock):
    desk = Desk(make_intake(tmp_path, factory, database_url, clock,
                            threading={"plus_addressing": True}), factory)
    desk.feed(FIRST)
    notice = message(desk.outbox("notify")[0])
    token_address = links.agent_reply_address("service@example.com",
                                              desk.intake.desk.agent_key, 10001,
                                              "team@example.com", NOW)
    assert notice["Reply-To"].addresses[0].addr_spec == token_address
    # By the token in the address the agent's client replies to (no references kept).
    desk.agent_reply("#priority low", to_notice=False, subject="Re: Ticket",
                     headers=f"Delivered-To: {token_address}\r\n")
    assert desk.ticket().priority == "low"
    # By DKIM, checked by our own MX, with only the subject tag to go by.
    desk.agent_reply("#priority high", to_notice=False, headers=(
        "Authentication-Results: mx.example.com;\r\n dkim=pass (2048-bit key)"
        " header.d=example.com header.s=sel;\r\n spf=pass\r\n"))
    assert desk.ticket().priority == "high"
    # The customer's reply address is no agent proof.
    customer = links.reply_address("service@example.com", desk.intake.desk.secret, 10001)
    desk.agent_reply("#priority low", to_notice=False, subject="Re: Ticket",
                     headers=f"Delivered-To: {customer}\r\n")
    assert desk.ticket().priority == "high"


def test_merge_closes_the_ticket_and_later_replies_land_in_the_target(desk):
    desk.feed(FIRST)
    desk.feed(FIRST.replace("first@", "second@").replace("anna@", "bert@"))
    notices = desk.outbox("notify")
    desk.feed(f"From: max@example.com\r\nTo: service@example.com\r\nSubject: Re: x\r\n"
              f"Message-ID: <m1@example.com>\r\nIn-Reply-To: {notices[1].message_id}\r\n"
              f"\r\n#merge #10001\r\n")
    old, target = desk.ticket(10002), desk.ticket(10001)
    assert (old.status, old.merged_into) == ("closed", 10001)
    assert "bert@kunde.example" in target.participants
    ack2 = desk.outbox("ack")[1].message_id
    outcome = desk.feed(f"From: bert@kunde.example\r\nTo: service@example.com\r\n"
                        f"Subject: Re: x\r\nMessage-ID: <b2@kunde.example>\r\n"
                        f"In-Reply-To: {ack2}\r\n\r\nNoch da?\r\n")
    assert outcome.ticket_number == 10001
    assert ("merged_from", {"from": 10002}) in [(e.kind, e.detail) for e in desk.events()]


def test_status_mails_in_english_and_resolved_says_how_to_reopen(desk):
    desk.feed(FIRST.replace("Die App stürzt ab. Android 14.",
                            "The app crashes on start. Please help, it does not work."))
    assert desk.ticket().language == "en"
    desk.agent_reply("#status waiting")
    desk.agent_reply("#status resolved\n#cause ours\n\nFixed in 4.2.2.")
    subjects = [message(m)["Subject"] for m in desk.outbox("status")]
    assert subjects == ["[#10001] We are waiting for your answer: App stuerzt ab",
                        "[#10001] Your ticket is resolved: App stuerzt ab"]
    assert "within 14 days" in text_of(desk.outbox("status")[-1])
    t = desk.ticket()
    assert t.status == "resolved" and t.resolved_at == NOW and t.cause == "ours"


def test_tickets_show_lists_the_history_and_agents_cli(desk, tmp_path, database_url):
    desk.feed(FIRST)
    desk.agent_reply("#assign me\n#status in_progress")
    cfg = cli_config(tmp_path / "cli.toml", database_url)
    shown = maild("tickets", "show", "10001", "--json", config=cfg)
    detail = json.loads(shown.stdout)
    assert detail["owner"] == "max@example.com" and detail["status"] == "in_progress"
    assert [(e["kind"], e["actor"]) for e in detail["events"]][-3:] == [
        ("owner", "max@example.com"), ("status", "max@example.com"),
        ("first_response", "max@example.com")]
    text = maild("tickets", "show", "10001", config=cfg).stdout
    assert "owner" in text and "status" in text
    assert maild("agents", "add", "Neu@Example.com", "--name", "Nina Neu",
                 config=cfg).returncode == 0
    listed = json.loads(maild("agents", "list", "--json", config=cfg).stdout)
    assert {"address": "neu@example.com", "name": "Nina Neu", "lead": False,
            "source": "database"} in listed
    assert maild("agents", "remove", "neu@example.com", config=cfg).returncode == 0
    gone = maild("agents", "remove", "neu@example.com", config=cfg)
    assert gone.returncode == 1 and "no agent" in gone.stderr
    assert maild("agents", "add", "not-an-address", config=cfg).returncode == 2


def test_command_parsing():
    parsed = commands.parse("\n#Status In-Progress\n#priority URGENT\n\n#assign <A@B.example>\n"
                            "#cause third party\n#merge #10002\nHallo,\n#status x\n")
    assert [(c.name, c.value) for c in parsed.commands] == [
        ("status", "in_progress"), ("priority", "urgent"), ("assign", "a@b.example"),
        ("cause", "third-party"), ("merge", "10002")]
    assert parsed.text == "Hallo,\n#status x" and not parsed.errors
    bad = commands.parse("#status\n#priority meh\n#frobnicate\n#note\n#note\nText")
    assert len(bad.errors) == 4 and bad.note and bad.text == "Text"
    assert commands.parse("#note Kunde anrufen\nmorgen").text == "Kunde anrufen\nmorgen"
    assert commands.parse("Kein Befehl\n#status resolved").commands == ()
    assert commands.parse("#1 ist die Antwort").text == "#1 ist die Antwort"


def test_authentication_results_parsing():
    trusted = ["mx.example.com"]
    assert auth.sender_proven(["mx.example.com; dmarc=pass header.from=example.com"],
                              trusted, "max@example.com").startswith("dmarc=pass")
    assert auth.sender_proven(["mx.example.com 1; dkim=pass (good) header.d=example.com"],
                              trusted, "max@example.com")
    # header.i alone names no signing domain: no proof (the aligned header.d is required).
    assert not auth.sender_proven(["mx.example.com; dkim=pass header.i=@example.com"],
                                  trusted, "max@example.com")
    assert auth.sender_proven(["mx.example.com; dkim=pass header.d=example.com"],
                              trusted, "max@sub.example.com")
    for value in ("mx.example.com; dkim=fail header.d=example.com",
                  "mx.example.com; dkim=pass header.d=evil.example",
                  "other.example; dmarc=pass header.from=example.com",
                  "mx.example.com; dmarc=pass header.from=evil.example",
                  "mx.example.com; none", ""):
        assert not auth.sender_proven([value], trusted, "max@example.com"), value
    assert not auth.sender_proven(["mx.example.com; dmarc=pass"], [], "max@example.com")
