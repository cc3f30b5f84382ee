"""Nothing recorded is lost, nothing personal is left: integrity failures that are not
duplicates count against the mail; a purge leaves no byte of the customer; what an
attacker controls (Message-IDs, control characters) never reaches our headers or terminal."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from harness import offline_settings, raw_of
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from test_sweeps import Desk as SweepDesk
from test_sweeps import at

from maild import db, suppression
from maild.daemon import build_desk
from maild.intake import Intake
from maild.mail.fetched import Fetched
from maild.models import Event, InboundMessage, OutboxMail, SweepMark, Ticket
from maild.sweeps import _claim

DATA = Path(__file__).parent / "data"
NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.fixture
def intake(tmp_path, factory, database_url) -> Intake:
    desk = build_desk(offline_settings(database_url, tmp_path / "blobs"), factory, NOW)
    return Intake(factory, desk, "INBOX", max_attempts=2, clock=lambda: NOW)


def _bad_row(session) -> None:
    """Flush a row that breaks a NOT NULL constraint: an IntegrityError, not a duplicate."""
    session.add(Event(ticket_id=None, at=None, actor="maild", kind="x", detail={}))
    session.flush()


# -- integrity failures ------------------------------------------------------------------------

def test_an_integrity_failure_that_is_no_duplicate_is_retried_then_quarantined(
        intake, factory, monkeypatch, caplog):
    # Opening the ticket breaks a NOT NULL constraint: the mail is not "processed", it is
    # retried and then quarantined with the error and an error id.
    def broken(session, *args, **kwargs):
        _bad_row(session)
    monkeypatch.setattr("maild.intake.open_ticket", broken)
    raw = (DATA / "customer_de.eml").read_bytes()
    caplog.set_level(logging.ERROR, "maild.intake")
    outcomes = [intake.process(7, Fetched(1, raw, NOW)) for _ in range(2)]
    assert [o.action for o in outcomes] == ["retry", "quarantine"]
    with db.transaction(factory) as s:
        row = s.scalars(select(InboundMessage)).one()
        assert (row.state, row.attempts) == ("quarantined", 2)
        assert "processing failed 2 times" in row.reason and "error id" in row.reason
        assert "[SQL:" not in row.error  # the driver's message, not the statement
        error_id = row.error.rsplit("error id ", 1)[1].rstrip("]")
        assert s.scalars(select(Ticket)).all() == []
    assert any(error_id in r.getMessage() for r in caplog.records)


def test_the_same_mail_recorded_by_another_process_is_still_processed(intake, factory,
                                                                       monkeypatch):
    # Another process recorded the mail between our look and our insert: the unique key
    # refuses ours, a fresh look finds theirs processed, and the mail is done once.
    raw = (DATA / "customer_de.eml").read_bytes()
    assert intake.process(7, Fetched(1, raw, NOW)).action == "processed"
    # The race: our look (the batch's read, and any later one) found nothing.
    monkeypatch.setattr("maild.intake._recorded", lambda session, keys: dict.fromkeys(keys))
    monkeypatch.setattr("maild.intake._find", lambda session, key: None)
    outcome = intake.process(7, Fetched(2, raw, NOW))
    assert (outcome.action, outcome.reason) == ("processed", "recorded concurrently")
    with db.transaction(factory) as s:
        assert len(s.scalars(select(Ticket)).all()) == 1


def test_a_sweep_failing_on_integrity_is_logged_with_an_error_id(tmp_path, factory,
                                                                database_url, monkeypatch,
                                                                caplog):
    # Writing the breach notice breaks a constraint: not taken for a lost claim and
    # skipped in silence, but logged and counted with an error id.
    desk = SweepDesk(tmp_path, factory, database_url, sla={"digest": False})
    desk.mail()
    monkeypatch.setattr("maild.sweeps.Sweeper._agents_mail",
                        lambda self, session, *a, **k: _bad_row(session))
    caplog.set_level(logging.ERROR, "maild.sweeps")
    counts = desk.sweep(at(2026, 11, 27, 11, 0))
    [error] = counts.errors
    assert "error id" in error and "[SQL:" not in error
    error_id = error.rsplit("error id ", 1)[1].rstrip("]")
    assert any(error_id in r.getMessage() for r in caplog.records)
    assert desk.ticket().breached_at is None  # rolled back: tried again next sweep


def test_a_claim_is_lost_only_to_an_existing_mark(factory):
    # A mark already there: the claim is lost. A mark that cannot be written: an error.
    with db.transaction(factory) as s:
        assert _claim(s, "digest:2026-11-26", NOW) is True
    with db.transaction(factory) as s:
        assert _claim(s, "digest:2026-11-26", NOW) is False
    with pytest.raises(sa_exc.IntegrityError), db.transaction(factory) as s:
        _claim(s, "digest:2026-11-27", None)
    with db.transaction(factory) as s:
        assert s.scalars(select(SweepMark.key)).all() == ["digest:2026-11-26"]


# -- purge -------------------------------------------------------------------------------------

ANNA = "Anna.Berger@Kunde.example"
PHRASE = "Quittengelee im Serverraum"  # distinctive: found nowhere but in Anna's words


def _mail(n: int, sender: str, text: str, *, cc: str = "", subject: str = "Export",
          attachment: bytes = b"") -> bytes:
    head = (f"From: {sender}\r\nTo: service@example.com\r\n"
            + (f"Cc: {cc}\r\n" if cc else "")
            + f"Subject: {subject}\r\nMessage-ID: <p{n}@mail.example>\r\nMIME-Version: 1.0\r\n")
    if not attachment:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text
                + "\r\n").encode()
    return (head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text + "\r\n--b\r\n"
            'Content-Type: text/plain; name="notes.txt"\r\nContent-Disposition: attachment; '
            'filename="notes.txt"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            + __import__("base64").b64encode(attachment).decode() + "\r\n--b--\r\n").encode()


def _scan(url: str, blob_dir: Path, *needles: str) -> list[str]:
    """Every text, JSON and binary value of every table (reflected, so nothing is
    forgotten) and every stored file's bytes, MIME-decoded where they are a mail."""
    from email import message_from_bytes, policy

    from sqlalchemy import MetaData

    def texts(value) -> list[str]:
        if isinstance(value, bytes):
            found = [value.decode("utf-8", "replace")]
            if b":" in value[:200]:
                for part in message_from_bytes(value, policy=policy.default).walk():
                    payload = part.get_payload(decode=True)
                    if isinstance(payload, bytes):
                        found.append(payload.decode("utf-8", "replace"))
            return found
        if isinstance(value, dict | list):
            import json
            return [json.dumps(value, ensure_ascii=False)]
        return [str(value)]

    hits = []
    engine = db.make_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                for row in conn.execute(table.select()):
                    for column, value in zip(table.columns, row, strict=True):
                        for text in texts(value):
                            hits += [f"{table.name}.{column.name}: {n}" for n in needles
                                     if n.lower() in text.lower()]
    finally:
        engine.dispose()
    for path in blob_dir.rglob("*"):
        if path.is_file():
            for text in texts(path.read_bytes()):
                hits += [f"blob {path.name}: {n}" for n in needles if n.lower() in text.lower()]
    return hits


