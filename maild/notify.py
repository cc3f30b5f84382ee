"""Mails to agents: ticket notifications and answers to their mails (confirmations,
rejected commands) and warnings to the team. All are internal to the ticket: customers
never see them, and a reply to one is how an agent proves who they are."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maild import answers, links
from maild.desk import Desk
from maild.mail import contexts, files
from maild.mail.parse import InboundMail
from maild.mail.render import File, render_mail
from maild.models import Attachment, InboundMessage, OutboxMail, Ticket, TicketMessage
from maild.vocab import WEB_MAILBOX, OutboxKind, OutboxState

log = logging.getLogger(__name__)

WARNINGS_PER_HOUR = 20
Notice = Literal["confirm", "rejected", "forged"]


def ticket_notice(
    session: Session, desk: Desk, ticket: Ticket, message: TicketMessage,
    shown: Sequence[files.Planned], event: Literal["new", "follow_up"], now: datetime,
    *, warning: str = "", cc_not_added: Sequence[str] = (), text: str | None = None,
    not_before: datetime | None = None,
) -> None:
    """Tell the owner (or the team, or every agent) about a new ticket or a customer's
    follow-up: the new text (at most `notify_text_max_bytes` of it), facts and what is
    missing, attachments, the state, and whom an unproven sender copied in vain."""
    to = _recipients(session, desk, ticket.owner)
    if not to:
        log.debug("no agents to notify about ticket=%s", ticket.number)
        return
    budget, attached = desk.agents.notify_files_max_bytes, []
    for f in shown:
        if f.store and f.size <= budget:
            attached.append(File(f.filename, f.content_type, f.data))
            budget -= f.size
    text = message.new_text or message.body_text if text is None else text
    context = contexts.Notify(
        number=ticket.number, event=event, subject=ticket.subject,
        customer_name=ticket.customer_name, author=message.author, verified=ticket.verified,
        status=ticket.status, priority=ticket.priority, owner=ticket.owner,
        due=ticket.first_response_due, answered=ticket.first_response_at,
        timezone=desk.timezone, text=capped(text, desk.agents.notify_text_max_bytes),
        text_cut=len(text.encode()) > desk.agents.notify_text_max_bytes,
        cc_not_added=list(cc_not_added),
        facts=ticket.facts.known(),
        missing=list(ticket.missing), participants=list(ticket.participants),
        files=[(f.filename, f.size, f.store, f.note) for f in shown],
        attached=len(attached), warning=warning,
        support_address=desk.sender.address, language=desk.agents.language,
    )
    _send(session, desk, ticket, "notify", to, context, now,
          in_reply_to=_last_notice(session, ticket), files=attached, not_before=not_before)


def addition_notice(
    session: Session, desk: Desk, ticket: Ticket, message: TicketMessage,
    shown: Sequence[files.Planned], now: datetime, hold: float,
) -> None:
    """A customer's addition on the ticket page, told to agents once per burst: the
    notice waits `hold` seconds, and an addition meanwhile replaces it with one that
    carries the whole burst (every text and file of it). Nothing is lost and a form
    sent sixty times a minute makes one mail every `hold` seconds, not sixty."""
    if hold <= 0:
        ticket_notice(session, desk, ticket, message, shown, "follow_up", now)
        return
    # A held notice: only these wait with no attempt made (mail notices go at once).
    held = session.scalars(select(OutboxMail).where(
        OutboxMail.ticket_id == ticket.id, OutboxMail.kind == OutboxKind.NOTIFY,
        OutboxMail.state == OutboxState.PENDING, OutboxMail.attempts == 0,
        OutboxMail.leased_until.is_(None), OutboxMail.next_attempt_at > now)
        .order_by(OutboxMail.id).limit(1).with_for_update()).first()
    if held is None:
        ticket_notice(session, desk, ticket, message, shown, "follow_up", now,
                      not_before=now + timedelta(seconds=hold))
        return
    record = session.scalars(select(TicketMessage).where(
        TicketMessage.message_id == held.message_id)).first()
    since = held.next_attempt_at - timedelta(seconds=hold)  # the burst's first addition
    held.state = OutboxState.SUPPRESSED
    held.last_error = "not sent: replaced by the notice of a later addition (one per burst)"
    if record is not None:
        session.delete(record)  # never sent: not on the ticket's record
    session.flush()
    earlier = _additions_since(session, desk, ticket, since, message)
    texts = [m.new_text or m.body_text for m, _ in earlier]
    texts.append(message.new_text or message.body_text)
    ticket_notice(session, desk, ticket, message,
                  [f for _, fs in earlier for f in fs] + list(shown), "follow_up", now,
                  text="\n\n-----\n\n".join(t for t in texts if t),
                  not_before=held.next_attempt_at)


def _additions_since(
    session: Session, desk: Desk, ticket: Ticket, since: datetime, but: TicketMessage,
) -> list[tuple[TicketMessage, list[files.Planned]]]:
    """The ticket page's additions to `ticket` from `since` on (not `but`), each with
    its listed files (their bytes read only where a notice could attach them)."""
    rows = session.scalars(select(TicketMessage).join(
        InboundMessage, InboundMessage.id == TicketMessage.inbound_id).where(
        TicketMessage.ticket_id == ticket.id, TicketMessage.created_at >= since,
        TicketMessage.id != but.id, InboundMessage.mailbox == WEB_MAILBOX)
        .order_by(TicketMessage.id)).all()
    found = []
    for row in rows:
        shown = []
        for a in session.scalars(select(Attachment).where(
                Attachment.ticket_message_id == row.id, Attachment.listed)
                .order_by(Attachment.id)):
            small = a.blob_sha256 is not None and a.size <= desk.agents.notify_files_max_bytes
            shown.append(files.Planned(
                a.filename, a.content_type, a.declared_type,
                desk.store.get(a.blob_sha256) if small and a.blob_sha256 else b"",
                a.blob_sha256 or "", a.size, a.inline, a.blob_sha256 is not None and small,
                a.note))
        found.append((row, shown))
    return found


def capped(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8 (at a character boundary)."""
    data = text.encode()
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def agent_notice(
    session: Session, desk: Desk, ticket: Ticket, to: str, notice: Notice,
    lines: Sequence[str], mail: InboundMail, now: datetime,
) -> None:
    """Answer an agent's mail: what changed, or what was wrong (nothing was done)."""
    context = _notice(desk, ticket, notice, lines, mail.from_addr,
                      answers.short_subject(mail.subject, desk.answering.subject_max_chars))
    _send(session, desk, ticket, "agent_notice", [to], context, now,
          in_reply_to=mail.message_id, references=mail.references)


