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
from maild.vocab import ANSWERS


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
class Desk:
    """What ticket creation needs besides the mail: who we are, templates, calendar, keys."""

    sender: Sender
    public_url: str
    default_language: str
    timezone: str
    first_response_hours: float
    calendar: sla.BusinessCalendar
    templates: Environment
    secret: str
    store: blobs.BlobStore
    required_facts: tuple[str, ...] = ()
    fact_patterns: Mapping[str, Sequence[str]] = field(default_factory=dict)
    urgent_keywords: tuple[str, ...] = ()
    tier_priority: Mapping[str, str] = field(default_factory=dict)
    unknown_sender: str = "accept"
    limits: files.Limits = files.Limits(25_000_000, 50_000_000)
    logo_max_bytes: int = 32_000
    reopen_days: float = 14.0
    stranger_tag: str = "new_ticket"
    plus_addressing: bool = False
    answers_per_hour: int = 5
    roster: Roster = field(default_factory=Roster)
    agent_language: str = "de"
    require_proof: bool = True
    trusted_authserv_ids: tuple[str, ...] = ()
    relay_to_participants: bool = True
    quote_customer: bool = True
    notify_files_max_bytes: int = 10_000_000
    verp: bool = False
    spam_rule: tuple[str, re.Pattern[str]] | None = None
    answers_per_hour_total: int = 5000
    answer_gate: AnswerGate = field(default_factory=AnswerGate)
    response_by_priority: Mapping[str, float] = field(default_factory=dict)
    response_by_tier: Mapping[str, float] = field(default_factory=dict)
    trusted_hosts: tuple[str, ...] = ()
    agent_key_version: int = 1
    token_days: int = 30
    max_relay_recipients: int = 10
    subject_max_chars: int = 200
    notify_text_max_bytes: int = 20_000

    @property
    def agent_key(self) -> str:
        """The key of agents' reply-address tokens (see links.agent_key)."""
        return links.agent_key(self.secret, self.agent_key_version)

    def response_hours(self, priority: str, tier: str) -> float:
        """The first-response promise for a ticket: the smallest that applies."""
        return min(self.first_response_hours,
                   self.response_by_priority.get(priority, self.first_response_hours),
                   self.response_by_tier.get(tier, self.first_response_hours))