def test_a_customer_purge_leaves_no_byte_of_the_customer(tmp_path, factory, database_url):
    # Anna has a ticket with an attachment, a quarantined mail, an off-ticket answer, a
    # bounce flag, an account-book entry, is copied on Bob's ticket and left an orphaned
    # file: after `customers purge` neither her address nor her words are anywhere.
    import os
    import time

    from harness import cli_config, maild

    from maild import accounts
    from maild.answers import enqueue
    from maild.mail.render import Rendered
    blob_dir = tmp_path / "blobs"
    settings = offline_settings(database_url, blob_dir,
                                agents={"members": [{"address": "max@example.com"}]})
    desk = build_desk(settings, factory, NOW)
    intake = Intake(factory, desk, "INBOX", max_attempts=3, clock=lambda: NOW)
    anna = f"Anna Berger <{ANNA}>"
    with db.transaction(factory) as s:
        accounts.import_rows(s, accounts.read_csv(
            f"email;name;phone\n{ANNA};Anna Berger;+49 221 555\n"
            "bob@firma.example;Bob;\n"), NOW)
    assert intake.process(1, Fetched(1, _mail(1, anna, f"Der Export bricht ab. {PHRASE}.",
                                              attachment=PHRASE.encode()), NOW)).ticket_number
    bob = intake.process(1, Fetched(2, _mail(2, "Bob <bob@firma.example>", "Login geht nicht",
                                             cc=ANNA), NOW)).ticket_number
    with db.transaction(factory) as s:  # an agent copies her on Bob's (#cc): she may write
        s.scalars(select(Ticket).where(Ticket.number == bob)).one().participants = [
            ANNA.lower()]
    she_too = _mail(4, anna, f"Bei mir auch. {PHRASE}, seit gestern.",
                    subject=f"Re: [#{bob}] Login")  # copied on Bob's, she writes there too
    assert intake.process(1, Fetched(4, she_too, NOW)).ticket_number == bob
    broken = "Content-Type: multipart/mixed; boundary=Q\r\n\r\n\r\n"  # nothing readable
    header_only = (f"From: {anna}\r\nSubject: {PHRASE}\r\nMessage-ID: <p3@mail.example>\r\n"
                   + broken)
    assert intake.process(1, Fetched(3, header_only.encode(), NOW)).action == "quarantine"
    bobs = (f"From: bob@firma.example\r\nCc: {anna}\r\nMessage-ID: <p5@mail.example>\r\n"
            + broken)
    assert intake.process(1, Fetched(5, bobs.encode(), NOW)).action == "quarantine"
    with db.transaction(factory) as s:
        suppression.mark_bouncing(s, ANNA, "5.1.1", f"550 {ANNA.lower()} unknown", NOW)
        t = s.scalars(select(Ticket).where(Ticket.number == bob)).one()
        assert t.participants == [ANNA.lower()]
        raw = (f"To: {ANNA}\r\nSubject: Re: {PHRASE}\r\nMessage-ID: <maild.r1.x@example.com>"
               f"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nSie schrieben: "
               f"=\r\n{PHRASE}\r\n").encode()
        enqueue(s, desk, Rendered("<maild.r1.x@example.com>", f"Re: {PHRASE}", PHRASE, raw),
                [ANNA.lower()], None, "reject", NOW, automatic=True)
    orphan = desk.store.put(f"notes of {ANNA}: {PHRASE}".encode())
    old = time.time() - 7200
    os.utime(blob_dir / orphan[:2] / orphan, (old, old))
    assert len(_scan(database_url, blob_dir, ANNA, PHRASE)) > 20

    config = cli_config(tmp_path / "cli.toml", database_url, blob_dir)
    refused = maild("customers", "purge", ANNA, config=config)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    done = maild("customers", "purge", ANNA, "--yes", config=config)
    assert done.returncode == 0, done.stderr
    assert "tickets #10001" in done.stdout
    assert _scan(database_url, blob_dir, ANNA, PHRASE) == []
    with db.transaction(factory) as s:  # Bob's ticket lives on, without her
        t = s.scalars(select(Ticket).where(Ticket.number == bob)).one()
        assert t.participants == [] and t.customer_address == "bob@firma.example"
        assert len(s.scalars(select(Ticket)).all()) == 1
        # Bob's quarantined mail that only copied her stays, her address cut out
        [kept] = s.scalars(select(InboundMessage).where(
            InboundMessage.state == "quarantined")).all()
        assert kept.message_id == "<p5@mail.example>"
        assert b"Cc: Anna Berger <erased@invalid>" in desk.store.get(kept.raw_sha256)


