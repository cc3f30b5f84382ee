"""Every mail of the public corpus through the whole daemon: no crash, no loss."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest
from harness import Daemon, wait_until
from sqlalchemy import func, select

from maild import db
from maild.intake import dedupe_key
from maild.models import Event, InboundMessage, OutboxMail, Ticket

CORPUS = Path(__file__).resolve().parent / "data" / "corpus"


# What the sisimai files are, by name; the few exceptions are deliberate (see EXCEPTIONS).
EXPECTED = {"sisimai/lhost": "bounce", "sisimai/rhost": "bounce", "sisimai/rfc3464": "bounce",
            "sisimai/rfc3834": "automatic", "sisimai/not/rb-issue-368-bug": "automatic",
            "sisimai/not/is-not-bounce": "normal"}
EXCEPTIONS = {
    # A person forwarding a bounce to ask about it ("Fwd: Returned mail"): a customer's
    # question, so a ticket and an answer, not a bounce.
    "lhost-sendmail-14.eml",
    # Mailing-list manager notices ("You are not a member", "Loop Alert") from an ordinary
    # looking address with no automatic marker at all: handled as a person's mail (one
    # acknowledgement, then the per-address limit).
    "lhost-fml-02.eml", "lhost-fml-03.eml",
}


def _category(path: Path) -> str:
    rel = path.relative_to(CORPUS)
    if rel.parts[0] == "sisimai":
        if rel.parts[1] == "not":
            return "sisimai/not/" + path.stem.rstrip("0123456789").rstrip("-")
        return "sisimai/" + path.name.split("-")[0]
    return "/".join(rel.parts[:-1])


@pytest.mark.slow
def test_public_corpus_through_the_daemon(config, tmp_path, mailbox, smtp, database_url):
    # 735 real-world mails (bounces, auto-replies, broken MIME, odd charsets) are appended;
    # each ends processed (a ticket or a recorded automatic mail) or quarantined with a
    # reason, nothing stays behind, and no bounce or automatic mail is answered.
    files = {p: p.read_bytes() for p in sorted(CORPUS.rglob("*.eml"))}
    assert len(files) == 735, f"the corpus in {CORPUS} is incomplete"
    files = {p: raw for p, raw in files.items() if raw}  # Dovecot refuses 0-byte messages
    # Each mail names its file in a header of its own (changes no verdict), so the outcome
    # can be told per category below.
    raws = [f"X-Corpus-File: {p.relative_to(CORPUS)}\r\n".encode() + raw
            for p, raw in files.items()]
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
                                InboundMessage.reason, InboundMessage.ticket_id,
                                InboundMessage.dedupe_key)).all()
        answered_automatic = int(s.scalar(
            select(func.count()).select_from(OutboxMail).join(
                Ticket, Ticket.id == OutboxMail.ticket_id).where(Ticket.automatic.is_(True))))
        outbox = s.execute(select(OutboxMail.state, OutboxMail.recipients,
                                  OutboxMail.last_error)).all()
        opened = int(s.scalar(select(func.count()).select_from(Ticket)
                              .where(Ticket.automatic.is_(False))))
        limited = int(s.scalar(select(func.count()).select_from(Event)
                               .where(Event.kind == "not_answered")))
    engine.dispose()
    counts = collections.Counter((state, kind) for state, kind, _, _, _ in rows)
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
    assert all(r.ticket_id for r in rows
               if r.state == "processed" and r.kind not in ("own", "bounce"))
    # Per category (the file name says what the mail is): the verdict for each file.
    by_key = {r.dedupe_key: r.kind for r in rows}
    table: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    wrong = []
    for stored in moved:
        name = re.match(rb"X-Corpus-File: ([^\r\n]+)", stored)
        assert name, stored[:100]
        path = CORPUS / name.group(1).decode()
        got = by_key[dedupe_key(stored)]
        category = _category(path)
        table[category][got] += 1
        expected = EXPECTED.get(category)
        if expected and got != expected and path.name not in EXCEPTIONS:
            wrong.append((path.name, got))
    print("\nper category:")
    for category, kinds in sorted(table.items()):
        print(f"  {category:<28} " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    assert wrong == []
    assert answered_automatic == 0  # no answer to any automatic mail, bounce or spam
    # Exactly the ordinary mails that opened a ticket were answered, each once (but for
    # senders over the per-address answer limit: the corpus reuses a few addresses).
    print(f"answers: {len(outbox)}, not answered over the limit: {limited}")
    assert len(outbox) == opened - limited
    assert [o for o in outbox if o.state != "sent"] == []
    assert len(smtp.mails) == opened - limited
