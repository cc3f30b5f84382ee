"""What the running daemon knows of itself, what waits in the database, and the verdict.

`Runtime` is written by the daemon's parts as things happen (a fetch done, the mailbox or
SMTP failing, a mail processed or sent); `backlog()` and `tally()` count what waits in the
database; `assess()` turns both into a `Report` (healthy or not, and why). systemd's
STATUS= line, `/healthz`, `/metrics` and `maild status` all read these.

The watcher persists its Runtime as a `Heartbeat` row (see `beat()`), so `maild status`, a
process of its own, knows when the daemon last looked at the mailbox.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maild import __version__, db, oauth
from maild.config import HealthSettings
from maild.errors import MaildError
from maild.models import (
    Heartbeat,
    InboundMessage,
    OAuthToken,
    OutboxMail,
    ParseAttempt,
    Ticket,
)
from maild.vocab import InboundState, OutboxState

# Seconds a processed mail spent in maild, from fetch to commit: the histogram's buckets.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
HEARTBEAT_SECONDS = 15.0  # how often the watcher writes its Heartbeat row
SILENT_AFTER = timedelta(seconds=4 * HEARTBEAT_SECONDS)  # a daemon quiet longer is gone
# Processed kinds that get no answer because a machine wrote them.
AUTOMATIC_KINDS = frozenset({"automatic", "bounce", "own"})
CLOSED_STATUSES = ("resolved", "closed", "spam")  # everything else is an open ticket


@dataclass
class Latency:
    """A histogram's raw counts: per bucket (not cumulative, the last is +Inf), sum, count."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        index = next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b),
                     len(LATENCY_BUCKETS))
        self.buckets[index] += 1
        self.total += seconds
        self.count += 1


@dataclass
class Runtime:
    """The live state of one daemon process (one event loop; threads write single fields)."""

    started_at: datetime
    last_fetch_at: datetime | None = None  # the last complete look at the mailbox
    inbox_waiting: int = 0  # mails seen in the watched folder, not yet processed
    mailbox_error: str = ""  # empty while the mailbox works
    mailbox_error_since: datetime | None = None
    smtp_error: str = ""
    smtp_error_since: datetime | None = None
    extra: dict[str, object] = field(default_factory=dict)
    smtp_ok_at: datetime | None = None  # the last time the SMTP server took us
    standby: bool = False  # another process watches the mailbox; this one waits
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (name, label) → n
    latency: Latency = field(default_factory=Latency)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fetched(self, now: datetime, waiting: int) -> None:
        self.last_fetch_at, self.inbox_waiting = now, waiting
        self.mailbox_error, self.mailbox_error_since = "", None

    def mailbox_failed(self, now: datetime, text: str) -> None:
        if not self.mailbox_error:
            self.mailbox_error_since = now
        self.mailbox_error = text

    def smtp_ok(self, now: datetime | None = None) -> None:
        self.smtp_error, self.smtp_error_since = "", None
        if now is not None:
            self.smtp_ok_at = now

    def smtp_failed(self, now: datetime, text: str) -> None:
        if not self.smtp_error:
            self.smtp_error_since = now
        self.smtp_error = text

    def count(self, name: str, label: str = "", n: int = 1) -> None:
        """Add `n` to a counter (named in metrics.COUNTERS) for `label`."""
        with self.lock:
            self.counts[(name, label)] += n

    def observe(self, seconds: float) -> None:
        with self.lock:
            self.latency.observe(seconds)

    def snapshot(self) -> tuple[dict[tuple[str, str], int], Latency]:
        """The counters and the histogram as they are now (for a scrape)."""
        with self.lock:
            return dict(self.counts), Latency(list(self.latency.buckets), self.latency.total,
                                              self.latency.count)


@dataclass(frozen=True, slots=True)
class Backlog:
    outbox: int  # pending outgoing mails
    oldest_pending: datetime | None  # created_at of the oldest of them
    quarantine: int


def backlog(factory: db.SessionFactory) -> Backlog:
    with factory() as session:
        return backlog_in(session)


def status_line(runtime: Runtime, counts: Backlog) -> str:
    """systemd's STATUS=: one short line an operator reads in `systemctl status`."""
    line = f"inbox {runtime.inbox_waiting}, outbox {counts.outbox}, quarantine {counts.quarantine}"
    if runtime.mailbox_error:
        line += f"; mailbox failing: {runtime.mailbox_error}"
    if runtime.smtp_error:
        line += f"; SMTP failing: {runtime.smtp_error}"
    return line[:200]