def test_blobs_gc_deletes_files_nothing_refers_to_after_the_grace(tmp_path, factory,
                                                                  database_url):
    # A rejected mail's attachment was written before the decision and is referenced by
    # nothing: `blobs gc` leaves it for the grace hour (a mail in flight), then deletes
    # it; the raw mail and our answer, which their rows refer to, stay.
    import os
    import time

    from harness import cli_config, maild
    blob_dir = tmp_path / "blobs"
    desk = build_desk(offline_settings(database_url, blob_dir,
                                       accounts={"unknown_sender": "reject"}), factory, NOW)
    intake = Intake(factory, desk, "INBOX", max_attempts=3, clock=lambda: NOW)
    outcome = intake.process(1, Fetched(1, _mail(1, "x@stranger.example", "Hallo",
                                                 attachment=b"unreferenced bytes"), NOW))
    assert outcome.ticket_number is None and "unknown sender" in outcome.reason
    files = sorted(p for p in blob_dir.rglob("*") if p.is_file())
    assert len(files) == 3  # the mail, its attachment, our answer
    config = cli_config(tmp_path / "cli.toml", database_url, blob_dir)
    assert maild("blobs", "gc", config=config).stdout.startswith("0 unreferenced")
    old = time.time() - 7200
    for path in files:
        os.utime(path, (old, old))
    assert maild("blobs", "gc", config=config).stdout.startswith("1 unreferenced")
    left = {p.name for p in blob_dir.rglob("*") if p.is_file()}
    with db.transaction(factory) as s:
        assert left == {s.scalars(select(InboundMessage.raw_sha256)).one(),
                        s.scalars(select(OutboxMail.raw_sha256)).one()}


