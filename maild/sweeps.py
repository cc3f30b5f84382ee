"""Periodic, database-driven sweeps over deadlines; idempotent and safe with several
processes on one database.

- warning to the owner (or team) when a share of the promise is used, once per threshold;
- breach: flagged when it happens, the team lead told once;
- waiting for the customer: a reminder after N business days, closed after M;
- a daily digest for the team lead.

Each mail is claimed by a row (`SweepMark`, or the ticket's `breached_at`) written in the
same transaction as the mail: a crash leaves both or neither; a second process finds the
claim and does nothing. Mails to people go out within support hours: the sweeps that mail
people run only while support is open, and a breach flagged at night is mailed at the next
opening. A daemon that was down catches up: what is still due is sent once, what is moot
(a warning for an already breached ticket) is not sent at all.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from statistics import median
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from maild import answers, db, health, history, notify, retention, sla, vocab, work
from maild.config import SlaSettings
from maild.desk import Desk
from maild.errors import Temporary
from maild.mail import contexts
from maild.mail.render import render_mail
from maild.models import Company, Event, SweepMark, Ticket
from maild.vocab import EventKind, OutboxKind, TicketStatus

log = logging.getLogger(__name__)

OPEN = vocab.OPEN
DIGEST_LIST = 100  # tickets per list in the daily digest, at most


@dataclass
class Counts:
    warnings: int = 0
    breaches: int = 0
    reminders: int = 0
    closed: int = 0
    digests: int = 0
    pruned: int = 0  # outgoing mails whose bytes were dropped (retention)
    errors: list[str] = field(default_factory=list)

    def any(self) -> bool:
        return bool(self.warnings or self.breaches or self.reminders or self.closed
                    or self.digests)


PRUNE_EVERY = timedelta(hours=1)  # the retention of outgoing mail, at most this often


class Sweeper:
    def __init__(self, factory: db.SessionFactory, desk: Desk, settings: SlaSettings,
                 clock: Callable[[], datetime], runtime: health.Runtime | None = None, *,
                 keep_sent_days: float | None = None) -> None:
        self.factory, self.desk, self.settings, self.clock = factory, desk, settings, clock
        self.runtime = runtime  # counts warnings and breaches for /metrics
        self.keep_sent_days = keep_sent_days  # None: outgoing mail's bytes kept for good
        self._pruned_at: datetime | None = None

    def run(self) -> Counts:
        """One sweep at the clock's `now`; raises only `Temporary` (database down)."""
        now = self.clock()
        counts = Counts()
        cal = self.desk.calendar
        for ticket_id in self._ids(_unanswered().where(Ticket.first_response_due <= now)):
            self._each(counts, ticket_id, lambda s, t: self._breach(s, t, now, counts))
        if cal.is_open(now):
            if self.settings.warn_at:
                for ticket_id in self._warnable(now):
                    self._each(counts, ticket_id, lambda s, t: self._warn(s, t, now, counts))
            if self.settings.remind_after_days or self.settings.auto_close_after_days:
                for ticket_id in self._waiting_due(now):
                    self._each(counts, ticket_id, lambda s, t: self._waiting(s, t, now, counts))
        if self.settings.digest:
            with db.transaction(self.factory) as session:
                self._digest(session, now, counts)
        if self.runtime is not None:
            self.runtime.count("sla_warnings", n=counts.warnings)
            self.runtime.count("sla_breaches", n=counts.breaches)
        if self.keep_sent_days and (self._pruned_at is None
                                    or now - self._pruned_at >= PRUNE_EVERY):
            counts.pruned = retention.prune_sent(self.factory, self.desk.store,
                                                 self.keep_sent_days, now)
            self._pruned_at = now
        if counts.any():
            log.info("sweep: %d warnings, %d breaches, %d reminders, %d closed, %d digests",
                     counts.warnings, counts.breaches, counts.reminders, counts.closed,
                     counts.digests)
        return counts

    def _warnable(self, now: datetime) -> list[int]:
        """Unanswered tickets past their lowest warning threshold and not yet warned at
        it: found in one read, so a quiet sweep costs one query, not one per ticket."""
        cal, lowest = self.desk.calendar, self.settings.warn_at[0]
        with db.read_only(self.factory) as session:
            rows = session.execute(_unanswered().add_columns(
                Ticket.opened_at, Ticket.first_response_due).where(
                Ticket.first_response_due > now)).all()
            due = []
            for ticket_id, opened, deadline in rows:
                promise = sla.business_time(cal, opened, deadline).total_seconds() / 3600
                if now >= sla.add_business_hours(cal, opened, promise * lowest):
                    due.append(ticket_id)
            highest = round(self.settings.warn_at[-1] * 100)
            done = set(session.scalars(select(SweepMark.key).where(SweepMark.key.in_(
                [f"ticket:{i}:warn:{highest}" for i in due]))))
        return [i for i in due if f"ticket:{i}:warn:{highest}" not in done]

    def _waiting_due(self, now: datetime) -> list[int]:
        """Tickets waiting on the customer whose reminder or auto-close is due and not yet
        done: found in one read (the due moment depends only on the day the waiting began,
        computed once per day), so a quiet sweep over thousands of waiting tickets costs
        two queries, not a transaction per ticket."""
        cal, s = self.desk.calendar, self.settings
        cache: dict[tuple[date, int], datetime] = {}

        def passed(since: datetime, days: int) -> bool:
            key = (since.astimezone(cal.zone).date(), days)
            if key not in cache:
                cache[key] = sla.add_business_days(cal, since, days)
            return now >= cache[key]

        with db.read_only(self.factory) as session:
            rows = session.execute(select(Ticket.id, Ticket.waiting_since).where(
                Ticket.status == TicketStatus.WAITING, Ticket.waiting_since.is_not(None),
                Ticket.merged_into.is_(None)).order_by(Ticket.id)).all()
            due: list[tuple[int, str]] = []
            for ticket_id, since in rows:
                if since is None:
                    continue
                stamp = since.strftime("%Y%m%dT%H%M%S")
                if s.auto_close_after_days and passed(since, s.auto_close_after_days):
                    due.append((ticket_id, f"ticket:{ticket_id}:autoclose:{stamp}"))
                elif s.remind_after_days and passed(since, s.remind_after_days):
                    due.append((ticket_id, f"ticket:{ticket_id}:remind:{stamp}"))
            done: set[str] = set()
            for chunk in db.chunks([key for _, key in due]):
                done.update(session.scalars(select(SweepMark.key).where(
                    SweepMark.key.in_(chunk))))
        return [ticket_id for ticket_id, key in due if key not in done]

    def _ids(self, query: Any) -> list[int]:
        with db.read_only(self.factory) as session:
            return list(session.scalars(query.order_by(Ticket.id)))

    def _each(self, counts: Counts, ticket_id: int,
              action: Callable[[Session, Ticket], None]) -> None:
        """One transaction per ticket, so one ticket's trouble stays its own."""
        try:
            with db.transaction(self.factory) as session:
                ticket = session.get(Ticket, ticket_id)
                if ticket is not None:
                    action(session, ticket)
        except Temporary:
            raise
        except Exception as exc:  # claims lost to another process never get here (`_claim`)
            if isinstance(exc, sa_exc.SQLAlchemyError) and db.is_unavailable(exc):
                raise
            error_id = secrets.token_hex(4)
            log.exception("sweep failed for ticket id=%s error_id=%s", ticket_id, error_id)
            counts.errors.append(f"ticket id={ticket_id}: {_describe(exc)} "
                                 f"[error id {error_id}]")

    # -- first response -------------------------------------------------------------------

    def _breach(self, session: Session, ticket: Ticket, now: datetime, counts: Counts) -> None:
        due = ticket.first_response_due
        if due is None or ticket.first_response_at is not None or ticket.breached_at:
            return
        claimed = session.execute(update(Ticket).where(
            Ticket.id == ticket.id, Ticket.breached_at.is_(None)).values(breached_at=due))
        if getattr(claimed, "rowcount", 1) != 1:
            return
        session.refresh(ticket)
        history.record(session, ticket, now, "maild", history.SlaBreach(due, ticket.priority))
        to = self.desk.agents.roster.lead_to(session, self.settings.lead_address)
        if to:
            self._agents_mail(session, ticket, "sla_breach", to, now, due,
                              not_before=self.desk.calendar.next_open(now))
        counts.breaches += 1
        log.warning("first response overdue number=%s due=%s", ticket.number, due.isoformat())

    def _warn(self, session: Session, ticket: Ticket, now: datetime, counts: Counts) -> None:
        due, cal = ticket.first_response_due, self.desk.calendar
        if due is None or ticket.first_response_at is not None or now >= due:
            return
        promise = sla.business_time(cal, ticket.opened_at, due)
        for share in reversed(self.settings.warn_at):  # the highest threshold reached only
            if now < sla.add_business_hours(cal, ticket.opened_at,
                                            promise.total_seconds() / 3600 * share):
                continue
            key = f"ticket:{ticket.id}:warn:{round(share * 100)}"
            if session.get(SweepMark, key) is not None:
                return
            if not _claim(session, key, now):
                return
            for lower in self.settings.warn_at:  # lower thresholds now moot
                if lower < share:
                    _claim(session, f"ticket:{ticket.id}:warn:{round(lower * 100)}", now)
            left = sla.business_time(cal, now, due)
            history.record(session, ticket, now, "maild", history.SlaWarning(share, due))
            to = self.desk.agents.roster.notify_to(session, ticket.owner)
            if to:
                self._agents_mail(session, ticket, "sla_warning", to, now, due,
                                  share=round(share * 100),
                                  left_minutes=int(left.total_seconds() // 60))
            counts.warnings += 1
            return

    # -- waiting for the customer -------------------------------------------------------------

    def _waiting(self, session: Session, ticket: Ticket, now: datetime, counts: Counts) -> None:
        since, cal, s = ticket.waiting_since, self.desk.calendar, self.settings
        if ticket.status != TicketStatus.WAITING or since is None:
            return
        stamp = since.strftime("%Y%m%dT%H%M%S")
        if s.auto_close_after_days and now >= sla.add_business_days(
                cal, since, s.auto_close_after_days):
            if not _claim(session, f"ticket:{ticket.id}:autoclose:{stamp}", now):
                return
            work.set_status(session, ticket, TicketStatus.CLOSED, "maild", now)
            ticket.updated_at = now
            self._customer_mail(session, ticket, "autoclose", now)
            counts.closed += 1
            return
        if s.remind_after_days and now >= sla.add_business_days(cal, since,
                                                                 s.remind_after_days):
            if not _claim(session, f"ticket:{ticket.id}:remind:{stamp}", now):
                return
            history.record(session, ticket, now, "maild", history.Reminder(since))
            self._customer_mail(session, ticket, "reminder", now)
            counts.reminders += 1

    # -- the digest -------------------------------------------------------------------------------

    def _digest(self, session: Session, now: datetime, counts: Counts) -> None:
        cal = self.desk.calendar
        local = now.astimezone(cal.zone)
        today = local.date()
        window = cal.window(today)
        if window is None or local.time() < self.settings.digest_time or now >= window[1]:
            return
        key = f"digest:{today.isoformat()}"
        if session.get(SweepMark, key) is not None:
            return
        to = self.desk.agents.roster.lead_to(session, self.settings.lead_address)
        if not to:
            return
        # Each list is capped (a backlog of thousands must not make a mail of megabytes);
        # the counts are complete.
        opened = select(Ticket).where(Ticket.status.in_(OPEN), Ticket.automatic.is_(False),
                                      Ticket.merged_into.is_(None))
        unanswered = opened.where(Ticket.first_response_at.is_(None))
        start = datetime.combine(today, time(0), tzinfo=cal.zone)
        lists = {
            "open": opened,
            "due_today": unanswered.where(
                Ticket.breached_at.is_(None), Ticket.first_response_due >= start,
                Ticket.first_response_due < start + timedelta(days=1)),
            "breached": unanswered.where(Ticket.breached_at.is_not(None)),
            "escalated": opened.where(Ticket.id.in_(select(Event.ticket_id).where(
                Event.kind == EventKind.ESCALATED))),
        }
        shown = {name: list(session.scalars(query.order_by(
            Ticket.first_response_due, Ticket.number).limit(DIGEST_LIST)))
            for name, query in lists.items()}
        count = {name: session.scalar(select(func.count()).select_from(query.subquery())) or 0
                 for name, query in lists.items()}
        if not _claim(session, key, now):
            return  # another process sends today's
        context = contexts.Digest(
            day=today, open=shown["open"], open_count=count["open"],
            due_today=shown["due_today"], due_today_count=count["due_today"],
            breached=shown["breached"], breached_count=count["breached"],
            escalated=shown["escalated"], escalated_count=count["escalated"],
            timezone=self.desk.timezone, language=self.desk.agents.language)
        rendered = render_mail(
            self.desk.templates, "digest", context,
            sender=self.desk.sender, to=", ".join(to), now=now,
            auto_submitted="auto-generated")
        answers.enqueue(session, self.desk, rendered, to, None, OutboxKind.DIGEST, now,
                        automatic=True, internal=True)
        counts.digests += 1

    # -- mails ------------------------------------------------------------------------------------

    def _agents_mail(self, session: Session, ticket: Ticket, template: str, to: list[str],
                     now: datetime, due: datetime, *, share: int = 0, left_minutes: int = 0,
                     not_before: datetime | None = None) -> None:
        context = contexts.SlaMail(
            number=ticket.number, subject=ticket.subject, customer=ticket.customer_address,
            priority=ticket.priority, status=ticket.status, owner=ticket.owner, due=due,
            timezone=self.desk.timezone, share=share, left_minutes=left_minutes,
            language=self.desk.agents.language)
        rendered = render_mail(
            self.desk.templates, template, context,
            sender=self.desk.sender, to=", ".join(to), now=now,
            auto_submitted="auto-generated",
            reply_to=notify.agent_reply_to(self.desk, ticket.number, to, now))
        answers.enqueue(session, self.desk, rendered, to, ticket, OutboxKind(template), now,
                        automatic=True, internal=True, not_before=not_before)

    def _customer_mail(self, session: Session, ticket: Ticket, template: str,
                       now: datetime) -> None:
        # The reminder says how many business days are left until the ticket is closed.
        s = self.settings
        left = s.auto_close_after_days - s.remind_after_days if s.auto_close_after_days else 0
        work.customer_notice(session, self.desk, ticket, template, now, days=max(left, 0))


def _unanswered() -> Any:
    return select(Ticket.id).where(
        Ticket.first_response_at.is_(None), Ticket.first_response_due.is_not(None),
        Ticket.breached_at.is_(None), Ticket.status.in_(OPEN), Ticket.automatic.is_(False),
        Ticket.merged_into.is_(None))


def _claim(session: Session, key: str, now: datetime) -> bool:
    """Write the mark `key`; False when it exists (this or another process did it)."""
    if session.get(SweepMark, key) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(SweepMark(key=key, at=now))
            session.flush()
    except sa_exc.IntegrityError:
        # A fresh look: only the mark written by another process means the claim is lost;
        # any other integrity failure is a real one and goes up to be logged.
        if session.scalar(select(SweepMark.key).where(SweepMark.key == key)) is None:
            raise
        return False
    return True


def _describe(exc: BaseException) -> str:
    """One line for an error, without a driver's SQL and parameters."""
    shown = getattr(exc, "orig", None) or exc
    return f"{type(shown).__name__}: {shown}".splitlines()[0][:500]


# -- the report ---------------------------------------------------------------------------------

def report(session: Session, cal: sla.BusinessCalendar, since: datetime | None,
           now: datetime) -> dict[str, Any]:
    """Response times (median, p90, in business hours), breaches by week and company, and
    the share answered within the promise, for tickets opened since `since`."""
    query = select(Ticket, Company.name).outerjoin(Company, Company.id == Ticket.company_id) \
        .where(Ticket.automatic.is_(False), Ticket.first_response_due.is_not(None),
               Ticket.merged_into.is_(None))
    if since is not None:
        query = query.where(Ticket.opened_at >= since)
    hours: list[float] = []
    in_time = due_passed = 0
    by_week: dict[str, int] = {}
    by_company: dict[str, int] = {}
    total = 0
    for ticket, company in session.execute(query):
        total += 1
        due = ticket.first_response_due
        assert due is not None
        answered = ticket.first_response_at
        if answered is not None:
            hours.append(sla.business_time(cal, ticket.opened_at, answered).total_seconds()
                         / 3600)
        if answered is not None or due <= now:
            due_passed += 1
            if answered is not None and answered <= due:
                in_time += 1
        late = (answered is not None and answered > due) or (answered is None and due <= now)
        if late:
            year, week, _ = due.astimezone(cal.zone).isocalendar()
            label = f"{year}-W{week:02d}"
            by_week[label] = by_week.get(label, 0) + 1
            name = company or "(no company)"
            by_company[name] = by_company.get(name, 0) + 1
    hours.sort()
    return {
        "since": since.isoformat() if since else None,
        "tickets": total,
        "answered": len(hours),
        "response_hours_median": round(median(hours), 2) if hours else None,
        "response_hours_p90": round(_percentile(hours, 0.9), 2) if hours else None,
        "within_promise": in_time,
        "promise_due_or_answered": due_passed,
        "share_within_promise": round(in_time / due_passed, 4) if due_passed else None,
        "breaches": sum(by_week.values()),
        "breaches_by_week": dict(sorted(by_week.items())),
        "breaches_by_company": dict(sorted(by_company.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def _percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted `values`."""
    return values[min(len(values), max(1, math.ceil(len(values) * share))) - 1]
