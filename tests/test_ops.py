"""Ops commands against the real servers: `maild quarantine` list, show, retry, release."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from harness import Daemon, customer_mail, maild, rows, wait_until

from maild import blobs, config, db
from maild.intake import dedupe_key
from maild.mail.parse import parse
from maild.models import InboundMessage, Ticket


@pytest.fixture
def daemon(config: Path, tmp_path: Path):
    d = Daemon(config, tmp_path / "maild.log").start()
    yield d
    d.kill()


def test_quarantine_retry_really_processes_the_mail_again(
        daemon, config, mailbox, smtp, database_url):
    # A mail an earlier maild could not handle sits in quarantine (its row says so, its
    # raw copy is stored). After the fix, `retry` puts it back and it becomes a ticket:
    # the duplicate check must not take it for one already done.
    assert wait_until(lambda: "watching" in daemon.output())
    raw = customer_mail(1)
    settings = config_settings(config)
    sha = blobs.FolderStore(settings.blob_dir).put(raw)
    engine = db.make_engine(database_url)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            blobs.add_ref(s, sha, len(raw), datetime.now(UTC))
            s.add(InboundMessage(
                mailbox=settings.imap.mailbox_id, uidvalidity=1, uid=999,
                dedupe_key=dedupe_key(raw), message_id=parse(raw).message_id,
                raw_sha256=sha, size=len(raw),
                received_at=datetime.now(UTC), state="quarantined", kind="",
                reason="processing failed 3 times: KeyError: 'x' [error id 0badc0de]",
                attempts=3, error="KeyError: 'x' [error id 0badc0de]"))
        mailbox.append(raw, "Quarantine")
    finally:
        engine.dispose()
    listed = json.loads(maild("quarantine", "list", "--json", config=config).stdout)
    [entry] = listed
    assert "error id 0badc0de" in entry["reason"]
    shown = maild("quarantine", "show", str(entry["id"]), config=config).stdout
    assert "Subject: Fehler bei Auftrag 1" in shown and "0badc0de" in shown
    out = maild("quarantine", "retry", str(entry["id"]), config=config)
    assert out.returncode == 0, out.stderr
    assert "processed again" in out.stdout
    [ack] = smtp.wait_for(1)
    assert ack.recipients == ["kunde1@firma1.example"]
    assert wait_until(lambda: mailbox.count("Quarantine") == 0
                      and mailbox.count("Processed") == 1)
    [row] = rows(database_url, InboundMessage)
    assert row.state == "processed" and row.ticket_id is not None
    assert len(rows(database_url, Ticket)) == 1
    assert json.loads(maild("quarantine", "list", "--json", config=config).stdout) == []


def test_quarantine_release_dismisses_without_processing(
        daemon, config, mailbox, smtp, database_url):
    mailbox.append(b"X-Cut-Off: here")  # no sender, no subject, no body
    assert wait_until(lambda: mailbox.count("Quarantine") == 1)
    [entry] = json.loads(maild("quarantine", "list", "--json", config=config).stdout)
    assert "header-only" in entry["reason"]
    out = maild("quarantine", "release", str(entry["id"]), config=config)
    assert out.returncode == 0, out.stderr
    assert mailbox.count("Quarantine") == 0 and mailbox.count("Processed") == 1
    [row] = rows(database_url, InboundMessage)
    assert row.state == "released" and row.reason.startswith("released by cli:")
    assert smtp.mails == [] and rows(database_url, Ticket) == []
    missing = maild("quarantine", "retry", "424242", config=config)
    assert missing.returncode == 1 and "no quarantined mail" in missing.stderr


def config_settings(path: Path):
    return config.load(path, environ={})
