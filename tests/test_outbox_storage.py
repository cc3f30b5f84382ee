"""Outgoing mail's storage: claimed with one statement, bytes by reference in the blob
store, pruned after the retention period, bounces found by the VERP token; both databases."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from harness import PG_ADMIN_URL, Clock, dsn_report, offline_settings
from sqlalchemy import select, text, update
from sqlalchemy.engine import make_url

from maild import answers, db, health, suppression
from maild.blobs import collect
from maild.daemon import build_desk
from maild.errors import ConfigError, SmtpDeferred, StorageUnavailable
from maild.intake import Fetched, Intake
from maild.mail.render import Rendered
from maild.models import Blob, OutboxMail, TicketMessage, UTCDateTime
from maild.outbox import Claimed, Outbox, lane_parts
from maild.smtp import SmtpConnection
from maild.sweeps import Sweeper

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
CUSTOMER = ("From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
            "Subject: Export bricht ab\r\nMessage-ID: <{n}@kunde.example>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nDer Export bricht ab.\r\n")


class Desk:
    """A desk on the test database whose outbox sends to the SMTP capture (if given)."""

    def __init__(self, tmp_path: Path, factory, database_url: str, smtp_port: int = 1,
                 **sections) -> None:
        self.clock = Clock(NOW)
        self.blob_dir = tmp_path / "blobs"
        self.settings = offline_settings(
            database_url, self.blob_dir,
            smtp={"host": "127.0.0.1", "port": smtp_port, "tls": "none", "timeout": 10},
            **sections)
        self.factory = factory
        self.desk = build_desk(self.settings, factory, NOW)
        self.store = self.desk.store
        self.intake = Intake(factory, self.desk, "INBOX", 3, self.clock)
        self.uid = 0

    def outbox(self, factory=None) -> Outbox:
        return Outbox(factory or self.factory, self.settings.outbox, self.settings.smtp,
                      self.clock, self.store)

    def enqueue(self, n: int, to: str = "anna@kunde.example") -> str:
        """Queue a mail the way every answer is queued; returns its Message-ID."""
        message_id = f"<maild.t{n}.{secrets.token_hex(10)}@example.com>"
        raw = (f"From: service@example.com\r\nTo: {to}\r\nSubject: Antwort {n}\r\n"
               f"Message-ID: {message_id}\r\n\r\nHallo Nr. {n}\r\n").encode()
        with db.transaction(self.factory) as s:
            answers.enqueue(s, self.desk, Rendered(message_id, f"Antwort {n}", "Hallo", raw),
                            [to], None, "reject", self.clock(), automatic=True)
        return message_id

    def feed(self, raw: str):
        self.uid += 1
        return self.intake.process(1, Fetched(self.uid, raw.encode(), self.clock()))

    def row(self, message_id: str) -> OutboxMail:
        with db.transaction(self.factory) as s:
            return s.scalars(select(OutboxMail).where(
                OutboxMail.message_id == message_id)).one()

    def files(self) -> set[str]:
        return {p.name for p in self.blob_dir.rglob("*") if p.is_file()}


def test_each_due_mail_is_claimed_by_exactly_one_of_two_concurrent_claimers(
        tmp_path, factory, database_url):
    # Two processes claim from one outbox at the same moment, in small batches: every
    # due mail is leased by one of them, none by both, none forgotten.
    desk = Desk(tmp_path, factory, database_url, outbox={"batch_size": 3})
    queued = {desk.enqueue(n) for n in range(40)}
    engines = [db.make_engine(database_url) for _ in range(2)]
    claimed: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def claimer(index: int) -> None:
        outbox = desk.outbox(db.session_factory(engines[index]))
        start.wait()
        while batch := outbox.claim():
            claimed[index].extend(m.message_id for m in batch)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for engine in engines:
            engine.dispose()
    first, second = (set(c) for c in claimed)
    assert len(claimed[0]) == len(first) and len(claimed[1]) == len(second)
    assert first.isdisjoint(second) and first | second == queued
    # Leased: nothing is due again until the lease ends.
    assert desk.outbox().claim() == []
    desk.clock.now += timedelta(seconds=desk.settings.outbox.lease_seconds + 1)
    assert {m.message_id for m in desk.outbox().claim()} <= queued


def test_a_queued_mail_is_kept_in_the_blob_store_and_sent_with_its_exact_bytes(
        tmp_path, factory, database_url, smtp):
    # The row refers to the bytes (one copy, in the blob store); what reaches the SMTP
    # server is exactly those bytes.
    desk = Desk(tmp_path, factory, database_url, smtp_port=smtp.port)
    message_id = desk.enqueue(1)
    row = desk.row(message_id)
    assert row.raw is None and row.raw_sha256 in desk.files()
    kept = desk.store.get(row.raw_sha256)
    assert f"Message-ID: {message_id}".encode() in kept
    with db.transaction(factory) as s:
        assert s.get(Blob, row.raw_sha256).refs == 1
    assert asyncio.run(desk.outbox().deliver_due()) == 1
    [mail] = smtp.wait_for(1)
    assert mail.raw.replace(b"\r\n", b"\n") == kept.replace(b"\r\n", b"\n")
    assert mail.recipients == ["anna@kunde.example"]
    assert desk.row(message_id).state == "sent"


CRASH = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from harness import offline_settings
from maild import answers, db
from maild.daemon import build_desk
from maild.mail.render import Rendered
from datetime import datetime, UTC
now = datetime.now(UTC)
engine = db.make_engine({url!r})
factory = db.session_factory(engine)
desk = build_desk(offline_settings({url!r}, {blobs!r}), factory, now)
raw = b"From: service@example.com\\r\\nTo: anna@kunde.example\\r\\n\\r\\ncrash\\r\\n"
with db.transaction(factory) as s:
    answers.enqueue(s, desk, Rendered("<maild.crash.c0ffee@example.com>", "x", "crash", raw),
                    ["anna@kunde.example"], None, "reject", now, automatic=True)
    s.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # after the blob is written, before the commit
"""


