"""The words the database stores: ticket status and priority, the state of an inbound and
of an outgoing mail, what kind a ticket message and an outgoing mail are.

`StrEnum`s: a member is the string it stands for, so rows written before (plain
strings) compare equal and the columns stay `String`. Pure: imports nothing of maild.
"""

from __future__ import annotations

from enum import StrEnum


class TicketStatus(StrEnum):
    NEW = "new"
    IN_PROGRESS = "in_progress"
    WAITING = "waiting"  # on the customer
    RESOLVED = "resolved"
    CLOSED = "closed"
    SPAM = "spam"


OPEN = (TicketStatus.NEW, TicketStatus.IN_PROGRESS, TicketStatus.WAITING)
DONE = (TicketStatus.RESOLVED, TicketStatus.CLOSED)
# Days a resolved or closed ticket may still be reopened by its customer's mail (or the
# ticket page's form); later a mail opens a new ticket naming the old one. The one
# default of [threading] reopen_days; decide.within_reopen is the one rule.
REOPEN_DAYS = 14.0
# What an agent may set with #status (new and spam come by other ways).
SETTABLE = (TicketStatus.IN_PROGRESS, TicketStatus.WAITING, TicketStatus.RESOLVED,
            TicketStatus.CLOSED)


class Priority(StrEnum):
    URGENT = "urgent"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class InboundState(StrEnum):
    NEW = "new"  # recorded, not yet handled
    PROCESSED = "processed"
    FAILED = "failed"  # failed on its content; retried up to [intake] max_attempts
    QUARANTINED = "quarantined"
    RELEASED = "released"  # done with by hand (`maild quarantine release`)


# The `mailbox` of what came in through a ticket's page (an `inbound` row of its own).
WEB_MAILBOX = "web"


class OutboxState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # refused for good (5xx) or given up
    SUPPRESSED = "suppressed"  # never sent: no usable or deliverable recipient


class MessageKind(StrEnum):
    """What a received message on a ticket is (a sent one's kind is its `OutboxKind`)."""

    CUSTOMER = "customer"  # a person's mail (the customer, a participant) or the ticket page
    AUTOMATIC = "automatic"  # an automatic mail (out of office, ...): recorded, not answered
    AGENT = "agent"  # an agent's answer, relayed to the customer
    NOTE = "note"  # an agent's internal note
    REJECTED = "rejected"  # an agent's mail whose commands were refused
    BOUNCE = "bounce"  # a bounce of a mail we sent about the ticket


class OutboxKind(StrEnum):
    """What an outgoing mail is (most are also the name of their template)."""

    ACK = "ack"
    REJECT = "reject"
    RELAY = "relay"  # an agent's answer relayed to the customer
    STATUS = "status"
    ESCALATED = "escalated"
    ESCALATED_STAFF = "escalated_staff"  # the call-back request, to the team
    REMINDER = "reminder"
    AUTOCLOSE = "autoclose"
    NOTIFY = "notify"  # a new ticket or a follow-up, to agents
    AGENT_NOTICE = "agent_notice"
    BOUNCE_NOTICE = "bounce_notice"
    WARNING = "warning"
    DIGEST = "digest"
    SLA_WARNING = "sla_warning"
    SLA_BREACH = "sla_breach"
    LOGIN_LOST = "login_lost"  # the OAuth2 grant was refused, to the lead


class EventKind(StrEnum):
    """What happened to a ticket (the `events` table: who, when, what)."""

    AUTOMATIC_REPLY = "automatic_reply"
    BLOCKED = "blocked"
    BOUNCE = "bounce"
    CAUSE = "cause"
    COMMANDS_REJECTED = "commands_rejected"
    CREATED = "created"
    CUSTOMER_PURGED = "customer_purged"
    ESCALATED = "escalated"
    FIRST_RESPONSE = "first_response"
    FOLLOW_UP = "follow_up"
    LINKS_REVOKED = "links_revoked"
    MERGED = "merged"
    MERGED_FROM = "merged_from"
    NOT_ANSWERED = "not_answered"
    NOTE = "note"
    OWNER = "owner"
    PARTICIPANT = "participant"
    PRIORITY = "priority"
    PURGED = "purged"
    REMINDER = "reminder"
    RESENT = "resent"
    SLA_BREACH = "sla_breach"
    SLA_WARNING = "sla_warning"
    STATUS = "status"


# The automatic answers to a sender, counted by the answer limits.
ANSWERS = (OutboxKind.ACK, OutboxKind.REJECT)
# Mails to agents (a bounce of one is not reported to agents again).
TO_AGENTS = (OutboxKind.NOTIFY, OutboxKind.AGENT_NOTICE, OutboxKind.WARNING,
             OutboxKind.SLA_WARNING, OutboxKind.SLA_BREACH, OutboxKind.DIGEST)
