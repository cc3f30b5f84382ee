"""Retention of outgoing mail: the bytes of mails that are done are dropped after
`[outbox] keep_sent_days`; their rows stay.

Done means sent (counted from `sent_at`), failed or suppressed (counted from the last
attempt it was due): nothing sends them again. The row keeps what the desk still needs
without the bytes: the Message-ID (a copy of our own mail coming back is recognised, a
reply still threads), the VERP token and the recipients (a late bounce still finds its
mail and marks only its recipients), kind, state and times (answer limits, `maild outbox
list`). Only the bytes, the customer's words, go.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update

from maild import blobs, db
from maild.blobs import BlobStore
from maild.models import OutboxMail
from maild.vocab import OutboxState

log = logging.getLogger(__name__)

BATCH = 500  # rows per transaction: the write lock is held briefly


def prune_sent(factory: db.SessionFactory, store: BlobStore, keep_days: float,
               now: datetime) -> int:
    """Drop the bytes of the outgoing mails done more than `keep_days` ago; returns how
    many mails lost their bytes. The files go after each commit (a crash in between
    leaves files nothing refers to, which `maild blobs gc` deletes)."""
    cutoff = now - timedelta(days=keep_days)
    total = 0
    while True:
        with db.transaction(factory) as session:
            rows = session.execute(select(OutboxMail.id, OutboxMail.raw_sha256).where(
                _done_before(cutoff),
                or_(OutboxMail.raw_sha256.is_not(None), OutboxMail.raw.is_not(None)),
            ).order_by(OutboxMail.id).limit(BATCH)).all()
            if rows:
                session.execute(update(OutboxMail).where(
                    OutboxMail.id.in_([r.id for r in rows])).values(raw=None, raw_sha256=None))
            orphaned = blobs.unref(session, [r.raw_sha256 for r in rows])
        for sha in orphaned:
            store.delete(sha)
        total += len(rows)
        if len(rows) < BATCH:
            break
    if total:
        log.info("outgoing mail pruned: bytes of %d mails done before %s dropped",
                 total, cutoff.isoformat(timespec="seconds"))
    return total


def _done_before(cutoff: datetime) -> ColumnElement[bool]:
    return or_(
        and_(OutboxMail.state == OutboxState.SENT, OutboxMail.sent_at < cutoff),
        and_(OutboxMail.state.in_((OutboxState.FAILED, OutboxState.SUPPRESSED)),
             OutboxMail.next_attempt_at < cutoff),
    )