def test_a_crash_between_blob_write_and_commit_leaves_no_row_and_gc_collects_the_orphan(
        tmp_path, factory, database_url):
    # maild dies after writing the mail's bytes, before its row is committed: no row, no
    # mail sent; the file nothing refers to is deleted by `blobs gc` once its grace is over,
    # while a queued mail's file is never collected, however old.
    desk = Desk(tmp_path, factory, database_url)
    kept = desk.row(desk.enqueue(1)).raw_sha256
    script = CRASH.format(tests=str(Path(__file__).parent), url=database_url,
                          blobs=str(desk.blob_dir))
    died = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert died.returncode == -9, died.stderr.decode()
    with db.transaction(factory) as s:  # only the mail queued before: the crash left none
        assert s.scalars(select(OutboxMail.raw_sha256)).all() == [kept]
    [orphan] = desk.files() - {kept}
    grace = datetime.now(UTC) - timedelta(hours=1)
    with db.transaction(factory) as s:
        assert collect(s, desk.store, grace) == []  # in its grace: maybe a mail in flight
    old = time.time() - 7200
    for name in (orphan, kept):
        os.utime(desk.blob_dir / name[:2] / name, (old, old))
    with db.transaction(factory) as s:
        assert [p.name for p in collect(s, desk.store, grace)] == [orphan]
    assert desk.files() == {kept}


