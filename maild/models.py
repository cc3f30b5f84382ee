"""The database schema: typed SQLAlchemy 2 models, one set for SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from maild.mail.facts import Facts

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class FactsJSON(TypeDecorator[Facts]):
    """A ticket's or message's `Facts`, stored as a JSON object of the known ones."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Facts | None, dialect: Dialect) -> dict[str, Any]:
        if not isinstance(value, Facts):
            raise TypeError(f"facts must be a Facts value, not {type(value).__name__}")
        return value.to_json()

    def process_result_value(self, value: Any, dialect: Dialect) -> Facts:
        return Facts.from_json(value if isinstance(value, dict) else None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class MailboxState(Base):
    """What we know of one watched IMAP folder across restarts."""

    __tablename__ = "mailbox_state"
    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    start_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Heartbeat(Base):
    """What the daemon watching a mailbox last said of itself (written every few seconds),
    so that `maild status`, another process, can tell whether mail is flowing."""

    __tablename__ = "heartbeats"
    mailbox: Mapped[str] = mapped_column(String(300), primary_key=True)
    beat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    process: Mapped[str] = mapped_column(String(300), default="")  # host and pid
    version: Mapped[str] = mapped_column(String(50), default="")
    last_fetch_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    inbox_waiting: Mapped[int] = mapped_column(Integer, default=0)
    mailbox_error: Mapped[str] = mapped_column(Text, default="")
    mailbox_error_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    smtp_ok_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    smtp_error: Mapped[str] = mapped_column(Text, default="")
    smtp_error_since: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OAuthToken(Base):
    """The OAuth2 tokens of one account (the SASL user), shared by every process; the
    refresh token is a secret as the password it replaces (never printed or logged).
    `refreshing_until` is the lease of the one process refreshing now."""

    __tablename__ = "oauth_tokens"
    account: Mapped[str] = mapped_column(String(320), primary_key=True)
    provider: Mapped[str] = mapped_column(String(20))
    flow: Mapped[str] = mapped_column(String(30))
    client_id: Mapped[str] = mapped_column(String(300), default="")
    refresh_token: Mapped[str] = mapped_column(Text, default="")
    access_token: Mapped[str] = mapped_column(Text, default="")
    access_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    access_lifetime: Mapped[int] = mapped_column(Integer, default=0)  # seconds
    logged_in_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the last `auth login`
    refresh_token_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # its issue
    refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    refreshes: Mapped[int] = mapped_column(BigInteger, default=0)
    # invalid: the authority refused the grant (invalid_grant …); nothing is tried until
    # the next `maild auth login`. last_error: the last failure, kept after recovery.
    invalid: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    refreshing_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    refreshing_by: Mapped[str] = mapped_column(String(100), default="")
    lead_told_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # once per outage


class Counter(Base):
    """Monotonic counters (ticket numbers); incremented under a row lock, never reused."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class AppSecret(Base):
    """Secrets generated once and kept, e.g. the key that signs escalation links."""

    __tablename__ = "app_secrets"
    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SweepMark(Base):
    """A scheduled mail that happened (`ticket:10001:warn:75`, `digest:2026-11-30`): the
    key is claimed in the same transaction as the mail, so it happens exactly once, however
    many processes sweep."""

    __tablename__ = "sweep_marks"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class Blob(Base):
    """A content-addressed blob (raw mail, attachment) and how many rows refer to it."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    refs: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ParseAttempt(Base):
    """A mail handed to the analysis whose outcome is not committed yet. A row left over
    from an earlier run means the mail ended that process: `crashes` counts such runs."""

    __tablename__ = "parse_attempts"
    mailbox: Mapped[str] = mapped_column(String(300), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    uid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    crashes: Mapped[int] = mapped_column(Integer, default=0)


class Company(Base):
    """A customer company: its number, its support tier, the mail domains it owns."""

    __tablename__ = "companies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    customer_number: Mapped[str | None] = mapped_column(String(100), unique=True)
    tier: Mapped[str] = mapped_column(String(50), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CompanyDomain(Base):
    __tablename__ = "company_domains"
    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), index=True)


class Contact(Base):
    """A person who may write to support, with preferences for our answers."""

    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    company_id: Mapped[int | None] = mapped_column(ForeignKey("companies.id"), index=True)
    name: Mapped[str] = mapped_column(String(300), default="")
    phone: Mapped[str] = mapped_column(String(100), default="")
    language: Mapped[str] = mapped_column(String(8), default="")
    timezone: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ContactAddress(Base):
    """An address of a contact (lower case); the primary one and any aliases."""

    __tablename__ = "contact_addresses"
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    primary: Mapped[bool] = mapped_column(Boolean, default=False)


class Agent(Base):
    """An agent added with `maild agents add` (those in the config file are not stored)."""

    __tablename__ = "agents"
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    name: Mapped[str] = mapped_column(String(300), default="")
    lead: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AddressFlag(Base):
    """What we know about an address beyond the account book: it bounces (no mail goes to
    it until it writes again or ops clear it), or an agent blocked it as a spammer."""

    __tablename__ = "address_flags"
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    bouncing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    bounce_status: Mapped[str] = mapped_column(String(20), default="")
    bounce_detail: Mapped[str] = mapped_column(Text, default="")
    blocked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    blocked_by: Mapped[str] = mapped_column(String(320), default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Ticket(Base):
    __tablename__ = "tickets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger, unique=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    priority: Mapped[str] = mapped_column(String(20))
    customer_address: Mapped[str] = mapped_column(String(320), index=True)
    customer_name: Mapped[str] = mapped_column(String(300), default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    language: Mapped[str] = mapped_column(String(8))
    automatic: Mapped[bool] = mapped_column(Boolean, default=False)
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), index=True)
    company_id: Mapped[int | None] = mapped_column(ForeignKey("companies.id"), index=True)
    mailbox: Mapped[str] = mapped_column(String(300))
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    facts: Mapped[Facts] = mapped_column(FactsJSON, default=Facts)
    missing: Mapped[list[str]] = mapped_column(JSON, default=list)
    participants: Mapped[list[str]] = mapped_column(JSON, default=list)
    first_response_due: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    first_response_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    owner: Mapped[str] = mapped_column(String(320), default="", index=True)
    cause: Mapped[str] = mapped_column(String(20), default="")
    merged_into: Mapped[int | None] = mapped_column(BigInteger)
    breached_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    waiting_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The call-back service: when the customer asked for it, and the number to call.
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    escalation_phone: Mapped[str] = mapped_column(String(100), default="")
    # Bumped by `maild tickets revoke-links N`: every link issued before stops working.
    link_version: Mapped[int] = mapped_column(Integer, default=0)


class InboundMessage(Base):
    """Every mail fetched from a watched folder, recorded once, whatever became of it."""

    __tablename__ = "inbound_messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox: Mapped[str] = mapped_column(String(300))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uid: Mapped[int] = mapped_column(BigInteger)
    dedupe_key: Mapped[str] = mapped_column(String(64), unique=True)
    message_id: Mapped[str | None] = mapped_column(Text, index=True)
    raw_sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"))
    size: Mapped[int] = mapped_column(BigInteger)
    internaldate: Mapped[datetime | None] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(20), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set to a ticket not yet written (the batched intake); never loaded (raise_on_sql).
    ticket: Mapped[Ticket | None] = relationship(lazy="raise_on_sql")

    __table_args__ = (Index("ix_inbound_messages_mailbox_uid", "mailbox", "uidvalidity", "uid"),)


class TicketMessage(Base):
    """One message on a ticket: a customer's mail, an answer, a note."""

    __tablename__ = "ticket_messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id"))
    direction: Mapped[str] = mapped_column(String(10))
    author: Mapped[str] = mapped_column(String(320))
    message_id: Mapped[str | None] = mapped_column(Text, index=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    body_text: Mapped[str] = mapped_column(Text, default="")
    new_text: Mapped[str] = mapped_column(Text, default="")
    facts: Mapped[Facts] = mapped_column(FactsJSON, default=Facts)
    automatic: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # What it is: a MessageKind (received) or an OutboxKind (sent), see maild.vocab
    kind: Mapped[str] = mapped_column(String(20), default="")
    # Seen by agents only (notes, notifications); never quoted to a customer.
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    ticket: Mapped[Ticket] = relationship(lazy="raise_on_sql")


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_message_id: Mapped[int] = mapped_column(ForeignKey("ticket_messages.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    blob_sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"))
    inline: Mapped[bool] = mapped_column(Boolean, default=False)
    declared_type: Mapped[str] = mapped_column(String(255), default="")
    listed: Mapped[bool] = mapped_column(Boolean, default=True)
    note: Mapped[str] = mapped_column(Text, default="")
    message: Mapped[TicketMessage] = relationship(lazy="raise_on_sql")


class OutboxMail(Base):
    """A mail to send, rendered once; sent at least once, counted by its Message-ID."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(500), unique=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    # The first recipient's person (mail.parse.person: no +tag, Gmail's dots), counted
    # by the answer limits.
    recipient: Mapped[str] = mapped_column(String(320), default="")
    envelope_from: Mapped[str] = mapped_column(String(320))
    recipients: Mapped[list[str]] = mapped_column(JSON)
    # The mail's bytes, in the blob store (`raw_sha256`); rows written before 0013 keep
    # them here (`raw`). Both NULL: sent and pruned after [outbox] keep_sent_days.
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    raw_sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"))
    # The random part of the Message-ID, which the VERP envelope sender names.
    verp_token: Mapped[str] = mapped_column(String(64), default="", index=True)
    state: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # `maild outbox retry`: a failed mail pending again; give_up_after_hours counts from here.
    retried_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ticket: Mapped[Ticket | None] = relationship(lazy="raise_on_sql")

    __table_args__ = (Index("ix_outbox_due", "state", "next_attempt_at"),
                      Index("ix_outbox_recipient", "recipient", "created_at"),
                      Index("ix_outbox_kind", "kind", "created_at"))


class Event(Base):
    """Every change to a ticket, with who and when: billing and SLA disputes rely on it."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(40))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ticket: Mapped[Ticket | None] = relationship(lazy="raise_on_sql")
