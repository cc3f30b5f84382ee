"""Automatic answers to customers: the acknowledgement, the unknown-sender reply, the
per-address limit, and putting a rendered mail into the outbox and on the ticket."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import NamedTuple

from babel.numbers import format_decimal
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maild import blobs, db, links, sla, suppression, vocab
from maild.desk import Desk
from maild.mail import auth, contexts, files, language, thread
from maild.mail.facts import Facts
from maild.mail.parse import InboundMail, person, plausible_address
from maild.mail.render import LOCALES, Rendered, render_mail
from maild.mail.subject import strip_prefixes
from maild.models import OutboxMail, Ticket, TicketMessage
from maild.vocab import OutboxKind, OutboxState, Priority

log = logging.getLogger(__name__)


def short_subject(subject: str, limit: int) -> str:
    """A sender's subject as far as our mails repeat it: at most `limit` characters."""
    return subject if len(subject) <= limit else subject[:limit - 1].rstrip() + "…"


def over_limit(session: Session, desk: Desk, address: str, now: datetime,
               known: bool = False) -> bool:
    """True when `address` had its share of automatic answers in the last hour, or all
    addresses together had theirs (a flood of forged senders ends there too). `known`:
    a known account or a follow-up of an open ticket, which may also spend the share of
    the global limit kept from strangers (`answers_reserved_share`)."""
    counted: dict[str, int] | None = session.info.get(_COUNTED)
    key = person(address)  # the person, not the spelling: anna+1@, anna+2@ … are one
    if counted is not None and key in counted:
        recent = counted[key]  # read with the batch, plus what it queued since
    else:
        recent = int(session.scalar(select(func.count()).select_from(OutboxMail).where(
            OutboxMail.recipient == key, OutboxMail.kind.in_(vocab.ANSWERS),
            OutboxMail.created_at > now - timedelta(hours=1))) or 0)
    if recent >= desk.answering.per_address_per_hour:
        return True
    a = desk.answering
    limit = a.per_hour if known else int(a.per_hour * (1 - a.reserved_share))
    return bool(a.per_hour) and desk.answering.gate.full(session, max(1, limit), now)


def count_answers(session: Session, addresses: Iterable[str], now: datetime) -> None:
    """Read the answers each of `addresses` got in the last hour, in one query (the intake
    does, for the senders of a batch); `enqueue` adds every answer queued in this session
    after, so `over_limit` counts the batch's own answers too."""
    wanted = sorted({person(a) for a in addresses if a})
    counted: dict[str, int] = session.info.setdefault(_COUNTED, {})
    counted.update(dict.fromkeys(wanted, 0))
    for chunk in db.chunks(wanted):
        counted.update({recipient: int(n) for recipient, n in session.execute(
            select(OutboxMail.recipient, func.count()).where(
                OutboxMail.recipient.in_(chunk),
                OutboxMail.kind.in_(vocab.ANSWERS),
                OutboxMail.created_at > now - timedelta(hours=1))
            .group_by(OutboxMail.recipient))})


# session.info key: answers per address in the last hour, as `count_answers` read them and
# `enqueue` added to them in this session.
_COUNTED = "maild.answers.counted"


def no_links(text: str) -> str:
    """`text` with every address and link (scheme://…, www.…, a bare domain) replaced by
    "[…]": word by word, so linear in the text's length."""
    return " ".join("[…]" if _LINKISH.fullmatch(word[:300]) or "@" in word else word
                    for word in text.split())


_LINKISH = re.compile(r"(?i)\W*(?:[a-z][a-z0-9+.-]*:/\S*|www\.\S*|(?:[\w-]+\.)+[a-z]{2,63}"
                      r"(?:[/:?#]\S*)?)\W*")


def reject_unknown(session: Session, desk: Desk, mail: InboundMail, now: datetime) -> None:
    """No ticket for an unknown sender: a polite answer explains how to reach support
    (`decide()` has checked the answer limits)."""
    lang = language.guess(f"{mail.subject}\n{mail.text}", desk.default_language)
    context = contexts.Reject(  # to an unknown sender: no payload (see `acknowledge`)
        name="",
        subject=no_links(short_subject(strip_prefixes(mail.subject),
                                       desk.answering.subject_max_chars)),
        support_address=desk.sender.address, support_name=desk.sender.name, language=lang)
    rendered = render_mail(desk.templates, "reject", context, sender=desk.sender,
                           to=mail.from_addr, now=now, in_reply_to=mail.message_id,
                           references=mail.references, auto_submitted="auto-replied")
    enqueue(session, desk, rendered, [mail.from_addr], None, OutboxKind.REJECT, now,
            automatic=True)


