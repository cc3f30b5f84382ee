"""Real-world mail classes through the daemon (Dovecot, SMTP capture, both databases): each
becomes a ticket, is answered at the right address or rightly not at all, and nothing is
quarantined. The mails are in tests/data/realworld (see its README)."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import Daemon, rows, wait_until

from maild.mail.classify import classify
from maild.mail.parse import parse
from maild.models import Event, InboundMessage, Ticket

DATA = Path(__file__).parent / "data" / "realworld"
US = "service@example.com"

# file → (the address the acknowledgement goes to, or None for no answer; ticket automatic)
EXPECTED = {
    "header_only": ("jonas.weber@kunde-a.example", False),
    "from_name_only_reply_to": ("kai.mueller@kunde-b.example", False),
    "from_encoded_word_sender": ("j.schaefer@kunde-c.example", False),
    "from_no_brackets": ("helpdesk@kunde-d.example", False),
    "no_address_at_all": (None, False),
    "multipart_boundary_never_appears": ("lea.braun@kunde-e.example", False),
    "missing_end_boundary": ("tim.vogel@kunde-f.example", False),
    "untyped_text_part": ("mia.koch@kunde-g.example", False),
    "html_deeply_nested": ("ben.roth@kunde-h.example", False),
    "smime_signed": ("eva.lang@kunde-i.example", False),
    "smime_encrypted": ("olaf.berg@kunde-j.example", False),
    "pgp_encrypted": ("nina.hahn@kunde-k.example", False),
    "postmaster_draft": ("postmaster@kunde-l.example", False),
    "noreply_order": (None, True),
    "newsletter_no_list_headers": (None, True),
    "press_mailing": (None, True),
    # issue 22: a name and a bare address; only an encoded name in From and the address in
    # a Reply-To written in ISO-2022-JP; a multipart/alternative without its boundary.
    "from_name_then_address": ("anna.berger@kunde-m.example", False),
    "from_encoded_name_reply_to_iso2022jp": ("yamada@kunde-n.example", False),
    "alternative_boundary_never_appears": ("jan.klein@kunde-o.example", False),
}
# Words of each readable mail's text that must reach the ticket.
TEXT = {
    "multipart_boundary_never_appears": "stuerzt beim Scannen",
    "missing_end_boundary": "HTTP 500",
    "untyped_text_part": "Zuruecksetzen des Passworts",
    "html_deeply_nested": "keine Umsaetze",
    "smime_signed": "Zertifikat abgelaufen",
    "from_no_brackets": "bricht bei 80 %",
    "alternative_boundary_never_appears": "nur noch offline",
    "from_encoded_name_reply_to_iso2022jp": "ログインできません",
}


def raw(name: str) -> bytes:
    return (DATA / f"{name}.eml").read_bytes()


def test_every_class_has_a_mail():
    assert {p.stem for p in DATA.glob("*.eml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(TEXT))
def test_readable_text_is_taken_from_broken_structure(name):
    # The text that is there is taken, whatever the MIME structure did.
    mail = parse(raw(name))
    assert TEXT[name] in mail.text
    assert not any(a.content_type.startswith("multipart/") for a in mail.attachments)


def test_a_from_without_brackets_and_without_reply_to_is_still_answered():
    mail = parse(b"From: Test test@kunde-d.example\r\nSubject: x\r\n\r\nHallo\r\n")
    assert (mail.from_addr, mail.from_name) == ("test@kunde-d.example", "Test")
    assert classify(mail, US).answer


def _headers(value: bytes) -> bytes:
    return value + b"To: service@example.com\r\nSubject: x\r\nMessage-ID: <h@x>\r\n\r\nHallo\r\n"


# An address written inside an encoded word (RFC 2047 forbids one there) names nobody:
# decoded, it would make us mail whoever the sender typed in.
STRANGER = [
    b"From: =?utf-8?q?victim=40stranger.example?=\r\n",
    b"From: =?utf-8?q?victim@stranger.example?=\r\n",
    b"From: =?utf-8?b?dmljdGltQHN0cmFuZ2VyLmV4YW1wbGU=?= anna@kunde.example\r\n",
    b"From: =?utf-8?q?victim=40stranger.example?= <anna@kunde.example>\r\n",
    b"From: =?ISO-2022-JP?B?GyRCOzNFRBsoQg==?=\r\n"
    b"Reply-To: =?utf-8?q?victim=40stranger.example?=\r\n",
]


@pytest.mark.parametrize("head", STRANGER)
def test_an_address_inside_an_encoded_word_is_never_answered(head):
    mail = parse(_headers(head))
    assert "stranger" not in mail.from_addr and "stranger" not in mail.reply_to
    assert mail.from_addr in {"", "anna@kunde.example"}


def test_an_encoded_word_in_cc_copies_nobody():
    mail = parse(_headers(b"From: anna@kunde.example\r\n"
                          b"Cc: =?utf-8?q?victim=40stranger.example?=, b@kunde.example\r\n"))
    assert mail.cc == ("b@kunde.example",)


def test_a_reply_to_in_raw_iso_2022_jp_gives_its_address_and_name():
    # Old Japanese mailers write the display name as JIS bytes, not as an encoded word;
    # its escape `ESC ( B` must not open a comment that swallows the address.
    mail = parse(_headers(b"From: =?ISO-2022-JP?B?GyRCOzNFRBsoQg==?=\r\n"
                          b"Reply-To: \x1b$B;3ED\x1b(B <yamada@kunde.example>\r\n"))
    assert (mail.from_addr, mail.address_from, mail.from_name) == (
        "yamada@kunde.example", "Reply-To", "山田")


def test_real_world_mails_become_tickets_answered_at_the_right_address(
        config: Path, tmp_path: Path, mailbox, smtp, database_url):
    # All nineteen classes arrive; every one is a ticket, none is quarantined, answers go to
    # the address each mail gives, and robots and newsletters get none.
    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        for name in EXPECTED:
            mailbox.append(raw(name))
        assert wait_until(lambda: mailbox.count("Processed") == len(EXPECTED), timeout=60), (
            f"processed {mailbox.count('Processed')}, quarantined "
            f"{mailbox.count('Quarantine')}: {daemon.output()[-3000:]}")
        answered = sorted(a for a, _ in EXPECTED.values() if a)
        mails = smtp.wait_for(len(answered), timeout=30)
        assert sorted(r for m in mails for r in m.recipients) == answered
    finally:
        daemon.kill()
    assert mailbox.count("Quarantine") == 0
    inbound = {r.message_id: r for r in rows(database_url, InboundMessage)}
    tickets = {t.id: t for t in rows(database_url, Ticket)}
    for name, (_address, automatic) in EXPECTED.items():
        mid = parse(raw(name)).message_id
        row = inbound[mid]
        assert row.state == "processed" and row.ticket_id in tickets, (name, row.reason)
        assert tickets[row.ticket_id].automatic is automatic, name
    no_address = tickets[inbound["<rw-no-address@filiale.example>"].ticket_id]
    assert no_address.customer_address == "" and no_address.first_response_due is not None
    events = rows(database_url, Event, Event.kind == "not_answered")
    assert [e.ticket_id for e in events] == [no_address.id]
    by_recipient = {m.recipients[0]: m.message for m in mails}
    for address in ("olaf.berg@kunde-j.example", "nina.hahn@kunde-k.example"):
        text = by_recipient[address].get_body(("plain",)).get_content()
        assert "verschlüsselt" in text and "nicht lesen" in text
    plain = by_recipient["lea.braun@kunde-e.example"].get_body(("plain",)).get_content()
    assert "verschlüsselt" not in plain