def bounce_notice(
    session: Session, desk: Desk, ticket: Ticket, lines: Sequence[str], permanent: bool,
    now: datetime,
) -> None:
    """Tell the owner (or team) that a mail on the ticket could not be delivered."""
    to = _recipients(session, desk, ticket.owner)
    if not to:
        return
    context = _notice(desk, ticket, "bounce", lines, ticket.customer_address, "",
                      permanent=permanent)
    _send(session, desk, ticket, "agent_notice", to, context, now,
          in_reply_to=_last_notice(session, ticket), kind=OutboxKind.BOUNCE_NOTICE)


def forged_warning(
    session: Session, desk: Desk, ticket: Ticket, mail: InboundMail, now: datetime,
) -> None:
    """Warn the team: a mail claimed an agent's From without proof (treated as a
    customer's, nothing executed). Bounded per hour, so a flood cannot turn into one."""
    recent = session.scalar(select(func.count()).select_from(OutboxMail).where(
        OutboxMail.kind == OutboxKind.WARNING, OutboxMail.created_at > now - timedelta(hours=1)))
    to = _recipients(session, desk, "")
    if not to or int(recent or 0) >= WARNINGS_PER_HOUR:
        log.warning("unproven agent mail from=%s ticket=%s (team not warned: limit)",
                    mail.from_addr, ticket.number)
        return
    context = _notice(desk, ticket, "forged", [], mail.from_addr,
                      answers.short_subject(mail.subject, desk.answering.subject_max_chars))
    _send(session, desk, ticket, "agent_notice", to, context, now,
          in_reply_to=_last_notice(session, ticket), kind=OutboxKind.WARNING)


def _notice(desk: Desk, ticket: Ticket, notice: str, lines: Sequence[str], sender: str,
            original_subject: str, permanent: bool = False) -> contexts.AgentNotice:
    """The context of an `agent_notice` mail."""
    return contexts.AgentNotice(
        number=ticket.number, subject=ticket.subject, notice=notice, lines=list(lines),
        status=ticket.status, priority=ticket.priority, owner=ticket.owner, sender=sender,
        original_subject=original_subject, permanent=permanent,
        language=desk.agents.language)


def agent_reply_to(desk: Desk, number: int, to: Sequence[str], now: datetime) -> str | None:
    """The Reply-To of a mail to agents about ticket `number` (with plus addressing): its
    token is bound to the one recipient (an agent or the team address), or to all agents
    when it goes to several at once, and is valid for `[agents] token_days`."""
    if not desk.threading.plus_addressing:
        return None
    holder = to[0].lower() if len(to) == 1 else links.ALL_AGENTS
    return links.agent_reply_address(desk.sender.address, desk.agent_key, number, holder,
                                     now)


def _recipients(session: Session, desk: Desk, owner: str) -> list[str]:
    return [a for a in desk.agents.roster.notify_to(session, owner) if a != desk.sender.address]


def _last_notice(session: Session, ticket: Ticket) -> str | None:
    """The last notification about `ticket`, so agents' clients show one thread: one of
    the batch being written (still pending: every notice names its ticket as an object),
    else the last one recorded (read without writing the pending batch first)."""
    pending = [m.message_id for m in session.new if isinstance(m, TicketMessage)
               and m.kind == OutboxKind.NOTIFY and m.__dict__.get("ticket") is ticket]
    if pending or ticket.id is None:  # (a ticket of the batch: its notices are too)
        return pending[-1] if pending else None
    with session.no_autoflush:
        return session.scalars(select(TicketMessage.message_id).where(
            TicketMessage.ticket_id == ticket.id, TicketMessage.kind == OutboxKind.NOTIFY)
            .order_by(TicketMessage.id.desc())).first()


def _send(
    session: Session, desk: Desk, ticket: Ticket, template: str, to: list[str],
    context: contexts.Context, now: datetime, *, in_reply_to: str | None,
    references: tuple[str, ...] = (), files: Sequence[File] = (),
    kind: OutboxKind | None = None, not_before: datetime | None = None,
) -> OutboxMail:
    rendered = render_mail(
        desk.templates, template, context, sender=desk.sender,
        to=", ".join(to), now=now, in_reply_to=in_reply_to, references=references,
        auto_submitted="auto-generated", files=files,
        reply_to=agent_reply_to(desk, ticket.number, to, now),
    )
    return answers.enqueue(session, desk, rendered, to, ticket, kind or OutboxKind(template),
                           now, automatic=True, internal=True, not_before=not_before)
