"""What handling a mail needs besides the mail itself: who we are, templates, calendar,
keys, the blob store and the configured policies — built once at start-up."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from jinja2 import Environment
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maild import blobs, links, sla
from maild.agents import Roster
from maild.mail import files
from maild.mail.render import Sender
from maild.models import OutboxMail
from maild.vocab import ANSWERS, REOPEN_DAYS


class AnswerGate:
    """The global answer limit, counted in the database at most once a minute and by this
    process in between (a soft limit: several processes may each add a minute's worth)."""

    def __init__(self) -> None:
        self.counted_at: datetime | None = None
        self.count = 0

    def full(self, session: Session, limit: int, now: datetime) -> bool:
        if not limit:
            return False
        if self.counted_at is None or not (
                self.counted_at <= now < self.counted_at + timedelta(minutes=1)):
            self.count = int(session.scalar(select(func.count()).select_from(OutboxMail).where(
                OutboxMail.kind.in_(ANSWERS),
                OutboxMail.created_at > now - timedelta(hours=1))) or 0)
            self.counted_at = now
        return self.count >= limit

    def note(self) -> None:
        self.count += 1


@dataclass(frozen=True, slots=True)
class Reading:
    """What the intake makes of a customer's mail: facts, triage, attachments, spam."""

    required_facts: tuple[str, ...] = ()
    fact_patterns: Mapping[str, Sequence[str]] = field(default_factory=dict)
    urgent_keywords: tuple[str, ...] = ()
    tier_priority: Mapping[str, str] = field(default_factory=dict)
    limits: files.Limits = files.Limits(25_000_000, 50_000_000)
    logo_max_bytes: int = 32_000
    spam_rule: tuple[str, re.Pattern[str]] | None = None


@dataclass(frozen=True, slots=True)
class Threading:
    """How a mail finds its ticket ([threading])."""

    reopen_days: float = REOPEN_DAYS
    stranger_tag: str = "new_ticket"
    plus_addressing: bool = False


@dataclass(frozen=True, slots=True)
class Answering:
    """Whom we answer and how often ([limits], [accounts] unknown_sender)."""

    unknown_sender: str = "accept"
    per_address_per_hour: int = 5
    per_hour: int = 5000  # all automatic answers together (0: no limit)
    reserved_share: float = 0.2  # of per_hour, for known accounts and follow-ups
    gate: AnswerGate = field(default_factory=AnswerGate)
    subject_max_chars: int = 200


@dataclass(frozen=True, slots=True)
class Promise:
    """The first-response promise in business hours ([calendar])."""

    hours: float = 8.0
    by_priority: Mapping[str, float] = field(default_factory=dict)
    by_tier: Mapping[str, float] = field(default_factory=dict)

    def for_ticket(self, priority: str, tier: str) -> float:
        """The smallest promise that applies."""
        return min(self.hours, self.by_priority.get(priority, self.hours),
                   self.by_tier.get(tier, self.hours))


@dataclass(frozen=True, slots=True)
class AgentPolicy:
    """Who the agents are and what they may do by mail ([agents], key version)."""

    roster: Roster = field(default_factory=Roster)
    language: str = "de"
    require_proof: bool = True
    trusted_authserv_ids: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    relay_to_participants: bool = True
    quote_customer: bool = True
    notify_files_max_bytes: int = 10_000_000
    notify_text_max_bytes: int = 20_000
    token_days: int = 30
    max_relay_recipients: int = 10
    key_version: int = 1


@dataclass(frozen=True, slots=True)
class Desk:
    """What handling a mail needs besides the mail: who we are, templates, calendar, keys,
    the blob store, and the policies by topic."""

    sender: Sender
    public_url: str
    default_language: str
    timezone: str
    calendar: sla.BusinessCalendar
    templates: Environment
    secret: str
    store: blobs.BlobStore
    verp: bool = False
    promise: Promise = field(default_factory=Promise)
    reading: Reading = field(default_factory=Reading)
    threading: Threading = field(default_factory=Threading)
    answering: Answering = field(default_factory=Answering)
    agents: AgentPolicy = field(default_factory=AgentPolicy)

    @property
    def agent_key(self) -> str:
        """The key of agents' reply-address tokens (see links.agent_key)."""
        return links.agent_key(self.secret, self.agents.key_version)

    def customer_reply_to(self, number: int) -> str | None:
        """The Reply-To of every mail to a ticket's customer: with plus addressing the
        ticket's signed address (`service+10001.TOKEN@`), so a reply finds its ticket even
        with the subject's tag removed; else none (replies go to From)."""
        if not self.threading.plus_addressing:
            return None
        return links.reply_address(self.sender.address, self.secret, number)