# -- the database's side ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Tally:
    """What waits in the database: one look, for /healthz, /metrics and `maild status`."""

    schema: str  # the database's migration revision
    backlog: Backlog
    outbox_failed: int  # gave up sending (5xx, or deferred too long)
    retrying: int  # mails that failed to process and are tried again, not yet finished
    crashed: int  # mails that ended a parse worker (and are tried again or given up)
    tickets: dict[str, int]  # open tickets by status
    breached: int  # open tickets past their first-response promise
    logins: tuple[Login, ...] = ()  # the stored OAuth2 grants


@dataclass(frozen=True, slots=True)
class Login:
    """An OAuth2 grant as /healthz, /metrics and `maild status` see it (no token)."""

    account: str
    expires_at: datetime | None  # of the access token
    refused: str  # the one line saying what happened and what to run, or ""


@functools.cache
def schema_head() -> str:
    """The newest migration revision this maild knows (read once; it never changes)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("maild.migrations")))
    return ScriptDirectory.from_config(cfg).get_current_head() or ""


def tally(factory: db.SessionFactory) -> Tally:
    """Count it all in one read transaction (raises StorageUnavailable when down)."""
    with db.transaction(factory) as session:
        schema = MigrationContext.configure(session.connection()).get_current_revision()
        if schema != schema_head():  # the tables may lack what the counts read
            return Tally(schema or "", Backlog(0, None, 0), 0, 0, 0, {}, 0)
        return Tally(schema or "", backlog_in(session), _outbox_failed(session),
                     _retrying(session), _crashed(session), _open_tickets(session),
                     _breached(session), _logins(session))


def _logins(session: Session) -> tuple[Login, ...]:
    return tuple(Login(row.account, row.access_expires_at,
                       oauth.refused_text(row) if row.invalid else "")
                 for row in session.scalars(select(OAuthToken).order_by(OAuthToken.account)))


def backlog_in(session: Session) -> Backlog:
    outbox, oldest = session.execute(
        select(func.count(), func.min(OutboxMail.created_at))
        .where(OutboxMail.state == OutboxState.PENDING)).one()
    quarantine = session.scalar(select(func.count()).select_from(InboundMessage)
                                .where(InboundMessage.state == InboundState.QUARANTINED)) or 0
    return Backlog(int(outbox or 0), oldest, int(quarantine))


def _outbox_failed(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(OutboxMail)
                          .where(OutboxMail.state == OutboxState.FAILED)) or 0


def _retrying(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(InboundMessage).where(
        InboundMessage.state.in_((InboundState.NEW, InboundState.FAILED)),
        InboundMessage.finished_at.is_(None), InboundMessage.attempts >= 1)) or 0


def _crashed(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ParseAttempt)
                          .where(ParseAttempt.crashes > 0)) or 0


def _open_tickets(session: Session) -> dict[str, int]:
    rows = session.execute(select(Ticket.status, func.count()).where(
        Ticket.status.not_in(CLOSED_STATUSES), Ticket.merged_into.is_(None))
        .group_by(Ticket.status)).all()
    return {str(status): int(n) for status, n in rows}


def _breached(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Ticket).where(
        Ticket.status.not_in(CLOSED_STATUSES), Ticket.merged_into.is_(None),
        Ticket.breached_at.is_not(None))) or 0


# -- the heartbeat: the Runtime, persisted for other processes ----------------------------

def beat(factory: db.SessionFactory, mailbox: str, runtime: Runtime, now: datetime) -> None:
    """Write this process's view of `mailbox` (the watcher calls it every few seconds)."""
    with db.transaction(factory) as session:
        row = session.get(Heartbeat, mailbox)
        if row is None:
            row = Heartbeat(mailbox=mailbox)
            session.add(row)
        row.beat_at, row.started_at = now, runtime.started_at
        row.process, row.version = f"{socket.gethostname()}:{os.getpid()}"[:300], __version__
        row.last_fetch_at, row.inbox_waiting = runtime.last_fetch_at, runtime.inbox_waiting
        row.mailbox_error = runtime.mailbox_error[:2000]
        row.mailbox_error_since = runtime.mailbox_error_since
        row.smtp_ok_at, row.smtp_error = runtime.smtp_ok_at, runtime.smtp_error[:2000]
        row.smtp_error_since = runtime.smtp_error_since


def heartbeat(factory: db.SessionFactory, mailbox: str) -> Heartbeat | None:
    with db.transaction(factory) as session:
        return session.get(Heartbeat, mailbox)


