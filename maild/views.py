"""Read-only views of tickets as plain dicts: for the CLI now, the ticket page later."""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild import db
from maild.models import Attachment, Event, Ticket, TicketMessage

# C0 and C1 controls, DEL, and the marks that reorder text on screen (bidi overrides,
# isolates, LRM/RLM/ALM): in a terminal they could move the cursor, recolour or hide text.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_TEXT_FIELDS = ("text", "new_text")  # message bodies: their line breaks stay


def escape_controls(text: str, *, newlines: bool = False) -> str:
    """`text` safe for a terminal: every control character written as an escape (ESC as
    `\\x1b`, U+202E as `\\u202e`); with `newlines`, line breaks (\\n, \\r\\n) and tabs are kept."""
    if newlines:
        text = text.replace("\r\n", "\n")

    def escape(match: re.Match[str]) -> str:
        char = match.group(0)
        if newlines and char in "\n\t":
            return char
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROLS.sub(escape, text)


def for_terminal(value: Any, key: str = "") -> Any:
    """A view (dicts, lists, strings) with every string escaped for a terminal."""
    if isinstance(value, str):
        return escape_controls(value, newlines=key in _TEXT_FIELDS)
    if isinstance(value, list):
        return [for_terminal(v, key) for v in value]
    if isinstance(value, dict):
        return {escape_controls(str(k)): for_terminal(v, str(k)) for k, v in value.items()}
    return value


def in_zone(value: Any, zone: tzinfo, key: str = "") -> Any:
    """A view with every time (a key `at` or ending `_at`, `_due`, `_since`, holding an
    ISO time with its offset) shown in `zone`, the support calendar's, as everywhere
    else maild shows a time; other strings stay as they are."""
    if isinstance(value, list):
        return [in_zone(v, zone, key) for v in value]
    if isinstance(value, dict):
        return {k: in_zone(v, zone, str(k)) for k, v in value.items()}
    if isinstance(value, str) and (key == "at" or key.endswith(("_at", "_due", "_since"))):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        if moment.tzinfo is not None:
            return moment.astimezone(zone).isoformat(timespec="seconds")
    return value


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def ticket_summary(t: Ticket) -> dict[str, Any]:
    return {
        "number": t.number, "status": t.status, "priority": t.priority,
        "customer": t.customer_address, "customer_name": t.customer_name,
        "subject": t.subject, "language": t.language, "automatic": t.automatic,
        "opened_at": _when(t.opened_at), "first_response_due": _when(t.first_response_due),
        "first_response_at": _when(t.first_response_at), "missing": list(t.missing),
        "owner": t.owner, "cause": t.cause, "merged_into": t.merged_into,
        "escalated_at": _when(t.escalated_at),
    }


def ticket_list(session: Session, status: str | None = None) -> list[dict[str, Any]]:
    query = select(Ticket).order_by(Ticket.number.desc())
    if status:
        query = query.where(Ticket.status == status)
    return [ticket_summary(t) for t in session.scalars(query)]


def ticket_detail(session: Session, number: int) -> dict[str, Any] | None:
    """Everything about one ticket: facts, what is missing, messages, attachments, events."""
    ticket = db.ticket_by_number(session, number)
    if ticket is None:
        return None
    messages = session.scalars(select(TicketMessage).where(TicketMessage.ticket_id == ticket.id)
                               .order_by(TicketMessage.created_at, TicketMessage.id)).all()
    files = session.scalars(select(Attachment).where(
        Attachment.ticket_message_id.in_([m.id for m in messages]))).all()
    by_message: dict[int, list[dict[str, Any]]] = {}
    for a in files:
        by_message.setdefault(a.ticket_message_id, []).append({
            "filename": a.filename, "content_type": a.content_type, "size": a.size,
            "stored": a.blob_sha256 is not None, "inline": a.inline, "sha256": a.blob_sha256,
            "listed": a.listed, "note": a.note,
        })
    events = session.scalars(select(Event).where(Event.ticket_id == ticket.id)
                             .order_by(Event.at, Event.id)).all()
    return {
        **ticket_summary(ticket),
        "facts": ticket.facts.to_json(),
        "messages": [{
            "at": _when(m.created_at), "direction": m.direction, "author": m.author,
            "message_id": m.message_id, "subject": m.subject, "automatic": m.automatic,
            "kind": m.kind, "internal": m.internal,
            "text": m.body_text, "new_text": m.new_text,
            "attachments": by_message.get(m.id, []),
        } for m in messages],
        "events": [{"at": _when(e.at), "actor": e.actor, "kind": e.kind, "detail": e.detail}
                   for e in events],
    }