def acknowledge(
    session: Session, desk: Desk, ticket: Ticket, mail: InboundMail, now: datetime,
    zone: str, ask_official: bool, shown: list[files.Planned], hours: float,
) -> None:
    """Queue the acknowledgement with ticket number, promise and escalation link. It
    names the mail's attachments only to a known sender (an account contact, or a From a
    trusted server vouches for)."""
    known = ticket.verified or from_proven(desk, mail)
    links_out = customer_links(desk, ticket, now)
    context = contexts.Ack(
        number=ticket.number,
        # To a sender we do not know (maybe a forged From) none of their words but the cut
        # subject, without the addresses and links in it: backscatter carries no payload.
        name=mail.from_name[:100] if known else "",
        subject=ticket.subject if known else no_links(ticket.subject),
        received=ticket.opened_at,
        due=ticket.first_response_due,
        hours=format_decimal(hours, "#,##0.##", locale=LOCALES.get(ticket.language, "en")),
        hours_text_de=sla.hours_text(desk.calendar, "de", _local_day(desk, now)),
        hours_text_en=sla.hours_text(desk.calendar, "en", _local_day(desk, now)),
        timezone=zone,
        ask_official=ask_official,
        # Names only to a sender we know: to anyone else (maybe a forged From) they would
        # carry an attacker's words, so the count only.
        attachments=[f.filename for f in shown if f.store] if known else [],
        attachment_count=sum(1 for f in shown if f.store),
        not_stored=[(f.filename if known else "", f.size, f.note)
                    for f in shown if not f.store],
        parts_left_out=mail.parts_left_out,
        ticket_url=links_out.ticket_url,
        escalation_url=links_out.escalation_url,
        missing=list(ticket.missing),
        urgent=ticket.priority == Priority.URGENT,
        encrypted=mail.encrypted,
        support_name=desk.sender.name,
        language=ticket.language,
    )
    mail_out = render_mail(
        desk.templates, "ack", context, sender=desk.sender,
        to=ticket.customer_address, now=now, in_reply_to=mail.message_id,
        references=mail.references, auto_submitted="auto-replied",
        reply_to=desk.customer_reply_to(ticket.number),
    )
    enqueue(session, desk, mail_out, [ticket.customer_address], ticket, OutboxKind.ACK, now,
            automatic=True)


def _local_day(desk: Desk, now: datetime) -> date:
    return now.astimezone(desk.calendar.zone).date()


def from_proven(desk: Desk, mail: InboundMail) -> bool:
    """A trusted server of ours vouches for the mail's From (aligned DKIM/DMARC pass)."""
    ids = desk.agents.trusted_authserv_ids
    return bool(auth.sender_proven(auth.trusted_results(mail.trace, ids, desk.agents.trusted_hosts),
                                   ids, mail.from_addr))


class CustomerLinks(NamedTuple):
    ticket_url: str
    escalation_url: str


def customer_links(desk: Desk, ticket: Ticket, now: datetime) -> CustomerLinks:
    """The ticket page and the escalation page, as every mail to the customer carries them."""
    args = (desk.public_url, desk.secret, ticket.number, ticket.customer_address,
            ticket.link_version or 0, now)
    return CustomerLinks(links.ticket_url(*args), links.escalation_url(*args))


def is_ours(desk: Desk, address: str) -> bool:
    """The support address or one of its plus-variants (see mail.thread.is_ours)."""
    return thread.is_ours(desk.sender.address, address)


def enqueue(
    session: Session, desk: Desk, mail: Rendered, recipients: list[str],
    ticket: Ticket | None, kind: OutboxKind, now: datetime, *, automatic: bool,
    internal: bool = False, author: str = "", not_before: datetime | None = None,
) -> OutboxMail:
    """Put a rendered mail in the outbox and on the ticket's record (`internal`: for
    agents' eyes only, never quoted or referenced towards a customer)."""
    ours = [r for r in recipients if is_ours(desk, r) or not plausible_address(r)]
    if ours:  # never mail ourselves (it would come straight back in) nor a non-address
        log.warning("not sending to our own or unusable address %s message_id=%s", ours,
                    mail.message_id)
    reachable = suppression.deliverable(session, [r for r in recipients if r not in ours])
    out = OutboxMail(
        message_id=mail.message_id, ticket=ticket, kind=kind,
        recipient=person(recipients[0]) if recipients else "",  # for the answer limits
        envelope_from=suppression.verp_address(desk.sender.address, mail.message_id)
        if desk.verp else desk.sender.address,
        recipients=reachable or recipients,
        verp_token=suppression.verp_token(mail.message_id), attempts=0,
        state=OutboxState.PENDING if reachable else OutboxState.SUPPRESSED,
        next_attempt_at=max(now, not_before or now),
        last_error="" if reachable else "not sent: every recipient is our own address, no "
                                        "address, or marked bouncing "
                                        "(`maild addresses clear ADDRESS`)",
        # A mail held for support hours counts its age (give_up_after_hours) from then.
        created_at=max(now, not_before or now),
    )
    if len(reachable) < len(recipients):
        log.warning("not sending to bouncing addresses %s message_id=%s",
                    sorted(set(recipients) - set(reachable)), mail.message_id)
    session.add(out)
    # The bytes by reference: written now, synced before this transaction commits.
    out.raw_sha256 = blobs.stage_for(session, desk.store, out, mail.raw, now)
    if kind in vocab.ANSWERS:
        desk.answering.gate.note()
        counted = session.info.get(_COUNTED)
        if counted is not None and out.recipient in counted:
            counted[out.recipient] += 1
    if ticket is not None:
        # Every column given, as for a received mail's: the ORM writes the batch's
        # messages in one INSERT only when they set the same columns.
        session.add(TicketMessage(
            ticket=ticket, inbound_id=None, direction="out",
            author=author or desk.sender.address, message_id=mail.message_id,
            subject=mail.subject, body_text=mail.text, new_text=mail.text, facts=Facts(),
            automatic=automatic, created_at=now, kind=kind, internal=internal,
        ))
    return out
