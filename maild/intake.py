"""Incoming mails: record → classify → apply, each isolated and idempotent.

The outcome says what to do with the mail in IMAP, and only after the commit:
`processed` and `quarantine` move it; `retry` leaves it for a later round. A temporary
failure (database or disk down) stops the batch with `Temporary` and touches nothing.
"""

from __future__ import annotations

import logging
import secrets
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

from sqlalchemy import delete, insert, select, tuple_
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from maild import (
    accounts,
    answers,
    blobs,
    bounces,
    db,
    decide,
    logs,
    notify,
    suppression,
    threader,
    work,
)
from maild.accounts import Account
from maild.agents import AgentInfo
from maild.analyse import (
    DEFAULT_BUDGET,
    AnalyseFn,
    Analyser,
    Analysis,
    Budget,
    Flight,
    Rules,
    analyse,
    dedupe_key,
    stopped,
)
from maild.answers import reject_unknown
from maild.decide import Known
from maild.desk import Desk
from maild.errors import StorageUnavailable, Temporary
from maild.mail import dsn, files, thread
from maild.mail.classify import Verdict
from maild.mail.extracted import Extracted
from maild.mail.fetched import Fetched
from maild.mail.parse import InboundMail
from maild.models import InboundMessage, OutboxMail, ParseAttempt
from maild.threader import Match
from maild.tickets import add_follow_up, done_at, open_ticket
from maild.vocab import InboundState

log = logging.getLogger(__name__)

Action = Literal["processed", "quarantine", "retry"]


@dataclass(slots=True)
class Batch:
    """What one transaction of the intake read for its mails up front, and took:

    - `seen`: their inbound rows by dedupe key (None: not recorded yet);
    - `accounts`: their senders' accounts by address (None: none);
    - written together (not mail by mail), its Message-IDs (`ids`) and the first ticket
      number it reserved (`first_number`): what a mail may point at of the batch itself;
      and what its mails point at elsewhere (`preread`), for threading those `apart`."""

    seen: dict[str, InboundMessage | None]
    accounts: dict[str, Account | None] = field(default_factory=dict)
    ids: set[str] = field(default_factory=set)
    first_number: int | None = None  # None: written mail by mail, each flushed first
    # What the mails point at (messages, tickets), read for all: for a mail `apart` only.
    preread: threader.Preread | None = None

    def apart(self, parsed: InboundMail, support: str) -> bool:
        """Whether `parsed` cannot point at a mail or ticket of this batch: it references
        none of its Message-IDs and names no ticket number it may have taken (in its
        subject tag or a reply address)."""
        if self.first_number is None or self.ids.intersection(thread.referenced_ids(parsed)):
            return False
        numbers = [n for n, _ in thread.plus_tokens(parsed, support)]
        tagged = thread.subject_tag(parsed.subject)
        return all(n < self.first_number
                   for n in (*numbers, *([tagged] if tagged is not None else [])))


@dataclass(frozen=True, slots=True)
class Prepared:
    """A mail after the pure work: parsed and classified, its blobs written (not yet synced);
    `over_budget`: `error` says why its analysis was stopped (it goes to quarantine)."""

    mail: Fetched
    key: str
    raw_sha: str
    parsed: InboundMail | None
    verdict: Verdict | None
    error: str
    planned: list[files.Planned] | None = None
    report: dsn.Report | None = None
    over_budget: bool = False
    extracted: Extracted | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    uid: int
    action: Action
    reason: str = ""
    ticket_number: int | None = None
    kind: str = ""  # of a processed mail, as recorded (for the metrics)


