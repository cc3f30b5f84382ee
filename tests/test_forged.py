"""A forged sender gains nothing: no agent's rights by a written header, no seat on a ticket
by a forged From, no use of a leaked token or Message-ID elsewhere, no bounce mark on a
customer, and one mail makes only bounded mail of ours.

In-process against both databases; the attacker's share of the mail is counted at the
SMTP capture in the end-to-end test at the bottom (Dovecot + `maild run`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from harness import (
    Clock,
    Daemon,
    Feeder,
    cli_config,
    maild,
    message,
    outbox_settled,
    rows,
    text_of,
    wait_until,
    write_config,
)
from sqlalchemy import select

from maild import db, links
from maild.daemon import build_desk
from maild.intake import Intake
from maild.mail import auth
from maild.models import AddressFlag, Ticket

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)  # a Thursday, within support hours
US = "service@example.com"
FIRST = ("From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
         "Subject: App stuerzt ab\r\nMessage-ID: <first@kunde.example>\r\n\r\n"
         "Die App stürzt ab. Android 14. Mein Passwort-Hinweis: geheim.\r\n")
AGENTS = {"members": [{"address": "max@example.com", "name": "Max Agent"},
                      {"address": "lea@example.com", "name": "Lea Lead"}],
          "team_address": "team@example.com", "trusted_authserv_ids": ["mx.example.com"]}
GOOD_DKIM = "Authentication-Results: mx.example.com; dkim=pass header.d=example.com\r\n"


def make_intake(tmp_path, factory, database_url, clock, **sections) -> Intake:
    settings = offline_settings_with(database_url, tmp_path, sections)
    return Intake(factory, build_desk(settings, factory, NOW), "INBOX", 3, clock)


def offline_settings_with(database_url, tmp_path, sections):
    from harness import offline_settings
    return offline_settings(database_url, tmp_path / "blobs",
                            agents={**AGENTS, **sections.pop("agents", {})}, **sections)


class Desk(Feeder):
    """Feeds mails to the intake and reads what it queued (see harness.Feeder)."""

    def mail(self, sender: str, body: str, *, subject: str = "Re: [#10001] App stuerzt ab",
             headers: str = "") -> object:
        return self.feed(f"From: {sender}\r\nTo: service@example.com\r\nSubject: {subject}\r\n"
                         f"Message-ID: <m{self.uid}@example.net>\r\n{headers}\r\n{body}\r\n")


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def desk(tmp_path, factory, database_url, clock) -> Desk:
    return Desk(make_intake(tmp_path, factory, database_url, clock), factory)


@pytest.fixture
def plus(tmp_path, factory, database_url, clock) -> Desk:
    return Desk(make_intake(tmp_path, factory, database_url, clock,
                            threading={"plus_addressing": True}), factory)


def token_address(desk: Desk, number: int, holder: str, now: datetime = NOW) -> str:
    return links.agent_reply_address(US, desk.intake.desk.agent_key, number, holder, now)


# -- Authentication-Results -------------------------------------------------------------------

def test_a_forged_dmarc_pass_below_our_mx_fail_makes_no_agent(desk):
    # The sender wrote `dmarc=pass` under our MX's name; our MX's own verdict above says fail.
    desk.feed(FIRST)
    desk.mail("Max Agent <max@example.com>", "#status closed\nErledigt.", headers=(
        "Received: from evil.example by mx.example.com; Thu, 26 Nov 2026 10:00:00 +0000\r\n"
        "Authentication-Results: mx.example.com; dmarc=fail header.from=example.com\r\n"
        "Authentication-Results: mx.example.com; dmarc=pass header.from=example.com\r\n"))
    assert desk.ticket().status == "new" and not desk.outbox("relay")
    assert len(desk.outbox("warning")) == 1  # treated as a forged agent's mail


def test_authentication_results_below_a_foreign_relay_or_without_alignment_prove_nothing(desk):
    # A header written before the mail reached us, and a pass that names no From domain.
    desk.feed(FIRST)
    below_relay = ("Received: from relay.evil.example by mx.example.com; Thu, 26 Nov 2026\r\n"
                   "Received: from pc by relay.evil.example; Thu, 26 Nov 2026\r\n" + GOOD_DKIM)
    desk.mail("max@example.com", "#priority low", headers=below_relay)
    desk.mail("max@example.com", "#priority low",
              headers="Authentication-Results: mx.example.com; dmarc=pass\r\n")
    desk.mail("max@example.com", "#priority low",
              headers="Authentication-Results: mx.example.com; dkim=pass header.i=@example.com\r\n")
    assert desk.ticket().priority == "normal" and len(desk.outbox("warning")) == 3
    # The same pass above the foreign relay's line, where our MX writes it, counts.
    desk.mail("max@example.com", "#priority low", headers=(
        "Received: from relay.evil.example by mx.example.com; Thu, 26 Nov 2026\r\n"
        + GOOD_DKIM + "Received: from pc by relay.evil.example; Thu, 26 Nov 2026\r\n"))
    assert desk.ticket().priority == "low"


# Six common MX set-ups: what each writes for a forged mail (unsigned, From an agent's
# domain, sent straight to our MX) and for the agent's genuine mail. Below the forged
# mail's genuine headers sits the sender's own, naming our MX: it must never count.
RECEIVED = "Received: from pc.evil.example by {mx}; Thu, 26 Nov 2026 10:00:00 +0000\r\n"
FORGED = ("Authentication-Results: {mx}; dkim=pass header.d=example.com; "
          "dmarc=pass header.from=example.com\r\n")
MX_SETUPS = {
    "rspamd": ("mx.example.com", [
        "mx.example.com; dkim=none; spf=softfail smtp.mailfrom=example.com; "
        "dmarc=fail (p=reject) header.from=example.com"], [
        "mx.example.com; dkim=pass header.d=example.com header.s=s1; spf=pass "
        "smtp.mailfrom=example.com; dmarc=pass (p=reject) header.from=example.com"]),
    "opendkim+opendmarc, p=reject": ("mx.example.com", [
        "mx.example.com; dmarc=fail (p=reject dis=reject) header.from=example.com"], [
        "mx.example.com; dmarc=pass (p=reject dis=none) header.from=example.com",
        "mx.example.com; dkim=pass (2048-bit key) header.d=example.com "
        "header.i=@example.com"]),
    "opendkim+opendmarc, no policy": ("mx.example.com", [
        "mx.example.com; dmarc=none (p=none dis=none) header.from=example.com"], [
        "mx.example.com; dmarc=pass (p=none dis=none) header.from=example.com",
        "mx.example.com; dkim=pass header.d=example.com"]),
    "opendkim, AlwaysAddARHeader": ("mx.example.com", [
        "mx.example.com; dkim=none (no signatures found)"], [
        "mx.example.com; dkim=pass (1024-bit key) header.d=example.com"]),
    "opendmarc alone, no policy": ("mx.example.com", [
        "mx.example.com; dmarc=none header.from=example.com"], [
        "mx.example.com; dmarc=pass header.from=example.com"]),
    "google workspace": ("mx.google.com", [
        "mx.google.com; spf=softfail (google.com: domain of max@example.com does not "
        "designate 203.0.113.9 as permitted sender) smtp.mailfrom=max@example.com; "
        "dmarc=none (p=NONE sp=NONE dis=NONE) header.from=example.com"], [
        "mx.google.com; dkim=pass header.i=@example.com header.s=s1 header.b=abc; spf=pass "
        "smtp.mailfrom=max@example.com; dmarc=pass (p=REJECT sp=REJECT dis=NONE) "
        "header.from=example.com"]),
}


@pytest.mark.parametrize("setup", list(MX_SETUPS))
def test_six_mx_setups_a_forged_agent_gains_nothing_the_real_one_is_proven(
        tmp_path, factory, database_url, clock, setup):
    mx, forged_mail, genuine_mail = MX_SETUPS[setup]
    desk = Desk(make_intake(tmp_path, factory, database_url, clock,
                            agents={"trusted_authserv_ids": [mx]}), factory)
    desk.feed(FIRST)

    def headers(written: list[str], forged: bool) -> str:
        return (RECEIVED.format(mx=mx) + "".join(f"Authentication-Results: {h}\r\n"
                                                 for h in written)
                + (FORGED.format(mx=mx) if forged else ""))

    # the attacker: close the ticket, copy themselves in, mail the customer
    desk.mail("Max Agent <max@example.com>",
              "#status closed\n#cc add evil@evil.example\nHallo Anna, erledigt.",
              headers=headers(forged_mail, forged=True))
    ticket = desk.ticket()
    assert ticket.status == "new" and not desk.outbox("relay"), setup
    assert "evil@evil.example" not in str(ticket.participants)
    assert len(desk.outbox("warning")) == 1
    # the agent, through the same MX: proven
    desk.mail("Max Agent <max@example.com>", "#priority low",
              headers=headers(genuine_mail, forged=False))
    assert desk.ticket().priority == "low", setup


def test_trusted_results_rule():
    ids = ["mx.example.com"]
    trace = [("received", "from mx.example.com by imap.example.com with LMTP"),
             ("authentication-results", "mx.example.com; dkim=pass header.d=example.com"),
             ("received", "from pc.evil.example by mx.example.com with ESMTP")]
    assert auth.trusted_results(trace, ids) == []  # imap.example.com is not named as ours
    assert auth.trusted_results(trace, ids, ["imap.example.com"]) == [trace[1][1]]
    assert auth.trusted_results(trace, ["example.com"]) == []  # not the authserv-id written
    dkim_two = ["mx.example.com; dkim=pass header.d=mailer.example; "
                "dkim=pass header.d=example.com", "mx.example.com; dkim=fail header.d=x"]
    assert auth.sender_proven(dkim_two, ids, "max@example.com").startswith("dkim=pass")
    assert not auth.sender_proven(["mx.example.com; dkim=fail header.d=example.com",
                                   "mx.example.com; dkim=pass header.d=example.com"],
                                  ids, "max@example.com")
    assert not auth.sender_proven(["mx.example.com; dmarc=fail header.from=example.com; "
                                   "dkim=pass header.d=example.com"], ids, "max@example.com")


@pytest.mark.parametrize("mode", ["new_ticket", "attach"])
def test_a_strangers_reply_by_message_id_is_not_the_customers(
        tmp_path, factory, database_url, clock, mode):
    # Eve knows the customer's first Message-ID (it is quoted around) and replies to it:
    # she is no one on the ticket. By default her mail opens a ticket of its own that
    # names #10001; with stranger_tag = "attach" it is recorded on #10001, but never as
    # facts: the call-back page must not offer Eve's number.
    desk = Desk(make_intake(tmp_path, factory, database_url, clock,
                            threading={"stranger_tag": mode}), factory)
    desk.feed(FIRST)
    desk.feed("From: Eve <eve@evil.example>\r\nTo: service@example.com\r\n"
              "Subject: Re: App stuerzt ab\r\nMessage-ID: <eve1@evil.example>\r\n"
              "In-Reply-To: <first@kunde.example>\r\nReferences: <first@kunde.example>\r\n"
              "\r\nRuf mich bitte an. Telefon: 0170 6660666\r\n")
    ticket = desk.ticket()
    assert ticket.facts.phone == "" and ticket.customer_address == "anna@kunde.example"
    if mode == "new_ticket":
        theirs = desk.ticket(10002)
        assert theirs.customer_address == "eve@evil.example"
        assert [m.recipients for m in desk.outbox("ack")] == [["anna@kunde.example"],
                                                              ["eve@evil.example"]]
    # Anna herself replying by the same Message-ID is still the customer
    desk.feed("From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
              "Subject: Re: App stuerzt ab\r\nMessage-ID: <anna2@kunde.example>\r\n"
              "In-Reply-To: <first@kunde.example>\r\n\r\nTelefon: 0171 1112223\r\n")
    assert desk.ticket().facts.phone == "0171 1112223"


# -- Who joins a ticket -----------------------------------------------------------------------

@pytest.mark.parametrize("route", ["tag", "in-reply-to"])
def test_a_forged_customer_from_cannot_copy_a_stranger_onto_the_ticket(desk, route):
    desk.feed(FIRST)
    ack = desk.outbox("ack")[0].message_id
    thread = f"In-Reply-To: {ack}\r\n" if route == "in-reply-to" else ""
    outcome = desk.mail("Anna Berger <anna@kunde.example>", "Bitte auch an meinen Kollegen.",
                        subject="Re: [#10001] App stuerzt ab" if route == "tag" else "Re: x",
                        headers=f"Cc: attacker@evil.example\r\n{thread}")
    assert outcome.ticket_number == 10001  # recorded as a follow-up all the same
    assert desk.ticket().participants == []
    [follow] = [e for e in desk.events() if e.kind == "follow_up"]
    assert follow.detail["cc_not_added"] == ["attacker@evil.example"]
    notice = text_of(desk.outbox("notify")[-1])
    assert "Nicht in Kopie genommen (Absender nicht bestätigt): attacker@evil.example" in notice
    desk.mail("max@example.com", "Hallo Anna, bitte neu installieren.",
              headers=f"In-Reply-To: {desk.outbox('notify')[0].message_id}\r\n")
    [relay] = desk.outbox("relay")
    assert relay.recipients == ["anna@kunde.example"]
    assert not [o for o in desk.outbox() if "attacker@evil.example" in o.recipients]


def test_a_new_tickets_cc_joins_only_from_the_senders_domain_unless_proven(desk):
    # A forged From opening a ticket cannot copy an outsider: colleagues at the sender's
    # domain join, the outsider is shown to agents and never mailed; a trusted DKIM pass
    # lets everyone join.
    desk.mail("Anna Berger <anna@kunde.example>", "Die App stuerzt ab.", subject="App",
              headers="Cc: kollege@kunde.example, attacker@evil.example\r\n")
    assert desk.ticket().participants == ["kollege@kunde.example"]
    [created] = [e for e in desk.events() if e.kind == "created"]
    assert created.detail["cc_not_added"] == ["attacker@evil.example"]
    assert "attacker@evil.example" in text_of(desk.outbox("notify")[0])
    assert not [o for o in desk.outbox() if "attacker@evil.example" in o.recipients]
    desk.mail("bob@kunde.example", "Auch bei mir.", subject="Export", headers=(
        "Authentication-Results: mx.example.com; dkim=pass header.d=kunde.example\r\n"
        "Cc: partner@dienstleister.example\r\n"))
    assert desk.ticket(10002).participants == ["partner@dienstleister.example"]
    # Strangers share a freemail domain, not a company: nobody joins.
    desk.mail("mallory@gmail.com", "Billig Uhren!", subject="Angebot",
              headers="Cc: victim1@gmail.com, victim2@gmail.com\r\n")
    assert desk.ticket(10003).participants == []


def test_a_forged_from_of_a_known_contact_copies_no_stranger(desk, tmp_path, database_url):
    # Anna writes from Gmail and is in the account book; anyone can write her From. Her
    # being known proves nothing: a stranger at gmail.com in Cc does not join.
    cfg = cli_config(tmp_path / "cli.toml", database_url)
    (tmp_path / "contacts.csv").write_text("email,name,company\nanna.b@gmail.com,Anna,Kunde\n")
    assert maild("accounts", "import", str(tmp_path / "contacts.csv"),
                 config=cfg).returncode == 0
    desk.mail("Anna <anna.b@gmail.com>", "Bitte an meinen Kollegen.", subject="Frage",
              headers="Cc: eve.stranger@gmail.com\r\n")
    ticket = desk.ticket()
    assert ticket.participants == [] and ticket.customer_address == "anna.b@gmail.com"
    assert not [o for o in desk.outbox() if "eve.stranger@gmail.com" in o.recipients]


def test_an_agent_copies_someone_with_cc_and_takes_them_off_again(desk):
    desk.feed(FIRST)
    notice = desk.outbox("notify")[0].message_id
    irt = f"In-Reply-To: {notice}\r\n"
    desk.mail("max@example.com", "#cc <Bob@Kunde.example>", headers=irt)
    assert desk.ticket().participants == ["bob@kunde.example"]
    assert "bob@kunde.example copied" in text_of(desk.outbox("agent_notice")[-1])
    desk.mail("max@example.com", "Hallo Anna, hallo Bob.", headers=irt)
    assert desk.outbox("relay")[-1].recipients == ["anna@kunde.example", "bob@kunde.example"]
    desk.mail("max@example.com", "#cc remove bob@kunde.example", headers=irt)
    assert desk.ticket().participants == []
    desk.mail("max@example.com", "#cc lea@example.com", headers=irt)  # an agent: refused
    assert "is an agent or our own address" in text_of(desk.outbox("agent_notice")[-1])
    assert [e.detail for e in desk.events() if e.kind == "participant"] == [
        {"address": "bob@kunde.example", "added": True},
        {"address": "bob@kunde.example", "added": False}]


def test_a_verified_customer_or_one_answering_their_reply_address_copies_people(plus):
    plus.feed(FIRST)
    plus.mail("anna@kunde.example", "Mein Chef auch.", headers=(
        "Authentication-Results: mx.example.com; dkim=pass header.d=kunde.example\r\n"
        "Cc: chef@kunde.example\r\n"))
    assert plus.ticket().participants == ["chef@kunde.example"]
    reply_to = links.reply_address(US, plus.intake.desk.secret, 10001)
    plus.mail("anna@kunde.example", "Und die IT.", subject="Re: Ticket",
              headers=f"Delivered-To: {reply_to}\r\nCc: it@kunde.example\r\n")
    assert plus.ticket().participants == ["chef@kunde.example", "it@kunde.example"]


def test_one_relay_reaches_at_most_max_relay_recipients(tmp_path, factory, database_url, clock):
    desk = Desk(make_intake(tmp_path, factory, database_url, clock,
                            agents={"max_relay_recipients": 4}), factory)
    cc = ", ".join(f"p{i}@kunde.example" for i in range(20))
    desk.feed(FIRST.replace("Subject:", f"Cc: {cc}\r\nSubject:"))
    desk.mail("max@example.com", "Hallo zusammen.",
              headers=f"In-Reply-To: {desk.outbox('notify')[0].message_id}\r\n")
    [relay] = desk.outbox("relay")
    assert relay.recipients == ["anna@kunde.example", "p0@kunde.example", "p1@kunde.example",
                                "p2@kunde.example"]


# -- Agent tokens and references --------------------------------------------------------------

def test_an_agent_token_works_only_for_its_ticket_its_agent_and_its_time(plus, clock):
    plus.feed(FIRST)
    plus.feed(FIRST.replace("first@", "second@").replace("anna@", "bert@"))
    notice = message(plus.outbox("notify")[0])
    team_a = token_address(plus, 10001, "team@example.com")
    assert notice["Reply-To"].addresses[0].addr_spec == team_a
    token_a = team_a.partition(".")[2].partition("@")[0]

    def reply(address: str, sender: str = "max@example.com") -> None:
        plus.mail(sender, "#priority low", subject="Re: Ticket",
                  headers=f"Delivered-To: {address}\r\n")

    reply(f"service+10002.{token_a}@example.com")  # ticket A's token on ticket B
    ack_b = plus.outbox("ack")[1].message_id  # A's valid token, threaded to B by reference
    plus.mail("max@example.com", "#priority low", subject="Re: x",
              headers=f"Delivered-To: {team_a}\r\nIn-Reply-To: {ack_b}\r\n")
    max_only = token_address(plus, 10001, "max@example.com")
    reply(max_only, sender="lea@example.com")  # Max's token in Lea's hands
    old_form = "service+10001.a" + "0" * 24 + "@example.com"  # the unbound form of before
    reply(old_form)
    clock.now = NOW + timedelta(days=31)
    reply(team_a)  # expired
    assert plus.ticket(10001).priority == plus.ticket(10002).priority == "normal"
    clock.now = NOW + timedelta(days=29)
    reply(team_a)
    assert plus.ticket(10001).priority == "low"  # the control: within token_days it works


def test_raising_the_agent_key_version_revokes_every_agent_token(
        tmp_path, factory, database_url, clock):
    first = Desk(make_intake(tmp_path, factory, database_url, clock,
                             threading={"plus_addressing": True}), factory)
    first.feed(FIRST)
    old = token_address(first, 10001, "team@example.com")
    customer = links.reply_address(US, first.intake.desk.secret, 10001)
    later = Desk(make_intake(tmp_path, factory, database_url, clock,
                             threading={"plus_addressing": True},
                             security={"agent_key_version": 2}), factory)
    later.uid = 100
    later.mail("max@example.com", "#priority low", subject="Re: Ticket",
               headers=f"Delivered-To: {old}\r\n")
    assert later.ticket().priority == "normal"
    later.mail("max@example.com", "#priority low", subject="Re: Ticket",
               headers=f"Delivered-To: {token_address(later, 10001, 'team@example.com')}\r\n")
    assert later.ticket().priority == "low"
    assert customer == links.reply_address(US, later.intake.desk.secret, 10001)  # unchanged


def test_a_leaked_notice_id_proves_nothing_on_another_ticket_or_for_another_agent(desk):
    desk.feed(FIRST)
    notice_a = desk.outbox("notify")[0].message_id
    desk.feed(FIRST.replace("first@", "second@").replace("anna@", "bert@"))
    ack_b = desk.outbox("ack")[1].message_id
    # Ticket A's notification, and ticket B's ack as the newer reference: it lands on B.
    desk.mail("max@example.com", "#status closed", subject="Re: x",
              headers=f"In-Reply-To: {ack_b}\r\nReferences: {notice_a} {ack_b}\r\n")
    assert desk.ticket(10002).status == "new" and desk.ticket(10001).status == "new"
    # Max owns A: its notifications go to him alone; Lea holding one proves nothing.
    desk.mail("max@example.com", "#assign me", headers=f"In-Reply-To: {notice_a}\r\n")
    desk.feed("From: anna@kunde.example\r\nTo: service@example.com\r\n"
              "Subject: Re: [#10001] App stuerzt ab\r\nMessage-ID: <f2@kunde.example>\r\n"
              f"In-Reply-To: {desk.outbox('ack')[0].message_id}\r\n\r\nNoch da.\r\n")
    to_max = desk.outbox("notify")[-1]
    assert to_max.recipients == ["max@example.com"]
    desk.mail("lea@example.com", "#status closed", subject="Re: x",
              headers=f"In-Reply-To: {to_max.message_id}\r\n")
    assert desk.ticket(10001).status != "closed"
    desk.mail("max@example.com", "#priority high", subject="Re: x",
              headers=f"In-Reply-To: {to_max.message_id}\r\n")
    assert desk.ticket(10001).priority == "high"  # the control: Max's own notice works


# -- Bounces ----------------------------------------------------------------------------------

def dsn_mail(original_id: str, recipient: str) -> str:
    """A Postfix-style RFC 3464 report about the mail `original_id`, failed for `recipient`."""
    return (
        f"From: MAILER-DAEMON@mx.evil.example\r\nTo: {US}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\n"
        "Message-ID: <bounce.1@mx.evil.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nUser unknown.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.evil.example\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: {US}\r\n"
        f"To: {recipient}\r\nMessage-ID: {original_id}\r\nSubject: x\r\n\r\n--B--\r\n")


def test_a_forged_bounce_marks_no_customer_and_their_mail_is_still_sent(desk):
    # Reports naming Anna about no mail of ours or about a mail to someone else, and one
    # about Anna's mail naming someone else: Anna is not marked, the next relay goes out.
    desk.feed(FIRST)
    desk.feed(FIRST.replace("first@", "second@").replace("anna@", "mallory@"))
    mallory_ack = desk.outbox("ack")[1].message_id
    desk.feed(dsn_mail("<nothing-of-ours@example.com>", "anna@kunde.example"))
    desk.feed(dsn_mail(mallory_ack, "anna@kunde.example").replace("bounce.1", "bounce.2"))
    # Anna's own ack (its Message-ID leaked), reported as failed for some other address:
    # no fallback to "the mail's recipient".
    anna_ack = desk.outbox("ack")[0].message_id
    desk.feed(dsn_mail(anna_ack, "other@evil.example").replace("bounce.1", "bounce.3"))
    with db.transaction(desk.factory) as s:
        assert s.get(AddressFlag, "anna@kunde.example") is None
    desk.mail("max@example.com", "Hallo Anna.",
              headers=f"In-Reply-To: {desk.outbox('notify')[0].message_id}\r\n")
    [relay] = desk.outbox("relay")
    assert relay.state == "pending" and relay.recipients == ["anna@kunde.example"]


def test_a_participant_cannot_forge_the_customers_bounce_her_own_side_can(desk):
    # Bob, Cc'd by an agent, knows every Message-ID of the ticket: his reports that Anna's
    # mail failed (the relay they both got, or her own acknowledgement) mark nobody, the
    # agents are told, and the next answer still reaches her. A report that our MX proves
    # comes from her domain marks her.
    desk.feed(FIRST)
    notice = desk.outbox("notify")[0].message_id
    desk.mail("Max Agent <max@example.com>", "#cc bob@partner.example\nHallo Anna, wir schauen.",
              headers=GOOD_DKIM + f"In-Reply-To: {notice}\r\n")
    [relay] = desk.outbox("relay")
    assert {"anna@kunde.example", "bob@partner.example"} <= set(relay.recipients)
    ack = desk.outbox("ack")[0].message_id
    desk.feed(dsn_mail(relay.message_id, "anna@kunde.example"))
    desk.feed(dsn_mail(ack, "anna@kunde.example").replace("bounce.1", "bounce.2"))
    with db.transaction(desk.factory) as s:
        assert s.get(AddressFlag, "anna@kunde.example") is None
    told = [m.raw.decode() for m in desk.outbox("bounce_notice")]
    assert len(told) == 2 and all("not marked as bouncing" in t for t in told)
    desk.mail("Max Agent <max@example.com>", "Noch etwas, Anna.",
              headers=GOOD_DKIM + f"In-Reply-To: {notice}\r\n")
    assert all(r.state == "pending" and "anna@kunde.example" in r.recipients
               for r in desk.outbox("relay"))
    genuine = ("Authentication-Results: mx.example.com; dkim=pass header.d=kunde.example\r\n"
               + dsn_mail(ack, "anna@kunde.example").replace("bounce.1", "bounce.3")
               .replace("MAILER-DAEMON@mx.evil.example", "MAILER-DAEMON@mx.kunde.example"))
    desk.feed(genuine)
    with db.transaction(desk.factory) as s:
        flag = s.get(AddressFlag, "anna@kunde.example")
        assert flag is not None and flag.bouncing_since is not None


# -- Amplification ----------------------------------------------------------------------------

def test_a_huge_subject_and_text_are_capped_and_an_unknown_senders_file_names_not_echoed(desk):
    subject = "Kaufen Sie jetzt " * 640  # about 10 KB
    body = "Spam spam spam. " * 4000  # about 64 KB
    desk.feed("From: victim@kunde.example\r\nTo: service@example.com\r\n"
              f"Subject: {subject}\r\nMessage-ID: <big@kunde.example>\r\nMIME-Version: 1.0\r\n"
              'Content-Type: multipart/mixed; boundary="X"\r\n\r\n'
              f"--X\r\nContent-Type: text/plain\r\n\r\n{body}\r\n"
              "--X\r\nContent-Type: application/pdf\r\n"
              'Content-Disposition: attachment; filename="BUY-CHEAP-PILLS.pdf"\r\n\r\n'
              "%PDF-1.4 x\r\n--X--\r\n")
    [ack] = desk.outbox("ack")
    assert len(str(message(ack)["Subject"])) < 260 and message(ack)["Subject"].endswith("…")
    assert len(desk.ticket().subject) <= 200
    text = text_of(ack)
    assert "PILLS" not in text and "1 Datei" in text
    notice = text_of(desk.outbox("notify")[0])
    assert len(notice.encode()) < 26_000
    assert "[… gekürzt, der ganze Text: maild tickets show 10001]" in notice


def test_an_acknowledgement_to_an_unknown_sender_carries_no_payload(desk):
    # Backscatter: a forged From makes us mail the victim. Our answer repeats none of the
    # sender's words beyond the cut subject, and no address or link from it.
    desk.feed('From: "Gewinn! Jetzt bei cheap-pills.example kaufen" <victim@kunde.example>'
              "\r\nTo: service@example.com\r\nSubject: Ihr Gewinn wartet: "
              "https://evil.example/win www.evil.example win@evil.example evil.example/x\r\n"
              "Message-ID: <bs1@kunde.example>\r\n\r\nKlick hier: https://evil.example\r\n")
    [ack] = desk.outbox("ack")
    whole = message(ack).as_string()
    for payload in ("evil.example", "cheap-pills", "Gewinn!", "Klick"):
        assert payload not in whole, payload
    assert "Ihr Gewinn wartet: […]" in str(message(ack)["Subject"])
    assert "Hallo," in text_of(ack)


def test_a_commands_only_mails_file_stays_internal_beside_a_relayed_answer(desk, factory):
    # Max answers Anna with a file; in the same batch Lea's commands-only mail carries an
    # internal file. Only Max's file is the customer's to see and download.
    from maild.mail.fetched import Fetched
    from maild.models import Attachment
    from maild.web import views

    desk.feed(FIRST)

    def agent_mail(sender: str, text: str, filename: str, n: int) -> bytes:
        return (f"From: {sender}\r\nTo: service@example.com\r\n"
                f"Subject: Re: [#10001] App stuerzt ab\r\nMessage-ID: <f{n}@example.com>\r\n"
                + GOOD_DKIM + "MIME-Version: 1.0\r\n"
                'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
                f"--B\r\nContent-Type: text/plain\r\n\r\n{text}\r\n"
                "--B\r\nContent-Type: application/pdf\r\n"
                f'Content-Disposition: attachment; filename="{filename}"\r\n\r\n'
                f"%PDF-1.4 {filename}\r\n--B--\r\n").encode()

    desk.intake.process_batch(1, [
        Fetched(90, agent_mail("max@example.com", "Hallo Anna, hier die Anleitung.",
                               "anleitung.pdf", 1), NOW),
        Fetched(91, agent_mail("lea@example.com", "#priority high", "intern-geheim.pdf", 2),
                NOW)])
    assert desk.ticket().priority == "high" and len(desk.outbox("relay")) == 1
    with db.transaction(factory) as session:
        ticket = session.scalars(select(Ticket)).one()
        found = {a.filename: views.attachment_of(session, ticket, a.id) is not None
                 for a in session.scalars(select(Attachment))}
    assert found == {"anleitung.pdf": True, "intern-geheim.pdf": False}


# -- End to end: the attacker's share at the SMTP capture --------------------------------------

E2E_AGENTS = """
[agents]
team_address = "team@example.com"
members = [{ address = "max@example.com", name = "Max Agent" }]
"""


def test_a_forged_cc_on_the_thread_sends_the_attacker_nothing(
        tmp_path: Path, dovecot, mailbox, smtp, database_url):
    config = write_config(tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
                          password=mailbox.password, smtp_port=smtp.port,
                          database_url=database_url, extra=E2E_AGENTS)
    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        mailbox.append(FIRST.encode())
        mails = smtp.wait_for(2)
        ack = next(m for m in mails if "anna@kunde.example" in m.recipients)
        notice = next(m for m in mails if "team@example.com" in m.recipients)
        mailbox.append(("From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
                        "Cc: attacker@evil.example\r\nSubject: Re: x\r\n"
                        "Message-ID: <forged@evil.example>\r\n"
                        f"In-Reply-To: {ack.message['Message-ID']}\r\n\r\n"
                        "Bitte an meinen Kollegen.\r\n").encode())
        smtp.wait_for(3)
        mailbox.append(("From: max@example.com\r\nTo: service@example.com\r\n"
                        "Subject: Re: [#10001] App stuerzt ab\r\nMessage-ID: <r1@example.com>\r\n"
                        f"In-Reply-To: {notice.message['Message-ID']}\r\n\r\n"
                        "Hallo Anna, bitte einmal neu installieren.\r\n").encode())
        smtp.wait_for(4)
        assert wait_until(lambda: mailbox.count("Processed") == 3)
        assert wait_until(lambda: outbox_settled(database_url))  # all that will go out went
        relay = [m for m in smtp.mails if "neu installieren" in m.raw.decode(errors="replace")]
        assert [m.recipients for m in relay] == [["anna@kunde.example"]]
        assert not [m for m in smtp.mails
                    if any("evil.example" in r for r in m.recipients)]
        [ticket] = rows(database_url, Ticket)
        assert ticket.participants == []
    finally:
        daemon.kill()


def test_cc_command_parsing():
    from maild.mail import commands
    parsed = commands.parse("#cc <Bob@Kunde.example>\nHallo")
    assert [(c.name, c.value) for c in parsed.commands] == [("cc", "bob@kunde.example")]
    removal = commands.parse("#cc remove bob@kunde.example")
    assert commands.cc_change(removal.commands[0].value) == (True, "bob@kunde.example")
    assert commands.parse("#cc not an address").errors


def test_a_reference_to_a_notice_proves_only_within_token_days(desk, clock):
    # Max answers his notification after 31 days: no proof (DKIM of our MX still works).
    desk.feed(FIRST)
    notice = desk.outbox("notify")[0].message_id
    clock.now = NOW + timedelta(days=31)
    desk.mail("max@example.com", "#priority low", headers=f"In-Reply-To: {notice}\r\n")
    assert desk.ticket().priority == "normal" and desk.outbox("warning")
    desk.mail("max@example.com", "#priority low",
              headers=f"In-Reply-To: {notice}\r\n{GOOD_DKIM}")
    assert desk.ticket().priority == "low"


def test_without_a_team_address_a_notice_to_all_agents_proves_each_of_them(
        tmp_path, factory, database_url, clock):
    # One notification to every agent: its token and its Message-ID prove any of them.
    desk = Desk(make_intake(tmp_path, factory, database_url, clock,
                            agents={"team_address": ""},
                            threading={"plus_addressing": True}), factory)
    desk.feed(FIRST)
    [notice] = desk.outbox("notify")
    assert sorted(notice.recipients) == ["lea@example.com", "max@example.com"]
    everyone = token_address(desk, 10001, links.ALL_AGENTS)
    assert message(notice)["Reply-To"].addresses[0].addr_spec == everyone
    desk.mail("lea@example.com", "#priority low", subject="Re: Ticket",
              headers=f"Delivered-To: {everyone}\r\n")
    assert desk.ticket().priority == "low"
    desk.mail("max@example.com", "#priority high", subject="Re: x",
              headers=f"In-Reply-To: {notice.message_id}\r\n")
    assert desk.ticket().priority == "high"
