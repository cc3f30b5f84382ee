"""Erase a ticket completely on request (GDPR): its messages, raw mails, outgoing mails,
events and the blobs no other ticket uses; one event without personal data remains."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from maild import db
from maild.blobs import BlobStore
from maild.models import (
    Attachment,
    Blob,
    Event,
    InboundMessage,
    OutboxMail,
    TicketMessage,
)


@dataclass(frozen=True, slots=True)
class Purged:
    number: int
    messages: int
    attachments: int
    raw_mails: int
    outgoing: int
    orphaned_blobs: tuple[str, ...]


def purge_ticket(session: Session, number: int, actor: str, now: datetime) -> Purged | None:
    """Delete ticket `number` and everything of it; None if there is no such ticket.

    The caller deletes the returned orphaned blobs from the store after the commit."""
    ticket = db.ticket_by_number(session, number)
    if ticket is None:
        return None
    message_ids = session.scalars(select(TicketMessage.id).where(
        TicketMessage.ticket_id == ticket.id)).all()
    attachment_shas = session.scalars(select(Attachment.blob_sha256).where(
        Attachment.ticket_message_id.in_(message_ids))).all()
    raw_shas = session.scalars(select(InboundMessage.raw_sha256).where(
        InboundMessage.ticket_id == ticket.id)).all()
    refs = Counter(sha for sha in [*attachment_shas, *raw_shas] if sha)
    outgoing = session.execute(delete(OutboxMail).where(OutboxMail.ticket_id == ticket.id))
    session.execute(delete(Attachment).where(Attachment.ticket_message_id.in_(message_ids)))
    session.execute(delete(TicketMessage).where(TicketMessage.ticket_id == ticket.id))
    session.execute(delete(InboundMessage).where(InboundMessage.ticket_id == ticket.id))
    session.execute(delete(Event).where(Event.ticket_id == ticket.id))
    orphaned = []
    for sha, count in refs.items():
        session.execute(update(Blob).where(Blob.sha256 == sha).values(refs=Blob.refs - count))
        if (session.scalar(select(Blob.refs).where(Blob.sha256 == sha)) or 0) <= 0:
            session.execute(delete(Blob).where(Blob.sha256 == sha))
            orphaned.append(sha)
    session.delete(ticket)
    result = Purged(number, len(message_ids), len([s for s in attachment_shas]),
                    len(raw_shas), int(getattr(outgoing, "rowcount", 0) or 0), tuple(orphaned))
    session.add(Event(ticket_id=None, at=now, actor=actor, kind="purged", detail={
        "number": number, "messages": result.messages, "attachments": result.attachments,
        "raw_mails": result.raw_mails, "outgoing": result.outgoing,
        "blobs_deleted": len(orphaned)}))
    return result


def delete_blobs(store: BlobStore, shas: tuple[str, ...]) -> None:
    for sha in shas:
        store.delete(sha)
