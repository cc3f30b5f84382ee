"""Open a ticket or add a follow-up to one, inside the caller's transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session

from maild import answers, blobs, db, decide, history, notify, sla
from maild.accounts import Account, belongs, has_accounts
from maild.desk import Desk
from maild.mail import body, facts, files, language, thread, triage
from maild.mail.classify import Verdict
from maild.mail.extracted import Extracted
from maild.mail.parse import InboundMail
from maild.mail.subject import strip_prefixes
from maild.models import Attachment, Blob, Ticket, TicketMessage
from maild.vocab import DONE, MessageKind, TicketStatus

log = logging.getLogger(__name__)


def open_ticket(
    session: Session, desk: Desk, mail: InboundMail, verdict: Verdict,
    *, inbound_id: int, mailbox: str, arrived: datetime, now: datetime,
    account: Account | None = None, planned: list[files.Planned] | None = None,
    refers_to: int | None = None, extracted: Extracted | None = None,
    answer: decide.Answer = decide.Answer.NONE, not_answered: str = "",
) -> Ticket:
    """Create a ticket with its first message, attachments, event and the answer
    `decide()` chose (`not_answered`: why a person gets none, recorded as an event).
    `extracted`: the text work done in the parse worker (else done here)."""
    automatic = verdict.kind != "normal"  # a person's mail without address is not automatic
    found = extracted.facts if extracted else facts.extract(
        mail.text, facts.Sender(mail.from_addr, mail.from_name), desk.reading.fact_patterns)
    if account is not None:  # the account book fills what the mail leaves out
        found = found.merge(account.facts(mail.from_addr))
    level, why = triage.priority(mail.subject, extracted.new_content if extracted
                                 else facts.new_content(mail.text),
                                 desk.reading.urgent_keywords,
                                 desk.reading.tier_priority.get(account.tier, "")
                                 if account else "")
    hours = desk.promise.for_ticket(level, account.tier if account else "")
    copied, refused = first_participants(desk, mail)
    ticket = Ticket(
        number=db.next_number(session, "ticket"),
        status=TicketStatus.SPAM if verdict.kind == "spam" else TicketStatus.NEW,
        priority=level,
        facts=found,
        missing=[] if automatic else found.missing(desk.reading.required_facts),
        participants=copied,
        customer_address=mail.from_addr,  # '' when the mail gave no address to answer
        customer_name=mail.from_name[:300],
        subject=answers.short_subject(strip_prefixes(mail.subject),
                                      desk.answering.subject_max_chars),
        language=(account.language if account and account.language else
                  extracted.language if extracted else
                  language.guess(f"{mail.subject}\n{mail.text}", desk.default_language)),
        automatic=automatic,
        verified=bool(account and account.verified),
        contact_id=account.contact_id if account else None,
        company_id=account.company_id if account else None,
        mailbox=mailbox,
        owner="",
        link_version=0,  # (read before the row is written: the acknowledgement's links)
        opened_at=arrived,
        created_at=now,
        updated_at=now,
        first_response_due=None if automatic else sla.add_business_hours(
            desk.calendar, arrived, hours),
    )
    session.add(ticket)  # written with the batch: its rows refer to it as objects
    first = TicketMessage(
        ticket=ticket, inbound_id=inbound_id, direction="in",
        author=ticket.customer_address, message_id=mail.message_id, subject=mail.subject,
        body_text=mail.text, new_text=extracted.new_text if extracted
        else body.latest_reply(mail.text), facts=found, automatic=automatic, created_at=now,
        kind=MessageKind.AUTOMATIC if automatic else MessageKind.CUSTOMER, internal=False,
    )
    session.add(first)
    if planned is None:
        planned = files.plan(mail.attachments, desk.reading.limits)
    shown = store_attachments(session, desk, first, planned, now)
    history.record(session, ticket, now, ticket.customer_address, history.Created(
        inbound_id, verdict.kind, verdict.reason, level, why, refers_to=refers_to,
        cc_not_added=refused))
    if not_answered == decide.ANSWER_LIMIT:
        history.record(session, ticket, now, "maild", history.NotAnswered(not_answered))
        log.warning("answer limit reached, not answering to=%s ticket=%s",
                    ticket.customer_address, ticket.number)
    elif answer == decide.Answer.ACK:
        zone = account.timezone if account and account.timezone else desk.timezone
        ask_official = not ticket.verified and has_accounts(session)
        answers.acknowledge(session, desk, ticket, mail, now, zone, ask_official, shown,
                            hours)
        notify.ticket_notice(session, desk, ticket, first, shown, "new", now,
                             cc_not_added=refused)
    elif not_answered:  # a person's mail we cannot answer: agents must know
        history.record(session, ticket, now, "maild", history.NotAnswered(not_answered))
        notify.ticket_notice(
            session, desk, ticket, first, shown, "new", now, cc_not_added=refused,
            warning=f"no reply address / keine Antwortadresse: "
                    f"From: {mail.headers.get('from', '')[:200]!r}")
    return ticket


def done_at(ticket: Ticket) -> datetime:
    """Since when a resolved or closed ticket is done (what `reopen_days` counts from)."""
    return ticket.resolved_at or ticket.closed_at or ticket.updated_at


def participants_of(mail: InboundMail, support: str, customer: str) -> list[str]:
    """People copied on a customer's mail (they may write into the ticket too)."""
    return [a for a in dict.fromkeys((*mail.to, *mail.cc)) if a != customer
            and not thread.is_ours(support, a)]


