"""Agents work a ticket by mail: commands, relayed answers, internal notes, status mails.

An agent's mail is applied only when it is proven to be theirs (`proof`): its commands
all at once or, when one is wrong, none of them, with nothing relayed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from maild import answers, db, history, notify, suppression, threader
from maild.agents import AgentInfo
from maild.desk import Desk
from maild.mail import auth, body, commands, contexts, files, thread
from maild.mail.commands import Command, Commands
from maild.mail.extracted import Extracted
from maild.mail.facts import Facts
from maild.mail.parse import InboundMail
from maild.mail.render import File, render_mail
from maild.models import OutboxMail, Ticket, TicketMessage
from maild.threader import Match
from maild.tickets import store_attachments
from maild.vocab import MessageKind, OutboxKind, TicketStatus

log = logging.getLogger(__name__)

STATUS_MAILS = (TicketStatus.IN_PROGRESS, TicketStatus.WAITING, TicketStatus.RESOLVED)

def find_and_prove(session: Session, desk: Desk, mail: InboundMail,
                   agent: AgentInfo | None, now: datetime,
                   known: threader.Preread | None = None) -> tuple[str, Match | None]:
    """The ticket `mail` continues (None: a new matter) and, for a mail From an agent, why
    it is believed to be theirs ('' = not proven, and then threaded as anyone's).
    `known`: what the mail's batch read up front for threading."""
    if agent is None:
        return "", threader.find(session, desk, mail, now, known=known)
    match = threader.find(session, desk, mail, now, agent=True, known=known)
    why = proof(session, desk, mail, match, now)
    if why:
        return why, match
    return "", threader.find(session, desk, mail, now, known=known)


def proof(session: Session, desk: Desk, mail: InboundMail, match: Match | None,
          now: datetime) -> str:
    """Why `mail` (From: an agent) is believed to come from that agent, or '' (not proven).
    Bound to the ticket it continues: an agent token of that ticket issued to this agent
    (or the team, or all agents) within `token_days`, or an answer to a mail we sent to
    this agent (or the team) about that ticket. Not bound: a trusted server's aligned
    DKIM/DMARC pass, which proves the From address itself."""
    if not desk.agents.require_proof:
        return "From address (agents.require_proof = false)"
    if match is not None:
        numbers = {match.ticket.number, match.merged_from}
        for number, token in thread.plus_tokens(mail, desk.sender.address):
            if number in numbers and threader.agent_token_holder(
                    desk, number, token, mail.from_addr, now):
                return "agent token in the reply address"
        if _answers_own_notice(session, desk, match, mail.from_addr, now):
            return "answers a mail sent to this agent about this ticket"
    ids = desk.agents.trusted_authserv_ids
    return auth.sender_proven(auth.trusted_results(mail.trace, ids, desk.agents.trusted_hosts),
                              ids, mail.from_addr)


def _answers_own_notice(session: Session, desk: Desk, match: Match, sender: str,
                        now: datetime) -> bool:
    """The mail answers (by its references) a mail we sent to agents only, about this
    ticket, within `token_days`, and `sender` or the team address was among its
    recipients."""
    answered = match.referenced
    if match.how != "reference" or answered is None or not answered.internal \
            or answered.direction != "out" or not answered.message_id:
        return False
    sent = session.execute(select(OutboxMail.recipients, OutboxMail.created_at).where(
        OutboxMail.message_id == answered.message_id)).first()
    if sent is None or now - sent.created_at > timedelta(days=desk.agents.token_days):
        return False
    allowed = {sender, desk.agents.roster.team_address} - {""}
    return any(r.lower() in allowed for r in sent.recipients)


def agent_mail(
    session: Session, desk: Desk, match: Match, mail: InboundMail, agent: AgentInfo,
    why: str, *, inbound_id: int, now: datetime, planned: list[files.Planned] | None,
    extracted: Extracted | None = None,
) -> str:
    """Apply a proven agent's mail to the ticket; returns a short summary for the log."""
    ticket = match.ticket
    parsed = commands.parse(extracted.agent_text if extracted else body.agent_words(mail.text))
    act = Act(session, desk, ticket, agent.address, now)
    errors = [*parsed.errors, *_check(act, parsed)]
    internal = (bool(errors) or parsed.note or parsed.get("spam") is not None
                or (match.referenced is not None and match.referenced.kind == MessageKind.NOTE))
    message = TicketMessage(
        ticket_id=ticket.id, inbound_id=inbound_id, direction="in", author=agent.address,
        message_id=mail.message_id, subject=mail.subject, body_text=mail.text,
        new_text=parsed.text, facts=Facts(), automatic=False, created_at=now,
        kind=MessageKind.REJECTED if errors else MessageKind.NOTE if internal
        else MessageKind.AGENT,
        # Only an answer relayed to the customer is theirs to see (with its files): a
        # commands-only mail is not, nor are the files it carried.
        internal=internal or not parsed.text,
    )
    session.add(message)
    shown = store_attachments(session, desk, message, planned if planned is not None
                              else files.plan(mail.attachments, desk.reading.limits), now)
    if errors:
        history.record(session, ticket, now, agent.address, history.CommandsRejected(errors))
        notify.agent_notice(session, desk, ticket, agent.address, "rejected", errors, mail, now)
        return f"agent mail rejected: {len(errors)} errors"
    changes, new_status = _apply(act, parsed)
    visible = []
    if parsed.text and not internal:
        relay(session, desk, ticket, agent, parsed.text, shown, now)
        visible.append("answer")
        if ticket.status == TicketStatus.NEW:
            set_status(session, ticket, TicketStatus.IN_PROGRESS, agent.address, now)
    if new_status in STATUS_MAILS and not internal:
        status_mail(session, desk, ticket, new_status, now)
        visible.append(f"status mail {new_status}")
    if visible and ticket.first_response_at is None:
        ticket.first_response_at = now
        due = ticket.first_response_due
        history.record(session, ticket, now, agent.address, history.FirstResponse(
            visible[0], due, due is None or now <= due))
    if internal and parsed.text:
        history.record(session, ticket, now, agent.address, history.Note(mail.message_id))
    ticket.updated_at = now
    if not parsed.text:
        notify.agent_notice(session, desk, ticket, agent.address, "confirm",
                            changes or ["nothing changed"], mail, now)
    log.info("agent mail agent=%s proof=%r internal=%s changes=%s sent=%s",
             agent.address, why, internal, changes, visible)
    return "agent note" if internal else "agent reply"



@dataclass(frozen=True, slots=True)
class Act:
    """What a command acts on: the ticket, by whom, when, in which transaction."""

    session: Session
    desk: Desk
    ticket: Ticket
    actor: str
    now: datetime


@dataclass(frozen=True, slots=True)
class Effect:
    """What a command of `commands.REGISTRY` does to a ticket. `verify`: what its form
    check cannot know (is the new owner an agent?), an error or None; `apply`: carry it
    out, each change an event; returns what changed (for the agent's confirmation)
    and the new
    status when it set one the customer is told of."""

    apply: Callable[[Act, Command], tuple[list[str], str | None]]
    verify: Callable[[Act, Command], str | None] | None = None


def _status(act: Act, c: Command) -> tuple[list[str], str | None]:
    if c.value == act.ticket.status:
        return [f"status stays {c.value}"], None
    change = f"status {act.ticket.status} -> {c.value}"
    set_status(act.session, act.ticket, c.value, act.actor, act.now)
    return [change], c.value


def _priority(act: Act, c: Command) -> tuple[list[str], str | None]:
    ticket = act.ticket
    if c.value == ticket.priority:
        return [f"priority stays {c.value}"], None
    history.record(act.session, ticket, act.now, act.actor,
                   history.PriorityChanged(ticket.priority, c.value))
    change = f"priority {ticket.priority} -> {c.value}"
    ticket.priority = c.value
    return [change], None


def _is_agent(act: Act, c: Command) -> str | None:
    if c.value != "me" and act.desk.agents.roster.get(act.session, c.value) is None:
        return f"{c.value} is not an agent"
    return None


def _assign(act: Act, c: Command) -> tuple[list[str], str | None]:
    ticket = act.ticket
    owner = act.actor if c.value == "me" else c.value
    if owner == ticket.owner:
        return [], None
    history.record(act.session, ticket, act.now, act.actor, history.Owner(ticket.owner, owner))
    change = f"owner {ticket.owner or '-'} -> {owner}"
    ticket.owner = owner
    return [change], None


def _cause(act: Act, c: Command) -> tuple[list[str], str | None]:
    ticket = act.ticket
    if c.value == ticket.cause:
        return [f"cause stays {c.value}"], None
    history.record(act.session, ticket, act.now, act.actor,
                   history.Cause(ticket.cause, c.value, callback_billable=c.value != "ours"))
    change = f"cause {ticket.cause or '-'} -> {c.value}"
    ticket.cause = c.value
    return [change], None


def _merge_target(act: Act, c: Command) -> str | None:
    target = db.ticket_by_number(act.session, int(c.value))
    if target is None:
        return f"there is no ticket #{c.value}"
    if target.id == act.ticket.id:
        return "a ticket cannot be merged into itself"
    if target.merged_into is not None:
        return f"#{target.number} was itself merged into #{target.merged_into}"
    return None


def _merge_into(act: Act, c: Command) -> tuple[list[str], str | None]:
    target = db.ticket_by_number(act.session, int(c.value))
    assert target is not None  # verified before
    _merge(act.session, act.ticket, target, act.actor, act.now)
    return [f"merged into #{target.number} (this ticket is closed)"], None


def _spam(act: Act, c: Command) -> tuple[list[str], str | None]:
    ticket = act.ticket
    if ticket.status != TicketStatus.SPAM:
        set_status(act.session, ticket, TicketStatus.SPAM, act.actor, act.now)
    if c.value != "block":
        return ["marked as spam, closed silently"], None
    suppression.block(act.session, ticket.customer_address, act.actor, act.now)
    history.record(act.session, ticket, act.now, act.actor,
                   history.Blocked(ticket.customer_address))
    return ["marked as spam, closed silently",
            f"sender {ticket.customer_address} blocked: their mail is recorded as spam from "
            "now on"], None


def _may_copy(act: Act, c: Command) -> str | None:
    remove, address = commands.cc_change(c.value)
    desk = act.desk
    if not remove and (answers.is_ours(desk, address) or desk.agents.roster.is_ours(address)
                       or desk.agents.roster.get(act.session, address) is not None):
        return f"{address} is an agent or our own address"
    return None


def _cc(act: Act, c: Command) -> tuple[list[str], str | None]:
    """`#cc`: an agent adds a person to the ticket (they get its answers) or removes one."""
    ticket = act.ticket
    remove, address = commands.cc_change(c.value)
    people = list(ticket.participants)
    if remove and address not in people:
        return [f"{address} was not copied on the ticket"], None
    if not remove and (address in people or address == ticket.customer_address):
        return [f"{address} is on the ticket already"], None
    ticket.participants = ([p for p in people if p != address] if remove
                           else [*people, address])
    history.record(act.session, ticket, act.now, act.actor,
                   history.Participant(address, added=not remove))
    return [f"{address} removed: gets no more answers" if remove
            else f"{address} copied: gets the answers from now on"], None


def _note(_act: Act, _c: Command) -> tuple[list[str], str | None]:
    return [], None  # the mail is kept as an internal note (agent_mail)


# What each command of `commands.REGISTRY` does, by its name.
EFFECTS: dict[str, Effect] = {
    "status": Effect(_status),
    "priority": Effect(_priority),
    "assign": Effect(_assign, _is_agent),
    "note": Effect(_note),
    "cause": Effect(_cause),
    "merge": Effect(_merge_into, _merge_target),
    "spam": Effect(_spam),
    "cc": Effect(_cc, _may_copy),
}


def _check(act: Act, parsed: Commands) -> list[str]:
    """What the form check cannot know, for each command that has such a check."""
    errors = []
    for c in parsed.commands:
        verify = EFFECTS[c.name].verify
        problem = verify(act, c) if verify else None
        if problem:
            errors.append(f"{c.line!r}: {problem}")
    return errors


def _apply(act: Act, parsed: Commands) -> tuple[list[str], str | None]:
    """Carry out the commands in order; (what changed, the new status if one was set)."""
    changes: list[str] = []
    new_status = None
    for c in parsed.commands:
        changed, status = EFFECTS[c.name].apply(act, c)
        changes += changed
        new_status = status or new_status
    return changes, new_status


def set_status(session: Session, ticket: Ticket, status: str, actor: str,
                now: datetime) -> None:
    history.record(session, ticket, now, actor, history.Status(ticket.status, status))
    ticket.status = status
    ticket.resolved_at = now if status == TicketStatus.RESOLVED else None
    ticket.closed_at = now if status == TicketStatus.CLOSED else None
    ticket.waiting_since = now if status == TicketStatus.WAITING else None


def _merge(session: Session, ticket: Ticket, target: Ticket, actor: str,
           now: datetime) -> None:
    """`ticket` continues in `target`: closed, and its people may write into the target."""
    people = [ticket.customer_address, *ticket.participants]
    target.participants = list(dict.fromkeys(
        [*target.participants, *(p for p in people if p != target.customer_address)]))
    history.record(session, ticket, now, actor, history.Merged(target.number))
    history.record(session, target, now, actor, history.MergedFrom(ticket.number))
    if ticket.status != TicketStatus.CLOSED:
        set_status(session, ticket, TicketStatus.CLOSED, actor, now)
    ticket.merged_into = target.number
    target.updated_at = now


def customer_thread(session: Session, ticket: Ticket) -> list[str]:
    """Message-IDs the customer has seen on this ticket, oldest first (never internal ones)."""
    return [mid for mid in session.scalars(select(TicketMessage.message_id).where(
        TicketMessage.ticket_id == ticket.id, TicketMessage.internal.is_(False),
        TicketMessage.message_id.is_not(None),
        or_(TicketMessage.direction == "out", TicketMessage.kind == MessageKind.CUSTOMER))
        .order_by(TicketMessage.id)) if mid]


def _recipients(session: Session, desk: Desk, ticket: Ticket) -> tuple[str, list[str]]:
    """The customer and the people copied on the ticket, at most `max_relay_recipients`
    in all (whatever got onto the ticket, one relay cannot become a mass mailing)."""
    cc = []
    if desk.agents.relay_to_participants:
        cc = [p for p in ticket.participants if p != ticket.customer_address
              and not desk.agents.roster.is_ours(p) and desk.agents.roster.get(session, p) is None]
    if len(cc) > desk.agents.max_relay_recipients - 1:
        log.warning("relay of ticket=%s: %d copied people, sending to the first %d only",
                    ticket.number, len(cc), desk.agents.max_relay_recipients - 1)
        cc = cc[:desk.agents.max_relay_recipients - 1]
    return ticket.customer_address, cc


def relay(
    session: Session, desk: Desk, ticket: Ticket, agent: AgentInfo, text: str,
    shown: Sequence[files.Planned], now: datetime,
) -> None:
    """The agent's answer to the customer (and participants), from the support address
    under the agent's name, with the customer's last words quoted and files passed on."""
    to, cc = _recipients(session, desk, ticket)
    ids = customer_thread(session, ticket)
    last = session.scalars(select(TicketMessage).where(
        TicketMessage.ticket_id == ticket.id, TicketMessage.direction == "in",
        TicketMessage.kind == MessageKind.CUSTOMER).order_by(TicketMessage.id.desc())).first()
    context = contexts.Relay(
        number=ticket.number, subject=ticket.subject, text=text,
        agent_name=agent.name or desk.sender.name, support_name=desk.sender.name,
        quote=(last.new_text or last.body_text).strip()
        if desk.agents.quote_customer and last is not None else "",
        quote_author=ticket.customer_name or ticket.customer_address,
        quote_date=last.created_at if last is not None else None,
        timezone=desk.timezone, language=ticket.language,
    )
    rendered = render_mail(
        desk.templates, "relay", context, sender=desk.sender, to=to,
        cc=cc, now=now, in_reply_to=ids[-1] if ids else None, references=tuple(ids[:-1]),
        from_name=f"{agent.name} ({desk.sender.name})" if agent.name else None,
        reply_to=desk.customer_reply_to(ticket.number),
        # A big file's bytes stay in the blob store (the parse worker wrote them there).
        files=[File(f.filename, f.content_type, f.data or desk.store.get(f.sha256))
               for f in shown if f.store],
    )
    answers.enqueue(session, desk, rendered, [to, *cc], ticket, OutboxKind.RELAY, now,
                    automatic=False, author=agent.address)


def status_mail(session: Session, desk: Desk, ticket: Ticket, status: str,
                now: datetime) -> None:
    """Tell the customer the ticket's new state (in progress, waiting for them, resolved)."""
    customer_notice(session, desk, ticket, "status", now, status=status)


def customer_notice(session: Session, desk: Desk, ticket: Ticket, template: str,
                    now: datetime, *, status: str = "", days: int = 0) -> None:
    """An automatic mail to the ticket's customer (`status`, `reminder` with the business
    days left, `autoclose`), on the customer's thread, in the ticket's language."""
    ids = customer_thread(session, ticket)
    context = contexts.CustomerNotice(
        number=ticket.number, subject=ticket.subject, name=ticket.customer_name,
        support_name=desk.sender.name, reopen_days=f"{desk.threading.reopen_days:g}",
        language=ticket.language)
    if template == "status":
        links_out = answers.customer_links(desk, ticket, now)
        context = contexts.Status(**context.names(), status=status,
                                  ticket_url=links_out.ticket_url,
                                  escalation_url=links_out.escalation_url)
    elif template == "reminder":
        context = contexts.Reminder(**context.names(), days=days)
    rendered = render_mail(
        desk.templates, template, context, sender=desk.sender,
        to=ticket.customer_address, now=now, in_reply_to=ids[-1] if ids else None,
        references=tuple(ids[:-1]), auto_submitted="auto-generated",
        reply_to=desk.customer_reply_to(ticket.number),
    )
    answers.enqueue(session, desk, rendered, [ticket.customer_address], ticket,
                    OutboxKind(template), now, automatic=True)
