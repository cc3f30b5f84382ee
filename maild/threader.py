"""Find the ticket an incoming mail continues: by our Message-IDs, a reply address, a tag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild import accounts, links
from maild.mail import thread
from maild.mail.parse import InboundMail
from maild.models import Ticket, TicketMessage

How = Literal["reference", "reply-address", "tag", "tag-foreign"]


@dataclass(frozen=True, slots=True)
class Match:
    ticket: Ticket
    how: How

    @property
    def attach(self) -> bool:
        """False when only a stranger's tag points at the ticket: a new ticket refers to it."""
        return self.how != "tag-foreign"


def find(session: Session, mail: InboundMail, support_address: str, secret: str,
         stranger_tag: str) -> Match | None:
    """The ticket `mail` belongs to, strongest proof first; None for a new matter."""
    ids = thread.referenced_ids(mail)
    if ids:
        ticket_id = session.scalars(select(TicketMessage.ticket_id).where(
            TicketMessage.message_id.in_(ids)).order_by(TicketMessage.id.desc())).first()
        if ticket_id is not None:
            return Match(session.get_one(Ticket, ticket_id), "reference")
    for number, token in thread.plus_tokens(mail, support_address):
        if links.reply_token_valid(secret, number, token):
            ticket = _by_number(session, number)
            if ticket is not None:
                return Match(ticket, "reply-address")
    tagged = thread.subject_tag(mail.subject)
    ticket = _by_number(session, tagged) if tagged is not None else None
    if ticket is None:
        return None
    if stranger_tag == "attach" or _belongs(session, ticket, mail.from_addr):
        return Match(ticket, "tag")
    return Match(ticket, "tag-foreign")


def _by_number(session: Session, number: int) -> Ticket | None:
    return session.scalars(select(Ticket).where(Ticket.number == number)).one_or_none()


def _belongs(session: Session, ticket: Ticket, address: str) -> bool:
    """The ticket's customer (any of the contact's addresses) or a participant."""
    if address == ticket.customer_address or address in ticket.participants:
        return True
    if ticket.contact_id is None:
        return False
    account = accounts.lookup(session, address)
    return account is not None and account.contact_id == ticket.contact_id
