"""Automatic mail, bounces, our own mail, rate limits and spam: recorded, never answered,
never a loop. In-process against both databases; fuzzing of the pure parsers."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime, timedelta
from email import policy

import pytest
from harness import cli_config, dsn_report, maild, offline_settings, with_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from maild import db, suppression
from maild.daemon import build_desk
from maild.intake import Intake
from maild.mail import dsn
from maild.mail.classify import classify
from maild.mail.fetched import Fetched
from maild.mail.parse import parse
from maild.models import AddressFlag, Event, OutboxMail, Ticket, TicketMessage

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
US = "service@example.com"
CUSTOMER = ("From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
            "Subject: Export bricht ab\r\nMessage-ID: <{n}@kunde.example>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nDer Export bricht ab.\r\n")


def kind(headers: str, subject: str = "Frage", sender: str = "kunde@firma.example") -> str:
    raw = (f"From: {sender}\r\nTo: {US}\r\nSubject: {subject}\r\n{headers}\r\n"
           "Hallo\r\n").encode()
    return classify(parse(raw), US, ("X-Filter-Verdict", re.compile("^junk"))).kind


@pytest.mark.parametrize(("headers", "subject", "expected"), [
    ("", "Frage", "normal"),
    ("", "Urlaubsplanung zeigt falsche Tage", "normal"),
    ("", "Abwesenheitsnotiz: Frage", "automatic"),
    ("", "Automatische Antwort: [#10001] Export", "automatic"),
    ("", "Out of Office: Re: Export", "automatic"),
    ("", "Automatic reply: Export", "automatic"),
    ("", "AutoReply: Export", "automatic"),
    ("", "Ich bin nicht im Büro", "automatic"),
    ("Auto-Submitted: auto-replied\r\n", "Frage", "automatic"),
    ("Auto-Submitted: no\r\n", "Frage", "normal"),
    ("Precedence: bulk\r\n", "Frage", "automatic"),
    ("List-Id: <news.firma.example>\r\n", "Frage", "automatic"),
    ("List-Unsubscribe: <mailto:u@firma.example>\r\n", "Frage", "automatic"),
    ("X-Auto-Response-Suppress: All\r\n", "Frage", "automatic"),
    ("X-Auto-Response-Suppress: OOF, AutoReply\r\n", "Frage", "automatic"),
    ("X-Autoreply: yes\r\n", "Frage", "automatic"),
    ("X-Autorespond: yes\r\n", "Frage", "automatic"),
    ("Return-Path: <>\r\n", "Frage", "automatic"),
    ("Return-Path: <>\r\n", "Undelivered Mail Returned to Sender", "bounce"),
    ("X-Failed-Recipients: a@b.example\r\n", "Mail delivery failed", "bounce"),
    ("X-Spam-Flag: YES\r\n", "Frage", "spam"),
    ("X-Spam-Status: Yes, score=12.1\r\n", "Frage", "spam"),
    ("X-Spam-Status: No, score=0.1\r\n", "Frage", "normal"),
    ("X-Filter-Verdict: junk (97)\r\n", "Frage", "spam"),
])
def test_classification(headers, subject, expected):
    assert kind(headers, subject) == expected


# A person may write from postmaster@ (a draft, a question): only a bounce's words or
# structure make a bounce; MAILER-DAEMON is never a person.
@pytest.mark.parametrize(("sender", "expected"), [
    ("MAILER-DAEMON@mx.firma.example", "bounce"), ("postmaster@firma.example", "normal"),
    ("noreply@firma.example", "automatic"), ("no-reply@firma.example", "automatic"),
    ("service@example.com", "own"),
])
def test_machine_senders(sender, expected):
    assert kind("", sender=sender) == expected


class Desk:
    def __init__(self, tmp_path, factory, database_url, **sections) -> None:
        self.now = NOW
        self.settings = offline_settings(
            database_url, tmp_path / "blobs",
            agents={"members": [{"address": "max@example.com", "name": "Max"}],
                    "team_address": "team@example.com"}, **sections)
        self.factory = factory
        self.intake = Intake(factory, build_desk(self.settings, factory, NOW), "INBOX", 3,
                             lambda: self.now)
        self.uid = 0

    def feed(self, raw: str | bytes):
        self.uid += 1
        data = raw.encode() if isinstance(raw, str) else raw
        return self.intake.process(1, Fetched(self.uid, data, self.now))

    def feed_batch(self, raws: list[str]):
        """Several mails in one batch (one transaction, as the daemon writes them)."""
        mails = []
        for raw in raws:
            self.uid += 1
            mails.append(Fetched(self.uid, raw.encode(), self.now))
        return self.intake.process_batch(1, mails)

    def outbox(self, *kinds: str) -> list[OutboxMail]:
        with db.transaction(self.factory) as s:
            q = select(OutboxMail).order_by(OutboxMail.id)
            return with_bytes(list(s.scalars(q.where(OutboxMail.kind.in_(kinds))
                                             if kinds else q)), self.intake.desk.store)

    def tickets(self) -> list[Ticket]:
        with db.transaction(self.factory) as s:
            return list(s.scalars(select(Ticket).order_by(Ticket.number)))

    def flag(self, address: str) -> AddressFlag | None:
        with db.transaction(self.factory) as s:
            return s.get(AddressFlag, address)


@pytest.fixture
def desk(tmp_path, factory, database_url) -> Desk:
    return Desk(tmp_path, factory, database_url)


def test_a_bounce_lands_on_its_ticket_marks_the_address_and_tells_the_agent(desk):
    desk.feed(CUSTOMER.format(n="c1"))
    [ack] = desk.outbox("ack")
    outcome = desk.feed(dsn_report(ack.message_id))
    assert outcome.ticket_number == 10001 and "permanent" in outcome.reason
    assert len(desk.tickets()) == 1  # never a new ticket
    flag = desk.flag("anna@kunde.example")
    assert flag is not None and flag.bouncing_since == NOW and flag.bounce_status == "5.1.1"
    with db.transaction(desk.factory) as s:
        note = s.scalars(select(TicketMessage).where(TicketMessage.kind == "bounce")).one()
        assert note.internal and note.automatic
        event = s.scalars(select(Event).where(Event.kind == "bounce")).one()
        assert event.detail["failures"][0]["status"] == "5.1.1"
    [told] = desk.outbox("bounce_notice")
    assert told.recipients == ["team@example.com"]
    assert "Unzustellbar" in str(email.message_from_bytes(told.raw, policy=policy.default)[
        "Subject"])
    assert len(desk.outbox("ack")) == 1  # the bounce was not answered
    # No kind of mail goes to a bouncing address: an agent's answer is kept, not sent.
    notice = desk.outbox("notify")[0].message_id
    desk.feed(f"From: max@example.com\r\nTo: {US}\r\nSubject: Re: x\r\nMessage-ID: <a1@x>\r\n"
              f"In-Reply-To: {notice}\r\n\r\nBitte neu starten.\r\n")
    [relay] = desk.outbox("relay")
    assert relay.state == "suppressed" and "bouncing" in relay.last_error
    # When the address writes again, it works again.
    desk.now += timedelta(days=1)
    desk.feed(CUSTOMER.format(n="c2").replace("Export bricht ab", "Neue Frage"))
    assert desk.flag("anna@kunde.example").bouncing_since is None
    assert desk.outbox("ack")[-1].state == "pending"


def test_a_temporary_failure_is_recorded_but_marks_nothing(desk):
    desk.feed(CUSTOMER.format(n="c1"))
    [ack] = desk.outbox("ack")
    outcome = desk.feed(dsn_report(ack.message_id, status="4.2.2"))
    assert outcome.ticket_number == 10001 and "temporary" in outcome.reason
    assert desk.flag("anna@kunde.example") is None


def test_a_bounce_found_by_its_verp_address(tmp_path, factory, database_url):
    desk = Desk(tmp_path, factory, database_url, outbox={"verp": True})
    desk.feed(CUSTOMER.format(n="c1"))
    [ack] = desk.outbox("ack")
    assert ack.envelope_from == suppression.verp_address(US, ack.message_id)
    assert ack.envelope_from.startswith("service+b-")
    outcome = desk.feed(dsn_report("<unrelated@x>", to=ack.envelope_from, with_id=False))
    assert outcome.ticket_number == 10001
    assert desk.flag("anna@kunde.example") is not None


def test_an_unmatched_bounce_is_recorded_without_a_ticket(desk):
    outcome = desk.feed(dsn_report("<not-ours@elsewhere.example>"))
    assert outcome.ticket_number is None and "matches no mail we sent" in outcome.reason
    assert desk.tickets() == [] and desk.outbox() == []


def test_an_out_of_office_reply_is_internal_information_on_its_ticket(desk):
    desk.feed(CUSTOMER.format(n="c1"))
    [ack] = desk.outbox("ack")
    outcome = desk.feed(f"From: anna@kunde.example\r\nTo: {US}\r\n"
                        f"Subject: Abwesenheitsnotiz: [#10001] Export bricht ab\r\n"
                        f"Message-ID: <ooo@kunde.example>\r\nIn-Reply-To: {ack.message_id}\r\n"
                        f"\r\nIch bin bis Montag im Urlaub.\r\n")
    assert outcome.ticket_number == 10001 and len(desk.tickets()) == 1
    with db.transaction(desk.factory) as s:
        ooo = s.scalars(select(TicketMessage).where(
            TicketMessage.message_id == "<ooo@kunde.example>")).one()
        assert ooo.automatic and ooo.internal
    assert len(desk.outbox("ack")) == 1 and len(desk.outbox("notify")) == 1


def test_our_own_mail_coming_back_is_recognised_by_its_message_id(desk):
    desk.feed(CUSTOMER.format(n="c1"))
    [ack] = desk.outbox("ack")
    # A mail client saved a copy of our answer into the inbox, headers rewritten.
    copy = re.sub(rb"X-Maild-Loop: [^\r\n]*\r\n", b"", ack.raw)
    copy = copy.replace(b"From: ", b"X-Original-From: ", 1)
    copy = b"From: Anna <anna@kunde.example>\r\n" + copy
    outcome = desk.feed(copy)
    assert outcome.reason.startswith("one of our own Message-IDs")
    assert len(desk.outbox("ack")) == 1 and len(desk.tickets()) == 1


def test_the_global_answer_limit_ends_a_flood_and_keeps_a_share_for_follow_ups(
        tmp_path, factory, database_url):
    # Ten answers an hour, a fifth of them kept for known accounts and follow-ups: a
    # flood of strangers gets eight, the customer answering her open ticket still one.
    desk = Desk(tmp_path, factory, database_url, limits={"answers_per_hour": 10})
    desk.feed(CUSTOMER.format(n="first"))
    for n in range(12):
        desk.feed(CUSTOMER.format(n=f"f{n}").replace("anna@", f"robot{n}@"))
    assert len(desk.tickets()) == 13 and len(desk.outbox("ack")) == 8
    desk.feed(CUSTOMER.format(n="f-late").replace("anna@", "robot-late@"))
    assert len(desk.outbox("ack")) == 8  # strangers' share spent
    desk.feed("From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
              "Subject: Re: [#10001] Export bricht ab\r\nMessage-ID: <f-up@kunde.example>\r\n"
              "In-Reply-To: <first@kunde.example>\r\n\r\nNoch etwas.\r\n")
    assert desk.tickets()[0].status in ("new", "in_progress")
    desk.now += timedelta(hours=1, minutes=1)
    desk.feed(CUSTOMER.format(n="later").replace("anna@", "late@"))
    assert len(desk.outbox("ack")) == 9


def test_answer_limits_and_blocks_hold_on_the_person_not_the_spelling(
        tmp_path, factory, database_url):
    # 30 mails from victim+N@ (a forged flood at one person): the per-address limit (5)
    # counts them as one; Gmail's dots and domains too. A block of anna@ holds anna+x@.
    desk = Desk(tmp_path, factory, database_url)
    for n in range(30):
        desk.feed(CUSTOMER.format(n=f"v{n}").replace("anna@kunde.example",
                                                     f"victim+{n}@kunde.example"))
    assert len(desk.outbox("ack")) == 5
    for n, spelling in enumerate(["Jo.Do@gmail.com", "jodo+a@googlemail.com",
                                  "j.o.d.o@gmail.com", "JODO@gmail.com", "jo.do+x@gmail.com",
                                  "jodo@gmail.com", "j.odo@googlemail.com"]):
        desk.feed(CUSTOMER.format(n=f"g{n}").replace("anna@kunde.example", spelling))
    gmail = [m for m in desk.outbox("ack") if "kunde.example" not in m.recipients[0]]
    assert len(gmail) == 5
    with db.transaction(factory) as session:
        suppression.block(session, "Anna+spam@kunde.example", "max@example.com", desk.now)
    again = desk.feed(CUSTOMER.format(n="b1").replace("anna@", "anna+other@"))
    assert again.reason == "spam"
    assert desk.flag("anna@kunde.example").blocked_by == "max@example.com"


def test_the_answer_limit_per_address_counts_the_answers_of_its_own_batch(
        tmp_path, factory, database_url):
    # Four mails from one sender in one batch, two answers an hour allowed: the answers
    # queued earlier in the batch count, as do those of the batches before.
    desk = Desk(tmp_path, factory, database_url, limits={"answers_per_address_per_hour": 2})
    outcomes = desk.feed_batch([CUSTOMER.format(n=f"b{n}") for n in range(4)])
    assert [o.action for o in outcomes] == ["processed"] * 4
    assert len(desk.tickets()) == 4 and len(desk.outbox("ack")) == 2
    desk.feed_batch([CUSTOMER.format(n="again")])
    assert len(desk.tickets()) == 5 and len(desk.outbox("ack")) == 2


def test_spam_is_recorded_flagged_and_never_answered_and_agents_can_block(
        desk, tmp_path, database_url):
    outcome = desk.feed(CUSTOMER.format(n="s1").replace("Subject:", "X-Spam-Flag: YES\r\n"
                                                                    "Subject:"))
    [t] = desk.tickets()
    assert (outcome.reason, t.status, t.automatic, t.first_response_due) == (
        "spam", "spam", True, None)
    assert desk.outbox() == []
    # A spam the filter missed: the agent marks it and blocks the sender.
    desk.feed(CUSTOMER.format(n="s2").replace("anna@", "viagra@"))
    notice = desk.outbox("notify")[-1].message_id
    desk.feed(f"From: max@example.com\r\nTo: {US}\r\nSubject: Re: x\r\nMessage-ID: <a9@x>\r\n"
              f"In-Reply-To: {notice}\r\n\r\n#spam block\r\n")
    assert desk.tickets()[-1].status == "spam"
    assert not desk.outbox("relay", "status")
    assert desk.flag("viagra@kunde.example").blocked_by == "max@example.com"
    acks = len(desk.outbox("ack"))
    again = desk.feed(CUSTOMER.format(n="s3").replace("anna@", "viagra@"))
    assert again.reason == "spam" and len(desk.outbox("ack")) == acks
    assert desk.tickets()[-1].status == "spam"
    cfg = cli_config(tmp_path / "cli.toml", database_url)
    listed = maild("addresses", "list", config=cfg).stdout
    assert "viagra@kunde.example" in listed and "blocked by max@example.com" in listed
    assert maild("addresses", "clear", "viagra@kunde.example", config=cfg).returncode == 0
    desk.feed(CUSTOMER.format(n="s4").replace("anna@", "viagra@"))
    assert len(desk.outbox("ack")) == acks + 1


def test_dsn_reading():
    report = dsn.read(dsn_report("<maild.t10001.abc@example.com>").encode())
    assert report.structured and report.permanent
    assert report.message_ids[0] == "<maild.t10001.abc@example.com>"
    [failure] = report.failures
    assert (failure.recipient, failure.status, failure.action) == (
        "anna@kunde.example", "5.1.1", "failed")
    text_only = dsn.read(b"From: MAILER-DAEMON@x\r\nSubject: failure notice\r\n\r\n"
                         b"<anna@kunde.example>: 550 5.7.1 rejected\r\n"
                         b"Message-ID: <maild.t1.x@example.com>\r\n", "example.com")
    assert text_only.failures[0].status == "5.7.1" and text_only.permanent
    assert "<maild.t1.x@example.com>" in text_only.message_ids


header_names = st.sampled_from([
    "From", "To", "Cc", "Subject", "Message-ID", "In-Reply-To", "References", "Date",
    "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Auto-Submitted",
    "Return-Path", "Authentication-Results", "X-Spam-Status", "MIME-Version", "Reply-To"])
header_values = st.one_of(
    st.text(max_size=120),
    st.sampled_from(["=?utf-8?b?w7w=?=", "=?x-unknown?q?=FF?=", "=?utf-8?q?broken",
                     'multipart/mixed; boundary="', "multipart/report; boundary=x",
                     "text/plain; charset=utf-7", "text/plain; charset=bogus", "base64",
                     "quoted-printable", "<>", "<@>", "a@b@c", "\"unterminated <x@y>",
                     "attachment; filename*=utf-8''%FF%FE", "mx; dkim=pass header.d="]))
bodies = st.one_of(st.binary(max_size=600), st.text(max_size=600).map(
    lambda t: t.encode("utf-8", "surrogatepass")))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=st.lists(st.tuples(header_names, header_values), max_size=12), body=bodies,
       crlf=st.booleans())
def test_fuzzed_mail_never_crashes_parsing_classifying_or_bounce_reading(headers, body, crlf):
    nl = b"\r\n" if crlf else b"\n"
    raw = b"".join(f"{n}: {v}".encode("utf-8", "surrogatepass") + nl for n, v in headers)
    raw += nl + body
    mail = parse(raw)
    verdict = classify(mail, US)
    assert verdict.kind in ("normal", "automatic", "bounce", "own", "spam", "unparseable")
    dsn.read(raw, "example.com")


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=2000))
def test_random_bytes_never_crash(raw):
    classify(parse(raw), US)
    dsn.read(raw)


def test_we_never_mail_our_own_addresses(desk):
    desk.feed(CUSTOMER.format(n="o1").replace("anna@kunde.example", "service+x@example.com"))
    [ack] = desk.outbox("ack")
    assert ack.state == "suppressed" and "our own address" in ack.last_error


def test_flags_read_for_a_batch_stay_true_when_written_in_it(factory):
    # The intake reads the senders' flags once per batch; a flag set later in the same
    # transaction (a bounce, a block) must be seen by the next look, not the early read.
    now = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    with db.transaction(factory) as s:
        suppression.preload(s, ["Kunde@Firma.example", "other@firma.example"])
        assert suppression.flag(s, "kunde@firma.example") is None
        assert suppression.deliverable(s, ["kunde@firma.example"]) == ["kunde@firma.example"]
        suppression.mark_bouncing(s, "kunde@firma.example", "5.1.1", "no such user", now)
        assert suppression.flag(s, "KUNDE@firma.example") is not None
        assert suppression.deliverable(s, ["kunde@firma.example", "other@firma.example"]) \
            == ["other@firma.example"]
        suppression.block(s, "other@firma.example", "agent@example.com", now)
        assert suppression.flag(s, "other@firma.example").blocked_by == "agent@example.com"
    with db.transaction(factory) as s:  # a new transaction reads afresh
        assert suppression.flag(s, "kunde@firma.example").bouncing_since is not None


def _mail(head: str, body: str = "Hallo\r\n", sender: str = "kunde@firma.example") -> bytes:
    return (f"From: {sender}\r\nTo: {US}\r\nMessage-ID: <r@firma.example>\r\n{head}\r\n"
            f"{body}").encode()


BOUNCE_WORDS = "The mail could not be delivered: 550 5.1.1 user unknown\r\n"
# One mail per rule of classify.RULES, decided by that rule and no earlier one.
RULE_CASES = {
    "unusable": b"\x00\x01 not a mail at all",
    "our loop header": _mail("Subject: x\r\nX-Maild-Loop: service@example.com\r\n"),
    "from our address": _mail("Subject: x\r\n", sender=US),
    "multipart/report": _mail("Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: "
                              "multipart/report; report-type=delivery-status; "
                              'boundary="b"\r\n', "--b\r\n\r\nx\r\n--b--\r\n"),
    "X-Failed-Recipients": _mail("Subject: x\r\nX-Failed-Recipients: a@b.example\r\n",
                                 BOUNCE_WORDS),
    "Auto-Submitted": _mail("Subject: x\r\nAuto-Submitted: auto-generated\r\n"),
    "MAILER-DAEMON": _mail("Subject: x\r\n", sender="MAILER-DAEMON@mx.example"),
    "postmaster": _mail("Subject: x\r\n", BOUNCE_WORDS, sender="postmaster@mx.example"),
    "robot returning a mail": _mail("Subject: Undeliverable: Frage\r\nReturn-Path: <>\r\n"),
    "Amazon SES": _mail("Subject: x\r\n", '{"notificationType":"Bounce"}\r\n',
                        sender="no-reply@amazonses.com"),
    "spam header": _mail("Subject: x\r\nX-Filter-Verdict: junk\r\n"),
    "automatic headers": _mail("Subject: x\r\nX-Autoreply: yes\r\n"),
    "out-of-office subject": _mail("Subject: Abwesenheitsnotiz: Frage\r\n"),
    "bulk": _mail("Subject: x\r\nX-Campaign-Id: 42\r\n"),
    "no-reply sender": _mail("Subject: x\r\n", sender="noreply@shop.example"),
    "broken MIME": _mail('Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; '
                         'boundary="nope"\r\n', ""),
    "no sender": b"To: service@example.com\r\nSubject: Frage\r\n\r\nHallo\r\n",
}


def test_a_persons_mail_with_a_delivery_status_attached_stays_a_persons():
    # "My mail to you bounced, see attached": a customer (or an agent) forwarding a
    # bounce inline keeps the part's type. Only a multipart/report, a mail daemon or a
    # robot's mail is a bounce; this one gets its ticket and its answer.
    raw = _mail('Subject: Meine Mail kam zurück\r\nMIME-Version: 1.0\r\n'
                'Content-Type: multipart/mixed; boundary="b"\r\n',
                "--b\r\nContent-Type: text/plain\r\n\r\nSiehe Anhang.\r\n--b\r\n"
                "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n"
                "\r\nFinal-Recipient: rfc822; a@b.example\r\nAction: failed\r\n--b--\r\n")
    assert classify(parse(raw), US).kind == "normal"


def test_every_classify_rule_has_its_case_and_decides_it():
    from maild.mail.classify import RULES, decided_by
    assert list(RULE_CASES) == [name for name, _ in RULES]  # one case per rule, in order
    for name, raw in RULE_CASES.items():
        rule, verdict = decided_by(parse(raw), US, ("X-Filter-Verdict", re.compile("^junk")))
        assert rule == name, (name, verdict)
    assert decided_by(parse(CUSTOMER.format(n=1).encode()), US) == ("", classify(
        parse(CUSTOMER.format(n=1).encode()), US))