class Intake:
    """Processes fetched mails of one mailbox against the database."""

    def __init__(
        self, factory: db.SessionFactory, desk: Desk, mailbox: str, max_attempts: int,
        clock: Callable[[], datetime], workers: int = 0, budget: Budget = DEFAULT_BUDGET,
        max_crashes: int = 3, analysis: AnalyseFn = analyse, flight: Path | None = None,
    ) -> None:
        """`workers` parse worker processes analyse the mails within `budget` (0: in this
        process, without budget); `analysis` is the analysis they run (a module-level
        function: it is pickled to the workers). `flight`: the file that records which
        mails are being parsed (None: every mark left open counts as a crash)."""
        self.factory = factory
        self.desk = desk
        self.mailbox = mailbox
        self.max_attempts = max_attempts
        self.max_crashes = max_crashes
        self.clock = clock
        self.flight = Flight(flight)
        self.analyser = Analyser(_rules(desk), workers, desk.store, budget, analysis,
                                 self.flight)
        self.opened: set[tuple[int, int]] = set()  # attempt marks this process opened
        self.policy = _policy(desk)

    def use(self, desk: Desk, max_attempts: int, max_crashes: int) -> None:
        """A reload: the mails processed from now on see `desk` (and `decide()` its
        policy); the parse workers get its rules between two batches."""
        self.desk, self.max_attempts, self.max_crashes = desk, max_attempts, max_crashes
        self.policy = _policy(desk)
        self.analyser.use(_rules(desk))

    def start(self) -> None:
        """Start the parse workers (so the first mail finds them warm)."""
        self.analyser.start()

    def analyse(self, uidvalidity: int, mails: list[Fetched]) -> Future[list[Analysis]]:
        """Mark the mails' attempts, then start the pure work on them (in the parse
        workers); hand the result to `process_batch`, which may meanwhile commit the batch
        before. A mail that ended the process `max_crashes` times is not analysed again."""
        given_up = self._mark_attempts(uidvalidity, mails)
        return self.analyser.submit([given_up.get(m.uid, m.raw) for m in mails],
                                    [(uidvalidity, m.uid) for m in mails])

    def close(self) -> None:
        self.analyser.close()

    def _mark_attempts(self, uidvalidity: int, mails: list[Fetched]) -> dict[int, Analysis]:
        """Commit an open attempt mark per mail (one multi-row insert). A mark still open
        from an earlier run is a crash: the mail ended that process while being parsed."""
        uids = [m.uid for m in mails]
        if not uids:
            return {}
        now = self.clock()
        given_up: dict[int, Analysis] = {}
        with db.transaction(self.factory) as session:
            open_marks = {row.uid: row for row in session.scalars(select(ParseAttempt).where(
                ParseAttempt.mailbox == self.mailbox, ParseAttempt.uidvalidity == uidvalidity,
                ParseAttempt.uid.in_(uids)))}
            suspects = self.flight.before
            for uid, row in open_marks.items():
                if (uidvalidity, uid) in self.opened:
                    continue  # ours (a batch that failed temporarily): no crash
                if suspects is not None and (uidvalidity, uid) not in suspects:
                    continue  # in the batch, but not being parsed when the process ended
                if suspects is not None:
                    suspects.discard((uidvalidity, uid))  # counted once
                row.crashes += 1
                row.started_at = now
                log.warning("mail was being parsed when maild ended uid=%s crashes=%s",
                            uid, row.crashes)
                if row.crashes >= self.max_crashes:
                    given_up[uid] = stopped(
                        f"killed the process {row.crashes} times while being parsed")
            new = [{"mailbox": self.mailbox, "uidvalidity": uidvalidity, "uid": uid,
                    "started_at": now, "crashes": 0} for uid in uids if uid not in open_marks]
            if new:
                session.execute(insert(ParseAttempt), new)
        self.opened.update((uidvalidity, uid) for uid in uids)
        return given_up

    def known(self, uidvalidity: int, uids: Iterable[int]) -> dict[int, str]:
        """State of the UIDs we already finished with (processed or quarantined)."""
        wanted = [(self.mailbox, uidvalidity, uid) for uid in uids]
        found: dict[int, str] = {}
        for chunk in db.chunks(wanted):
            with db.read_only(self.factory) as session:
                rows = session.execute(
                    select(InboundMessage.uid, InboundMessage.state).where(
                        tuple_(InboundMessage.mailbox, InboundMessage.uidvalidity,
                               InboundMessage.uid).in_(chunk),
                        InboundMessage.state.in_(
                            (InboundState.PROCESSED, InboundState.QUARANTINED)),
                    )
                )
                found.update({int(uid): state for uid, state in rows})
        return found

    def process(self, uidvalidity: int, mail: Fetched) -> Outcome:
        """Handle one mail; raises only `Temporary`."""
        return self.process_batch(uidvalidity, [mail])[0]

    def process_batch(self, uidvalidity: int, mails: list[Fetched],
                      analysed: Future[list[Analysis]] | None = None) -> list[Outcome]:
        """Handle fetched mails: pure work and blob writes first, then one transaction for
        the batch (see `_write`: a mail's failure stays its own); one filesystem sync of
        all the blobs (the mails' and their answers') just before it commits.
        Raises only `Temporary`, in which case nothing of the batch was committed."""
        future = analysed or self.analyse(uidvalidity, mails)
        prepared = [self._prepare(mail, a)
                    for mail, a in zip(mails, future.result(), strict=True)]
        now = self.clock()
        try:  # the whole batch in one go; a mail that fails undoes it, then one by one
            outcomes = self._write(uidvalidity, prepared, now, isolated=len(prepared) == 1)
        except Exception as exc:
            # (Outages stop the batch; any other failure of a batch of several is written
            # again mail by mail, so whatever it was is counted against its own mail.)
            if len(prepared) == 1 or isinstance(exc, Temporary) or (
                    isinstance(exc, sa_exc.SQLAlchemyError) and db.is_unavailable(exc)):
                raise
            cause = exc.__cause__ if isinstance(exc, _MailFailed) else exc
            # What was logged of this batch so far ("ticket created …") was rolled back.
            # The failure itself is logged, with its error id, when that mail is written.
            log.warning("a mail failed in a batch of %d (%s): the batch was rolled back and "
                        "is written again mail by mail", len(prepared), type(cause).__name__)
            outcomes = self._write(uidvalidity, prepared, now, isolated=True)
        self.opened.difference_update((uidvalidity, m.uid) for m in mails)
        return outcomes

    def _write(self, uidvalidity: int, prepared: list[Prepared], now: datetime,
               isolated: bool) -> list[Outcome]:
        """One transaction for the batch. `isolated`: each mail in a savepoint of its own,
        so one mail's failure is recorded against it alone; else without savepoints (the
        common case, cheaper), and the first failing mail raises `_MailFailed`, which
        rolls the batch back for the caller to write it again isolated.

        Not isolated, the batch is written in a few statements: its new inbound rows in
        one, its ticket numbers reserved in one, and the rest (tickets, messages, files,
        events, outbox rows and the blob counts they hold) by one flush at the end, one
        executemany per table (their ids taken beforehand: `db._assign_ids`). What the
        mails point at is read once too (`threader.preread`); a mail that may point at the
        batch itself (`Batch.apart`) flushes what is pending first and reads on its own,
        so it sees the batch's earlier mails."""
        uids = [p.mail.uid for p in prepared]
        with db.transaction(self.factory) as session:
            # The mails' blobs and their answers' bytes: one sync, just before the commit.
            blobs.sync_before_commit(session, self.desk.store)
            batch = Batch(_recorded(session, [p.key for p in prepared]))  # one read for all
            senders = [p.parsed.from_addr.lower() for p in prepared if p.parsed]
            # (the agents too: every notification to them asks whether they bounce)
            roster = self.desk.agents.roster
            suppression.preload(session, [*senders, *(a.address for a in roster.all(session)),
                                          *([roster.team_address] if roster.team_address else [])])
            answers.count_answers(session, senders, now)
            batch.accounts = {**dict.fromkeys(senders),
                              **accounts.lookup_many(session, senders)}
            if not isolated:
                with _mail_failure():  # (a row the batch cannot write: mail by mail)
                    batch.seen.update(self._new_rows(session, batch, uidvalidity, prepared,
                                                     now))
                # Ticket numbers for the mails that may open one, in one statement.
                batch.first_number = db.reserve_numbers(
                    session, "ticket", sum(map(_may_open, prepared)))
                batch.ids = {p.parsed.message_id for p in prepared
                             if p.parsed and p.parsed.message_id}
                batch.preread = threader.preread(
                    session, self.desk, [p.parsed for p in prepared if p.parsed and _may_open(p)],
                    now)
            outcomes = [self._decide(session, batch, uidvalidity, p, now, isolated)
                        for p in prepared]
            if not isolated:
                with _mail_failure():  # the batch's rows, still pending
                    session.flush()
                db.release_numbers(session, "ticket")  # those not used
            session.execute(delete(ParseAttempt).where(  # the attempts are over
                ParseAttempt.mailbox == self.mailbox, ParseAttempt.uidvalidity == uidvalidity,
                ParseAttempt.uid.in_(uids)))
        return outcomes

    def _prepare(self, mail: Fetched, analysis: Analysis) -> Prepared:
        if analysis.unavailable:
            raise StorageUnavailable(analysis.unavailable)
        # The worker wrote the blobs (not when it was stopped); this process syncs them.
        self.desk.store.adopt(analysis.written)
        key = analysis.key or dedupe_key(mail.raw)
        raw_sha = analysis.raw_sha or self.desk.store.put(mail.raw, sync=False)
        if analysis.over_budget:
            return Prepared(mail, key, raw_sha, None, None, analysis.over_budget,
                            over_budget=True)
        if analysis.error or analysis.planned is None:
            return Prepared(mail, key, raw_sha, None, None,
                            _failed(analysis.error, analysis.trace, mail.uid))
        planned = analysis.planned + [files.left_out(o.filename, o.content_type, o.size)
                                      for o in mail.omitted]
        return Prepared(mail, key, raw_sha, analysis.parsed, analysis.verdict, "", planned,
                        analysis.report, extracted=analysis.extracted)

    def _decide(self, session: Session, batch: Batch, uidvalidity: int, p: Prepared,
                now: datetime, isolated: bool = True) -> Outcome:
        """One mail's outcome; its log lines carry its Message-ID (and ticket, once known)."""
        with logs.context(message_id=p.parsed.message_id if p.parsed else None):
            if isolated or p.error:
                if not isolated:  # the earlier mails' pending rows, before its savepoint
                    with _mail_failure():
                        session.flush()
                return self._decide_one(session, batch, uidvalidity, p, now)
            with _mail_failure():
                return self._apply(session, batch, uidvalidity, p, now)

    def _decide_one(self, session: Session, batch: Batch, uidvalidity: int, p: Prepared,
                    now: datetime) -> Outcome:
        if p.error:
            return self._record_failure(session, uidvalidity, p, p.error, now)
        try:
            with session.begin_nested():
                return self._apply(session, batch, uidvalidity, p, now)
        except sa_exc.IntegrityError as exc:
            done = _finished_elsewhere(session, p)
            if done is not None:  # another process recorded the same mail first
                return done
            error = _failed(_describe(exc.orig or exc), traceback.format_exc(), p.mail.uid)
            return self._record_failure(session, uidvalidity, p, error, now)
        except Temporary:
            raise
        except Exception as exc:  # a bug or a mail we cannot handle: count it against the mail
            if isinstance(exc, sa_exc.SQLAlchemyError) and db.is_unavailable(exc):
                raise
            error = _failed(_describe(exc), traceback.format_exc(), p.mail.uid)
            return self._record_failure(session, uidvalidity, p, error, now)

    def _apply(self, session: Session, batch: Batch, uidvalidity: int, p: Prepared,
               now: datetime) -> Outcome:
        # Read with the batch, once per key (a copy later in the batch looks again).
        existing = batch.seen.pop(p.key) if p.key in batch.seen else _find(session, p.key)
        done = _already_done(existing, uidvalidity, p.mail.uid)
        if done is not None:
            return done
        row = self._row(session, existing, uidvalidity, p, now)
        return replace(self._apply_to(session, batch, row, p, now), kind=row.kind)

    def _apply_to(self, session: Session, batch: Batch, row: InboundMessage, p: Prepared,
                  now: datetime) -> Outcome:
        assert p.parsed is not None and p.verdict is not None
        mail, parsed, verdict = p.mail, p.parsed, p.verdict
        agent, proven, match, account, known = self._read(session, batch, parsed, verdict,
                                                          now)
        d = decide.decide(verdict, known, self.policy, now)
        row.kind, row.reason, row.finished_at = d.kind, d.reason, now
        if d.route == decide.Route.QUARANTINE:
            row.state = InboundState.QUARANTINED
            return Outcome(mail.uid, "quarantine", d.reason)
        row.state = InboundState.PROCESSED
        if d.route == decide.Route.OWN:
            return Outcome(mail.uid, "processed", d.reason)
        if d.route == decide.Route.BOUNCE:
            bounced, summary = bounces.record(session, self.desk, parsed,
                                              p.report or dsn.Report(), inbound_id=row.id,
                                              now=now)
            row.ticket_id = bounced.id if bounced else None
            row.reason = summary[:2000]
            return Outcome(mail.uid, "processed", summary,
                           bounced.number if bounced else None)
        if known.bouncing:  # the address works after all: it wrote to us
            suppression.wrote_again(session, parsed.from_addr, now)
        if d.route == decide.Route.AGENT:
            assert agent is not None and match is not None
            logs.bind(ticket=f"#{match.ticket.number}")
            summary = work.agent_mail(session, self.desk, match, parsed, agent, proven,
                                      inbound_id=row.id, now=now, planned=p.planned,
                                      extracted=p.extracted)
            row.ticket_id = match.ticket.id
            return Outcome(mail.uid, "processed", summary, match.ticket.number)
        if d.forged:
            log.warning("mail claims an agent's From without proof, treated as a customer's "
                        "from=%s", parsed.from_addr)
        verdict = Verdict(d.kind, d.reason, verdict.reply)
        if d.route == decide.Route.FOLLOW_UP:
            assert match is not None
            if not add_follow_up(session, self.desk, match.ticket, parsed, verdict,
                                 inbound_id=row.id, how=match.how, now=now, planned=p.planned,
                                 reopen_days=self.policy.reopen_days, extracted=p.extracted):
                # decide() and the ticket disagree on the reopen window: fail the mail
                # (retried, then quarantined) rather than mark it done with no trace.
                raise RuntimeError(f"ticket #{match.ticket.number} refused the follow-up "
                                   "decide() chose")
            row.ticket_id = match.ticket.id
            if d.forged:
                notify.forged_warning(session, self.desk, match.ticket, parsed, now)
            logs.bind(ticket=f"#{match.ticket.number}")
            log.info("follow-up how=%s from=%s", match.how, parsed.from_addr)
            return Outcome(mail.uid, "processed", "follow-up", match.ticket.number)
        if d.route == decide.Route.REJECT:
            if d.answer == decide.Answer.REJECT:
                reject_unknown(session, self.desk, parsed, now)
                log.info("unknown sender answered, no ticket from=%s", parsed.from_addr)
            else:
                log.warning("answer limit reached, not answering to=%s", parsed.from_addr)
            return Outcome(mail.uid, "processed", d.reason)
        ticket = open_ticket(
            session, self.desk, parsed, verdict, inbound_id=row.id, mailbox=self.mailbox,
            arrived=mail.internaldate or now, now=now, account=account,
            planned=p.planned, refers_to=match.ticket.number if d.refers and match else None,
            extracted=p.extracted, answer=d.answer, not_answered=d.not_answered,
        )
        row.ticket = ticket  # (written with the batch: no id yet)
        if d.forged:
            notify.forged_warning(session, self.desk, ticket, parsed, now)
        logs.bind(ticket=f"#{ticket.number}")
        log.info("ticket created kind=%s from=%s", d.kind, ticket.customer_address)
        return Outcome(mail.uid, "processed", d.kind, ticket.number)

    def _read(self, session: Session, batch: Batch, parsed: InboundMail, verdict: Verdict,
              now: datetime) -> tuple[AgentInfo | None, str, Match | None, Account | None, Known]:
        """What the database says about the mail, for `decide()` (and the objects the
        write then needs: the agent, the ticket it continues, the sender's account)."""
        if not decide.may_open(verdict.kind):
            return None, "", None, None, Known(ours=_ours(session, parsed.message_id))
        ours = _ours(session, parsed.message_id)
        flag = suppression.flag(session, parsed.from_addr) if verdict.answer else None
        block = suppression.blocked(session, parsed.from_addr) if verdict.answer else None
        blocked_by = block.blocked_by if block is not None else None
        person = decide.answerable(verdict, blocked_by)
        agent = self.desk.agents.roster.get(session, parsed.from_addr) if person else None
        # Rows of the batch's earlier mails are still pending: written first (autoflush)
        # only when this mail may point at one of them.
        apart = batch.apart(parsed, self.desk.sender.address)
        with session.no_autoflush if apart else nullcontext():
            proven, match = work.find_and_prove(session, self.desk, parsed, agent, now,
                                                batch.preread if apart else None)
        account = self._account(session, batch, parsed)
        known = account is not None or (match is not None and match.attach)
        limited = person and answers.over_limit(session, self.desk, parsed.from_addr, now,
                                                known)
        return agent, proven, match, account, Known(
            ours=ours, blocked_by=blocked_by, bouncing=flag is not None and blocked_by is None,
            agent=agent is not None, proven=proven, matched=match is not None,
            attach=match is not None and match.attach,
            ticket_status=match.ticket.status if match else "",
            ticket_done_at=done_at(match.ticket) if match else None,
            account=account is not None, answer_limited=limited)

    def _account(self, session: Session, batch: Batch, parsed: InboundMail) -> Account | None:
        address = parsed.from_addr.lower()
        account = batch.accounts[address] if address in batch.accounts \
            else accounts.lookup(session, address)
        if account is None and self.desk.answering.unknown_sender == decide.UnknownSender.DOMAIN:
            account = accounts.by_domain(session, parsed.from_addr)
        return account

    def _new_rows(self, session: Session, batch: Batch, uidvalidity: int,
                  prepared: list[Prepared], now: datetime) -> dict[str, InboundMessage]:
        """The inbound records of the batch's mails seen for the first time, written in
        one statement per table (their ids are what the mails' rows refer to)."""
        new: dict[str, InboundMessage] = {}
        for p in prepared:
            if not p.error and batch.seen.get(p.key) is None and p.key not in new:
                new[p.key] = self._new_row(uidvalidity, p, now)
        if new:
            blobs.add_refs(session, [(r.raw_sha256 or "", r.size) for r in new.values()], now)
            session.add_all(new.values())
            session.flush()
        return new

    def _new_row(self, uidvalidity: int, p: Prepared, now: datetime) -> InboundMessage:
        return InboundMessage(
            mailbox=self.mailbox, uidvalidity=uidvalidity, uid=p.mail.uid,
            dedupe_key=p.key, message_id=p.parsed.message_id if p.parsed else None,
            raw_sha256=p.raw_sha, size=len(p.mail.raw), internaldate=p.mail.internaldate,
            received_at=now, state=InboundState.NEW, kind="", reason="", attempts=0, error="",
        )

    def _row(
        self, session: Session, row: InboundMessage | None, uidvalidity: int, p: Prepared,
        now: datetime,
    ) -> InboundMessage:
        """The inbound record of this mail, created on first sight."""
        if row is None:
            blobs.add_ref(session, p.raw_sha, len(p.mail.raw), now)
            row = self._new_row(uidvalidity, p, now)
            session.add(row)
            session.flush()
        if row.state == InboundState.QUARANTINED:  # an operator put it back: give it fresh attempts
            row.attempts = 0
        row.uidvalidity, row.uid = uidvalidity, p.mail.uid
        return row

    def _record_failure(
        self, session: Session, uidvalidity: int, p: Prepared, error: str, now: datetime
    ) -> Outcome:
        with session.begin_nested():
            existing = _find(session, p.key)
            done = _already_done(existing, uidvalidity, p.mail.uid) if p.over_budget else None
            if done is not None:  # a copy of it was processed (when the machine was idle)
                return done
            row = self._row(session, existing, uidvalidity, p, now)
            row.attempts += 1
            row.error = error
            if p.over_budget:  # over its time or memory budget, or it crashed us
                row.state, row.reason, row.finished_at = InboundState.QUARANTINED, error, now
                return Outcome(p.mail.uid, "quarantine", error)
            if row.attempts < self.max_attempts:
                row.state = InboundState.FAILED
                return Outcome(p.mail.uid, "retry", error)
            row.state = InboundState.QUARANTINED
            row.reason = f"processing failed {row.attempts} times: {error}"
            row.finished_at = now
            return Outcome(p.mail.uid, "quarantine", row.reason)