def add_follow_up(
    session: Session, desk: Desk, ticket: Ticket, mail: InboundMail, verdict: Verdict,
    *, inbound_id: int, how: str, now: datetime, planned: list[files.Planned] | None,
    reopen_days: float, extracted: Extracted | None = None,
    tell: Callable[[TicketMessage, list[files.Planned]], None] | None = None,
) -> bool:
    """Add a customer's further mail to `ticket`; False when it is too old to reopen
    (the caller then opens a new ticket that references it). Automatic mail (an
    out-of-office reply) is recorded but changes nothing. Agents are told by
    `notify.ticket_notice`, or by `tell` (the ticket page's: once per burst)."""
    person = verdict.kind == "normal"
    if not decide.may_join(verdict.kind, ticket.status, done_at(ticket), reopen_days, now):
        return False
    found = extracted.facts if extracted else facts.extract(
        mail.text, facts.Sender(mail.from_addr, mail.from_name), desk.reading.fact_patterns)
    message = TicketMessage(
        ticket_id=ticket.id, inbound_id=inbound_id, direction="in", author=mail.from_addr,
        message_id=mail.message_id, subject=mail.subject, body_text=mail.text,
        new_text=extracted.new_text if extracted else body.latest_reply(mail.text),
        facts=found, automatic=not person,
        created_at=now, kind=MessageKind.CUSTOMER if person else MessageKind.AUTOMATIC,
        internal=not person,  # an out-of-office reply is for agents' eyes
    )
    session.add(message)
    shown = store_attachments(session, desk, message, planned if planned is not None
                              else files.plan(mail.attachments, desk.reading.limits), now)
    copied: list[str] = []
    refused: list[str] = []
    status: list[str] = []
    if person and belongs(session, ticket, mail.from_addr):  # never a stranger's facts
        ticket.facts = ticket.facts.merge(found)
    if person:
        if not ticket.automatic:
            ticket.missing = ticket.facts.missing(desk.reading.required_facts)
        new = [a for a in participants_of(mail, desk.sender.address, ticket.customer_address)
               if a not in ticket.participants]
        if new and sender_verified(desk, mail, how):
            ticket.participants = [*ticket.participants, *new]
            copied = new
        elif new:
            refused = new
        if ticket.status in (*DONE, TicketStatus.WAITING):
            status = [ticket.status, TicketStatus.IN_PROGRESS]
            ticket.status = TicketStatus.IN_PROGRESS
            ticket.resolved_at = ticket.closed_at = ticket.waiting_since = None
    ticket.updated_at = now
    kind = history.FollowUp if person else history.AutomaticReply
    history.record(session, ticket, now, mail.from_addr, kind(
        inbound_id, how, verdict.kind, copied=copied, cc_not_added=refused, status=status,
        reopened=bool(status) and status[0] != TicketStatus.WAITING))
    if person and tell is not None:
        tell(message, shown)
    elif person:
        notify.ticket_notice(session, desk, ticket, message, shown, "follow_up", now,
                             cc_not_added=refused)
    return True


