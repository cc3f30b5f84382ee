"""Find the ticket an incoming mail continues: by our Message-IDs, a reply address, a tag."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, load_only

from maild import accounts, db, links
from maild.desk import Desk
from maild.mail import thread
from maild.mail.parse import InboundMail
from maild.models import Ticket, TicketMessage

How = Literal["reference", "reference-foreign", "reply-address", "agent-address", "tag",
              "tag-foreign"]


@dataclass(frozen=True, slots=True)
class Match:
    ticket: Ticket
    how: How
    referenced: TicketMessage | None = None  # the message answered, when known
    merged_from: int | None = None  # the ticket number the mail pointed at, if merged away

    @property
    def attach(self) -> bool:
        """False for a stranger's mail (by a tag or a Message-ID, not on the ticket): a new
        ticket refers to it."""
        return self.how not in ("tag-foreign", "reference-foreign")


@dataclass(frozen=True, slots=True)
class Preread:
    """What a batch of mails points at, read for all of them at once: the ticket messages
    by Message-ID (the latest of each, with the few columns threading reads), the tickets
    they belong to by id, and the tickets by number (`numbers`: every number looked for,
    found or not). Only for a mail that cannot point at anything written in its own batch
    (`intake.Batch.apart`); read when the batch starts, as each mail's own reads were a
    moment later."""

    messages: dict[str, TicketMessage]
    by_id: dict[int, Ticket]
    tickets: dict[int, Ticket]
    numbers: frozenset[int]


MAX_NUMBERS = 50  # ticket numbers of one mail's reply addresses read with its batch


def preread(session: Session, desk: Desk, mails: Iterable[InboundMail],
            now: datetime) -> Preread | None:
    """`Preread` for `mails` in a query or two per table; None when they point at nothing.
    Reply addresses count only with a valid token (as in `find`), at most MAX_NUMBERS
    per mail (the rest are looked up by `find` itself)."""
    ids: set[str] = set()
    numbers: set[int] = set()
    for mail in mails:
        ids.update(thread.referenced_ids(mail))
        valid = [n for n, token in thread.plus_tokens(mail, desk.sender.address)
                 if links.reply_token_valid(desk.secret, n, token)
                 or agent_token_holder(desk, n, token, mail.from_addr, now)]
        numbers.update(valid[:MAX_NUMBERS])
        tagged = thread.subject_tag(mail.subject)
        if tagged is not None:
            numbers.add(tagged)
    if not ids and not numbers:
        return None
    messages: dict[str, TicketMessage] = {}
    for chunk in db.chunks(sorted(ids)):
        latest = select(func.max(TicketMessage.id)).where(
            TicketMessage.message_id.in_(chunk)).group_by(TicketMessage.message_id)
        messages.update((m.message_id or "", m) for m in session.scalars(
            select(TicketMessage).options(load_only(*_THREADING))
            .where(TicketMessage.id.in_(latest.scalar_subquery()))))
    by_id: dict[int, Ticket] = {}
    for some in db.chunks(sorted({m.ticket_id for m in messages.values()})):
        by_id.update((t.id, t) for t in session.scalars(select(Ticket).where(
            Ticket.id.in_(some))))
    tickets: dict[int, Ticket] = {}
    for part in db.chunks(sorted(numbers)):
        tickets.update((t.number, t) for t in session.scalars(
            select(Ticket).where(Ticket.number.in_(part))))
    return Preread(messages, by_id, tickets, frozenset(numbers))


# What threading and the agent's proof read of the message a mail answers.
_THREADING = (TicketMessage.id, TicketMessage.message_id, TicketMessage.ticket_id,
              TicketMessage.direction, TicketMessage.internal, TicketMessage.kind)


def find(session: Session, desk: Desk, mail: InboundMail, now: datetime, *,
         agent: bool = False, known: Preread | None = None) -> Match | None:
    """The ticket `mail` belongs to, strongest proof first; None for a new matter.
    `agent`: the sender is a proven agent, whom a tag alone lets in. `known`: what its
    batch read up front (else read here)."""
    found = _find(session, desk, mail, now, agent, known)
    if found is None or found.ticket.merged_into is None:
        return found
    ticket, seen = found.ticket, {found.ticket.number}
    while ticket.merged_into is not None and ticket.merged_into not in seen:
        target = db.ticket_by_number(session, ticket.merged_into)
        if target is None:
            break
        seen.add(target.number)
        ticket = target
    return Match(ticket, found.how, found.referenced, found.ticket.number)


def _find(session: Session, desk: Desk, mail: InboundMail, now: datetime,
          agent: bool, known: Preread | None) -> Match | None:
    ids = thread.referenced_ids(mail)
    if ids:
        message = _latest(session, ids, known)
        if message is not None:
            ticket = known.by_id.get(message.ticket_id) if known else None
            ticket = ticket or session.get_one(Ticket, message.ticket_id)
            # A Message-ID is no secret (the customer's first mail is quoted around): the
            # reply of someone not on the ticket is a stranger's, as with a tag.
            if (desk.threading.stranger_tag == "attach" or agent
                    or accounts.belongs(session, ticket, mail.from_addr)):
                return Match(ticket, "reference", message)
            return Match(ticket, "reference-foreign", message)
    for number, token in thread.plus_tokens(mail, desk.sender.address):
        how: How | None = ("reply-address"
                           if links.reply_token_valid(desk.secret, number, token)
                           else "agent-address"
                           if agent_token_holder(desk, number, token, mail.from_addr, now)
                           else None)
        ticket = _by_number(session, number, known) if how else None
        if ticket is not None and how is not None:
            return Match(ticket, how)
    tagged = thread.subject_tag(mail.subject)
    ticket = _by_number(session, tagged, known) if tagged is not None else None
    if ticket is None:
        return None
    if (desk.threading.stranger_tag == "attach" or agent
            or accounts.belongs(session, ticket, mail.from_addr)):
        return Match(ticket, "tag")
    return Match(ticket, "tag-foreign")


def _latest(session: Session, ids: list[str], known: Preread | None) -> TicketMessage | None:
    """The latest ticket message with one of the Message-IDs `ids`."""
    if known is not None:
        found = [known.messages[i] for i in ids if i in known.messages]
        return max(found, key=lambda m: m.id) if found else None
    return session.scalars(select(TicketMessage).where(
        TicketMessage.message_id.in_(ids)).order_by(TicketMessage.id.desc())).first()


def _by_number(session: Session, number: int, known: Preread | None) -> Ticket | None:
    if known is not None and number in known.numbers:
        return known.tickets.get(number)
    return db.ticket_by_number(session, number)


def agent_token_holder(desk: Desk, number: int, token: str, sender: str,
                       now: datetime) -> str | None:
    """Whom a valid agent token of ticket `number` was issued to: the sender themself,
    the team address or all agents (a notification to several at once); else None."""
    team = desk.agents.roster.team_address
    holders = [sender, *([team] if team else []),
               links.ALL_AGENTS]
    return links.agent_token_holder(desk.agent_key, number, token, holders, now,
                                    desk.agents.token_days)