class _MailFailed(Exception):
    """A mail failed in a batch written without savepoints: write the batch again, each
    mail isolated."""


@contextmanager
def _mail_failure() -> Iterator[None]:
    """A failure in a batch written without savepoints, as `_MailFailed` (outages and
    `Temporary` pass unchanged: they stop the batch, nothing is counted against a mail)."""
    try:
        yield
    except Temporary:
        raise
    except Exception as exc:
        if isinstance(exc, sa_exc.SQLAlchemyError) and db.is_unavailable(exc):
            raise
        raise _MailFailed from exc


def _may_open(p: Prepared) -> bool:
    """Whether the mail may open a ticket (a guess to reserve numbers by: `decide()` says)."""
    return not p.error and p.verdict is not None and decide.may_open(p.verdict.kind)


def _policy(desk: Desk) -> decide.Policy:
    """The desk's rules `decide()` reads."""
    return decide.Policy(decide.UnknownSender(desk.answering.unknown_sender),
                         desk.threading.reopen_days)


def _rules(desk: Desk) -> Rules:
    """What the analysis (in the parse workers) needs of the desk."""
    return Rules(desk.sender.address, desk.sender.domain, desk.reading.spam_rule,
                 desk.reading.limits, keep_bytes=desk.agents.notify_files_max_bytes,
                 fact_patterns=desk.reading.fact_patterns,
                 default_language=desk.default_language)