# -- file modes --------------------------------------------------------------------------------

def test_database_and_blob_store_are_private_whatever_the_umask(tmp_path):
    # With a careless umask (000) the SQLite file with its -wal/-shm and the blob store
    # are still created readable by maild's user alone.
    from sqlalchemy import text

    from maild import blobs

    def mode(path: Path) -> int:
        return path.stat().st_mode & 0o777

    old = os.umask(0)
    try:
        url = f"sqlite:///{tmp_path / 'state' / 'maild.db'}"
        engine = db.make_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE t (x INTEGER)"))
                conn.execute(text("INSERT INTO t VALUES (1)"))
            with engine.connect() as conn:  # held open: -wal and -shm exist
                conn.execute(text("SELECT x FROM t")).all()
                state = tmp_path / "state"
                assert mode(state) == 0o700
                for name in ("maild.db", "maild.db-wal", "maild.db-shm"):
                    assert mode(state / name) == 0o600, name
        finally:
            engine.dispose()
        store = blobs.FolderStore(tmp_path / "var" / "blobs")
        sha = store.put(b"a customer's mail")
        path = tmp_path / "var" / "blobs" / sha[:2] / sha
        assert mode(path) == 0o600
        for folder in (path.parent, tmp_path / "var" / "blobs", tmp_path / "var"):
            assert mode(folder) == 0o700, folder
    finally:
        os.umask(old)


# -- what a sender controls --------------------------------------------------------------------

ESC_SUBJECT = "=?utf-8?b?" + __import__("base64").b64encode(
    "Rechnung \x1b[2J\x1b]0;pwned\x07 \u202eexe.pdf".encode()).decode() + "?="


def test_tickets_show_and_quarantine_show_print_control_characters_escaped(
        intake, tmp_path, database_url):
    # A sender's ESC sequences and bidi overrides reach the operator's terminal as text:
    # `\x1b`, `\u202e`; the body's line breaks stay.
    from harness import cli_config, maild
    raw = (f"From: Eve <eve@evil.example>\r\nTo: service@example.com\r\n"
           f"Subject: {ESC_SUBJECT}\r\nMessage-ID: <e1@evil.example>\r\n"
           "Content-Type: text/plain; charset=utf-8\r\n\r\n"
           "Zeile eins\r\n\x1b[31mrot\x1b[0m und \u202eevil\r\nZeile drei\r\n").encode()
    assert intake.process(1, Fetched(1, raw, NOW)).ticket_number == 10001
    head = (f"From: Eve <eve@evil.example>\r\nSubject: {ESC_SUBJECT} \x1b[5m\r\n"
            "Message-ID: <e2@evil.example>\r\n"
            "Content-Type: multipart/mixed; boundary=Q\r\n\r\n\r\n").encode()  # unreadable
    assert intake.process(1, Fetched(2, head, NOW)).action == "quarantine"
    config = cli_config(tmp_path / "cli.toml", database_url, tmp_path / "blobs")
    shown = maild("tickets", "show", "10001", config=config)
    listed = maild("tickets", "list", config=config)
    with db.transaction(intake.factory) as s:
        quarantined = s.scalars(select(InboundMessage.id).where(
            InboundMessage.state == "quarantined")).one()
    q = maild("quarantine", "show", str(quarantined), config=config)
    for done in (shown, listed, q):
        assert done.returncode == 0, done.stderr
        assert "\x1b" not in done.stdout and "\u202e" not in done.stdout
        assert "\x07" not in done.stdout
    # A subject loses its control characters at intake (it is copied into our headers).
    assert "Rechnung [2J]0;pwned exe.pdf" in shown.stdout
    assert "| Zeile eins\n      | \\x1b[31mrot\\x1b[0m und \\u202eevil\n      | Zeile drei" \
        in shown.stdout
    assert "\\x1b[5m" in q.stdout


