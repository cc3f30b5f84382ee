"""Signed, unguessable links bound to one ticket (escalation, later the ticket page)."""

from __future__ import annotations

import hashlib
import hmac

from itsdangerous import BadSignature, URLSafeSerializer


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


def agent_token(secret: str, ticket_number: int) -> str:
    """The token in the reply address of agents' notifications: proof that a reply to it
    comes from someone who received the notification (customers never see it)."""
    mac = hmac.new(secret.encode(), f"maild.agent.{ticket_number}".encode(), hashlib.sha256)
    return "a" + mac.hexdigest()[:24]


def agent_reply_address(support_address: str, secret: str, ticket_number: int) -> str:
    local, _, domain = support_address.partition("@")
    return f"{local}+{ticket_number}.{agent_token(secret, ticket_number)}@{domain}"


def agent_token_valid(secret: str, ticket_number: int, token: str) -> bool:
    return hmac.compare_digest(agent_token(secret, ticket_number), token.lower())


def reply_token_valid(secret: str, ticket_number: int, token: str) -> bool:
    return hmac.compare_digest(reply_token(secret, ticket_number), token.lower())


def ticket_of_token(secret: str, token: str) -> int | None:
    """The ticket number a token was issued for, or None if it is forged or damaged."""
    try:
        value = URLSafeSerializer(secret, salt="maild.escalate").loads(token)
    except BadSignature:
        return None
    return value if isinstance(value, int) else None
