"""What the customer's pages show of a ticket (read in a thread, in one transaction)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild import decide, links
from maild.desk import Desk
from maild.models import Attachment, Contact, Ticket, TicketMessage
from maild.tickets import done_at
from maild.vocab import DONE, MessageKind, OutboxKind, TicketStatus
from maild.web.access import WebConfig


@dataclass(frozen=True, slots=True)
class Shown:
    """A ticket as its customer's pages show it."""

    number: int
    subject: str
    status: str
    priority: str
    language: str
    zone: str
    due: datetime | None
    escalated_at: datetime | None
    escalation_phone: str
    phone: str
    customer: str
    customer_name: str
    history: list[dict[str, Any]]
    can_add: bool  # False: closed too long ago to reopen (write a new mail)
    can_escalate: bool  # False: closed, spam or merged (a new mail is the way)
    # Fresh tokens for the links between the pages (relative, so any host or path prefix
    # of the reverse proxy works).
    ticket_token: str
    escalation_token: str


def _visible_messages(session: Session, ticket: Ticket) -> list[TicketMessage]:
    """The customer's own mails and what we sent them: never notes, never agents' mail."""
    return list(session.scalars(select(TicketMessage).where(
        TicketMessage.ticket_id == ticket.id, TicketMessage.internal.is_(False),
        (TicketMessage.direction == "out") | (TicketMessage.kind == MessageKind.CUSTOMER))
        .order_by(TicketMessage.created_at, TicketMessage.id)))


def _shown_files(session: Session, ticket: Ticket,
                 messages: list[TicketMessage]) -> dict[int, list[Attachment]]:
    """Stored files the customer has seen, by the visible message they came with: their
    own, and those an agent's answer passed on (recorded on the agent's mail, shown with
    the relayed answer written in the same moment)."""
    relays = {m.created_at: m.id for m in messages if m.kind == OutboxKind.RELAY}
    answers_ = {m.id: relays[m.created_at] for m in session.scalars(select(TicketMessage).where(
        TicketMessage.ticket_id == ticket.id, TicketMessage.kind == MessageKind.AGENT,
        TicketMessage.internal.is_(False))) if m.created_at in relays}
    owners = {m.id: m.id for m in messages} | answers_
    found = session.scalars(select(Attachment).where(
        Attachment.ticket_message_id.in_(list(owners)), Attachment.listed.is_(True),
        Attachment.blob_sha256.is_not(None)).order_by(Attachment.id)).all()
    by_message: dict[int, list[Attachment]] = {}
    for a in found:
        by_message.setdefault(owners[a.ticket_message_id], []).append(a)
    return by_message


def _zone(session: Session, desk: Desk, ticket: Ticket) -> str:
    contact = session.get(Contact, ticket.contact_id) if ticket.contact_id else None
    return contact.timezone if contact is not None and contact.timezone else desk.timezone


def can_escalate(ticket: Ticket) -> bool:
    return ticket.status not in (TicketStatus.CLOSED, TicketStatus.SPAM) \
        and ticket.merged_into is None


def can_add(desk: Desk, ticket: Ticket, now: datetime) -> bool:
    if ticket.status not in DONE:
        return ticket.merged_into is None and ticket.status != TicketStatus.SPAM
    return ticket.merged_into is None and decide.within_reopen(
        done_at(ticket), desk.threading.reopen_days, now)


def show(session: Session, desk: Desk, cfg: WebConfig, ticket: Ticket,
         now: datetime, minted: datetime | None = None) -> Shown:
    """The ticket as its page shows it; the links on it are dated `minted` (the issue
    time of the link the page was opened by: a page view never extends a link's life)."""
    messages = _visible_messages(session, ticket)
    by_message = {mid: [{"id": a.id, "filename": a.filename, "size": a.size} for a in found]
                  for mid, found in _shown_files(session, ticket, messages).items()}
    history = [{"at": m.created_at, "ours": m.direction == "out", "kind": m.kind,
                "author": "" if m.direction == "out" or m.author == ticket.customer_address
                else m.author,
                "subject": m.subject, "text": (m.body_text or m.new_text).strip(),
                "files": by_message.get(m.id, [])} for m in messages]
    args = (cfg.secret, ticket.number, ticket.customer_address, ticket.link_version,
            minted or now)
    return Shown(
        number=ticket.number, subject=ticket.subject, status=ticket.status,
        priority=ticket.priority, language=ticket.language if ticket.language in ("de", "en")
        else "de", zone=_zone(session, desk, ticket), due=ticket.first_response_due,
        escalated_at=ticket.escalated_at, escalation_phone=ticket.escalation_phone,
        phone=str(ticket.facts.get("phone") or _contact_phone(session, ticket)),
        customer=ticket.customer_address, customer_name=ticket.customer_name,
        history=history, can_add=can_add(desk, ticket, now),
        can_escalate=can_escalate(ticket),
        ticket_token=links.customer_token(args[0], "ticket", *args[1:]),
        escalation_token=links.customer_token(args[0], "escalate", *args[1:]))


def _contact_phone(session: Session, ticket: Ticket) -> str:
    contact = session.get(Contact, ticket.contact_id) if ticket.contact_id else None
    return contact.phone if contact is not None else ""


def attachment_of(session: Session, ticket: Ticket, attachment_id: int) -> Attachment | None:
    """A stored file of a message the customer may see, or None."""
    shown = _shown_files(session, ticket, _visible_messages(session, ticket))
    return next((a for found in shown.values() for a in found if a.id == attachment_id),
                None)
