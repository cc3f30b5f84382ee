"""MIME bombs (issue 22): a mail of many parts or deeply nested ones is read up to the caps
of `maild.mail.structure`, opens its ticket and is told what was not taken; none holds
the parse worker for long (figures: `bench/mimebombs.py`, `bench/fuzz.py`)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from harness import customer_mail, offline_settings, raw_of, rows

from maild.analyse import Budget
from maild.daemon import build_desk
from maild.intake import Intake
from maild.mail import structure
from maild.mail.fetched import Fetched
from maild.mail.parse import parse
from maild.models import InboundMessage, OutboxMail, Ticket

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS.parent / "bench"))
import mimebombs  # noqa: E402  (the three shapes of the issue)

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
BOMBS = {
    "attachments": mimebombs.attachments(50_000),
    "texts": mimebombs.texts(200_000),
    "nested": mimebombs.nested(3_000),
    "forwarded": mimebombs.forwarded(3_000),
}


def test_an_ordinary_multipart_mail_is_counted_and_not_cut():
    # A text part, an HTML alternative and an attachment: three parts, two levels, no cut.
    raw = (b"From: a@kunde.example\r\nContent-Type: multipart/mixed; boundary=\"out\"\r\n\r\n"
           b"--out\r\nContent-Type: multipart/alternative;\r\n boundary=in\r\n\r\n"
           b"--in\r\nContent-Type: text/plain\r\n\r\nHallo\r\n"
           b"--in\r\nContent-Type: text/html\r\n\r\n<p>Hallo</p>\r\n--in--\r\n"
           b"--out\r\nContent-Type: application/pdf\r\n\r\nx\r\n--out--\r\n")
    assert structure.scan(raw) == structure.Shape(parts=4, depth=2)


def test_delimiter_lines_of_undeclared_boundaries_and_signatures_are_no_parts():
    # "-- " signatures and "--x" lines in a text mail without a declared boundary.
    raw = b"From: a@kunde.example\r\n\r\nHallo\r\n-- \r\nAnna\r\n" + b"--x\r\n" * 5000
    assert structure.scan(raw).parts == 0 and not structure.scan(raw).cut


@pytest.mark.parametrize(("name", "parts", "depth"), [
    ("attachments", structure.MAX_PARTS, 1),
    ("texts", structure.MAX_PARTS, 1),
    ("nested", structure.MAX_DEPTH, structure.MAX_DEPTH),
])
def test_a_bomb_is_cut_at_the_first_part_over_a_cap(name, parts, depth):
    # The pass stops following the structure where the first cap is passed; the parts
    # after it are counted, not read.
    shape = structure.scan(BOMBS[name])
    assert (shape.parts, shape.depth) == (parts, depth)
    assert BOMBS[name][shape.cut:].startswith(b"--")
    assert shape.parts_left_out > 0


def test_attached_mails_nested_without_boundaries_count_as_depth():
    # message/rfc822 in message/rfc822 (the stdlib recurses): cut at MAX_DEPTH levels.
    shape = structure.scan(BOMBS["forwarded"])
    assert (shape.parts, shape.depth) == (0, structure.MAX_DEPTH)
    assert BOMBS["forwarded"][shape.cut:].lower().startswith(b"content-type: message/")
    assert shape.parts_left_out == 3_000 - structure.MAX_DEPTH


def test_a_boundary_declared_in_capitals_is_followed():
    # Parameter names are case-insensitive to the stdlib, so to the pass too.
    raw = mimebombs.texts(2_000).replace(b"boundary=", b"BoUnDaRy=")
    assert structure.scan(raw).parts_left_out == 2_000 - structure.MAX_PARTS


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_bomb_parses_to_its_text_with_what_was_left_out(name):
    # No RecursionError, the customer's words are read, at most MAX_PARTS files.
    mail = parse(BOMBS[name])
    assert mail.from_addr == "anna@kunde.example"
    assert mail.text.strip() in {"Hallo, anbei die Belege.", "Zeile 0", ""}
    assert mail.parts_left_out == structure.scan(BOMBS[name]).parts_left_out
    assert len(mail.attachments) <= structure.MAX_PARTS


def test_a_mail_at_the_caps_is_read_whole():
    # Exactly MAX_PARTS parts and MAX_DEPTH levels: nothing left out.
    assert parse(mimebombs.texts(structure.MAX_PARTS - 1)).parts_left_out == 0
    assert parse(mimebombs.nested(structure.MAX_DEPTH - 1)).parts_left_out == 0


@pytest.fixture
def intake(tmp_path, factory, database_url):
    # The daemon's intake with a real parse worker; a 5 s budget (the goal is 1 s, the
    # margin is for a busy test machine: bench/mimebombs.py prints the figures).
    desk = build_desk(offline_settings(database_url, tmp_path / "blobs"), factory, NOW)
    made = Intake(factory, desk, "INBOX", 3, lambda: NOW, workers=1,
                  budget=Budget(5.0, 1024))
    made.start()
    yield made
    made.close()


def test_the_three_bombs_open_tickets_in_the_worker_and_the_customer_is_told(
        intake, database_url):
    # The four bombs and a plain mail in one batch through the worker: every one becomes a
    # ticket within the budget (none quarantined) and each bomb's acknowledgement says
    # how many parts were not taken.
    batch = [Fetched(i, raw.replace(b"anna@", f"{name}@".encode(), 1), NOW)
             for i, (name, raw) in enumerate(BOMBS.items(), start=1)]
    batch.append(Fetched(5, customer_mail(5), NOW))
    outcomes = intake.process_batch(7, batch)
    assert [o.action for o in outcomes] == ["processed"] * 5, [o.reason for o in outcomes]
    assert all(r.state == "processed" and r.ticket_id for r in rows(database_url, InboundMessage))
    assert len(rows(database_url, Ticket)) == 5
    acks = [message_from_bytes(raw_of(o, intake.desk.store), policy=policy.default)
            for o in rows(database_url, OutboxMail)]
    texts = {str(a["To"]): " ".join(a.get_body(("plain",)).get_content().split())
             for a in acks}
    assert len(texts) == 5 and "weitere Teile" not in texts["kunde5@firma5.example"]
    for name in BOMBS:
        left = structure.scan(BOMBS[name]).parts_left_out
        assert f"{left} weitere Teile nicht" in texts[f"{name}@kunde.example"], name


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_bomb_shaped_as_a_bounce_is_read_within_the_caps_too(name):
    # The bounce reader parses the mail again (compat32): the same caps apply to it.
    from maild.analyse import Rules, analyse
    from maild.mail.files import Limits
    raw = BOMBS[name].replace(b"From: Anna Berger <anna@kunde.example>",
                              b"From: Mail Delivery System <MAILER-DAEMON@mx.example>", 1)
    raw = raw.replace(b"Subject: ", b"Subject: Undelivered Mail Returned to Sender ", 1)
    rules = Rules("service@example.com", "example.com", None, Limits(10_000_000, 25_000_000))
    result = analyse(raw, rules)
    assert result.error == "" and result.verdict is not None
    assert result.verdict.kind == "bounce"


def test_the_bounce_reader_reads_no_part_after_the_cut():
    # A delivery-status part as the 1,001st part is not read: what it says is only in the
    # raw mail (unread, it marks no address as bouncing).
    from maild.mail import dsn
    report = (b"--t\r\nContent-Type: message/delivery-status\r\n\r\n"
              b"Reporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; x@kunde.example\r\n"
              b"Action: failed\r\nStatus: 5.1.1\r\n\r\n--t--\r\n")
    def bounce(parts: int) -> bytes:
        return mimebombs.texts(parts).replace(b"--t--\r\n", report).replace(
            b"From: Anna Berger <anna@kunde.example>", b"From: MAILER-DAEMON@mx.example", 1)
    assert [f.recipient for f in dsn.read(bounce(structure.MAX_PARTS - 1)).failures] == [
        "x@kunde.example"]
    assert dsn.read(bounce(structure.MAX_PARTS)).failures == ()


def test_a_charset_name_with_a_nul_is_no_parser_bug():
    # `bytes.decode("utf-8\x00")` raises ValueError, not LookupError.
    from maild.analyse import Rules, analyse
    from maild.mail.files import Limits
    raw = (b"From: MAILER-DAEMON@mx.example\r\nSubject: Undelivered Mail\r\n"
           b"Content-Type: multipart/report; report-type=delivery-status; boundary=r\r\n\r\n"
           b"--r\r\nContent-Type: text/plain; charset=\"utf-8\x00\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nSGFsbG8=\r\n--r--\r\n")
    rules = Rules("service@example.com", "example.com", None, Limits(10_000_000, 25_000_000))
    assert analyse(raw, rules).error == ""
