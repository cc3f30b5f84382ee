"""A desk with history, for `bench.py`: 100,000 tickets prefilled in a few seconds, and
one SLA sweep over its open tickets timed.

The rows are those a real ticket leaves (see `maild.tickets.open_ticket`, `maild.work`):
per ticket its inbound mail (`inbound_messages`, with a `blobs` row for the raw mail), the
customer's message and the acknowledgement (`ticket_messages`), the `created` event, and
for answered tickets the agent's answer (inbound + message), `first_response` and
`status` events. Written with Core multi-row inserts in chunks; ticket numbers continue
from the `counters` row "ticket", which is left at the last one.

The open tickets are consistent with a desk whose daemon swept a minute before `as_of`:
an overdue unanswered ticket is flagged (`breached_at`), one past its warning threshold
has its warning mark, a waiting ticket waits less than the reminder's three business days.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Table, func, insert, select, text, update

from maild import db, sla
from maild.config import Settings
from maild.daemon import build_desk
from maild.mail.facts import Facts
from maild.models import (
    Blob,
    Counter,
    Event,
    InboundMessage,
    SweepMark,
    Ticket,
    TicketMessage,
)
from maild.sweeps import Counts, Sweeper

CHUNK = 5000
PROMISE_HOURS = 8.0
# Of the open tickets: unanswered, answered and worked on, waiting for the customer.
OPEN_MIX = (("new", 0.4), ("in_progress", 0.4), ("waiting", 0.2))
# Of the rest: closed, resolved (not yet closed), spam (no deadline, never answered).
DONE_MIX = (("closed", 0.80), ("resolved", 0.18), ("spam", 0.02))

FIRST = ["anna", "ben", "clara", "david", "eva", "felix", "greta", "hans", "ida", "jonas",
         "karin", "lukas", "mia", "noah", "olga", "paul", "rita", "sven", "tina", "uwe"]
LAST = ["mueller", "schmidt", "schneider", "fischer", "weber", "meyer", "wagner", "becker",
        "schulz", "hoffmann", "koch", "richter", "klein", "wolf", "neumann", "braun"]
SUBJECTS = ["Fehler in der App", "Auftragsliste lädt nicht", "Login nicht möglich",
            "Error in the app", "Invoice missing", "Drucker druckt nicht", "Export fails",
            "Synchronisation hängt", "Password reset", "Frage zur Rechnung"]
BODY = ("Hallo Support-Team,\nseit heute Morgen funktioniert die Auftragsliste nicht mehr.\n"
        "Es erscheint die Fehlermeldung 'Verbindung fehlgeschlagen'.\n"
        "Gerät: iPhone 14, iOS 18.1, App-Version 4.2.1, WLAN.\nViele Grüße\n{name}\n")
ACK = ("Guten Tag {name},\nvielen Dank für Ihre Nachricht. Wir haben Ihr Anliegen unter der "
       "Ticketnummer {number} aufgenommen und melden uns bis {due:%d.%m.%Y %H:%M}.\n" * 3)
ANSWER = "Hallo {name},\nbitte aktualisieren Sie die App auf 4.2.2; dann geht es wieder.\n"
AGENTS = ["anna@example.com", "lead@example.com", "max@example.com"]


@dataclass
class Prefilled:
    tickets: int = 0
    open: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    last_number: int = 0


def sweep_moment(cal: sla.BusinessCalendar, now: datetime) -> datetime:
    """When the timed sweep runs: `now` if support is open, else a minute before the last
    closing (the sweeps that mail people only run within support hours; this times them)."""
    if cal.is_open(now):
        return now
    day = now.astimezone(cal.zone).date()
    for _ in range(60):
        window = cal.window(day)
        if window is not None and window[1] <= now:
            return window[1] - timedelta(minutes=1)
        day -= timedelta(days=1)
    raise ValueError("no open hours in the last 60 days")


def prefill(engine: Engine, settings: Settings, total: int, open_count: int, as_of: datetime,
            seed: int = 1, progress: Callable[[str], None] = print) -> Prefilled:
    """Write `total` tickets (`open_count` of them open) as they stand at `as_of`."""
    started = time.perf_counter()
    rng = random.Random(seed)
    cal = sla.calendar_from(settings.calendar)
    mailbox = settings.imap.mailbox_id
    result = Prefilled()
    with engine.begin() as conn:
        base = int(conn.scalar(select(Counter.value).where(Counter.name == "ticket")) or 0)
        ids = {t: int(conn.scalar(select(func.coalesce(func.max(t.c.id), 0))) or 0)
               for t in _tables() if "id" in t.c}
    next_id = {t: ids[t] + 1 for t in ids}
    statuses = _statuses(rng, total, open_count)
    addresses = [f"{rng.choice(FIRST)}.{rng.choice(LAST)}{n}@firma{n % 2000}.example"
                 for n in range(max(1, total // 5))]  # ~5 tickets per customer
    rows: dict[Table, list[dict[str, Any]]] = {t: [] for t in _tables()}
    counts: dict[str, int] = {}

    def take(table: Table) -> int:
        value = next_id[table]
        next_id[table] += 1
        return value

    def flush() -> None:
        with engine.begin() as conn:
            for table in _tables():  # parents first (foreign keys)
                if rows[table]:
                    conn.execute(insert(table), rows[table])
                    counts[table.name] = counts.get(table.name, 0) + len(rows[table])
                    rows[table].clear()

    # Numbers in arrival order: the open tickets are the recent ones.
    arrivals = sorted((_opened(rng, as_of, status), status) for status in statuses)
    for index, (opened, status) in enumerate(arrivals):
        number = base + index + 1
        _ticket(rows, take, rng, cal, as_of, mailbox, number, status, opened,
                rng.choice(addresses))
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if len(rows[Ticket.__table__]) >= CHUNK:
            flush()
        if (index + 1) % 20000 == 0:
            progress(f"  prefilled {index + 1:,} tickets ...")
    flush()
    with engine.begin() as conn:
        conn.execute(update(Counter).where(Counter.name == "ticket")
                     .values(value=base + total))
        if engine.dialect.name == "postgresql":  # ids were given: move the sequences on
            for table in _tables():
                if "id" in table.c:
                    conn.execute(text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"(SELECT max(id) FROM {table.name}))"))
            conn.execute(text("ANALYZE"))
        else:
            conn.execute(text("ANALYZE"))
    result.tickets, result.rows, result.last_number = total, counts, base + total
    result.open = sum(n for s, n in result.statuses.items() if s in dict(OPEN_MIX))
    result.seconds = time.perf_counter() - started
    return result


def _tables() -> list[Table]:
    return [Blob.__table__, Ticket.__table__, InboundMessage.__table__,  # type: ignore[list-item]
            TicketMessage.__table__, Event.__table__, SweepMark.__table__]


def _statuses(rng: random.Random, total: int, open_count: int) -> list[str]:
    open_count = min(open_count, total)
    found = [s for s, share in OPEN_MIX for _ in range(round(open_count * share))]
    found = found[:open_count]
    rest = total - len(found)
    done = [s for s, share in DONE_MIX for _ in range(round(rest * share))]
    return found + (done + ["closed"] * rest)[:rest]


def _opened(rng: random.Random, as_of: datetime, status: str) -> datetime:
    """New tickets arrived in the last 10 days, those worked on in the last 30, the rest
    over two years before."""
    if status == "new":
        return as_of - timedelta(seconds=rng.uniform(0, 10 * 86400))
    if status in ("in_progress", "waiting"):
        return as_of - timedelta(seconds=rng.uniform(3600, 30 * 86400))
    return as_of - timedelta(seconds=rng.uniform(30 * 86400, 730 * 86400))


def _ticket(rows: dict[Table, list[dict[str, Any]]], take: Callable[[Table], int],
            rng: random.Random, cal: sla.BusinessCalendar, as_of: datetime, mailbox: str,
            number: int, status: str, opened: datetime, customer: str) -> None:
    T, TM, EV, SM = (Ticket.__table__, TicketMessage.__table__, Event.__table__,
                     SweepMark.__table__)
    name = customer.split("@")[0].split(".")[0].title()
    spam = status == "spam"
    due = None if spam else sla.add_business_hours(cal, opened, PROMISE_HOURS)
    answered = None
    if status not in ("new", "spam"):
        assert due is not None
        late = rng.random() < 0.1
        answered = min(as_of - timedelta(minutes=30), opened + timedelta(
            seconds=rng.uniform(600, 4 * 3600)) if not late else due + timedelta(hours=2))
        answered = max(answered, opened + timedelta(minutes=1))
    breached = due if due is not None and (
        (answered is None and due <= as_of) or (answered is not None and answered > due)
    ) else None
    ticket_id = take(T)
    subject = f"{rng.choice(SUBJECTS)} {number}"
    facts = Facts(device="iPhone 14", os="iOS 18.1", software_version="4.2.1",
                  error_message="Verbindung fehlgeschlagen", contact_name=name)
    resolved_at = closed_at = waiting_since = None
    last = answered or opened
    if status in ("resolved", "closed"):
        resolved_at = last + timedelta(hours=rng.uniform(1, 72))
        if status == "closed":
            closed_at = resolved_at + timedelta(days=rng.uniform(1, 14))
        last = closed_at or resolved_at
    elif status == "waiting":
        assert answered is not None
        waiting_since = max(answered, as_of - timedelta(seconds=rng.uniform(0, 2 * 86400)))
        last = waiting_since
    rows[T].append({
        "id": ticket_id, "number": number, "status": status,
        "priority": "urgent" if rng.random() < 0.05 else "normal",
        "customer_address": customer, "customer_name": name.title(), "subject": subject,
        "language": "de", "automatic": spam, "verified": False, "contact_id": None,
        "company_id": None, "mailbox": mailbox, "opened_at": opened, "created_at": opened,
        "updated_at": last, "facts": facts, "missing": ["company", "occurred"],
        "participants": [], "first_response_due": due, "first_response_at": answered,
        "resolved_at": resolved_at, "closed_at": closed_at,
        "owner": rng.choice(AGENTS) if answered else "", "cause": "", "merged_into": None,
        "breached_at": breached, "waiting_since": waiting_since, "escalated_at": None,
        "escalation_phone": "", "link_version": 0,
    })
    customer_in = _inbound(rows, take, rng, mailbox, opened, ticket_id,
                           "spam" if spam else "normal")
    body = BODY.format(name=name)
    rows[TM].append({
        "id": take(TM), "ticket_id": ticket_id, "inbound_id": customer_in,
        "direction": "in", "author": customer, "message_id": f"<m{number}@{customer[-20:]}>",
        "subject": subject, "body_text": body, "new_text": body, "facts": facts,
        "automatic": spam, "created_at": opened, "kind": "customer", "internal": False})
    rows[EV].append({"id": take(EV), "ticket_id": ticket_id, "at": opened, "actor": customer,
                     "kind": "created", "detail": {"inbound_id": customer_in, "kind":
                                                   "spam" if spam else "normal",
                                                   "reason": "", "priority": "normal",
                                                   "priority_reason": ""}})
    if spam:
        return
    assert due is not None
    ack = ACK.format(name=name, number=number, due=due)
    rows[TM].append({
        "id": take(TM), "ticket_id": ticket_id, "inbound_id": None, "direction": "out",
        "author": "service@example.com", "message_id": f"<maild.{number}.ack@example.com>",
        "subject": f"[#{number}] {subject}", "body_text": ack, "new_text": ack, "facts": Facts(),
        "automatic": True, "created_at": opened, "kind": "ack", "internal": False})
    if breached is not None:
        rows[EV].append({"id": take(EV), "ticket_id": ticket_id, "at": breached,
                         "actor": "maild", "kind": "sla_breach",
                         "detail": {"due": breached.isoformat(), "priority": "normal"}})
    if answered is None:
        warn_at = sla.add_business_hours(cal, opened, PROMISE_HOURS * 0.75)
        if breached is None and warn_at <= as_of:  # warned by the last sweep
            rows[SM].append({"key": f"ticket:{ticket_id}:warn:75", "at": warn_at})
            rows[EV].append({"id": take(EV), "ticket_id": ticket_id, "at": warn_at,
                             "actor": "maild", "kind": "sla_warning",
                             "detail": {"share": 0.75, "due": due.isoformat()}})
        return
    agent = rng.choice(AGENTS)
    agent_in = _inbound(rows, take, rng, mailbox, answered, ticket_id, "agent")
    answer = ANSWER.format(name=name)
    rows[TM].append({
        "id": take(TM), "ticket_id": ticket_id, "inbound_id": agent_in, "direction": "in",
        "author": agent, "message_id": f"<a{number}@example.com>", "subject": f"Re: {subject}",
        "body_text": answer, "new_text": answer, "facts": Facts(), "automatic": False,
        "created_at": answered, "kind": "agent", "internal": False})
    rows[EV].append({"id": take(EV), "ticket_id": ticket_id, "at": answered, "actor": agent,
                     "kind": "first_response",
                     "detail": {"what": "answer", "due": due.isoformat(),
                                "in_time": answered <= due}})
    steps = [("new", "in_progress", answered)]
    if status == "waiting":
        assert waiting_since is not None
        steps.append(("in_progress", "waiting", waiting_since))
    if resolved_at is not None:
        steps.append(("in_progress", "resolved", resolved_at))
    if closed_at is not None:
        steps.append(("resolved", "closed", closed_at))
    for old, new, at in steps:
        rows[EV].append({"id": take(EV), "ticket_id": ticket_id, "at": at, "actor": agent,
                         "kind": "status", "detail": {"from": old, "to": new}})


def _inbound(rows: dict[Table, list[dict[str, Any]]], take: Callable[[Table], int],
             rng: random.Random, mailbox: str, at: datetime, ticket_id: int,
             kind: str) -> int:
    inbound_id = take(InboundMessage.__table__)  # type: ignore[arg-type]
    sha = hashlib.sha256(rng.randbytes(16)).hexdigest()
    size = rng.randint(2_000, 400_000)
    rows[Blob.__table__].append(  # type: ignore[index]
        {"sha256": sha, "size": size, "refs": 1, "created_at": at})
    rows[InboundMessage.__table__].append({  # type: ignore[index]
        "id": inbound_id, "mailbox": mailbox, "uidvalidity": 1, "uid": inbound_id,
        "dedupe_key": hashlib.sha256(sha.encode()).hexdigest(),
        "message_id": f"<in{inbound_id}@mail.example>", "raw_sha256": sha, "size": size,
        "internaldate": at, "received_at": at, "state": "processed", "kind": kind,
        "reason": "", "attempts": 0, "error": "", "ticket_id": ticket_id, "finished_at": at})
    return inbound_id


@dataclass
class SweepTimes:
    first: float
    second: float
    first_counts: Counts
    second_counts: Counts
    moment: datetime


def time_sweep(settings: Settings, moment: datetime,
               profile: Callable[[Callable[[], Counts]], Counts] | None = None) -> SweepTimes:
    """Two `Sweeper.run()` at `moment`, built as `maild run` builds it: the first after
    the prefill (the minute's due work, today's digest), the second the steady state."""
    engine = db.make_engine(settings.database_url)
    try:
        factory = db.session_factory(engine)
        desk = build_desk(settings, factory, moment)
        sweeper = Sweeper(factory, desk, settings.sla, lambda: moment)
        times, counts = [], []
        for run in range(2):
            t0 = time.perf_counter()
            counts.append(profile(sweeper.run) if profile and run == 0 else sweeper.run())
            times.append(time.perf_counter() - t0)
    finally:
        engine.dispose()
    return SweepTimes(times[0], times[1], counts[0], counts[1], moment)