def test_retention_drops_the_bytes_of_old_sent_mail_and_keeps_the_row(
        tmp_path, factory, database_url):
    # After keep_sent_days the bytes of sent and failed mails go; the rows stay (Message-ID,
    # recipients, VERP token: a late bounce still finds its mail); unsent mail keeps its
    # bytes, however old.
    desk = Desk(tmp_path, factory, database_url, outbox={"keep_sent_days": 30, "verp": True})
    desk.feed(CUSTOMER.format(n="c1"))
    with db.transaction(factory) as s:
        ack = s.scalars(select(OutboxMail).where(OutboxMail.kind == "ack")).one()
    old_sent, old_failed, recent, unsent = (desk.enqueue(n) for n in range(4))
    with db.transaction(factory) as s:
        for message_id, state, sent_at in [
                (ack.message_id, "sent", NOW), (old_sent, "sent", NOW),
                (old_failed, "failed", None), (recent, "sent", NOW + timedelta(days=20))]:
            s.execute(update(OutboxMail).where(OutboxMail.message_id == message_id)
                      .values(state=state, sent_at=sent_at))
    sha = {m: desk.row(m).raw_sha256 for m in (ack.message_id, old_sent, old_failed)}
    before = desk.files()
    desk.clock.now = NOW + timedelta(days=31)
    sweeper = Sweeper(factory, desk.desk, desk.settings.sla, desk.clock,
                      keep_sent_days=desk.settings.outbox.keep_sent_days)
    assert sweeper.run().pruned == 3
    for message_id in (ack.message_id, old_sent, old_failed):
        row = desk.row(message_id)
        assert row.raw is None and row.raw_sha256 is None
        assert row.verp_token == suppression.verp_token(message_id) and row.recipients
    for message_id in (recent, unsent):
        assert desk.store.get(desk.row(message_id).raw_sha256)
    assert before - desk.files() == set(sha.values())  # the files are deleted too
    with db.transaction(factory) as s:
        assert s.scalars(select(Blob.sha256).where(Blob.sha256.in_(sha.values()))).all() == []
    assert sweeper.run().pruned == 0  # once an hour at most, and nothing left anyway
    # A bounce of the acknowledgement, sent to its VERP address, still lands on the ticket.
    outcome = desk.feed(dsn_report("<unrelated@x>", to=ack.envelope_from, with_id=False))
    assert outcome.ticket_number == 10001 and "permanent" in outcome.reason
    with db.transaction(factory) as s:
        assert s.scalars(select(TicketMessage.kind).where(TicketMessage.kind == "bounce")
                         ).all() == ["bounce"]


def test_keep_sent_days_must_be_positive(tmp_path):
    # A retention of zero days would drop a mail's bytes as soon as it is sent: refused.
    from maild.config import load
    path = tmp_path / "maild.toml"
    path.write_text('[imap]\nhost = "h"\nusername = "u"\n[smtp]\nhost = "h"\n'
                    '[support]\naddress = "service@example.com"\n'
                    '[outbox]\nkeep_sent_days = 0\n')
    with pytest.raises(ConfigError, match="keep_sent_days"):
        load(path, environ={})


# -- read-only transactions --------------------------------------------------------------------

def test_a_read_only_transaction_neither_waits_for_a_writer_nor_writes(
        tmp_path, factory, database_url):
    # The intake holds the write lock: the outbox's look at what is due still answers
    # (on SQLite a deferred snapshot, not BEGIN IMMEDIATE); a write in it is refused.
    desk = Desk(tmp_path, factory, database_url)
    desk.enqueue(1)
    outbox = desk.outbox()
    read: list[object] = []
    with db.transaction(factory) as writer:
        writer.execute(text("UPDATE counters SET value = value WHERE name = 'ticket'"))
        thread = threading.Thread(target=lambda: read.append(outbox.next_due()))
        thread.start()
        thread.join(60)
        assert read == [NOW]  # answered while the write transaction is still open
    with pytest.raises((StorageUnavailable, sa.exc.DBAPIError)), db.read_only(factory) as s:
        s.execute(update(OutboxMail).values(attempts=7))
    with db.transaction(factory) as s:  # and a connection that read writes again
        s.execute(update(OutboxMail).values(attempts=1))
    with db.read_only(factory) as s:
        assert s.scalars(select(OutboxMail.attempts)).all() == [1]


