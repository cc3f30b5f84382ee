"""Attachments: safe names, sniffed types, limits, deduplication, logos, winmail.dat."""

from __future__ import annotations

import base64
import email
import email.policy
import os
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from harness import cli_config, offline_settings, raw_of, wait_until
from sqlalchemy import select

from maild import db
from maild.daemon import build_desk
from maild.intake import Intake
from maild.mail import files
from maild.mail.fetched import Fetched
from maild.mail.parse import Part
from maild.models import (
    Attachment,
    Blob,
    Event,
    InboundMessage,
    OutboxMail,
    Ticket,
    TicketMessage,
)

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwAD"
                       "hgGAWjR9awAAAABJRU5ErkJggg==")
CORPUS = Path(__file__).resolve().parent / "data" / "corpus"


@pytest.mark.parametrize("name,safe", [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\Windows\\evil.exe", "evil.exe"),
    ("\u202egnp.exe", "gnp.exe"),          # a right-to-left override hides the real type
    ("bad\x00name\r\n.pdf", "badname.pdf"),
    ("...", "attachment"),
    ("", "attachment"),
    (".bashrc", "bashrc"),
    ("Lieferschein März.pdf", "Lieferschein März.pdf"),
])
def test_names_cannot_escape_or_deceive(name, safe):
    assert files.safe_filename(name) == safe


def test_long_names_are_bounded_and_keep_their_extension():
    safe = files.safe_filename("x" * 500 + ".pdf")
    assert len(safe) <= files.MAX_NAME and safe.endswith(".pdf")


def test_types_are_sniffed_from_content():
    assert files.sniff(PNG, "application/octet-stream") == "image/png"
    assert files.sniff(b"%PDF-1.7\n...", "image/jpeg") == "application/pdf"
    zipped = b"PK\x03\x04" + b"\0" * 60
    xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert files.sniff(zipped, xlsx) == xlsx
    assert files.sniff(b"just some words", "text/csv") == "text/csv"


def test_limits_per_file_and_per_mail():
    parts = tuple(Part(f"f{n}.bin", "application/octet-stream", bytes(size), False, "")
                  for n, size in enumerate([10, 300, 60, 50]))
    planned = files.plan(parts, files.Limits(max_file_bytes=100, max_mail_bytes=100))
    assert [(p.filename, p.store) for p in planned] == [
        ("f0.bin", True), ("f1.bin", False), ("f2.bin", True), ("f3.bin", False)]
    assert "too large" in planned[1].note and "mail limit" in planned[3].note


def test_unreadable_winmail_dat_is_kept_as_it_is():
    mail = email.message_from_bytes(
        (CORPUS / "sisimai/bsd/lhost-amazonworkmail-01.eml").read_bytes(),
        policy=email.policy.default)
    [tnef] = [p for p in mail.walk() if p.get_content_type() == "application/ms-tnef"]
    part = Part("winmail.dat", "application/ms-tnef", tnef.get_payload(decode=True), False, "")
    assert files.unpack_tnef(part) == [part]


def test_winmail_dat_is_unpacked(monkeypatch):
    # tnefparse's decoder stands in here: no TNEF with attachments is in the corpus.
    class Inner:
        name, data = "report.pdf", b"%PDF-1.4 inner"

        def long_filename(self):
            return "Monatsbericht November.pdf"

    class FakeTnef:
        def __init__(self, data):
            self.attachments = [Inner()]

    monkeypatch.setattr(files, "TNEF", FakeTnef)
    planned = files.plan((Part("winmail.dat", "application/ms-tnef", b"x", False, ""),),
                         files.Limits(10**6, 10**6))
    assert [(p.filename, p.content_type) for p in planned] == [
        ("Monatsbericht November.pdf", "application/pdf")]