def test_a_hostile_message_id_is_treated_as_absent():
    # Control characters, spaces or more than a header line: not a Message-ID we copy.
    from maild.mail.parse import parse
    from maild.mail.thread import referenced_ids

    def mail(message_id: str, in_reply_to: str = "", references: str = ""):
        return parse((f"From: a@b.example\r\nMessage-ID: {message_id}\r\n"
                      f"In-Reply-To: {in_reply_to}\r\nReferences: {references}\r\n"
                      "\r\nHallo\r\n").encode())

    assert mail("<ok.1@b.example>").message_id == "<ok.1@b.example>"
    assert mail("ok.2@b.example").message_id == "<ok.2@b.example>"
    assert mail("<x" + "a" * 990 + "@b>").message_id is not None  # 996: still a line
    for bad in ("<evil\x1b[2J@b.example>", "evil\x1b@b.example", "<a b@c>",
                "<" + "a" * 997 + "@b>", "<ok@b>\x07", "<\u202eexe@b>"):
        parsed = mail(bad, in_reply_to=bad, references=f"<good@b.example> {bad}")
        assert parsed.message_id in (None, "<ok@b>"), bad
        assert parsed.in_reply_to in (None, "<ok@b>"), bad
        assert set(referenced_ids(parsed)) <= {"<good@b.example>", "<ok@b>"}, bad
    many = " ".join(f"<r{i}@b.example>" for i in range(500))
    refs = mail("<m@b>", references=many).references
    assert len(refs) == 50 and refs[-1] == "<r499@b.example>"


def test_our_answer_never_carries_a_hostile_message_id(intake, factory, caplog):
    # Mails whose Message-ID or References hold terminal escapes or run over a line: the
    # acknowledgements' In-Reply-To/References and the log carry only well-formed ids.
    from email import message_from_bytes, policy

    caplog.set_level(logging.INFO)

    def mail(uid: int, message_id: str, subject: str) -> None:
        raw = (f"From: Eve <eve@evil.example>\r\nTo: service@example.com\r\n"
               f"Subject: {subject}\r\nMessage-ID: {message_id}\r\n"
               f"References: <fine@evil.example> <{'x' * 1200}@evil.example> <e\x1b@v>\r\n"
               "Content-Type: text/plain; charset=utf-8\r\n\r\nDer Export bricht ab.\r\n")
        assert intake.process(1, Fetched(uid, raw.encode(), NOW)).ticket_number

    mail(1, "<evil\x1b]0;x\x07@evil.example>", "Eins")
    mail(2, "<m2@evil.example>", "Zwei")
    with db.transaction(factory) as s:
        acks = s.scalars(select(OutboxMail).where(OutboxMail.kind == "ack")
                         .order_by(OutboxMail.id)).all()
        assert s.scalars(select(InboundMessage.message_id).order_by(InboundMessage.id)
                         ).all() == [None, "<m2@evil.example>"]
    raws = [raw_of(a, intake.desk.store) for a in acks]
    first, second = (message_from_bytes(raw, policy=policy.default) for raw in raws)
    assert first["In-Reply-To"] is None and first["References"] is None
    assert second["In-Reply-To"] == "<m2@evil.example>"
    assert second["References"] == "<fine@evil.example> <m2@evil.example>"
    for raw in raws:
        assert b"\x1b" not in raw and b"x" * 1200 not in raw
    assert not [r for r in caplog.records if "\x1b" in r.getMessage()]
