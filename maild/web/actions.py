"""What the customer's pages change (in a thread, one transaction each): escalation,
added information; and the operators' side of it: revoking links, the call-back report."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from maild import answers, db, history, links, notify, sla
from maild.desk import Desk
from maild.mail import contexts
from maild.mail.classify import Verdict
from maild.mail.parse import InboundMail, Part
from maild.mail.render import render_mail
from maild.models import Company, InboundMessage, Ticket, TicketMessage
from maild.tickets import add_follow_up
from maild.vocab import WEB_MAILBOX, InboundState, MessageKind, OutboxKind, Priority
from maild.web.access import WebConfig
from maild.web.views import can_add
from maild.work import customer_thread

log = logging.getLogger(__name__)


def escalate(session: Session, desk: Desk, cfg: WebConfig, ticket_id: int, phone: str,
             now: datetime) -> bool:
    """Activate the call-back service once: True when this call did it. The conditional
    UPDATE decides (a double click, the back button, two concurrent POSTs: one wins)."""
    done = session.execute(
        update(Ticket).where(Ticket.id == ticket_id, Ticket.escalated_at.is_(None))
        .values(escalated_at=now, escalation_phone=phone, updated_at=now)
        .execution_options(synchronize_session=False))
    if getattr(done, "rowcount", 0) != 1:
        return False
    ticket = session.get(Ticket, ticket_id, populate_existing=True)
    assert ticket is not None
    actor = ticket.customer_address
    history.record(session, ticket, now, actor, history.Escalated(phone, actor, "web"))
    if ticket.priority != Priority.URGENT:
        history.record(session, ticket, now, "maild", history.PriorityChanged(
            ticket.priority, Priority.URGENT, reason="escalated"))
        ticket.priority = Priority.URGENT
    if phone and ticket.facts.get("phone") != phone:
        ticket.facts = replace(ticket.facts, phone=phone)
    callback = desk.calendar.next_open(now)
    _staff_mail(session, desk, cfg, ticket, phone, callback, now)
    _customer_mail(session, desk, cfg, ticket, phone, callback, now)
    log.info("ticket escalated number=%s", ticket.number)
    return True


def _staff(session: Session, desk: Desk, cfg: WebConfig, ticket: Ticket) -> list[str]:
    """The lead and the owner (or the team): everyone who must know at once."""
    found = [*desk.agents.roster.lead_to(session, cfg.lead_address),
             *desk.agents.roster.notify_to(session, ticket.owner)]
    return [a for a in dict.fromkeys(found) if a and not answers.is_ours(desk, a)]


def _staff_mail(session: Session, desk: Desk, cfg: WebConfig, ticket: Ticket, phone: str,
                callback: datetime, now: datetime) -> None:
    to = _staff(session, desk, cfg, ticket)
    if not to:
        log.warning("escalation of ticket=%s: no agent to tell", ticket.number)
        return
    last = session.scalars(select(TicketMessage).where(
        TicketMessage.ticket_id == ticket.id, TicketMessage.kind == MessageKind.CUSTOMER)
        .order_by(TicketMessage.id.desc())).first()
    context = contexts.EscalatedStaff(
        number=ticket.number, subject=ticket.subject, phone=phone,
        customer=ticket.customer_address, customer_name=ticket.customer_name,
        status=ticket.status, priority=ticket.priority, owner=ticket.owner,
        due=ticket.first_response_due, timezone=desk.timezone, callback=callback,
        open_now=desk.calendar.is_open(now),
        facts=[(name, ", ".join(value) if isinstance(value, tuple) else value)
               for name, value in ticket.facts.known()],
        text=(last.new_text or last.body_text).strip()[:4000] if last else "",
        language=desk.agents.language,
    )
    rendered = render_mail(
        desk.templates, "escalated_staff", context, sender=desk.sender,
        to=", ".join(to), now=now, auto_submitted="auto-generated",
        in_reply_to=session.scalars(select(TicketMessage.message_id).where(  # agents' thread
            TicketMessage.ticket_id == ticket.id, TicketMessage.kind == OutboxKind.NOTIFY)
            .order_by(TicketMessage.id.desc())).first(),
        reply_to=notify.agent_reply_to(desk, ticket.number, to, now))
    urgent = b"Importance: high\r\nX-Priority: 1 (Highest)\r\n"
    answers.enqueue(session, desk, replace(rendered, raw=urgent + rendered.raw), to, ticket,
                    OutboxKind.ESCALATED_STAFF, now, automatic=True, internal=True)


def _customer_mail(session: Session, desk: Desk, cfg: WebConfig, ticket: Ticket, phone: str,
                   callback: datetime, now: datetime) -> None:
    ids = customer_thread(session, ticket)
    context = contexts.Escalated(
        number=ticket.number, subject=ticket.subject, name=ticket.customer_name,
        phone=phone, callback=callback, open_now=desk.calendar.is_open(now),
        timezone=desk.timezone, support_name=desk.sender.name,
        language=ticket.language,
        hours=sla.hours_text(desk.calendar, ticket.language,
                             now.astimezone(desk.calendar.zone).date()),
        ticket_url=links.ticket_url(cfg.public_url, cfg.secret, ticket.number,
                                    ticket.customer_address, ticket.link_version, now),
    )
    rendered = render_mail(
        desk.templates, "escalated", context, sender=desk.sender,
        to=ticket.customer_address, now=now, in_reply_to=ids[-1] if ids else None,
        references=tuple(ids[:-1]), auto_submitted="auto-generated",
        reply_to=links.reply_address(desk.sender.address, desk.secret, ticket.number)
        if desk.threading.plus_addressing else None)
    answers.enqueue(session, desk, rendered, [ticket.customer_address], ticket,
                    OutboxKind.ESCALATED, now, automatic=True)


def add_information(session: Session, desk: Desk, cfg: WebConfig, ticket: Ticket,
                    text: str, parts: tuple[Part, ...], now: datetime, once: str) -> str:
    """The form's text and files, exactly as if the customer had replied by mail (facts
    merged, what is missing updated, the owner told once per burst, a closed ticket
    reopened): "added"; "again" when this form (its `once` value) was sent before (a
    double click, a reload); "closed" when the ticket was closed too long ago to reopen;
    "quota" when the page took in its hour's or its ticket's share already."""
    key = hashlib.sha256(f"maild.web.{ticket.id}.{once}".encode()).hexdigest()
    if session.scalar(select(InboundMessage.id).where(InboundMessage.dedupe_key == key)):
        return "again"
    if not can_add(desk, ticket, now):
        return "closed"
    size = len(text.encode()) + sum(len(p.data) for p in parts)
    if not within_quota(session, cfg, ticket, size, now):
        log.warning("ticket page over its upload quota ticket=%s size=%d", ticket.number,
                    size)
        return "quota"
    mail = InboundMail(
        message_id=None, subject=f"[#{ticket.number}] {ticket.subject}",
        from_addr=ticket.customer_address, from_name=ticket.customer_name, to=(), cc=(),
        reply_to="", date=now, in_reply_to=None, references=(), headers={},
        content_type="text/plain", text=text, html="", attachments=parts,
        header_count=0, has_body_separator=True, defects=())
    row = InboundMessage(  # the record of every way information came in
        mailbox=WEB_MAILBOX, uidvalidity=0, uid=0, dedupe_key=key,
        message_id=None, raw_sha256=None, size=size, internaldate=now, received_at=now,
        state=InboundState.PROCESSED, kind="normal", reason="ticket page", attempts=1, error="",
        ticket_id=ticket.id, finished_at=now)
    session.add(row)
    session.flush()
    added = add_follow_up(session, desk, ticket, mail, Verdict("normal", "ticket page"),
                          inbound_id=row.id, how="web", now=now, planned=None,
                          reopen_days=desk.threading.reopen_days,
                          tell=lambda message, shown: notify.addition_notice(
                              session, desk, ticket, message, shown, now,
                              cfg.notify_hold_seconds))
    assert added, "the reopen rule is checked above"
    return "added"


def within_quota(session: Session, cfg: WebConfig, ticket: Ticket, size: int,
                 now: datetime) -> bool:
    """Whether the ticket's page may take `size` more bytes: what it took in the last
    hour and in all (its `inbound` rows) stays within `[http] upload_mb_per_hour` and
    `upload_mb_per_ticket`."""
    def taken(since: datetime | None) -> int:
        query = select(func.coalesce(func.sum(InboundMessage.size), 0)).where(
            InboundMessage.ticket_id == ticket.id, InboundMessage.mailbox == WEB_MAILBOX)
        if since is not None:
            query = query.where(InboundMessage.received_at > since)
        return int(session.scalar(query) or 0)
    return (taken(now - timedelta(hours=1)) + size <= cfg.upload_bytes_per_hour
            and taken(None) + size <= cfg.upload_bytes_per_ticket)


def billable(cause: str) -> str:
    """Whether a call-back is charged: 'no' when the problem was ours, 'yes' when the
    customer's or a third party's, 'open' until an agent records the cause (#cause)."""
    return "no" if cause == "ours" else "yes" if cause else "open"


def callback_report(session: Session, since: datetime | None,
                    until: datetime | None) -> list[dict[str, Any]]:
    """Every escalation (call-back) in [since, until), oldest first, with what billing needs."""
    query = (select(Ticket, Company.name).outerjoin(Company, Company.id == Ticket.company_id)
             .where(Ticket.escalated_at.is_not(None)).order_by(Ticket.escalated_at))
    if since is not None:
        query = query.where(Ticket.escalated_at >= since)
    if until is not None:
        query = query.where(Ticket.escalated_at < until)
    return [{"ticket": t.number, "company": company or "", "customer": t.customer_address,
             "escalated_at": t.escalated_at.isoformat() if t.escalated_at else None,
             "phone": t.escalation_phone, "cause": t.cause or "", "billable": billable(t.cause),
             "status": t.status, "subject": t.subject}
            for t, company in session.execute(query)]


def revoke_links(session: Session, number: int, actor: str, now: datetime) -> int | None:
    """Every link issued for ticket `number` stops working; the new link version, or None
    when there is no such ticket. New mails carry new links."""
    ticket = db.ticket_by_number(session, number)
    if ticket is None:
        return None
    ticket.link_version = (ticket.link_version or 0) + 1
    history.record(session, ticket, now, actor, history.LinksRevoked(ticket.link_version))
    return ticket.link_version
