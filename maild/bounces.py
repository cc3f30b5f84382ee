"""Bounces: matched to the mail we sent, recorded on its ticket, the address marked as
bouncing on a permanent failure, the agent told. Never a ticket, never answered.

Anybody can send a report that looks like a bounce. It counts only when it names a mail
we sent (its VERP envelope address or our Message-ID) and, as failed, a recipient of that
very mail: a report that names someone else marks nobody. And it marks that recipient only
when no one else could have written it: a Message-ID (and the VERP token made from it) is
known to everyone who got a mail of the thread, so a Cc'd participant could forge a report
naming the customer. A permanent failure of R marks R when R is the only one who received
the ticket's mails for customers, or when a trusted server of ours vouches (DKIM/DMARC)
that the report comes from R's domain or from ours (the receiving side, or our relay);
otherwise it is recorded and the agents are told, and nobody is marked.

An address marked bouncing gets no mail of any kind until it writes to us again or ops
clear it (`maild addresses clear`): see maild/suppression.py.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild import answers, history, logs, notify, vocab
from maild.desk import Desk
from maild.mail import dsn, thread
from maild.mail.facts import Facts
from maild.mail.parse import InboundMail
from maild.models import OutboxMail, Ticket, TicketMessage
from maild.suppression import mark_bouncing
from maild.vocab import MessageKind

log = logging.getLogger(__name__)


def _verp_outbox(session: Session, mail: InboundMail, support: str) -> OutboxMail | None:
    local, _, domain = support.partition("@")
    for address in thread.recipients(mail):
        head, _, tail = address.partition("@")
        if tail == domain and head.startswith(f"{local}+b-"):
            token = head.removeprefix(f"{local}+b-")
            if token.isalnum():
                found = session.scalars(select(OutboxMail).where(
                    OutboxMail.verp_token == token).order_by(OutboxMail.id)).first()
                if found is not None:
                    return found
    return None


def written_by_its_side(session: Session, desk: Desk, out: OutboxMail, mail: InboundMail,
                        recipient: str) -> bool:
    """Whether a report of `recipient`'s failure can only come from its side: nobody but
    `recipient` got the ticket's mails for customers (so nobody else knows their
    Message-IDs), or a trusted server of ours proves the report's From at the recipient's
    domain or at ours. Mails to agents: agents are ours, their reports count."""
    if out.kind in vocab.TO_AGENTS:
        return True
    others = {r.lower() for r in out.recipients} - {recipient}
    if not others and out.ticket_id is not None:
        for recipients in session.scalars(select(OutboxMail.recipients).where(
                OutboxMail.ticket_id == out.ticket_id,
                OutboxMail.kind.not_in(vocab.TO_AGENTS))):
            others |= {r.lower() for r in recipients} - {recipient}
    if not others:
        return True
    domain = mail.from_addr.rpartition("@")[2].lower()
    sides = (recipient.rpartition("@")[2], desk.sender.address.rpartition("@")[2].lower())
    return (any(domain == side or domain.endswith("." + side) for side in sides)
            and answers.from_proven(desk, mail))


def record(
    session: Session, desk: Desk, mail: InboundMail, report: dsn.Report, *,
    inbound_id: int, now: datetime,
) -> tuple[Ticket | None, str]:
    """Apply a bounce; returns the ticket it concerns (if any) and what was done."""
    out = None
    for message_id in report.message_ids:
        out = session.scalars(select(OutboxMail).where(
            OutboxMail.message_id == message_id)).first()
        if out is not None:
            break
    if out is None:
        out = _verp_outbox(session, mail, desk.sender.address)
    if out is None:
        return None, "bounce: matches no mail we sent"
    recipients = {r.lower() for r in out.recipients}
    failures = [f for f in report.failures if f.recipient in recipients]
    if not failures:  # a forged report, or a forwarded address: nothing to mark
        summary = (f"bounce of {out.message_id} names none of its recipients "
                   f"({', '.join(f.recipient for f in report.failures[:5]) or 'nobody'}): "
                   "nothing marked")
        log.warning("%s", summary)
        return None, summary
    permanent = [f for f in failures if f.permanent]
    unproven = [f.recipient for f in permanent
                if not written_by_its_side(session, desk, out, mail, f.recipient)]
    permanent = [f for f in permanent if f.recipient not in unproven]
    for f in permanent:
        mark_bouncing(session, f.recipient, f.status, f.diagnostic, now)
    out.last_error = "; ".join(f"bounced {f.recipient} {f.status}".strip() for f in failures)
    ticket = session.get(Ticket, out.ticket_id) if out.ticket_id else None
    summary = (f"bounce of {out.message_id}: "
               + ", ".join(f"{f.recipient} {f.status or f.action}" for f in failures)
               + (" (permanent: address marked bouncing)" if permanent else
                  " (not marked: others on the ticket could have written it)" if unproven
                  else " (temporary)"))
    if ticket is not None:
        session.add(TicketMessage(
            ticket_id=ticket.id, inbound_id=inbound_id, direction="in",
            author=mail.from_addr or "mailer-daemon", message_id=mail.message_id,
            subject=mail.subject, body_text=mail.text, new_text=summary, facts=Facts(),
            automatic=True, created_at=now, kind=MessageKind.BOUNCE, internal=True,
        ))
        history.record(session, ticket, now, "maild", history.Bounce(
            out.message_id, bool(permanent),
            [{"recipient": f.recipient, "status": f.status, "action": f.action,
              "diagnostic": f.diagnostic[:200]} for f in failures]))
        if out.kind not in vocab.TO_AGENTS:  # agents need not hear of their own bounces twice
            notify.bounce_notice(session, desk, ticket, [
                f"{f.recipient}: {f.status or f.action} {f.diagnostic}".strip()
                for f in failures] + [
                f"{r}: not marked as bouncing, the report may come from another person on "
                "the ticket (remove the address with #cc remove, or ask the customer)"
                for r in unproven], bool(permanent), now)
    if ticket is not None:
        logs.bind(ticket=f"#{ticket.number}")
    log.info("%s", summary)
    return ticket, summary
