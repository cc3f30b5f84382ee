"""What a customer's link opens: the pages' settings, the link check, form tokens."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from maild import links
from maild.config import Settings
from maild.desk import Desk
from maild.models import Ticket

_PHONE = re.compile(r"^[0-9+()/.\- ]{5,40}$")
_FORM_OVERHEAD = 256 * 1024  # multipart framing and the text field


@dataclass(frozen=True, slots=True)
class WebConfig:
    """What the pages need from the settings."""

    public_url: str
    keys: tuple[str, ...]  # every key a link may be signed with; the last one signs
    link_days: float
    lead_address: str
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    rate_per_minute: int = 60
    max_body_bytes: int = 50_000_000
    upload_bytes_per_hour: int = 100_000_000  # per ticket
    upload_bytes_per_ticket: int = 500_000_000
    notify_hold_seconds: float = 120.0

    @property
    def secret(self) -> str:
        return self.keys[-1]


def web_config(settings: Settings, desk: Desk) -> WebConfig:
    return WebConfig(
        public_url=settings.support.public_url,
        keys=(*settings.security.old_secret_keys, desk.secret),
        link_days=settings.http.link_days,
        lead_address=settings.sla.lead_address,
        trusted_proxies=tuple(ipaddress.ip_network(p, strict=False)
                              for p in settings.http.trusted_proxies),
        rate_per_minute=settings.http.rate_per_minute,
        max_body_bytes=desk.reading.limits.max_mail_bytes + _FORM_OVERHEAD,
        upload_bytes_per_hour=int(settings.http.upload_mb_per_hour * 1_000_000),
        upload_bytes_per_ticket=int(settings.http.upload_mb_per_ticket * 1_000_000),
        notify_hold_seconds=settings.http.notify_hold_seconds,
    )


def link_holds(claim: links.LinkClaim | None, ticket: Ticket | None, now: datetime,
               link_days: float, keys: tuple[str, ...]) -> bool:
    """Whether a link's claim still opens `ticket`: same address, not expired, not revoked."""
    if claim is None or ticket is None or not ticket.customer_address:
        return False
    issued = claim.issued or ticket.opened_at  # a legacy escalation link came with the ack
    if claim.address_tag:
        same = links.address_matches(keys, claim.address_tag, ticket.customer_address)
    else:
        same = claim.issued is None
    fresh = issued - timedelta(minutes=5) <= now <= issued + timedelta(days=link_days)
    return same and fresh and claim.version == ticket.link_version


def form_token(secret: str, link_token: str) -> str:
    """The hidden form field: only a page opened through the link can produce it."""
    return hmac.new(secret.encode(), f"maild.form.{link_token}".encode(),
                    hashlib.sha256).hexdigest()


def form_token_valid(secret: str, link_token: str, given: str) -> bool:
    """Bytes compared (a str with non-ASCII characters would raise in compare_digest)."""
    return hmac.compare_digest(form_token(secret, link_token).encode(),
                               given.encode("utf-8", "surrogatepass"))


def clean_phone(text: str) -> str | None:
    """A plausible phone number as typed (digits, +, spaces, - / ( ) .), or None."""
    value = " ".join(text.split())
    return value if _PHONE.match(value) and sum(c.isdigit() for c in value) >= 5 else None
