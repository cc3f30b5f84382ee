"""Signed, unguessable links bound to one ticket (escalation, later the ticket page)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, date, datetime

from itsdangerous import BadSignature, URLSafeSerializer

_EPOCH = date(1970, 1, 1)


def escalation_token(secret: str, ticket_number: int) -> str:
    return URLSafeSerializer(secret, salt="maild.escalate").dumps(ticket_number)


def escalation_url(public_url: str, secret: str, ticket_number: int) -> str:
    return f"{public_url.rstrip('/')}/escalate/{escalation_token(secret, ticket_number)}"


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


def ticket_of_token(secret: str, token: str) -> int | None:
    """The ticket number a token was issued for, or None if it is forged or damaged."""
    try:
        value = URLSafeSerializer(secret, salt="maild.escalate").loads(token)
    except BadSignature:
        return None
    return value if isinstance(value, int) else None