def _finished_elsewhere(session: Session, p: Prepared) -> Outcome | None:
    """After an IntegrityError (the savepoint rolled back): a fresh look by the dedupe key.
    Only a row another process finished makes it a duplicate; anything else (NOT NULL,
    foreign key, …) is this mail's own failure and None is returned."""
    row = session.scalars(
        select(InboundMessage).where(InboundMessage.dedupe_key == p.key)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if row is None or row.state != InboundState.PROCESSED:
        return None
    return Outcome(p.mail.uid, "processed", "recorded concurrently")


def _failed(error: str, trace: str, uid: int) -> str:
    """Log the traceback under a short error id and return what the row records, with the
    id, so an operator finds the traceback in the journal (`journalctl | grep ID`)."""
    error_id = secrets.token_hex(4)
    log.error("mail failed uid=%s error_id=%s: %s\n%s", uid, error_id, error,
              trace.rstrip())
    return f"{error[:1900]} [error id {error_id}]"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def _ours(session: Session, message_id: str | None) -> bool:
    """Whether `message_id` is one we gave a mail we sent (client copies saved to the inbox)."""
    if not message_id or not message_id.startswith("<maild."):  # the form of ours
        return False
    return session.scalar(
        select(OutboxMail.id).where(OutboxMail.message_id == message_id)) is not None


def _recorded(session: Session, keys: list[str]) -> dict[str, InboundMessage | None]:
    """The inbound rows of `keys`, in one read per `db.IN_LIMIT` (None where there is none)."""
    found: dict[str, InboundMessage | None] = dict.fromkeys(keys)
    for chunk in db.chunks(list(found)):
        for row in session.scalars(select(InboundMessage).where(
                InboundMessage.dedupe_key.in_(chunk))):
            found[row.dedupe_key] = row
    return found


def _find(session: Session, key: str) -> InboundMessage | None:
    return session.scalars(
        select(InboundMessage).where(InboundMessage.dedupe_key == key)
    ).one_or_none()


def _already_done(row: InboundMessage | None, uidvalidity: int, uid: int) -> Outcome | None:
    if row is None:
        return None
    if row.state == InboundState.PROCESSED:
        return Outcome(uid, "processed", "already processed")
    same_mail = row.uidvalidity == uidvalidity and row.uid == uid
    if row.state == InboundState.QUARANTINED and same_mail:
        return Outcome(uid, "quarantine", row.reason)
    return None  # new, failed, or put back into the folder by an operator: try again