# -- the migration -----------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def old_database(request, tmp_path):
    """An engine on a database at revision 0012 (before the outbox kept bytes by reference)."""
    from alembic import command
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        request.getfixturevalue("pg_template")  # skips when PostgreSQL is unavailable
        name = f"maild_old_{secrets.token_hex(5)}"
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = db.make_engine(url)
    command.upgrade(db._alembic_config(engine), "0012")
    yield url, engine
    engine.dispose()
    if request.param == "postgresql":
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_upgrade_keeps_old_rows_sendable_and_fills_their_verp_token(
        tmp_path, old_database, smtp):
    # Mails queued by the maild before (bytes in the row) are sent after the upgrade with
    # those bytes, and a bounce to their VERP address finds them by the new token column.
    url, engine = old_database
    old = sa.table("outbox", *(sa.column(c) for c in (
        "message_id", "kind", "recipient", "envelope_from", "state", "attempts",
        "last_error")), sa.column("recipients", sa.JSON()), sa.column("raw", sa.LargeBinary()),
        sa.column("next_attempt_at", UTCDateTime()), sa.column("created_at", UTCDateTime()))
    raws = {}
    with engine.begin() as conn:
        for n in range(2):
            message_id = f"<maild.t1000{n}.{'ab' * 10}{n}@example.com>"
            raws[message_id] = (f"From: service@example.com\r\nTo: anna@kunde.example\r\n"
                                f"Message-ID: {message_id}\r\nSubject: alt {n}\r\n\r\n"
                                f"Hallo {n}\r\n").encode()
            conn.execute(old.insert().values(
                message_id=message_id, kind="ack", recipient="anna@kunde.example",
                envelope_from="service@example.com", state="pending", attempts=0,
                last_error="", recipients=["anna@kunde.example"], raw=raws[message_id],
                next_attempt_at=NOW, created_at=NOW))
    db.upgrade(engine)
    factory = db.session_factory(engine)
    desk = Desk(tmp_path, factory, url, smtp_port=smtp.port)
    for message_id in raws:
        row = desk.row(message_id)
        assert row.raw == raws[message_id] and row.raw_sha256 is None
        assert row.verp_token == suppression.verp_token(message_id)
        assert row.verp_token.startswith("abab") and row.verp_token in row.message_id
    assert asyncio.run(desk.outbox().deliver_due()) == 2
    sent = {str(m.message["Message-ID"]): m.raw for m in smtp.wait_for(2)}
    assert {k: v.replace(b"\r\n", b"\n") for k, v in sent.items()} == {
        k: v.replace(b"\r\n", b"\n") for k, v in raws.items()}


def test_lanes_keep_one_tickets_or_one_recipients_mails_together_in_queue_order():
    mails = [Claimed(n, f"<{n}@example.com>", "service@example.com", [to], b"", 0, NOW)
             for n, to in zip([7, 3, 9, 1, 4, 8, 2], ["a@x.example", "B@x.example",
                              "a@x.example", "b@x.example", "c@x.example", "A@X.example",
                              "c@x.example"], strict=True)]
    parts = lane_parts(mails, 3)
    assert len(parts) == 3 and sorted(m.id for p in parts for m in p) == [1, 2, 3, 4, 7, 8, 9]
    for part in parts:
        assert [m.id for m in part] == sorted(m.id for m in part)
    lane_of = {m.recipients[0].lower(): i for i, part in enumerate(parts) for m in part}
    for mail in mails:  # the same recipient (in any case) always in the same lane
        assert mail in parts[lane_of[mail.recipients[0].lower()]]
    assert lane_parts(mails, 1) == [sorted(mails, key=lambda m: m.id)]
    # Mails about tickets: one ticket's together, in order, whoever they go to; notices
    # about many tickets to one agent spread over the lanes.
    about = [Claimed(n, f"<{n}@example.com>", "service@example.com", [to], b"", 0, NOW,
                     ticket) for n, to, ticket in [
        *((n, "agent@example.com", n % 6) for n in range(30)),
        (30, "anna@kunde.example", 1), (31, "agent@example.com", 1)]]
    parts = lane_parts(about, 3)
    lane_of_ticket = {m.ticket_id: i for i, part in enumerate(parts) for m in part}
    assert len(set(lane_of_ticket.values())) == 3
    for part in parts:
        assert [m.id for m in part] == sorted(m.id for m in part)
        assert all(lane_of_ticket[m.ticket_id] == parts.index(part) for m in part)


