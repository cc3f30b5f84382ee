"""What each kind of ticket event records: one frozen dataclass per `EventKind`.

The `events` table keeps an event's detail as JSON (the ticket page, `maild ticket show`
and billing disputes read it). `record` writes an event from its detail, the kind taken
from the detail's type, so a kind and its detail cannot disagree. The JSON keeps the keys
events were always stored with ("from", "to"; an empty optional key left out), so old
and new events read the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy.orm import Session

from maild.models import Event, Ticket
from maild.vocab import EventKind


def _stored_as(key: str) -> Any:
    """A field stored under another key (a Python keyword, e.g. "from")."""
    return field(metadata={"key": key})


def _optional(default: Any = None) -> Any:
    """A field left out of the JSON when empty (as events always were)."""
    return field(default=default, metadata={"omit_empty": True})


@dataclass(frozen=True, slots=True)
class Detail:
    kind: ClassVar[EventKind]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("omit_empty") and not value:
                continue
            out[f.metadata.get("key", f.name)] = (
                value.isoformat() if isinstance(value, datetime) else value)
        return out


def record(session: Session, ticket: Ticket | None, at: datetime, actor: str,
           detail: Detail) -> Event:
    """Add the event `detail` of `ticket` (None: of no ticket, e.g. one purged)."""
    event = Event(at=at, actor=actor, kind=detail.kind, detail=detail.to_json())
    if ticket is not None and ticket.id is None:  # a ticket of the batch being written
        event.ticket = ticket
    else:
        event.ticket_id = ticket.id if ticket is not None else None
    session.add(event)
    return event


# -- a customer's mail --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Created(Detail):
    kind = EventKind.CREATED
    inbound_id: int | None
    verdict: str = _stored_as("kind")  # what the classifier made of the mail
    reason: str = ""
    priority: str = ""
    priority_reason: str = ""
    refers_to: int | None = _optional()  # the closed ticket the mail answered
    cc_not_added: list[str] = _optional(())  # copied addresses an unproven sender named


@dataclass(frozen=True, slots=True)
class FollowUp(Detail):
    kind = EventKind.FOLLOW_UP
    inbound_id: int | None
    how: str  # how the mail found its ticket (reply, tag, web, …)
    verdict: str = _stored_as("kind")
    copied: list[str] = _optional(())  # participants added
    cc_not_added: list[str] = _optional(())
    status: list[str] = _optional(())  # [before, after] when the mail reopened the ticket
    reopened: bool = _optional(False)


@dataclass(frozen=True, slots=True)
class AutomaticReply(FollowUp):
    kind = EventKind.AUTOMATIC_REPLY


@dataclass(frozen=True, slots=True)
class NotAnswered(Detail):
    kind = EventKind.NOT_ANSWERED
    reason: str


@dataclass(frozen=True, slots=True)
class Bounce(Detail):
    kind = EventKind.BOUNCE
    message_id: str
    permanent: bool
    failures: list[dict[str, str]]  # recipient, status, action, diagnostic


# -- agents' work -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandsRejected(Detail):
    kind = EventKind.COMMANDS_REJECTED
    errors: list[str]


@dataclass(frozen=True, slots=True)
class FirstResponse(Detail):
    kind = EventKind.FIRST_RESPONSE
    what: str
    due: datetime | None
    in_time: bool


@dataclass(frozen=True, slots=True)
class Note(Detail):
    kind = EventKind.NOTE
    message_id: str | None


@dataclass(frozen=True, slots=True)
class Status(Detail):
    kind = EventKind.STATUS
    before: str = _stored_as("from")
    after: str = _stored_as("to")


@dataclass(frozen=True, slots=True)
class Owner(Detail):
    kind = EventKind.OWNER
    before: str = _stored_as("from")
    after: str = _stored_as("to")


@dataclass(frozen=True, slots=True)
class PriorityChanged(Detail):
    kind = EventKind.PRIORITY
    before: str = _stored_as("from")
    after: str = _stored_as("to")
    reason: str = _optional("")


@dataclass(frozen=True, slots=True)
class Cause(Detail):
    kind = EventKind.CAUSE
    before: str | None = _stored_as("from")
    after: str = _stored_as("to")
    callback_billable: bool = False


@dataclass(frozen=True, slots=True)
class Blocked(Detail):
    kind = EventKind.BLOCKED
    address: str


@dataclass(frozen=True, slots=True)
class Participant(Detail):
    kind = EventKind.PARTICIPANT
    address: str
    added: bool


@dataclass(frozen=True, slots=True)
class Merged(Detail):
    kind = EventKind.MERGED
    into: int


@dataclass(frozen=True, slots=True)
class MergedFrom(Detail):
    kind = EventKind.MERGED_FROM
    number: int = _stored_as("from")


# -- the web pages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Escalated(Detail):
    kind = EventKind.ESCALATED
    phone: str
    by: str
    via: str


@dataclass(frozen=True, slots=True)
class LinksRevoked(Detail):
    kind = EventKind.LINKS_REVOKED
    version: int


# -- operators --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resent(Detail):
    """`maild outbox retry`: a failed mail about the ticket was queued to be sent again."""

    kind = EventKind.RESENT
    message_id: str
    mail_kind: str
    to: list[str]
    error: str  # why it had failed


# -- sweeps -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlaWarning(Detail):
    kind = EventKind.SLA_WARNING
    share: float  # of the promised time used
    due: datetime


@dataclass(frozen=True, slots=True)
class SlaBreach(Detail):
    kind = EventKind.SLA_BREACH
    due: datetime
    priority: str


@dataclass(frozen=True, slots=True)
class Reminder(Detail):
    kind = EventKind.REMINDER
    waiting_since: datetime


# -- erasure ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Purged(Detail):
    kind = EventKind.PURGED
    number: int
    messages: int
    attachments: int
    raw_mails: int
    outgoing: int
    blobs_deleted: int


@dataclass(frozen=True, slots=True)
class CustomerPurged(Detail):
    kind = EventKind.CUSTOMER_PURGED
    tickets: int
    mails: int
    outgoing: int
    redacted: int
    blobs_deleted: int


DETAILS: dict[EventKind, type[Detail]] = {cls.kind: cls for cls in (
    Created, FollowUp, AutomaticReply, NotAnswered, Bounce, CommandsRejected, FirstResponse,
    Note, Status, Owner, PriorityChanged, Cause, Blocked, Participant, Merged, MergedFrom,
    Escalated, LinksRevoked, SlaWarning, SlaBreach, Reminder, Purged, CustomerPurged,
    Resent)}
