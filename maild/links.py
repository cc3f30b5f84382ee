"""Signed, unguessable links bound to one ticket (the ticket page, escalation, replies)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

_EPOCH = date(1970, 1, 1)


def ticket_url(public_url: str, secret: str, number: int, address: str, version: int,
               now: datetime) -> str:
    """The ticket page: history, adding information and files, the escalation button."""
    return customer_url(public_url, secret, "ticket", number, address, version, now)


def escalation_url(public_url: str, secret: str, number: int, address: str, version: int,
                   now: datetime) -> str:
    """The call-back service's confirmation page for the ticket."""
    return customer_url(public_url, secret, "escalate", number, address, version, now)


def reply_token(secret: str, ticket_number: int) -> str:
    """The unguessable part of a ticket's reply address `service+NUMBER.TOKEN@…`."""
    # Lower-case hex: addresses are compared case-insensitively all along the way.
    mac = hmac.new(secret.encode(), f"maild.reply.{ticket_number}".encode(), hashlib.sha256)
    return mac.hexdigest()[:20]


def reply_address(support_address: str, secret: str, ticket_number: int) -> str:
    local, _, domain = support_address.partition("@")
    return f"{local}+{ticket_number}.{reply_token(secret, ticket_number)}@{domain}"


ALL_AGENTS = "*"  # what a notification sent to several agents at once is bound to
_TOKEN_LENGTH = 30  # "a", five hex digits of the issue day, 24 of the MAC


def agent_key(secret: str, generation: int) -> str:
    """The key of agents' tokens: derived from the signing key and the agent key
    generation (`[security] agent_key_version`), so raising the generation revokes every
    agent token without touching customers' links and reply addresses."""
    mac = hmac.new(secret.encode(), f"maild.agent-key.{generation}".encode(), hashlib.sha256)
    return mac.hexdigest()


def _day(now: datetime) -> int:
    return (now.astimezone(UTC).date() - _EPOCH).days


def _agent_mac(key: str, ticket_number: int, address: str, day: int) -> str:
    text = f"maild.agent.{ticket_number}.{address.lower()}.{day}"
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()[:24]


def agent_token(key: str, ticket_number: int, address: str, now: datetime) -> str:
    """The token in the reply address of a notification to `address` (an agent, the team
    address or ALL_AGENTS) about one ticket, issued today: proof that a reply to it comes
    from someone who received that notification (customers never see it)."""
    day = _day(now)
    return f"a{day:05x}{_agent_mac(key, ticket_number, address, day)}"


def agent_reply_address(support_address: str, key: str, ticket_number: int, address: str,
                        now: datetime) -> str:
    local, _, domain = support_address.partition("@")
    return f"{local}+{ticket_number}.{agent_token(key, ticket_number, address, now)}@{domain}"


def agent_token_holder(key: str, ticket_number: int, token: str, addresses: Sequence[str],
                       now: datetime, days: int) -> str | None:
    """Which of `addresses` the token was issued to for this ticket at most `days` ago, or
    None (forged, another ticket's, another agent's, expired or of an old key generation)."""
    token = token.lower()
    if len(token) != _TOKEN_LENGTH or not token.startswith("a"):
        return None  # also the unbound tokens before 2026-11 (`a` + 24 hex digits)
    try:
        day = int(token[1:6], 16)
    except ValueError:
        return None
    if not 0 <= _day(now) - day <= days:
        return None
    for address in addresses:
        if hmac.compare_digest(_agent_mac(key, ticket_number, address, day), token[6:]):
            return address
    return None


def reply_token_valid(secret: str, ticket_number: int, token: str) -> bool:
    return hmac.compare_digest(reply_token(secret, ticket_number), token.lower())


# The customer's links (ticket page, escalation): signed, bound to the ticket and the
# customer's address, with their issue time and the ticket's link version (revocable).


@dataclass(frozen=True, slots=True)
class LinkClaim:
    """What a valid-looking customer link says; the caller checks it against the ticket."""

    kind: str
    number: int
    address_tag: str  # a digest of the customer's address ('' for a legacy escalation link)
    version: int
    issued: datetime | None  # None for a legacy escalation link (issued with the ack)


def address_tag(secret: str, address: str) -> str:
    """The customer's address as the token carries it: keyed, so a token neither shows
    the address nor lets anyone test a guess."""
    mac = hmac.new(secret.encode(), f"maild.link.{address.strip().lower()}".encode(),
                   hashlib.sha256)
    return mac.hexdigest()[:16]


def address_matches(keys: Sequence[str], tag: str, address: str) -> bool:
    """Whether `tag` names `address` under one of `keys` (each compared in constant time)."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(tag, address_tag(key, address))
    return found


def _link_serializer(keys: Sequence[str], kind: str) -> URLSafeSerializer:
    # itsdangerous signs with the last key and accepts every one of them.
    return URLSafeSerializer(list(keys), salt="maild.escalate" if kind == "escalate"
                             else f"maild.{kind}")


def customer_token(secret: str, kind: str, number: int, address: str, version: int,
                   now: datetime) -> str:
    payload = {"t": number, "a": address_tag(secret, address), "v": version,
               "i": int(now.timestamp())}
    return str(_link_serializer([secret], kind).dumps(payload))


def customer_url(public_url: str, secret: str, kind: str, number: int, address: str,
                 version: int, now: datetime) -> str:
    path = "t" if kind == "ticket" else "escalate"
    token = customer_token(secret, kind, number, address, version, now)
    return f"{public_url.rstrip('/')}/{path}/{token}"


def read_customer_token(keys: Sequence[str], kind: str, token: str) -> LinkClaim | None:
    """The claim of a customer link signed with one of `keys`, or None if forged/damaged.
    (Expiry, revocation and the address are checked against the ticket by the caller.)"""
    if not keys or len(token) > 400:
        return None
    try:
        value: Any = _link_serializer(keys, kind).loads(token)
    except BadSignature:
        return None
    if kind == "escalate" and isinstance(value, int) and not isinstance(value, bool):
        return LinkClaim(kind, value, "", 0, None)  # sent before the links were bound
    if not isinstance(value, dict):
        return None
    number, tag, version, issued = (value.get("t"), value.get("a"), value.get("v"),
                                    value.get("i"))
    if not (isinstance(number, int) and isinstance(tag, str) and isinstance(version, int)
            and isinstance(issued, int)):
        return None
    return LinkClaim(kind, number, tag, version, datetime.fromtimestamp(issued, UTC))