def test_due_mail_goes_out_over_several_connections_each_recipients_in_queue_order(
        tmp_path, factory, database_url, smtp):
    # Three connections send at once; batches of 12 make the claims come in several
    # rounds. Every mail arrives once, each recipient's in the order they were queued,
    # and the three connections are kept for the whole burst.
    desk = Desk(tmp_path, factory, database_url, smtp_port=smtp.port,
                outbox={"connections": 3, "batch_size": 12})
    recipients = [f"anna{i}@kunde.example" for i in range(6)]  # in all three lanes
    queued: dict[str, list[str]] = {to: [] for to in recipients}
    for n in range(36):
        to = recipients[n % 6]
        queued[to].append(desk.enqueue(n, to))
    assert asyncio.run(desk.outbox().deliver_due()) == 36
    mails = smtp.wait_for(36)
    assert len(mails) == 36 and all(len(m) == 1 for m in smtp.by_message_id().values())
    for to in recipients:
        assert [str(m.message["Message-ID"]) for m in mails if m.recipients == [to]] == queued[to]
    assert len({m.peer for m in mails}) == 3
    with db.transaction(factory) as s:
        assert set(s.scalars(select(OutboxMail.state))) == {"sent"}


@pytest.mark.parametrize("refused_after", [0.0, 0.3], ids=["refused-first", "refused-last"])
def test_a_relay_refusing_one_of_the_connections_still_gets_the_rest_and_shows_reached(
        tmp_path, factory, database_url, smtp, refused_after):
    # A relay that takes two connections per client refuses the third: that lane's mails
    # are put off, the others go out, and /healthz says "reached" whichever connection
    # answered first; the refusal is counted once, and the next batch goes over the two
    # connections the relay took (no new attempt to be refused again).
    desk = Desk(tmp_path, factory, database_url, smtp_port=smtp.port,
                outbox={"connections": 3, "batch_size": 6})
    recipients = [f"anna{i}@kunde.example" for i in range(6)]  # in all three lanes
    for n in range(12):
        desk.enqueue(n, recipients[n % 6])
    calls: list[SmtpConnection] = []

    class Relay(SmtpConnection):  # refuses the second connection
        async def connect(self):
            calls.append(self)
            if len(calls) == 2:
                await asyncio.sleep(refused_after)
                raise SmtpDeferred("SMTP 127.0.0.1: 421 4.7.0 too many connections")
            await asyncio.sleep(0.15)
            await super().connect()

    runtime = health.Runtime(started_at=NOW)
    outbox = Outbox(factory, desk.settings.outbox, desk.settings.smtp, desk.clock, desk.store,
                    runtime=runtime, transport=Relay)
    refused = lane_parts(desk.outbox().claim(), 3)[1]  # the first batch's second lane
    desk.clock.now += timedelta(seconds=desk.settings.outbox.lease_seconds + 1)
    assert len(refused) == 3
    assert asyncio.run(outbox.deliver_due()) == 9
    assert len(smtp.wait_for(9)) == 9 and len(calls) == 3
    assert not {str(m.message["Message-ID"]) for m in smtp.mails} & {
        m.message_id for m in refused}
    assert runtime.smtp_error == "" and runtime.counts[("smtp_failures", "")] == 1
    with db.transaction(factory) as s:
        rows = s.scalars(select(OutboxMail)).all()
        assert sorted(r.state for r in rows) == ["pending"] * 3 + ["sent"] * 9
        assert {r.message_id for r in rows if r.state == "pending"} == {
            m.message_id for m in refused}
        assert all(r.leased_until is None for r in rows)


