"""IMAP servers that are not Dovecot as it comes: one without MOVE, UIDPLUS and IDLE, and
Cyrus IMAP. `maild run` against each, the SMTP capture, both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import Daemon, outbox_settled, rows, wait_until

from maild.models import InboundMessage, Ticket

DATA = Path(__file__).parent / "data"
# Broken mails every server here stores (Cyrus refuses NUL bytes and a first line that is
# no header at APPEND already).
BROKEN = [
    b"X-Mailer: nothing else\r\n",
    b"From: y@example.org\r\nSubject: broken\r\nContent-Type: multipart/mixed; "
    b"boundary=NOPE\r\n\r\n\r\n",
]


@pytest.fixture
def daemon(config: Path, tmp_path: Path):
    d = Daemon(config, tmp_path / "maild.log")
    yield d
    d.kill()


def commands(rawlog: Path) -> list[str]:
    """The commands the server was sent (after each login), as its rawlog has them."""
    found = []
    for path in sorted(rawlog.glob("*.in")):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(" ", 2)  # time, tag, command and arguments
            if len(parts) == 3:
                found.append(parts[2])
    return found


@pytest.mark.parametrize("imap_server", ["plain_dovecot"], indirect=True)
def test_without_move_and_idle_maild_polls_and_copies(
        imap_server, daemon, mailbox, smtp, database_url):
    # A server that offers neither MOVE, UIDPLUS nor IDLE: the customer still gets one
    # answer, the mails still end in Processed and Quarantine; maild polled, and moved by
    # COPY, \Deleted and EXPUNGE -- the server's own record of the commands shows it.
    rawlog = imap_server.record(mailbox.user)
    daemon.start()
    mailbox.append((DATA / "customer_de.eml").read_bytes())
    mailbox.append(BROKEN[0])
    [ack] = smtp.wait_for(1)
    assert ack.message["Subject"].startswith("[#10001] Dein Support-Ticket")
    assert wait_until(lambda: (mailbox.count("INBOX"), mailbox.count("Processed"),
                               mailbox.count("Quarantine")) == (0, 1, 1))
    assert wait_until(lambda: outbox_settled(database_url))
    assert daemon.stop() == 0
    assert len(smtp.mails) == 1
    [ticket] = rows(database_url, Ticket)
    assert ticket.customer_address == "anna.berger@kunde-gmbh.de"
    assert "wait=poll every 1s move=COPY+EXPUNGE" in daemon.output()
    sent = [c.upper() for c in commands(rawlog)]
    assert not [c for c in sent if c.startswith(("IDLE", "MOVE", "UID MOVE", "UID EXPUNGE"))]
    assert any(c.startswith('UID COPY') and c.endswith(' "PROCESSED"') for c in sent), sent
    assert any(c.startswith('UID COPY') and c.endswith(' "QUARANTINE"') for c in sent), sent
    assert any(c.startswith("UID STORE") and "+FLAGS.SILENT (\\DELETED)" in c for c in sent)
    assert "EXPUNGE" in sent


@pytest.mark.parametrize("imap_server", ["cyrus"], indirect=True)
def test_cyrus_mail_becomes_a_ticket_and_broken_mail_is_quarantined(
        daemon, mailbox, smtp, database_url):
    # Against Cyrus IMAP: broken mails go to Quarantine with a reason, the customer's mail
    # behind them becomes a ticket, is answered once and ends in Processed.
    daemon.start()
    for raw in BROKEN:
        mailbox.append(raw)
    mailbox.append((DATA / "customer_de.eml").read_bytes())
    [ack] = smtp.wait_for(1)
    msg = ack.message
    assert ack.recipients == ["anna.berger@kunde-gmbh.de"]
    assert msg["Subject"] == "[#10001] Dein Support-Ticket: Auftragsliste lädt nicht mehr"
    assert msg["In-Reply-To"] == "<20261126101500.4711@kunde-gmbh.de>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert wait_until(lambda: (mailbox.count("INBOX"), mailbox.count("Processed"),
                               mailbox.count("Quarantine")) == (0, 1, 2))
    [processed] = mailbox.messages("Processed")
    assert b"Message-ID: <20261126101500.4711@kunde-gmbh.de>" in processed
    assert wait_until(lambda: outbox_settled(database_url))
    assert len(smtp.mails) == 1
    [ticket] = rows(database_url, Ticket)
    assert (ticket.number, ticket.customer_address) == (10001, "anna.berger@kunde-gmbh.de")
    reasons = sorted(r.reason for r in rows(database_url, InboundMessage,
                                            InboundMessage.state == "quarantined"))
    assert len(reasons) == 2
    assert any("header-only" in r for r in reasons) and any("broken MIME" in r for r in reasons)
    assert "wait=IDLE move=MOVE" in daemon.output()