def mail_with(parts: list[tuple[str, str, bytes, str]], n: int) -> Fetched:
    """A mail with attachments (name, type, data, disposition)."""
    boundary = "BOUNDARY"
    chunks = [f"From: Anna <anna@kunde.example>\r\nTo: service@example.com\r\n"
              f"Subject: Anhang {n}\r\nMessage-ID: <att{n}@kunde.example>\r\n"
              f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n"
              f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
              f"Siehe Anhang.\r\n"]
    for name, ctype, data, disposition in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Disposition: "
                      f"{disposition}; filename=\"{name}\"\r\nContent-ID: <{name}>\r\n"
                      f"Content-Transfer-Encoding: base64\r\n\r\n"
                      f"{base64.encodebytes(data).decode()}\r\n")
    chunks.append(f"--{boundary}--\r\n")
    return Fetched(n, "".join(chunks).encode(), NOW)


@pytest.fixture
def intake(tmp_path, factory, database_url) -> Intake:
    settings = offline_settings(database_url, tmp_path / "blobs",
                                attachments={"max_file_mb": 0.001, "max_mail_mb": 0.002})
    return Intake(factory, build_desk(settings, factory, NOW), "INBOX", 3, lambda: NOW)


def test_oversized_file_is_recorded_not_stored_and_the_customer_told(intake, factory):
    big = b"%PDF-1.4 " + bytes(5000)
    intake.process(1, mail_with([("huge.pdf", "application/pdf", big, "attachment"),
                                 ("shot.png", "image/png", PNG, "attachment")], 1))
    with db.transaction(factory) as s:
        assert s.scalars(select(Ticket)).one()
        rows = {a.filename: a for a in s.scalars(select(Attachment))}
        assert rows["huge.pdf"].blob_sha256 is None and "too large" in rows["huge.pdf"].note
        assert rows["huge.pdf"].size == len(big)
        assert rows["shot.png"].blob_sha256 is not None
        ack = s.scalars(select(OutboxMail)).one()
    text = email.message_from_bytes(raw_of(ack, intake.desk.store),
                                    policy=email.policy.default).get_body(
        ("plain",)).get_content().replace("\r\n", "\n")
    # An unverified sender: counted, not named (the names could carry a stranger's words).
    assert "Anhänge:      1 Datei" in text and "shot.png" not in text
    assert "Nicht gespeichert haben wir:\n  - eine Datei (5 KB)" in text


def test_same_file_twice_is_stored_once_and_counted_twice(intake, factory):
    pdf = b"%PDF-1.4 same report"
    intake.process(1, mail_with([("a.pdf", "application/pdf", pdf, "attachment")], 1))
    intake.process(2, mail_with([("b.pdf", "application/pdf", pdf, "attachment")], 2))
    with db.transaction(factory) as s:
        shas = s.scalars(select(Attachment.blob_sha256)).all()
        assert len(shas) == 2 and shas[0] == shas[1]
        assert s.get(Blob, shas[0]).refs == 2
    assert len(list((intake.desk.store.root).rglob(shas[0]))) == 1


def test_a_recurring_small_inline_image_is_a_logo_not_an_attachment(intake, factory):
    logo = ("logo.png", "image/png", PNG, "inline")
    intake.process(1, mail_with([logo, ("a.pdf", "application/pdf", b"%PDF-1.4 1",
                                        "attachment")], 1))
    intake.process(2, mail_with([logo], 2))
    with db.transaction(factory) as s:
        rows = s.scalars(select(Attachment).order_by(Attachment.id)).all()
        assert [(a.filename, a.inline, a.listed) for a in rows] == [
            ("logo.png", True, True), ("a.pdf", False, True), ("logo.png", True, False)]


