"""Deliver due outbox mails over SMTP: claim with a lease, send, record; backoff on 4xx.

A mail is claimed (leased) before it is sent, so several processes never send the same
row at once; a crash between the server's 250 and our record leaves the lease to expire
and the mail is sent again — the same bytes and the same Message-ID, so the recipient's
side counts it once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Update, bindparam, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from maild import db, health, history, retry, suppression
from maild.blobs import BlobStore
from maild.config import OutboxSettings, SmtpSettings
from maild.errors import SmtpDeferred, SmtpRejected, StorageUnavailable
from maild.models import OutboxMail, Ticket
from maild.oauth import Tokens
from maild.smtp import SmtpConnection
from maild.vocab import OutboxState

log = logging.getLogger(__name__)

# A mail the server accepted (Core, executed once for a group of them).
_MARK_SENT = update(OutboxMail).where(OutboxMail.id == bindparam("row")).values(
    state=OutboxState.SENT, sent_at=bindparam("now"), leased_until=None,
    attempts=bindparam("tries"), last_error="")


SENT_GROUP = 20  # accepted mails recorded as sent per commit, at most
SENT_WAIT = 0.25  # seconds an accepted mail waits for its group, at most


@dataclass(slots=True)
class _Round:
    """One claimed batch (or a probe): did any lane get through to the server (connect or
    a mail accepted), which connections were refused."""

    connected: bool = False
    refused: list[SmtpConnection] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    message_id: str
    envelope_from: str
    recipients: list[str]
    raw: bytes
    attempts: int
    created_at: datetime  # give_up_after_hours counts from here (or from a retry)
    ticket_id: int | None = None  # the ticket the mail is about

    @property
    def lane_key(self) -> int:
        """What must go out in order: the mails about one ticket (an acknowledgement
        before the agent's answer), or else those to the same recipients (a stable hash:
        the same in every process)."""
        if self.ticket_id is not None:
            return self.ticket_id  # consecutive tickets spread evenly over the lanes
        return zlib.crc32("\n".join(sorted(r.lower() for r in self.recipients)).encode())


def claim_statement(dialect: str, now: datetime, lease: datetime, limit: int) -> Update:
    """`UPDATE outbox SET leased_until=lease WHERE id IN (the first `limit` due mails not
    leased) RETURNING …`: one statement, so a row is leased by exactly one claimer."""
    due = aliased(OutboxMail)
    pick = select(due.id).where(
        due.state == OutboxState.PENDING, due.next_attempt_at <= now,
        or_(due.leased_until.is_(None), due.leased_until < now),
    ).order_by(due.id).limit(limit)
    if dialect == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    return (update(OutboxMail).where(OutboxMail.id.in_(pick)).values(leased_until=lease)
            .returning(OutboxMail.id, OutboxMail.message_id, OutboxMail.envelope_from,
                       OutboxMail.recipients, OutboxMail.raw, OutboxMail.raw_sha256,
                       OutboxMail.attempts,
                       func.coalesce(OutboxMail.retried_at, OutboxMail.created_at).label("since"),
                       OutboxMail.ticket_id))


def lane_parts(mails: list[Claimed], lanes: int) -> list[list[Claimed]]:
    """Split claimed mails into `lanes` lists, each in queue order; all mails with the
    same `lane_key` (about one ticket; else to the same recipients) in the same list."""
    parts: list[list[Claimed]] = [[] for _ in range(lanes)]
    for mail in sorted(mails, key=lambda m: m.id):
        parts[mail.lane_key % lanes].append(mail)
    return parts


def backoff(settings: OutboxSettings, attempts: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after the `attempts`-th failure: exponential, capped, ±20 % jitter."""
    return retry.delay(settings.initial_backoff, settings.max_backoff, attempts, 0.2, rng)


@dataclass(frozen=True, slots=True)
class Retry:
    """What `maild outbox retry` did with one mail: queued again, or why not."""

    id: int
    message_id: str
    recipients: list[str]
    queued: bool
    why: str = ""  # when not queued


