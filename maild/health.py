"""What the running daemon knows of itself, and the backlog in the database.

`Runtime` is written by the daemon's parts as things happen (a fetch done, the mailbox or
SMTP failing); `backlog()` counts what waits in the database. systemd's STATUS= line,
`/healthz`, `/metrics` and `maild status` all read these two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select

from maild import db
from maild.models import InboundMessage, OutboxMail


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

    def fetched(self, now: datetime, waiting: int) -> None:
        self.last_fetch_at, self.inbox_waiting = now, waiting
        self.mailbox_error, self.mailbox_error_since = "", None

    def mailbox_failed(self, now: datetime, text: str) -> None:
        if not self.mailbox_error:
            self.mailbox_error_since = now
        self.mailbox_error = text

    def smtp_ok(self) -> None:
        self.smtp_error, self.smtp_error_since = "", None

    def smtp_failed(self, now: datetime, text: str) -> None:
        if not self.smtp_error:
            self.smtp_error_since = now
        self.smtp_error = text


@dataclass(frozen=True, slots=True)
class Backlog:
    outbox: int  # pending outgoing mails
    oldest_pending: datetime | None  # created_at of the oldest of them
    quarantine: int


def backlog(factory: db.SessionFactory) -> Backlog:
    with factory() as session:
        outbox, oldest = session.execute(
            select(func.count(), func.min(OutboxMail.created_at))
            .where(OutboxMail.state == "pending")).one()
        quarantine = session.scalar(
            select(func.count()).select_from(InboundMessage)
            .where(InboundMessage.state == "quarantined")) or 0
    return Backlog(int(outbox or 0), oldest, int(quarantine))


def status_line(runtime: Runtime, counts: Backlog) -> str:
    """systemd's STATUS=: one short line an operator reads in `systemctl status`."""
    line = f"inbox {runtime.inbox_waiting}, outbox {counts.outbox}, quarantine {counts.quarantine}"
    if runtime.mailbox_error:
        line += f"; mailbox failing: {runtime.mailbox_error}"
    if runtime.smtp_error:
        line += f"; SMTP failing: {runtime.smtp_error}"
    return line[:200]
