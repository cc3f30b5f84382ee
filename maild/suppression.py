"""Who gets no mail: addresses marked bouncing, and senders agents blocked (`#spam block`).

An address marked bouncing gets no mail of any kind until it writes to us again or ops
clear it (`maild addresses clear`). The outgoing side asks `deliverable()` before every
mail; the bounce handling (maild/bounces.py) marks addresses. Also the VERP envelope
sender that lets a bounce name the mail it belongs to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild import db
from maild.mail.parse import person
from maild.models import AddressFlag

log = logging.getLogger(__name__)


def verp_address(support_address: str, message_id: str) -> str:
    """The envelope sender that names the mail it belongs to: `service+b-TOKEN@…`, TOKEN
    the random part of our Message-ID (`<maild.t10001.TOKEN@…>`)."""
    local, _, domain = support_address.partition("@")
    return f"{local}+b-{verp_token(message_id)}@{domain}"


def verp_token(message_id: str) -> str:
    """The random part of our Message-ID (`<maild.t10001.TOKEN@…>` → TOKEN), kept in the
    outbox row (indexed) so a bounce to the VERP address finds its mail."""
    return message_id.strip("<>").partition("@")[0].rpartition(".")[2][:64]


# session.info key: addresses read by `preload` and found without a flag, in this session.
_NONE = "maild.suppression.none"


def preload(session: Session, addresses: Iterable[str]) -> None:
    """Read the flags of `addresses` in one query (the intake does, for the senders of a
    batch): later `flag()` and `deliverable()` calls in this session ask the database
    only about other addresses. Every write of a flag goes through this module, which
    keeps the record true."""
    wanted = {a.lower() for a in addresses if a} | {person(a) for a in addresses if a}
    found: set[str] = set()
    for chunk in db.chunks(sorted(wanted)):
        found.update(row.address for row in session.scalars(
            select(AddressFlag).where(AddressFlag.address.in_(chunk))))
    session.info.setdefault(_NONE, set()).update(wanted - found)


def flag(session: Session, address: str) -> AddressFlag | None:
    if not address or address.lower() in session.info.get(_NONE, ()):
        return None
    return session.get(AddressFlag, address.lower())


def blocked(session: Session, address: str) -> AddressFlag | None:
    """The block on `address`'s person (any spelling of it: `anna+x@` is `anna@`), or on
    the address itself (blocks made before blocks were kept by person)."""
    for key in dict.fromkeys((person(address), address.lower())):
        row = flag(session, key)
        if row is not None and row.blocked_at is not None:
            return row
    return None


def _new_flag(session: Session, address: str, now: datetime) -> AddressFlag:
    row = AddressFlag(address=address.lower(), updated_at=now)
    session.add(row)
    session.info.get(_NONE, set()).discard(address.lower())
    return row


def mark_bouncing(session: Session, address: str, status: str, detail: str,
                  now: datetime) -> None:
    row = flag(session, address) or _new_flag(session, address, now)
    row.bouncing_since = row.bouncing_since or now
    row.bounce_status, row.bounce_detail, row.updated_at = status, detail[:1000], now


def wrote_again(session: Session, address: str, now: datetime) -> bool:
    """A bouncing address that writes to us works again: clear the mark."""
    row = flag(session, address)
    if row is None or row.bouncing_since is None:
        return False
    row.bouncing_since, row.bounce_status, row.updated_at = None, "", now
    log.info("address writes again, no longer marked bouncing: %s", address)
    return True


def block(session: Session, address: str, by: str, now: datetime) -> None:
    """Block the person behind `address` (every spelling of it)."""
    address = person(address)
    row = flag(session, address) or _new_flag(session, address, now)
    row.blocked_at, row.blocked_by, row.updated_at = now, by, now


def deliverable(session: Session, recipients: Sequence[str]) -> list[str]:
    """`recipients` without those marked bouncing."""
    if not recipients:
        return []
    none = session.info.get(_NONE, ())
    asked = [r.lower() for r in recipients if r.lower() not in none]
    bouncing = set(session.scalars(select(AddressFlag.address).where(
        AddressFlag.address.in_(asked), AddressFlag.bouncing_since.is_not(None)))) \
        if asked else set()
    return [r for r in recipients if r.lower() not in bouncing]