def retry_failed(factory: db.SessionFactory, now: datetime, ids: list[int] | None,
                 actor: str, stored: Callable[[str], bool] = lambda _sha: True) -> list[Retry]:
    """Queue failed mails to be sent again (`ids`, or every failed one when None), once
    the cause (a 5xx, an outage past give_up_after_hours) is fixed: each goes back to
    pending with its attempts at 0 and its give-up window starting now (`retried_at`;
    `created_at` stays the time it was written, which answer limits and the ticket page
    read). The same bytes and Message-ID, so a mail the recipient did get counts once
    there. A mail about a ticket gets a `resent` event; one not failed is left alone."""
    out: list[Retry] = []
    with db.transaction(factory) as session:
        query = select(OutboxMail).order_by(OutboxMail.id)
        query = (query.where(OutboxMail.id.in_(ids)) if ids is not None
                 else query.where(OutboxMail.state == OutboxState.FAILED))
        found = {m.id: m for m in session.scalars(query.with_for_update())}
        for row_id in ids if ids is not None else list(found):
            mail = found.get(row_id)
            if mail is None:
                out.append(Retry(row_id, "", [], False, "no such mail in the outbox"))
                continue
            why = ""
            if mail.state != OutboxState.FAILED:
                why = f"it is {mail.state}, not failed: nothing to send again"
            elif mail.raw is None and (mail.raw_sha256 is None or not stored(mail.raw_sha256)):
                why = "its bytes are gone from the blob store: it cannot be sent again"
            else:
                why = _held_back(session, list(mail.recipients))
            if why:
                out.append(Retry(mail.id, mail.message_id, list(mail.recipients), False, why))
                continue
            error = mail.last_error
            mail.state, mail.attempts, mail.leased_until = OutboxState.PENDING, 0, None
            mail.next_attempt_at = mail.retried_at = now
            mail.last_error = ""
            if mail.ticket_id is not None:
                ticket = session.get(Ticket, mail.ticket_id)
                history.record(session, ticket, now, actor, history.Resent(
                    mail.message_id, mail.kind, list(mail.recipients), error[:500]))
            log.info("mail queued again message_id=%s to=%s by=%s (it had failed: %s)",
                     mail.message_id, ",".join(mail.recipients), actor, error)
            out.append(Retry(mail.id, mail.message_id, list(mail.recipients), True))
    return out


def _held_back(session: Session, recipients: list[str]) -> str:
    """Why a failed mail must not be sent again as it is: a recipient marked bouncing or
    blocked since (the queue checks that when a mail is written; a retry checks again)."""
    bouncing = set(recipients) - set(suppression.deliverable(session, recipients))
    blocked = [r for r in recipients if suppression.blocked(session, r) is not None]
    held = sorted(bouncing | set(blocked))
    if not held:
        return ""
    return (f"{', '.join(held)} marked bouncing or blocked since: `maild addresses clear "
            "ADDRESS` first if that is over")