def test_a_server_lost_in_the_middle_of_a_burst_shows_failing_and_stops_the_burst(
        tmp_path, factory, database_url, smtp):
    # The first batch goes out, then the server is gone: the next batch's mails are put
    # off, the burst ends with the error (backoff), /healthz says failing, and the mails
    # not yet claimed keep their attempts.
    desk = Desk(tmp_path, factory, database_url, smtp_port=smtp.port,
                outbox={"connections": 1, "batch_size": 3})
    for n in range(12):
        desk.enqueue(n, f"anna{n}@kunde.example")
    sends: list[list[str]] = []

    class Relay(SmtpConnection):  # takes three mails, then is gone
        async def connect(self):
            if sends:
                raise SmtpDeferred("SMTP 127.0.0.1: connection refused")
            await super().connect()

        async def send(self, envelope_from, recipients, raw):
            sends.append(recipients)
            if len(sends) > 3:
                await self.close()
                raise SmtpDeferred("server closed the connection")
            return await super().send(envelope_from, recipients, raw)

    runtime = health.Runtime(started_at=NOW)
    outbox = Outbox(factory, desk.settings.outbox, desk.settings.smtp, desk.clock, desk.store,
                    runtime=runtime, transport=Relay)
    with pytest.raises(SmtpDeferred, match="connection refused"):
        asyncio.run(outbox.deliver_due())
    assert len(smtp.wait_for(3)) == 3
    assert "connection refused" in runtime.smtp_error
    with db.transaction(factory) as s:
        attempts = sorted((r.state, r.attempts) for r in s.scalars(select(OutboxMail)))
    assert attempts == [("pending", 0)] * 6 + [("pending", 1)] * 3 + [("sent", 1)] * 3


