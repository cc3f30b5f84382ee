"""Which ticket a mail may belong to, from its headers alone (pure; the lookup is elsewhere)."""

from __future__ import annotations

import re

from maild.mail.parse import InboundMail, valid_message_id

_TAG = re.compile(r"\[#(\d{1,12})\]")
_PLUS = re.compile(r"^(?P<local>[^+@]+)\+(?P<number>\d{1,12})\.(?P<token>[A-Za-z0-9_-]{6,64})"
                   r"@(?P<domain>.+)$")


def is_ours(support_address: str, address: str) -> bool:
    """The support address or one of its plus-variants (reply, agent and bounce addresses):
    the one place that says which addresses are ours (we never mail them, nobody joins a
    ticket with them)."""
    local, _, domain = support_address.lower().partition("@")
    addr = address.strip().lower()
    return addr == f"{local}@{domain}" or (addr.startswith(f"{local}+")
                                           and addr.endswith(f"@{domain}"))


def referenced_ids(mail: InboundMail) -> list[str]:
    """Message-IDs this mail answers, newest first (In-Reply-To, then References)."""
    ids = ([mail.in_reply_to] if mail.in_reply_to else []) + list(reversed(mail.references))
    return [i for i in dict.fromkeys(ids) if valid_message_id(i)][:50]


def subject_tag(subject: str) -> int | None:
    """The ticket number of a `[#NUMBER]` tag in the subject, whatever prefixes precede it."""
    found = _TAG.search(subject)
    return int(found.group(1)) if found else None


def plus_tokens(mail: InboundMail, support_address: str) -> list[tuple[int, str]]:
    """(number, token) from recipients like `service+10001.TOKEN@example.com`."""
    local, _, domain = support_address.partition("@")
    found = []
    for address in recipients(mail):
        match = _PLUS.match(address)
        if match and match["local"] == local and match["domain"] == domain:
            found.append((int(match["number"]), match["token"]))
    return list(dict.fromkeys(found))


def recipients(mail: InboundMail) -> list[str]:
    """Every address the mail was for: To, Cc and the delivery headers servers add."""
    found = [*mail.to, *mail.cc]
    for header in ("delivered-to", "x-original-to", "envelope-to"):
        if mail.headers.get(header):
            found.append(mail.headers[header].strip().strip("<>").lower())
    return found
