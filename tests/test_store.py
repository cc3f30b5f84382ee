"""Storage on both databases: numbers, secrets, idempotent intake, failure accounting."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from harness import cli_config, offline_settings, raw_of
from sqlalchemy import func, select

from maild import blobs, db
from maild.daemon import build_desk
from maild.errors import StorageUnavailable
from maild.intake import Intake, dedupe_key
from maild.mail.fetched import Fetched
from maild.models import (
    Attachment,
    Blob,
    Company,
    Event,
    InboundMessage,
    OutboxMail,
    Ticket,
    TicketMessage,
)

DATA = Path(__file__).parent / "data"
NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.fixture
def intake(tmp_path, factory, database_url) -> Intake:
    desk = build_desk(offline_settings(database_url, tmp_path / "blobs"), factory, NOW)
    return Intake(factory, desk, "INBOX", max_attempts=3, clock=lambda: NOW)


def count(factory, model) -> int:
    with db.transaction(factory) as s:
        return int(s.scalar(select(func.count()).select_from(model)))


def test_ticket_numbers_are_unique_under_concurrency(factory):
    # Eight threads take numbers at once: no duplicates, no gaps.
    taken: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(10):
            with db.transaction(factory) as session:
                n = db.next_number(session, "ticket")
            with lock:
                taken.append(n)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == list(range(10001, 10081))


def test_rows_written_together_get_ids_in_the_order_they_were_added(factory):
    """A flush of many new rows takes their ids in one statement (`db._assign_ids`):
    they follow the order of adding, and writers in parallel never share one."""
    def companies(tag: str, n: int) -> list[Company]:
        return [Company(name=f"{tag}{i}", tier="", created_at=NOW, updated_at=NOW)
                for i in range(n)]

    ids: dict[str, list[int]] = {}
    lock = threading.Lock()

    def write(tag: str) -> None:
        for round_ in range(5):
            with db.transaction(factory) as session:
                rows = companies(f"{tag}{round_}-", 7)
                session.add_all(rows)
                session.flush()
                with lock:
                    ids.setdefault(tag, []).extend(r.id for r in rows)
                session.add(companies(f"{tag}{round_}-one-", 1)[0])  # a single row: as ever

    threads = [threading.Thread(target=write, args=(tag,)) for tag in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.transaction(factory) as session:
        stored = session.execute(select(Company.id, Company.name)).all()
    assert len(stored) == 3 * 5 * 8 and len({i for i, _ in stored}) == len(stored)
    by_name = {name: i for i, name in stored}
    for tag, taken in ids.items():
        for round_ in range(5):
            got = [by_name[f"{tag}{round_}-{i}"] for i in range(7)]
            assert got == sorted(got) and got == taken[round_ * 7:round_ * 7 + 7]


def test_ids_given_by_hand_do_not_collide_with_those_given_with_the_flush(factory):
    def company(name: str, **given) -> Company:
        return Company(name=name, tier="", created_at=NOW, updated_at=NOW, **given)

    with db.transaction(factory) as session:
        session.add_all([company("first"), company("second")])
        session.flush()
        top = max(c.id for c in session.scalars(select(Company)))
        # SQLite: right after the largest id. (A PostgreSQL sequence never knows of ids
        # set by hand, with or without maild: there only ids far above are safe.)
        gap = 1 if session.get_bind().dialect.name == "sqlite" else 10
        session.add_all([company("by hand", id=top + gap), company("a"), company("b")])
        session.flush()
    with db.transaction(factory) as session:
        ids = {name: id_ for name, id_ in session.execute(select(Company.name, Company.id))}
    assert len(set(ids.values())) == 5 and ids["by hand"] == top + gap


def test_signing_key_is_generated_once_and_kept(factory):
    first = db.app_secret(factory, "signing_key", NOW)
    assert len(first) > 40
    assert db.app_secret(factory, "signing_key", NOW) == first


def test_new_mail_becomes_ticket_message_attachment_and_one_answer(intake, factory):
    raw = (DATA / "customer_en.eml").read_bytes()
    outcome = intake.process(7, Fetched(uid=1, raw=raw, internaldate=NOW))
    assert outcome.action == "processed" and outcome.ticket_number == 10001
    with db.transaction(factory) as s:
        ticket = s.scalars(select(Ticket)).one()
        assert (ticket.customer_address, ticket.language, ticket.status) == (
            "bob.smith@customer.example", "en", "new")
        assert ticket.first_response_due is not None
        att = s.scalars(select(Attachment)).one()
        assert (att.filename, att.content_type, att.size) == ("screenshot.png", "image/png", 70)
        inbound = s.scalars(select(InboundMessage)).one()
        assert (inbound.state, inbound.uid, inbound.uidvalidity) == ("processed", 1, 7)
        out = s.scalars(select(OutboxMail)).one()
        assert out.recipients == ["bob.smith@customer.example"] and out.state == "pending"
        assert b"[#10001]" in raw_of(out, intake.desk.store)
        assert s.scalars(select(Event.kind)).all() == ["created"]
        # the raw mail is kept, so the ticket can always be rebuilt
        assert intake.desk.store.get(inbound.raw_sha256) == raw


def test_facts_missing_facts_and_priority_are_stored(intake, factory):
    # The German sample states customer and order number; an outage word makes it urgent.
    raw = (DATA / "customer_de_html.eml").read_bytes()
    intake.process(7, Fetched(1, raw, NOW))
    intake.process(7, Fetched(2, (DATA / "customer_de.eml").read_bytes(), NOW))
    with db.transaction(factory) as s:
        outage, app = s.scalars(select(Ticket).order_by(Ticket.number)).all()
        assert outage.priority == "urgent" and app.priority == "normal"
        assert app.facts.customer_numbers == ("100234",)
        assert app.facts.order_numbers == ("A-2026-00917",)
        assert app.facts.software_version == "4.2.1"
        assert "company" not in app.missing and "software_version" not in app.missing
        assert outage.missing == ["software_version", "reproducible"]  # "seit 07:30 Uhr"
        first = s.scalars(select(TicketMessage).where(TicketMessage.ticket_id == app.id,
                                                      TicketMessage.direction == "in")).one()
        assert first.facts == app.facts
        [ack] = [o for o in s.scalars(select(OutboxMail)) if o.ticket_id == outage.id]
        text = message_from_bytes(raw_of(ack, intake.desk.store), policy=policy.default).get_body(
            ("plain",)).get_content()
        assert "fehlen uns noch ein paar Angaben" in text
        assert "die Version unserer Software bzw. App" in text
        assert "als dringend eingestuft" in text


def test_the_schema_made_by_migrations_matches_the_models(factory):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from maild.models import Base
    with factory() as session:
        diff = compare_metadata(MigrationContext.configure(session.connection()),
                                Base.metadata)
    assert diff == []


def test_same_mail_twice_gives_one_ticket_and_one_answer(intake, factory):
    # Seen again after a crash between commit and move, or delivered twice with other
    # trace headers: processed once.
    raw = (DATA / "customer_de.eml").read_bytes()
    assert intake.process(7, Fetched(1, raw, NOW)).action == "processed"
    again = intake.process(7, Fetched(1, raw, NOW))
    redelivered = intake.process(7, Fetched(2, b"Received: from relay\n" + raw, NOW))
    assert again.reason == "already processed" and redelivered.reason == "already processed"
    assert intake.known(7, [1, 2, 3]) == {1: "processed"}
    assert count(factory, Ticket) == 1 and count(factory, OutboxMail) == 1
    with db.transaction(factory) as s:
        assert s.scalars(select(Blob.refs)).all() == [1, 1]  # the mail and the answer


def test_automatic_mail_is_recorded_but_not_answered(intake, factory):
    for uid, name in enumerate(["out_of_office.eml", "bounce.eml"], start=1):
        intake.process(7, Fetched(uid, (DATA / name).read_bytes(), NOW))
    with db.transaction(factory) as s:
        # The out-of-office reply is a ticket flagged automatic; a bounce never opens one.
        assert s.scalars(select(Ticket.automatic)).all() == [True]
        assert s.scalars(select(Ticket.first_response_due)).all() == [None]
        bounce = s.scalars(select(InboundMessage).where(InboundMessage.uid == 2)).one()
        assert (bounce.state, bounce.kind, bounce.ticket_id) == ("processed", "bounce", None)
        assert "matches no mail we sent" in bounce.reason
    assert count(factory, OutboxMail) == 0


def test_unparseable_mail_is_quarantined_with_its_reason(intake, factory):
    outcome = intake.process(7, Fetched(1, b"\x00\x01garbage", NOW))
    assert outcome.action == "quarantine" and "no mail headers" in outcome.reason
    with db.transaction(factory) as s:
        row = s.scalars(select(InboundMessage)).one()
        assert (row.state, row.kind) == ("quarantined", "unparseable")
        assert "no mail headers" in row.reason
    assert count(factory, Ticket) == 0
    # the same mail seen again before the move: straight to quarantine again
    assert intake.process(7, Fetched(1, b"\x00\x01garbage", NOW)).action == "quarantine"


def test_a_mail_that_keeps_failing_is_retried_then_quarantined(intake, factory, monkeypatch):
    # A bug triggered by one mail's content: retried max_attempts times, then quarantined.
    def boom(*args, **kwargs):
        raise ValueError("cannot handle this mail")
    monkeypatch.setattr("maild.intake.open_ticket", boom)
    raw = (DATA / "customer_de.eml").read_bytes()
    actions = [intake.process(7, Fetched(1, raw, NOW)).action for _ in range(3)]
    assert actions == ["retry", "retry", "quarantine"]
    with db.transaction(factory) as s:
        row = s.scalars(select(InboundMessage)).one()
        assert row.attempts == 3 and "ValueError: cannot handle this mail" in row.reason
    assert count(factory, Ticket) == 0 and count(factory, OutboxMail) == 0


def test_database_outage_is_temporary_and_records_nothing(intake, factory, monkeypatch):
    def down(*args, **kwargs):
        raise StorageUnavailable("database unavailable: connection refused")
    monkeypatch.setattr("maild.intake.open_ticket", down)
    with pytest.raises(StorageUnavailable):
        intake.process(7, Fetched(1, (DATA / "customer_de.eml").read_bytes(), NOW))
    assert count(factory, InboundMessage) == 0


def test_dedupe_key_ignores_trace_headers_but_not_the_body():
    raw = b"Message-ID: <a@b>\r\nFrom: x@y.z\r\n\r\nbody\r\n"
    assert dedupe_key(raw) == dedupe_key(b"Received: by mx\r\n" + raw)
    assert dedupe_key(raw) != dedupe_key(raw.replace(b"body", b"other"))
    assert dedupe_key(b"From: x@y.z\r\n\r\nbody") != dedupe_key(b"From: x@y.z\r\n\r\nbodx")


def test_blob_store_never_leaves_the_folder(tmp_path):
    store = blobs.FolderStore(tmp_path)
    sha = store.put(b"data")
    assert store.get(sha) == b"data"
    with pytest.raises(ValueError):
        store.get("../../etc/passwd")


def test_blobs_are_written_one_folder_deep(tmp_path):
    store = blobs.FolderStore(tmp_path)
    sha = store.put(b"a customer's mail", sync=False)
    assert (tmp_path / sha[:2] / sha).read_bytes() == b"a customer's mail"
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == \
        [sha[:2], f"{sha[:2]}/{sha}"]


def test_blobs_of_the_older_two_level_layout_are_found_kept_listed_and_deleted(tmp_path):
    """A store written before the one-level layout (`ab/cd/SHA`) keeps working as it is."""
    old = b"a mail stored by an earlier maild"
    sha = blobs.digest(old)
    legacy = tmp_path / sha[:2] / sha[2:4] / sha
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(old)
    store = blobs.FolderStore(tmp_path)
    assert store.exists(sha) and store.get(sha) == old and store.path_of(sha) == legacy
    assert store.put(old) == sha  # already there: not written a second time
    assert not (tmp_path / sha[:2] / sha).exists()
    new = store.put(b"a mail stored now")
    assert {p for p, _ in store.files()} == {legacy, tmp_path / new[:2] / new}
    store.delete(sha)
    assert not store.exists(sha) and not legacy.exists()


def test_the_store_never_follows_a_symlinked_folder(tmp_path):
    # A link in the store (an operator's, or planted) must not let `collect` reach files
    # elsewhere: they are not listed.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_bytes(b"not a blob")
    (elsewhere / "ab").mkdir()
    (elsewhere / "ab" / "also.txt").write_bytes(b"not a blob either")
    store = blobs.FolderStore(tmp_path / "store")
    sha = store.put(b"a blob")
    (tmp_path / "store" / "zz").symlink_to(elsewhere)
    (tmp_path / "store" / sha[:2] / "yy").symlink_to(elsewhere)
    assert [p for p, _ in store.files()] == [tmp_path / "store" / sha[:2] / sha]


def test_a_backup_in_the_older_layout_is_restored(tmp_path):
    from maild.backup import _restore_blobs
    source = tmp_path / "backup" / "blobs"
    shas = []
    for data in (b"first", b"second"):
        sha = blobs.digest(data)
        (source / sha[:2] / sha[2:4]).mkdir(parents=True)
        (source / sha[:2] / sha[2:4] / sha).write_bytes(data)
        shas.append(sha)
    store = blobs.FolderStore(tmp_path / "store")
    assert _restore_blobs(source, store) == 2
    assert [store.get(sha) for sha in shas] == [b"first", b"second"]
    assert all((tmp_path / "store" / sha[:2] / sha).exists() for sha in shas)


def test_cli_lists_and_shows_tickets(intake, tmp_path, database_url):
    # An operator looks at a ticket: facts, what is missing, messages, attachments, events.
    import json

    from harness import maild
    intake.process(7, Fetched(1, (DATA / "customer_en.eml").read_bytes(), NOW))
    config = cli_config(tmp_path / "cli.toml", database_url)
    listed = json.loads(maild("tickets", "list", "--json", config=config).stdout)
    assert [(t["number"], t["customer"]) for t in listed] == [
        (10001, "bob.smith@customer.example")]
    shown = json.loads(maild("tickets", "show", "#10001", "--json", config=config).stdout)
    assert shown["facts"]["customer_numbers"] == ["55012"]
    assert "company" in shown["missing"]
    assert [m["direction"] for m in shown["messages"]] == ["in", "out"]
    assert shown["messages"][0]["attachments"][0]["filename"] == "screenshot.png"
    assert [e["kind"] for e in shown["events"]] == ["created"]
    text = maild("tickets", "show", "10001", config=config).stdout
    assert "customer_numbers   55012" in text and "attachment screenshot.png" in text
    missing = maild("tickets", "show", "4711", config=config)
    assert missing.returncode == 1 and "no ticket #4711" in missing.stderr


def test_new_text_is_kept_apart_from_the_quoted_history(intake, factory):
    # A reply with an "Am … schrieb …:" quote: the new words are kept apart, the whole
    # original stays.
    raw = (DATA / "facts" / "09-de-quoted-reply.eml").read_bytes()
    intake.process(7, Fetched(1, raw, NOW))
    with db.transaction(factory) as s:
        msg = s.scalars(select(TicketMessage).where(TicketMessage.direction == "in")).one()
    assert msg.new_text.startswith("Hallo zusammen,") and "Übertragung abgelehnt" not in (
        msg.new_text)
    assert "Übertragung abgelehnt" in msg.body_text


def test_outlook_history_is_cut_from_the_new_text():
    from maild.mail.body import latest_reply
    text = ("Bitte um Rückruf.\n\nGruß\nPetra\n\n-----Ursprüngliche Nachricht-----\n"
            "Von: Support <service@example.com>\nGesendet: Montag, 23. November 2026 10:00\n"
            "An: Petra\nBetreff: [#10001] Dein Support-Ticket\n\nHallo Petra, ...")
    assert "Ursprüngliche" not in latest_reply(text)
    assert latest_reply(text).startswith("Bitte um Rückruf.")
    assert latest_reply("") == ""


def test_two_accounts_inboxes_do_not_share_uids(intake, factory):
    # Several mailboxes are named INBOX; each is its own in the database.
    intake.process(7, Fetched(1, (DATA / "customer_de.eml").read_bytes(), NOW))
    other = Intake(factory, intake.desk, "other@imap.example/INBOX", 3, lambda: NOW)
    assert intake.known(7, [1]) == {1: "processed"} and other.known(7, [1]) == {}


def test_mailbox_id_names_account_host_and_folder():
    from maild.config import ImapSettings
    imap = ImapSettings(host="imap.example.com", username="service", folder="INBOX")
    assert imap.mailbox_id == "service@imap.example.com/INBOX"