class Outbox:
    def __init__(
        self, factory: db.SessionFactory, settings: OutboxSettings, smtp: SmtpSettings,
        clock: Callable[[], datetime], store: BlobStore,
        runtime: health.Runtime | None = None, probe_seconds: float = 0.0,
        tokens: Tokens | None = None,
        transport: Callable[[SmtpSettings, Tokens | None], SmtpConnection] = SmtpConnection,
    ) -> None:
        self.factory = factory
        self.tokens = tokens  # [smtp] auth = "oauth2"
        # How a connection to the relay is made (as Django's mail backends): a test gives
        # one of its own, a relay that refuses or goes away, without patching SmtpConnection.
        self.transport = transport
        self.store = store
        self.settings = settings
        self.smtp = smtp
        self.clock = clock
        # What /healthz and /metrics read: SMTP reachable or failing, counts.
        self.runtime = runtime or health.Runtime(started_at=clock())
        self.probe_seconds = probe_seconds  # connect this often when idle (0: never)
        # The last connection attempt; the first probe a few seconds after start-up.
        self._contact: datetime | None = clock() - timedelta(seconds=probe_seconds - 5.0)
        self._accepted: list[tuple[Claimed, str]] = []  # accepted, not yet recorded as sent
        self._round = _Round()
        self.reached = False  # the server answered since the caller last cleared this
        self._since = 0.0

    def claim(self) -> list[Claimed]:
        """Lease up to a batch of due mails in one `UPDATE … RETURNING` (the due rows picked
        FOR UPDATE SKIP LOCKED where the database has it; SQLite's write lock serialises
        claimers anyway), then read their bytes from the blob store."""
        now = self.clock()
        lease = now + timedelta(seconds=self.settings.lease_seconds)
        with db.transaction(self.factory) as session:
            rows = session.connection().execute(claim_statement(
                session.get_bind().dialect.name, now, lease, self.settings.batch_size)).all()
        claimed = []
        for row in sorted(rows, key=lambda r: r.id):
            raw = self._bytes(row.raw, row.raw_sha256)
            if raw is None:
                self.mark_failed_attempt(Claimed(row.id, row.message_id, row.envelope_from,
                                                 list(row.recipients), b"", row.attempts,
                                                 row.since),
                                         "the mail's bytes are missing from the blob store",
                                         permanent=True)
                continue
            claimed.append(Claimed(row.id, row.message_id, row.envelope_from,
                                   list(row.recipients), raw, row.attempts, row.since,
                                   row.ticket_id))
        return claimed

    def _bytes(self, inline: bytes | None, sha256: str | None) -> bytes | None:
        """A mail's bytes: in its row (written before 0013) or in the blob store."""
        if inline is not None:
            return inline
        if sha256 is None:
            return None
        try:
            return self.store.get(sha256)
        except FileNotFoundError:
            log.error("outgoing mail's blob missing sha256=%s", sha256)
            return None
        except OSError as exc:
            raise StorageUnavailable(f"blob store: {exc.strerror or exc}") from exc

    def next_due(self) -> datetime | None:
        with db.read_only(self.factory) as session:
            return session.scalar(select(func.min(OutboxMail.next_attempt_at))
                                  .where(OutboxMail.state == OutboxState.PENDING))

    def mark_all_sent(self, sent: list[tuple[Claimed, str]]) -> None:
        """Record mails the server accepted, in one transaction."""
        if not sent:
            return
        now = self.clock()
        with db.transaction(self.factory) as session:  # one statement, a row per mail
            session.connection().execute(_MARK_SENT, [
                {"row": mail.id, "tries": mail.attempts + 1, "now": now} for mail, _ in sent])
        self.runtime.count("outbox_sent", n=len(sent))
        for mail, answer in sent:
            log.info("mail sent message_id=%s to=%s answer=%s",
                     mail.message_id, ",".join(mail.recipients), answer.splitlines()[0][:80])

    def mark_failed_attempt(self, mail: Claimed, error: str, permanent: bool) -> None:
        now = self.clock()
        attempts = mail.attempts + 1
        give_up = now - mail.created_at > timedelta(hours=self.settings.give_up_after_hours)
        values: dict[str, object] = {"attempts": attempts, "leased_until": None,
                                     "last_error": error[:2000]}
        if permanent or give_up:
            values["state"] = OutboxState.FAILED
            self.runtime.count("outbox_failed")
            log.error("mail failed message_id=%s to=%s: %s",
                      mail.message_id, ",".join(mail.recipients), error)
        else:
            self.runtime.count("outbox_retries")
            delay = backoff(self.settings, attempts)
            values["next_attempt_at"] = now + timedelta(seconds=delay)
            log.info("mail deferred message_id=%s attempt=%s retry_in=%.0fs: %s",
                     mail.message_id, attempts, delay, error)
        with db.transaction(self.factory) as session:
            session.execute(update(OutboxMail).where(OutboxMail.id == mail.id).values(**values))

    def renew(self, mails: list[Claimed]) -> None:
        """Extend the lease of mails still waiting in this burst."""
        lease = self.clock() + timedelta(seconds=self.settings.lease_seconds)
        with db.transaction(self.factory) as session:
            session.execute(update(OutboxMail).where(
                OutboxMail.id.in_([m.id for m in mails])).values(leased_until=lease))

    async def deliver_due(self) -> int:
        """Send everything that is due; returns how many were sent.

        Each claimed batch is split into `[outbox] connections` lanes, each sent over an
        SMTP connection of its own, at the same time: the server's answers to one mail
        wait beside the others', not before them. The mails about one ticket (else those
        to the same recipients) go in one lane, in the order they were queued, and the
        next batch is claimed when every lane is through this one: a conversation's mails
        leave in order (one the server puts off comes later, with its backoff).

        The server counts as reached in a batch when any lane connected or had a mail
        accepted; a lane whose connection was refused puts its mails off, and the batch
        fails only when no lane got through. A relay that takes fewer connections than
        configured still gets mail: the refused lanes are dropped for the rest of the
        burst, so the next batches go over the connections it took.

        Accepted mails are recorded as sent in small groups (SENT_GROUP, or SENT_WAIT
        seconds): one commit per group instead of one per mail. A crash inside a group
        resends those mails with their Message-IDs: at least once, counted once."""
        lanes = [self.transport(self.smtp, self.tokens) for _ in range(self.settings.connections)]
        loop = asyncio.get_running_loop()
        self._accepted, self._since = [], loop.time()
        sent, looked = 0, False
        try:
            while claimed := await asyncio.to_thread(self.claim):
                looked = True
                self._round = _Round()
                parts = lane_parts(claimed, len(lanes))
                done = await asyncio.gather(
                    *(self._send_lane(smtp, part) for smtp, part in zip(lanes, parts, strict=True)
                      if part),
                    return_exceptions=True)
                sent += sum(n for n in done if isinstance(n, int))
                await self._record_accepted()
                self._settle([d for d in done if isinstance(d, BaseException)], len(lanes))
                if self._round.refused:  # some refused, some got through: keep those
                    lanes = [s for s in lanes if s not in self._round.refused] or lanes[:1]
        finally:
            try:
                await self._record_accepted()
            finally:
                for smtp in lanes:
                    await smtp.close()
        if not looked:
            await self.probe()
        return sent

    async def _send_lane(self, smtp: SmtpConnection, mails: list[Claimed]) -> int:
        """Send one lane's mails in order over its connection, renewing their lease when
        the lane takes longer than half of it."""
        loop = asyncio.get_running_loop()
        leased_at, sent = loop.time(), 0
        for index, mail in enumerate(mails):
            if loop.time() - leased_at > self.settings.lease_seconds / 2:
                await asyncio.to_thread(self.renew, mails[index:])
                leased_at = loop.time()
            if not smtp.connected:
                await self._connect(smtp, mails[index:])
            sent += await self._send_one(smtp, mail)
            if len(self._accepted) >= SENT_GROUP or loop.time() - self._since > SENT_WAIT:
                await self._record_accepted()
        return sent

    async def probe(self) -> None:
        """With nothing to send: connect to the SMTP server when the last contact is older
        than `probe_seconds`, so a broken server (or password) shows in /healthz before a
        mail waits for it, and a mended one shows as mended."""
        now = self.clock()
        if not self.probe_seconds or (self._contact is not None and (
                now - self._contact).total_seconds() < self.probe_seconds):
            return
        failing, smtp = bool(self.runtime.smtp_error), self.transport(self.smtp, self.tokens)
        self._round = _Round()
        try:
            await self._connect(smtp, [])
        except SmtpDeferred as exc:
            if not failing:  # once per outage
                log.warning("SMTP check failed (nothing to send now): %s", exc)
        else:
            if failing:
                log.info("SMTP server reachable again")
        finally:
            await smtp.close()

    async def _record_accepted(self) -> None:
        accepted, self._accepted = self._accepted, []
        self._since = asyncio.get_running_loop().time()
        if accepted:
            try:
                await asyncio.to_thread(self.mark_all_sent, accepted)
            except BaseException:
                self._accepted = accepted + self._accepted  # try again in the finally
                raise

    def _settle(self, failures: list[BaseException], lanes: int) -> None:
        """After every lane of a batch: raise what went wrong. A bug first (the others
        logged); a refused connection only when no lane got through in this batch."""
        bugs = [f for f in failures if not isinstance(f, SmtpDeferred)]
        for extra in bugs[1:]:
            log.error("outbox lane failed too: %r", extra)
        if bugs:
            raise bugs[0]
        if failures and not self._round.connected:
            raise failures[0]
        if failures:
            log.warning("%d of %d SMTP connections refused (their mails put off): %s",
                        len(failures), lanes, failures[0])

    async def _connect(self, smtp: SmtpConnection, waiting: list[Claimed]) -> None:
        """Connect; the health state says "reached" once any lane of the batch got
        through, "failing" only while none has (whichever answers first)."""
        self._contact = self.clock()
        try:
            await smtp.connect()
        except SmtpDeferred as exc:
            if not self._round.refused:
                self.runtime.count("smtp_failures")  # once per batch
            if not self._round.connected:
                self.runtime.smtp_failed(self.clock(), str(exc))
            self._round.refused.append(smtp)
            for mail in waiting:
                await asyncio.to_thread(self.mark_failed_attempt, mail, str(exc), False)
            raise
        self.reached = self._round.connected = True
        self.runtime.smtp_ok(self.clock())

    async def _send_one(self, smtp: SmtpConnection, mail: Claimed) -> int:
        try:
            answer = await smtp.send(mail.envelope_from, mail.recipients, mail.raw)
        except SmtpRejected as exc:
            await asyncio.to_thread(self.mark_failed_attempt, mail, str(exc), True)
            return 0
        except SmtpDeferred as exc:
            await asyncio.to_thread(self.mark_failed_attempt, mail, str(exc), False)
            return 0
        self._accepted.append((mail, answer))
        if not self._round.connected:  # over a connection kept from an earlier batch
            self._round.connected = self.reached = True
            self.runtime.smtp_ok(self.clock())
        return 1