def test_health_says_reached_when_a_kept_connection_sends_after_another_was_refused(
        tmp_path, factory, database_url, smtp):
    # Batch 1 goes over two connections; the relay then closes one. In batch 2 its
    # reconnection is refused first, and only then does the kept connection's mail go
    # through: at the end the server counts as reached, not failing.
    desk = Desk(tmp_path, factory, database_url, smtp_port=smtp.port,
                outbox={"connections": 2, "batch_size": 4})
    recipients = ["anna0@kunde.example", "anna2@kunde.example",  # lanes 1 and 0
                  "anna1@kunde.example", "anna3@kunde.example"]
    for n in range(8):
        desk.enqueue(n, recipients[n % 4])
    connected: list[SmtpConnection] = []
    sends: list[SmtpConnection] = []

    class Relay(SmtpConnection):  # closes one connection after batch 1, refuses it again
        async def connect(self):
            if self in connected:
                raise SmtpDeferred("SMTP 127.0.0.1: 421 4.7.0 too many connections")
            connected.append(self)
            await super().connect()

        async def send(self, envelope_from, recipients, raw):
            if len(sends) >= 4:
                await asyncio.sleep(0.3)  # batch 2: the kept connection answers late
            answer = await super().send(envelope_from, recipients, raw)
            sends.append(self)
            if len(sends) <= 4 and sends.count(self) == 2 and self is connected[-1]:
                await self.close()  # the relay closes the second connection after batch 1
            return answer

    runtime = health.Runtime(started_at=NOW)
    outbox = Outbox(factory, desk.settings.outbox, desk.settings.smtp, desk.clock, desk.store,
                    runtime=runtime, transport=Relay)
    assert asyncio.run(outbox.deliver_due()) == 6
    assert runtime.smtp_error == "" and runtime.smtp_error_since is None
    assert runtime.counts[("smtp_failures", "")] == 1


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "maild", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def test_a_failed_mail_is_sent_again_by_outbox_retry_once_the_cause_is_fixed(
        tmp_path, factory, database_url, smtp):
    # The relay refused the acknowledgement (5xx: a policy since fixed); the operator
    # sends it again: the same bytes and Message-ID, once, and the ticket records it.
    from harness import cli_config

    from maild.models import Event
    desk = Desk(tmp_path, factory, database_url, smtp_port=smtp.port)
    desk.feed(CUSTOMER.format(n=1))
    smtp.reply = "554 5.7.1 relaying denied for this sender"
    asyncio.run(desk.outbox().deliver_due())
    with db.transaction(factory) as s:
        failed = s.scalars(select(OutboxMail).where(OutboxMail.state == "failed")).all()
        ack = next(m for m in failed if m.kind == "ack")
        ack_id, ack_mid, created = ack.id, ack.message_id, ack.created_at
    assert smtp.mails == []
    smtp.reply = None
    config = cli_config(tmp_path / "maild.toml", database_url, desk.blob_dir)

    listed = _cli(config, "outbox", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {"id": ack_id, "state": "failed"}.items() <= next(
        r for r in __import__("json").loads(listed.stdout) if r["id"] == ack_id).items()

    done = _cli(config, "outbox", "retry", str(ack_id))
    assert done.returncode == 0, done.stderr
    assert f"mail {ack_id} to anna@kunde.example queued to be sent again" in done.stdout
    row = desk.row(ack_mid)
    assert (row.state, row.attempts, row.last_error, row.leased_until) == (
        "pending", 0, "", None)
    assert row.retried_at is not None and row.created_at == created  # the time it was written
    with db.transaction(factory) as s:
        [event] = s.scalars(select(Event).where(Event.kind == "resent")).all()
        assert event.ticket_id == row.ticket_id and event.actor.startswith("cli")
        assert event.detail["message_id"] == ack_mid
        assert "554 5.7.1" in event.detail["error"]

    desk.clock.now = max(desk.clock.now, row.retried_at)
    asyncio.run(desk.outbox().deliver_due())
    [mail] = smtp.wait_for(1)
    assert f"Message-ID: {ack_mid}".encode() in mail.raw
    assert desk.row(ack_mid).state == "sent"

    again = _cli(config, "outbox", "retry", str(ack_id), "999999")
    assert again.returncode == 1  # nothing to do is said, and is not a success
    assert f"mail {ack_id} to anna@kunde.example not queued: it is sent, not failed" \
        in again.stderr, again.stderr
    assert "mail 999999 not queued: no such mail in the outbox" in again.stderr
    asyncio.run(desk.outbox().deliver_due())
    assert len(smtp.mails) == 1  # never twice


def test_outbox_retry_failed_gives_each_mail_a_new_give_up_window(
        tmp_path, factory, database_url, smtp):
    # A mail that gave up after give_up_after_hours of an outage: sent again, a short
    # new outage does not fail it at once (its window starts at the retry).
    from maild import outbox
    desk = Desk(tmp_path, factory, database_url, smtp_port=smtp.port)
    message_id = desk.enqueue(7)
    smtp.reply = "451 4.3.0 try later"
    hours = desk.settings.outbox.give_up_after_hours
    desk.clock.now = NOW + timedelta(hours=hours + 1)
    asyncio.run(desk.outbox().deliver_due())
    assert desk.row(message_id).state == "failed"
    [result] = outbox.retry_failed(factory, desk.clock(), None, "cli:ops")
    assert result.queued and result.recipients == ["anna@kunde.example"]
    asyncio.run(desk.outbox().deliver_due())  # still 451: retried later, not failed
    row = desk.row(message_id)
    assert (row.state, row.attempts) == ("pending", 1)
    smtp.reply = None
    desk.clock.now = row.next_attempt_at
    asyncio.run(desk.outbox().deliver_due())
    assert desk.row(message_id).state == "sent" and len(smtp.wait_for(1)) == 1
    assert outbox.retry_failed(factory, desk.clock(), None, "cli:ops") == []  # none failed


@pytest.mark.parametrize("flag", ["bouncing", "blocked"])
def test_outbox_retry_sends_nothing_to_an_address_marked_since(
        tmp_path, factory, database_url, smtp, flag):
    # A 550 to an address that is bouncing (or a sender blocked since): a retry after the
    # relay is fixed must not mail it again; cleared, it may.
    from maild import outbox
    from maild.models import AddressFlag
    desk = Desk(tmp_path, factory, database_url, smtp_port=smtp.port)
    message_id = desk.enqueue(8)
    smtp.reply = "550 5.1.1 user unknown"
    asyncio.run(desk.outbox().deliver_due())
    assert desk.row(message_id).state == "failed"
    with db.transaction(factory) as s:
        s.add(AddressFlag(address="anna@kunde.example", updated_at=NOW,
                          bouncing_since=NOW if flag == "bouncing" else None,
                          blocked_at=NOW if flag == "blocked" else None))
    [result] = outbox.retry_failed(factory, desk.clock(), None, "cli:ops")
    assert not result.queued and "anna@kunde.example marked bouncing or blocked" in result.why
    assert desk.row(message_id).state == "failed"
    with db.transaction(factory) as s:
        s.execute(sa.delete(AddressFlag))
    [result] = outbox.retry_failed(factory, desk.clock(), None, "cli:ops")
    assert result.queued and desk.row(message_id).state == "pending"