def test_purge_erases_one_ticket_and_keeps_what_another_uses(intake, factory, tmp_path,
                                                             database_url):
    # Erasure on request: ticket, messages, raw mail and unshared files go; the file
    # another ticket also has stays; one event without personal data remains.
    import json

    from harness import maild
    shared = ("same.pdf", "application/pdf", b"%PDF-1.4 shared", "attachment")
    own = ("own.pdf", "application/pdf", b"%PDF-1.4 only the first", "attachment")
    intake.process(1, mail_with([shared, own], 1))
    intake.process(2, mail_with([shared], 2))
    store = intake.desk.store
    with db.transaction(factory) as s:
        first = s.scalars(select(Ticket).where(Ticket.number == 10001)).one()
        raw_sha = s.scalars(select(InboundMessage.raw_sha256).where(
            InboundMessage.ticket_id == first.id)).one()
    config = cli_config(tmp_path / "cli.toml", database_url, store.root)
    refused = maild("tickets", "purge", "10001", config=config)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    done = maild("tickets", "purge", "10001", "--yes", config=config)
    assert done.returncode == 0, done.stderr
    assert "ticket #10001 erased: 2 messages, 2 attachments, 1 raw mails" in done.stdout
    with db.transaction(factory) as s:
        assert s.scalars(select(Ticket.number)).all() == [10002]
        names = s.scalars(select(Attachment.filename)).all()
        assert names == ["same.pdf"]
        sha = s.scalars(select(Attachment.blob_sha256)).one()
        assert s.get(Blob, sha).refs == 1
        assert s.get(Blob, raw_sha) is None
        [event] = s.scalars(select(Event).where(Event.kind == "purged")).all()
        assert event.ticket_id is None and "anna" not in json.dumps(event.detail)
    assert store.get(sha) == b"%PDF-1.4 shared"
    assert not list(store.root.rglob(raw_sha))
    assert maild("tickets", "show", "10001", config=config).returncode == 1


def test_a_forwarded_mail_is_kept_with_its_subject():
    inner = b"From: a@b.example\r\nSubject: Lieferung 4711 fehlt\r\n\r\nHallo\r\n"
    planned = files.plan((Part("weitergeleitet.eml", "application/octet-stream", inner, False,
                               ""),), files.Limits(10**6, 10**6))
    assert planned[0].store and planned[0].note == "forwarded mail: Lieferung 4711 fehlt"


def test_a_mail_over_the_fetch_limit_becomes_a_ticket_from_its_text(
        tmp_path, dovecot, mailbox, smtp, database_url):
    # 3 MB of video with a 1 MB fetch limit: maild reads the structure, fetches the text
    # only, records the video as not fetched and tells the customer how to send it.
    from harness import Daemon, write_config

    config = write_config(tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
                          password=mailbox.password, smtp_port=smtp.port,
                          database_url=database_url, imap_extra="max_fetch_mb = 1.0")
    msg = EmailMessage()
    msg["From"] = "Bob Smith <bob@customer.example>"
    msg["To"] = "service@example.com"
    msg["Subject"] = "Screen recording of the crash"
    msg["Message-ID"] = "<big@customer.example>"
    msg.set_content("The app crashes when I open the order list. Recording attached.\n"
                    "Version 5.1 on Windows 11.")
    msg.add_alternative("<p>The app crashes when I open the order list.</p>", subtype="html")
    msg.add_attachment(os.urandom(3_000_000), maintype="video", subtype="mp4",
                       filename="crash.mp4")
    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        mailbox.append(msg.as_bytes())
        [ack] = smtp.wait_for(1)
        assert wait_until(lambda: mailbox.count("Processed") == 1)
    finally:
        daemon.kill()
    text = ack.message.get_body(preferencelist=("plain",)).get_content()
    # An English customer, not verified: the file counted, not named.
    assert "- a file (" in text and "crash.mp4" not in text and "zu groß" not in text
    assert "too large" in text or "download link" in text.lower()
    engine = db.make_engine(database_url)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            ticket = s.scalars(select(Ticket)).one()
            message = s.scalars(select(TicketMessage)).first()
            [video] = s.scalars(select(Attachment)).all()
            assert "crashes when I open the order list" in message.body_text
            assert ticket.facts.software_version == "5.1"
            assert (video.filename, video.blob_sha256, video.size) == ("crash.mp4", None,
                                                                      pytest.approx(4_000_000,
                                                                                    rel=0.4))
            assert "not fetched" in video.note
    finally:
        engine.dispose()
