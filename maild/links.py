"""Signed, unguessable links bound to one ticket (escalation, later the ticket page)."""

from __future__ import annotations

from itsdangerous import BadSignature, URLSafeSerializer


def escalation_token(secret: str, ticket_number: int) -> str:
    return URLSafeSerializer(secret, salt="maild.escalate").dumps(ticket_number)


def escalation_url(public_url: str, secret: str, ticket_number: int) -> str:
    return f"{public_url.rstrip('/')}/escalate/{escalation_token(secret, ticket_number)}"


def ticket_of_token(secret: str, token: str) -> int | None:
    """The ticket number a token was issued for, or None if it is forged or damaged."""
    try:
        value = URLSafeSerializer(secret, salt="maild.escalate").loads(token)
    except BadSignature:
        return None
    return value if isinstance(value, int) else None