def first_participants(desk: Desk, mail: InboundMail) -> tuple[list[str], list[str]]:
    """(copied, refused) of a new ticket's Cc: when a trusted server vouches for the From,
    everyone; else colleagues at the sender's own domain (a forged From cannot bring in an
    outsider that way) — unless that domain is a freemail provider's (strangers share
    gmail.com, not a company; that the From is in the account book proves nothing, it is
    as easily forged). The refused are shown to agents, who may add them with #cc."""
    people = participants_of(mail, desk.sender.address, mail.from_addr)
    if not people or answers.from_proven(desk, mail):
        return people, []
    domain = mail.from_addr.rpartition("@")[2]
    company = bool(domain) and not freemail(domain)
    same = [a for a in people if company and a.rpartition("@")[2] == domain]
    return same, [a for a in people if a not in same]


# Mail providers whose users are strangers to each other (a same-domain Cc proves nothing).
FREEMAIL = frozenset({
    "gmail.com", "googlemail.com", "outlook.com", "outlook.de", "hotmail.com", "hotmail.de",
    "live.com", "live.de", "msn.com", "yahoo.com", "yahoo.de", "ymail.com", "aol.com",
    "icloud.com", "me.com", "mac.com", "gmx.de", "gmx.net", "gmx.at", "gmx.ch", "gmx.com",
    "web.de", "t-online.de", "freenet.de", "arcor.de", "posteo.de", "mailbox.org",
    "proton.me", "protonmail.com", "pm.me", "tutanota.com", "tuta.io", "mail.de",
    "mail.com", "email.de", "online.de", "zoho.com", "yandex.com", "yandex.ru", "mail.ru",
    "gmx.fr", "orange.fr", "free.fr", "laposte.net", "libero.it", "bluewin.ch"})


def freemail(domain: str) -> bool:
    """Whether `domain` (or a parent of it) is a freemail provider's."""
    parts = domain.lower().split(".")
    return any(".".join(parts[i:]) in FREEMAIL for i in range(len(parts) - 1))


def sender_verified(desk: Desk, mail: InboundMail, how: str) -> bool:
    """Whether the From of a follow-up is proven (only then may it bring people onto the
    ticket): it answers the customer's own reply address (a token only they received),
    or a trusted server vouches for it (aligned DKIM/DMARC). A reference to one of our
    Message-IDs or a subject tag proves nothing about who sends."""
    return how == "reply-address" or answers.from_proven(desk, mail)


def store_attachments(
    session: Session, desk: Desk, message: TicketMessage, planned: list[files.Planned],
    now: datetime,
) -> list[files.Planned]:
    """Record every file of `message` (storing those within the limits); returns those
    to show."""
    shown = []
    for f in planned:
        listed = True
        if f.store:
            # A small image we already hold (from earlier mail) is a signature logo.
            listed = not (f.size <= desk.reading.logo_max_bytes
                          and f.content_type.startswith("image/")
                          and session.get(Blob, f.sha256) is not None)
            if not desk.store.exists(f.sha256):  # intake wrote it already, as a rule
                desk.store.put(f.data)
            # Counted at once (not with the row): the blob row stays locked from here to
            # the commit, so a purge of its last other user cannot delete it meanwhile.
            blobs.add_ref(session, f.sha256, f.size, now)
        row = Attachment(
            message=message, filename=f.filename, content_type=f.content_type,
            declared_type=f.declared_type, size=f.size,
            blob_sha256=f.sha256 if f.store else None, inline=f.inline, listed=listed,
            note=f.note,
        )
        session.add(row)
        if listed and not (f.inline and f.content_type.startswith("image/")):
            shown.append(f)
    return shown


