"""Every mail of the public corpus through the whole daemon: no crash, no loss."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from harness import Daemon, wait_until
from sqlalchemy import func, select

from maild import db
from maild.intake import dedupe_key
from maild.models import Event, InboundMessage, OutboxMail, Ticket

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "public"


@pytest.mark.slow
def test_public_corpus_through_the_daemon(config, tmp_path, mailbox, smtp, database_url):
    # 735 real-world mails (bounces, auto-replies, broken MIME, odd charsets) are appended;
    # each ends processed (a ticket or a recorded automatic mail) or quarantined with a
    # reason, nothing stays behind, and no bounce or automatic mail is answered.
    if not CORPUS.is_dir():
        pytest.fail(f"public corpus missing at {CORPUS} (../shared beside the checkout)")
    raws = [p.read_bytes() for p in sorted(CORPUS.rglob("*.eml"))]
    raws = [r for r in raws if r]  # Dovecot refuses 0-byte messages
    mailbox.append_many(raws)
    engine = db.make_engine(database_url)
    factory = db.session_factory(engine)

    def pending() -> int:
        with db.transaction(factory) as s:
            return int(s.scalar(select(func.count()).select_from(OutboxMail)
                                .where(OutboxMail.state == "pending")))

    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        assert wait_until(lambda: mailbox.count("INBOX") == 0, timeout=300), daemon.output()
        assert wait_until(lambda: pending() == 0, timeout=60)
    finally:
        assert daemon.stop() == 0
    with db.transaction(factory) as s:
        rows = s.execute(select(InboundMessage.state, InboundMessage.kind,
                                InboundMessage.reason, InboundMessage.ticket_id)).all()
        outbox = s.execute(select(OutboxMail.state, OutboxMail.recipients,
                                  OutboxMail.last_error)).all()
        opened = int(s.scalar(select(func.count()).select_from(Ticket)
                              .where(Ticket.automatic.is_(False))))
        limited = int(s.scalar(select(func.count()).select_from(Event)
                               .where(Event.kind == "not_answered")))
    engine.dispose()
    counts = collections.Counter((state, kind) for state, kind, _, _ in rows)
    follow_ups = counts[("processed", "normal")] - opened
    print("\ncorpus outcome:", {f"{s}/{k}": n for (s, k), n in sorted(counts.items())},
          f"of the normal ones {follow_ups} were follow-ups to earlier corpus mails")
    moved = mailbox.messages("Processed") + mailbox.messages("Quarantine")
    assert len(moved) == len(raws)
    # Mails with the same Message-ID and body (the corpus has such copies) count once.
    assert len(rows) == len({dedupe_key(raw) for raw in moved})
    quarantined = [r for r in rows if r.state == "quarantined"]
    assert all(r.reason for r in quarantined)
    assert all(r.kind == "unparseable" for r in quarantined), [r.reason for r in quarantined]
    assert len(quarantined) <= 0.02 * len(raws)
    assert all(r.ticket_id for r in rows if r.state == "processed" and r.kind != "own")
    # Exactly the ordinary mails that opened a ticket were answered, each once (but for
    # senders over the per-address answer limit: the corpus reuses a few addresses).
    print(f"answers: {len(outbox)}, not answered over the limit: {limited}")
    assert len(outbox) == opened - limited
    assert [o for o in outbox if o.state != "sent"] == []
    assert len(smtp.mails) == opened - limited