def runtime_of(row: Heartbeat) -> Runtime:
    """A Runtime as the daemon last wrote it (counters stay empty)."""
    return Runtime(started_at=row.started_at, last_fetch_at=row.last_fetch_at,
                   inbox_waiting=row.inbox_waiting, mailbox_error=row.mailbox_error,
                   mailbox_error_since=row.mailbox_error_since, smtp_error=row.smtp_error,
                   smtp_error_since=row.smtp_error_since, smtp_ok_at=row.smtp_ok_at)


# -- the verdict --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Report:
    healthy: bool
    problems: list[str]  # why unhealthy (each makes /healthz 503)
    warnings: list[str]  # worth a look, not unhealthy
    body: dict[str, Any]  # everything, for JSON


def database_part(found: Tally | None, head: str, error: str) -> dict[str, Any]:
    if found is None:
        return {"reachable": False, "error": error, "schema": None, "schema_current": False}
    return {"reachable": True, "error": "", "schema": found.schema,
            "schema_current": found.schema == head, "schema_needed": head}


def mailbox_part(runtime: Runtime) -> dict[str, Any]:
    return {"connected": not runtime.mailbox_error and runtime.last_fetch_at is not None,
            "standby": runtime.standby, "error": runtime.mailbox_error,
            "error_since": _iso(runtime.mailbox_error_since),
            "last_fetch_at": _iso(runtime.last_fetch_at), "waiting": runtime.inbox_waiting}


def smtp_part(runtime: Runtime) -> dict[str, Any]:
    return {"reachable": not runtime.smtp_error and runtime.smtp_ok_at is not None,
            "error": runtime.smtp_error, "error_since": _iso(runtime.smtp_error_since),
            "last_ok_at": _iso(runtime.smtp_ok_at)}


def assess(runtime: Runtime, found: Tally | None, head: str, db_error: str,
           limits: HealthSettings, now: datetime) -> Report:
    """The verdict over the daemon's own view and the database's counts."""
    problems, warnings = _runtime_problems(runtime, limits, now), []
    body: dict[str, Any] = {"version": __version__, "started_at": _iso(runtime.started_at),
                            "database": database_part(found, head, db_error),
                            "mailbox": mailbox_part(runtime), "smtp": smtp_part(runtime)}
    if found is None:
        problems.insert(0, f"database unreachable: {db_error}")
    else:
        problem = db.schema_problem(found.schema or None, head)
        if problem:  # nothing was counted (the tables are not those of this maild)
            problems.insert(0, problem)
        else:
            body.update(_counts_part(found, now))
        problems.extend(login.refused for login in found.logins if login.refused)
        oldest = found.backlog.oldest_pending
        if oldest is not None and now - oldest > timedelta(minutes=limits.outbox_oldest_minutes):
            problems.append(f"the oldest unsent mail waits since {_iso(oldest)} "
                            f"(more than {limits.outbox_oldest_minutes:g} minutes)")
        if found.retrying or found.crashed:
            warnings.append(f"{found.retrying} mails failing and tried again, "
                            f"{found.crashed} crashed a parse worker")
    body.update(status="ok" if not problems else "unhealthy", problems=problems,
                warnings=warnings)
    return Report(not problems, problems, warnings, body)


def _runtime_problems(runtime: Runtime, limits: HealthSettings, now: datetime) -> list[str]:
    problems = []
    since = runtime.mailbox_error_since
    if runtime.mailbox_error and since is not None and (
            now - since).total_seconds() >= limits.mailbox_failing_seconds:
        problems.append(f"mailbox failing since {_iso(since)}: {runtime.mailbox_error}")
    since = runtime.smtp_error_since
    if runtime.smtp_error and since is not None and (
            now - since).total_seconds() >= limits.smtp_failing_seconds:
        problems.append(f"SMTP failing since {_iso(since)}: {runtime.smtp_error}")
    return problems


def _counts_part(found: Tally, now: datetime) -> dict[str, Any]:
    oldest = found.backlog.oldest_pending
    return {
        "outbox": {"pending": found.backlog.outbox, "failed": found.outbox_failed,
                   "oldest_pending_at": _iso(oldest),
                   "oldest_pending_seconds": round((now - oldest).total_seconds())
                   if oldest else None},
        "quarantine": found.backlog.quarantine,
        "failing_mails": {"retrying": found.retrying, "crashed": found.crashed},
        "tickets": {"open": found.tickets, "open_total": sum(found.tickets.values()),
                    "breached": found.breached},
    }


def check(runtime: Runtime, factory: db.SessionFactory, head: str, limits: HealthSettings,
          now: datetime) -> Report:
    """Look at the database (blocking: run it in a thread) and assess."""
    try:
        found, error = tally(factory), ""
    except MaildError as exc:
        found, error = None, str(exc)
    return assess(runtime, found, head, error, limits, now)


def _iso(when: datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when is not None else None
