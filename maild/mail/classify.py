"""Decide what an incoming mail is: a customer's, automatic, a bounce, ours, or unusable.

Two decisions are kept apart: what to record (almost everything) and whether to answer
(never automatic mail, bounces or our own mail looping back).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from maild.mail.parse import InboundMail

Kind = Literal["normal", "automatic", "bounce", "own", "unparseable"]

LOOP_HEADER = "X-Maild-Loop"
_BROKEN_MIME = {"NoBoundaryInMultipartDefect", "StartBoundaryNotFoundDefect"}
_BOUNCE_SENDERS = ("mailer-daemon", "postmaster", "post_master")
_NOREPLY = re.compile(r"^(no-?reply|do-?not-?reply|donotreply|bounces?)([+._-].*)?$")


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Kind
    reason: str

    @property
    def answer(self) -> bool:
        """Whether an automatic answer may go to the sender."""
        return self.kind == "normal"


def classify(mail: InboundMail, support_address: str) -> Verdict:
    """The verdict on `mail` as received by the mailbox of `support_address`."""
    broken = _unusable(mail)
    if broken:
        return Verdict("unparseable", broken)
    h = mail.headers
    if h.get(LOOP_HEADER.lower(), "").strip().lower() == support_address:
        return Verdict("own", f"carries our {LOOP_HEADER} header")
    if mail.from_addr == support_address:
        return Verdict("own", "sent from our own address")
    if mail.content_type == "multipart/report":
        return Verdict("bounce", "multipart/report (delivery or disposition report)")
    sender = (mail.from_addr or h.get("from", "")).lower()
    for name in _BOUNCE_SENDERS:
        if name in sender:
            return Verdict("bounce", f"sender is {name}")
    automatic = _automatic(h)
    if automatic:
        return automatic
    if _NOREPLY.match(mail.from_addr.partition("@")[0]):
        return Verdict("automatic", "sender is a no-reply address")
    if not mail.from_addr:
        return Verdict("unparseable", "no usable sender address in From")
    defects = _BROKEN_MIME.intersection(mail.defects)
    if defects and not mail.text.strip() and not mail.attachments:
        names = ", ".join(sorted(defects))
        return Verdict("unparseable", f"broken MIME ({names}), nothing readable")
    return Verdict("normal", "")


def _unusable(mail: InboundMail) -> str:
    if mail.header_count == 0:
        return "no mail headers found (not an RFC 5322 message)"
    if not mail.has_body_separator:
        return "no blank line after the headers: message truncated or header-only"
    return ""


def _automatic(h: dict[str, str]) -> Verdict | None:
    auto = h.get("auto-submitted", "").split(";")[0].strip().lower()
    if auto and auto != "no":
        return Verdict("automatic", f"Auto-Submitted: {auto}")
    precedence = h.get("precedence", "").strip().lower()
    if precedence in {"bulk", "junk", "list"}:
        return Verdict("automatic", f"Precedence: {precedence}")
    if h.get("list-id"):
        return Verdict("automatic", "List-Id (mailing list)")
    if "return-path" in h and h["return-path"].strip() in {"<>", ""}:
        return Verdict("automatic", "empty Return-Path")
    for name in ("x-autoreply", "x-autorespond", "x-auto-response"):
        if h.get(name):
            return Verdict("automatic", f"{name} header")
    return None
