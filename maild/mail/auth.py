"""What `Authentication-Results` (RFC 8601) headers prove about a mail's sender (pure).

Only headers written by a server we trust count: the receiving MTA removes or renames
such headers coming from outside, and names itself by its authserv-id. A DKIM pass counts
when the signing domain is the From address's domain (or a parent of it); a DMARC pass
means exactly that alignment already.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_COMMENT = re.compile(r"\([^()]*\)")
_RESULT = re.compile(r"^\s*([a-z0-9_-]+)\s*=\s*([a-z]+)\b(.*)$", re.IGNORECASE | re.DOTALL)
_PROPERTY = re.compile(r"\b(header\.[a-z]+)\s*=\s*\"?([^\s;\"]+)", re.IGNORECASE)


def results(value: str) -> tuple[str, list[tuple[str, str, dict[str, str]]]]:
    """('authserv-id', [(method, result, {property: value})]) of one header value."""
    text = value
    for _ in range(3):  # comments may nest a little
        text = _COMMENT.sub(" ", text)
    parts = [p.strip() for p in text.split(";")]
    head = parts[0].split()
    server = head[0].lower() if head else ""
    found = []
    for part in parts[1:]:
        match = _RESULT.match(part)
        if match:
            props = {k.lower(): v.lower() for k, v in _PROPERTY.findall(match.group(3))}
            found.append((match.group(1).lower(), match.group(2).lower(), props))
    return server, found


def sender_proven(headers: Iterable[str], trusted: Iterable[str], from_addr: str) -> str:
    """How a trusted server vouches for `from_addr` ('dmarc=pass from mx…'), or ''."""
    trusted_ids = {t.lower() for t in trusted}
    domain = from_addr.rpartition("@")[2].lower()
    if not trusted_ids or not domain:
        return ""
    for value in headers:
        server, found = results(value)
        if server not in trusted_ids:
            continue
        for method, result, props in found:
            if result != "pass":
                continue
            if method == "dmarc" and props.get("header.from", domain) == domain:
                return f"dmarc=pass from {server}"
            signer = props.get("header.d") or props.get("header.i", "").lstrip("@")
            if method == "dkim" and signer and (domain == signer
                                                or domain.endswith("." + signer)):
                return f"dkim=pass ({signer}) from {server}"
    return ""
