"""Erase on request (GDPR): one ticket, or everything of one customer's address; of each
only an event without personal data remains.

A customer purge erases every ticket of the address, its mails not on a ticket
(quarantined, rejected, bounced), its own mails on other tickets, the outgoing mails only
to it, its bounce/block flag and its entry in the account book; wherever else the address
is written (other tickets' participants, mails that copied it, events) it is cut out.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

from sqlalchemy import JSON, LargeBinary, String, Text, cast, delete, func, select, update
from sqlalchemy.orm import Session

from maild import blobs, db, history
from maild.blobs import BlobStore
from maild.models import (
    AddressFlag,
    Attachment,
    Base,
    Contact,
    ContactAddress,
    Event,
    InboundMessage,
    OutboxMail,
    Ticket,
    TicketMessage,
)
from maild.progress import Progress

ERASED = "[erased]"
ERASED_ADDRESS = "erased@invalid"  # where an address must stay one (mail headers)
_MIN_LINE = 10  # shorter lines of a customer's mail ("Hallo,") are not cut elsewhere


@dataclass(frozen=True, slots=True)
class Purged:
    number: int
    messages: int
    attachments: int
    raw_mails: int
    outgoing: int
    orphaned_blobs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PurgedCustomer:
    address: str
    tickets: tuple[int, ...]
    mails: int  # inbound mails erased: off any ticket, or theirs on other tickets
    outgoing: int  # outgoing mails erased (to the address alone)
    redacted: int  # rows and stored mails elsewhere the address was cut out of
    orphaned_blobs: tuple[str, ...]


def purge_ticket(session: Session, number: int, actor: str, now: datetime) -> Purged | None:
    """Delete ticket `number` and everything of it; None if there is no such ticket.

    The caller deletes the returned orphaned blobs from the store after the commit."""
    ticket = db.ticket_by_number(session, number)
    if ticket is None:
        return None
    message_ids = list(session.scalars(select(TicketMessage.id).where(
        TicketMessage.ticket_id == ticket.id)))
    raw_shas = list(session.scalars(select(InboundMessage.raw_sha256).where(
        InboundMessage.ticket_id == ticket.id)))
    outgoing_shas = list(session.scalars(select(OutboxMail.raw_sha256).where(
        OutboxMail.ticket_id == ticket.id)))
    outgoing = session.execute(delete(OutboxMail).where(OutboxMail.ticket_id == ticket.id))
    attachment_shas = _delete_messages(session, message_ids)
    session.execute(delete(InboundMessage).where(InboundMessage.ticket_id == ticket.id))
    session.execute(delete(Event).where(Event.ticket_id == ticket.id))
    orphaned = blobs.unref(session, [*attachment_shas, *raw_shas, *outgoing_shas])
    session.delete(ticket)
    result = Purged(number, len(message_ids), len(attachment_shas), len(raw_shas),
                    int(getattr(outgoing, "rowcount", 0) or 0), tuple(orphaned))
    history.record(session, None, now, actor, history.Purged(
        number, result.messages, result.attachments, result.raw_mails, result.outgoing,
        len(orphaned)))
    return result


def purge_customer(session: Session, store: BlobStore, address: str, actor: str,
                   now: datetime, progress: Progress | None = None) -> PurgedCustomer:
    """Erase everything of `address` (see the module's docstring). The caller deletes the
    returned orphaned blobs from the store after the commit."""
    address = address.strip().lower()
    numbers = list(session.scalars(select(Ticket.number).where(
        func.lower(Ticket.customer_address) == address).order_by(Ticket.number)))
    orphaned: list[str] = []
    for number in numbers:
        done = purge_ticket(session, number, actor, now)
        orphaned.extend(done.orphaned_blobs if done else ())
    mails, shas = _erase_mails(session, store, address, now)
    outgoing, outgoing_shas = _erase_outgoing(session, address)
    shas.extend(outgoing_shas)
    session.execute(delete(AddressFlag).where(func.lower(AddressFlag.address) == address))
    _erase_contact(session, address)
    redacted_mails, more_shas = _redact_stored_mails(session, store, address, now, progress)
    redacted = redacted_mails + _redact_rows(session, address)
    orphaned.extend(blobs.unref(session, [*shas, *more_shas]))
    result = PurgedCustomer(address, tuple(numbers), mails, outgoing, redacted,
                            tuple(dict.fromkeys(orphaned)))
    history.record(session, None, now, actor, history.CustomerPurged(
        len(numbers), mails, outgoing, redacted, len(result.orphaned_blobs)))
    return result


def delete_blobs(store: BlobStore, shas: Iterable[str]) -> None:
    for sha in shas:
        store.delete(sha)


# -- the pieces --------------------------------------------------------------------------------

def _delete_messages(session: Session, message_ids: list[int]) -> list[str]:
    """Delete ticket messages and their attachments; the stored files' shas (one per use)."""
    shas = [s for s in session.scalars(select(Attachment.blob_sha256).where(
        Attachment.ticket_message_id.in_(message_ids))) if s]
    session.execute(delete(Attachment).where(Attachment.ticket_message_id.in_(message_ids)))
    session.execute(delete(TicketMessage).where(TicketMessage.id.in_(message_ids)))
    return shas


def _erase_mails(session: Session, store: BlobStore, address: str,
                 now: datetime) -> tuple[int, list[str]]:
    """The address's own mails on other tickets (as a person copied on them), and the
    mails off any ticket that are from it (quarantined, rejected) or machine mail naming
    it (bounces, copies of ours); another's mail that only names it is cut later."""
    theirs = session.execute(select(
        TicketMessage.id, TicketMessage.inbound_id, TicketMessage.ticket_id,
        TicketMessage.body_text, TicketMessage.subject).where(
        func.lower(TicketMessage.author) == address, TicketMessage.direction == "in")).all()
    shas = _delete_messages(session, [m.id for m in theirs])
    shas.extend(_cut_words(
        session, store, {m.ticket_id for m in theirs},
        {line.strip() for m in theirs for line in [m.subject, *m.body_text.splitlines()]
         if len(line.strip()) >= _MIN_LINE}, now))
    inbound = {m.inbound_id for m in theirs if m.inbound_id is not None}
    for row_id, sha, kind in session.execute(select(
            InboundMessage.id, InboundMessage.raw_sha256, InboundMessage.kind).where(
            InboundMessage.ticket_id.is_(None))):
        raw = store.get(sha) if sha and store.exists(sha) else b""
        if mentions(raw, address) and (kind in ("bounce", "own") or sender(raw) == address):
            inbound.add(row_id)
    shas.extend(s for s in session.scalars(select(InboundMessage.raw_sha256).where(
        InboundMessage.id.in_(inbound))) if s)
    session.execute(update(TicketMessage).where(TicketMessage.inbound_id.in_(inbound))
                    .values(inbound_id=None))
    session.execute(delete(InboundMessage).where(InboundMessage.id.in_(inbound)))
    return len(inbound), shas


def _cut_words(session: Session, store: BlobStore, ticket_ids: set[int], lines: set[str],
               now: datetime) -> list[str]:
    """Cut the lines of the customer's mails out of what quoted them on other tickets
    (the agents' notices and answers of those tickets); returns the replaced shas."""
    if not lines:
        return []
    cuts = {line: ERASED for line in sorted(lines, key=len, reverse=True)}
    for message in session.scalars(select(TicketMessage).where(
            TicketMessage.ticket_id.in_(ticket_ids))):
        for name in ("subject", "body_text", "new_text"):
            setattr(message, name, _cut(getattr(message, name), cuts))
    replaced = [_rewrite_outgoing(session, store, out, cuts, now)
                for out in session.scalars(select(OutboxMail).where(
                    OutboxMail.ticket_id.in_(ticket_ids)))]
    session.flush()
    return [sha for sha in replaced if sha]


def _outgoing_bytes(store: BlobStore, out: OutboxMail) -> bytes:
    """An outgoing mail's bytes, in its row (before 0013) or in the store (b"" if pruned)."""
    if out.raw is not None:
        return out.raw
    if out.raw_sha256 and store.exists(out.raw_sha256):
        return store.get(out.raw_sha256)
    return b""


def _rewrite_outgoing(session: Session, store: BlobStore, out: OutboxMail,
                      cuts: dict[str, str], now: datetime) -> str | None:
    """The outgoing mail redacted; its old blob's sha when one was replaced (to unref)."""
    raw = _outgoing_bytes(store, out)
    new = redact_mail(raw, cuts) if raw else raw
    if new == raw:
        return None
    if out.raw is not None:
        out.raw = new
        return None
    old, out.raw_sha256 = out.raw_sha256, blobs.stage(session, store, new, now)
    return old


def _cut(text: str, cuts: dict[str, str]) -> str:
    for needle, replacement in cuts.items():
        text = re.sub(re.escape(needle), replacement, text, flags=re.IGNORECASE)
    return text


def _erase_outgoing(session: Session, address: str) -> tuple[int, list[str]]:
    """Outgoing mails to the address alone (answers to mails off any ticket, mostly);
    their count and the shas of their bytes."""
    alone = {row_id: sha for row_id, recipients, sha in session.execute(
        select(OutboxMail.id, OutboxMail.recipients, OutboxMail.raw_sha256).where(
            func.lower(cast(OutboxMail.recipients, Text)).like(_like(address), escape="\\")))
             if {str(r).lower() for r in recipients} == {address}}
    session.execute(delete(OutboxMail).where(OutboxMail.id.in_(list(alone))))
    return len(alone), [sha for sha in alone.values() if sha]


def _erase_contact(session: Session, address: str) -> None:
    """The address in the account book; the contact too when it was its last address."""
    contact_id = session.scalar(select(ContactAddress.contact_id).where(
        ContactAddress.address == address))
    if contact_id is None:
        return
    session.execute(delete(ContactAddress).where(ContactAddress.address == address))
    if session.scalar(select(ContactAddress.address).where(
            ContactAddress.contact_id == contact_id).limit(1)) is None:
        session.execute(update(Ticket).where(Ticket.contact_id == contact_id)
                        .values(contact_id=None))
        session.execute(delete(Contact).where(Contact.id == contact_id))


def _redact_stored_mails(session: Session, store: BlobStore, address: str,
                         now: datetime, progress: Progress | None = None,
                         ) -> tuple[int, list[str]]:
    """Cut the address out of the stored raw mails and outgoing mails that remain (a
    mail of another customer that copied it); returns the count and the replaced shas."""
    count, replaced = 0, []
    rows = session.execute(select(InboundMessage.id, InboundMessage.raw_sha256)).all()
    if progress is not None:
        progress.total = len(rows)
    for row_id, sha in rows:
        if progress is not None:
            progress.step()
        if not sha or not store.exists(sha):
            continue
        raw = store.get(sha)
        if not mentions(raw, address):
            continue
        new = redact_mail(raw, {address: ERASED_ADDRESS})
        new_sha = store.put(new)
        blobs.add_ref(session, new_sha, len(new), now)
        session.execute(update(InboundMessage).where(InboundMessage.id == row_id)
                        .values(raw_sha256=new_sha))
        replaced.append(sha)
        count += 1
    for out in _each_outgoing(session):
        if mentions(_outgoing_bytes(store, out), address):
            old = _rewrite_outgoing(session, store, out, {address: ERASED_ADDRESS}, now)
            replaced.extend([old] if old else [])
            count += 1
    session.flush()
    return count, replaced


def _each_outgoing(session: Session) -> Iterator[OutboxMail]:
    last = 0
    while True:
        batch = list(session.scalars(select(OutboxMail).where(OutboxMail.id > last)
                                     .order_by(OutboxMail.id).limit(200)))
        if not batch:
            return
        yield from batch
        last = batch[-1].id


def _redact_rows(session: Session, address: str) -> int:
    """Cut the address out of every text and JSON column (but keys) of every table."""
    count = 0
    for table in Base.metadata.sorted_tables:
        keys = list(table.primary_key.columns)
        for column in table.columns:
            if column.primary_key or isinstance(column.type, LargeBinary):
                continue
            if not isinstance(column.type, String | Text | JSON):
                continue
            as_text = cast(column, Text) if isinstance(column.type, JSON) else column
            found = session.execute(select(*keys, column).where(
                func.lower(as_text).like(_like(address), escape="\\"))).all()
            for row in found:
                value = _scrub(row[-1], address)
                session.execute(table.update().where(
                    *(k == v for k, v in zip(keys, row[:-1], strict=False)))
                    .values({column.name: value}))
                count += 1
    return count


def _scrub(value: Any, address: str) -> Any:
    """`value` without `address`: list entries that are it dropped, strings cut."""
    if isinstance(value, str):
        return _pattern(address).sub(ERASED, value)
    if isinstance(value, list):
        return [_scrub(v, address) for v in value
                if not (isinstance(v, str) and v.strip().lower() == address)]
    if isinstance(value, dict):
        return {k: _scrub(v, address) for k, v in value.items()}
    return value


def _like(address: str) -> str:
    escaped = address.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _pattern(address: str) -> re.Pattern[str]:
    return re.compile(re.escape(address), re.IGNORECASE)


# -- mails -------------------------------------------------------------------------------------

def mentions(raw: bytes, address: str) -> bool:
    """Whether a mail names `address`, in its bytes or in a decoded (QP/base64) part."""
    if address.encode() in raw.lower():
        return True
    lowered = raw.lower()
    if b"base64" not in lowered and b"quoted-printable" not in lowered and b"=?" not in raw:
        return False
    return address in _decoded_text(raw).lower()


def _decoded_text(raw: bytes) -> str:
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        parts = [str(v) for v in msg.values()]
        for part in msg.walk():
            if not part.is_multipart():
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    parts.append(payload.decode("utf-8", "replace"))
        return "\n".join(parts)
    except Exception:  # a mail too broken to parse: its bytes were searched already
        return ""


def redact_mail(raw: bytes, cuts: dict[str, str]) -> bytes:
    """The mail with each key of `cuts` (an address, a line of text) replaced by its value
    in its headers and text parts; the bytes are cut in any case, whatever of the
    structure fails to parse."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        if _redact_message(msg, cuts):
            raw = msg.as_bytes()
    except Exception:  # a mail too broken to rewrite: cut its bytes only
        pass
    for needle, replacement in cuts.items():
        raw = re.sub(re.escape(needle.encode()), replacement.encode(), raw, flags=re.IGNORECASE)
    return raw


def _redact_message(msg: EmailMessage, cuts: dict[str, str]) -> bool:
    changed = False
    for name, value in list(msg.items()):
        new = _cut(str(value), cuts)
        if new != str(value):
            msg.replace_header(name, new)
            changed = True
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        assert isinstance(part, EmailMessage)
        text = part.get_content()
        if isinstance(text, str) and _cut(text, cuts) != text:
            part.set_content(_cut(text, cuts), subtype=part.get_content_subtype(),
                             charset="utf-8")
            changed = True
    return changed


def sender(raw: bytes) -> str:
    """The From address of a raw mail, lower case ('' when there is none)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    msg = email.message_from_bytes(head + b"\r\n\r\n", policy=email.policy.compat32)
    found = getaddresses([str(v) for v in msg.get_all("from", [])])
    return found[0][1].strip().lower() if found else ""
