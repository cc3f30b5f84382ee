"""Decide what an incoming mail is: a customer's, automatic, a bounce, ours, or unusable.

Two decisions are kept apart: what to record (almost everything) and whether to answer
(never automatic mail, bounces or our own mail looping back).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from maild.mail.parse import InboundMail

Kind = Literal["normal", "automatic", "bounce", "own", "spam", "unparseable"]

LOOP_HEADER = "X-Maild-Loop"
_BROKEN_MIME = {"NoBoundaryInMultipartDefect", "StartBoundaryNotFoundDefect"}
_BOUNCE_SENDERS = ("mailer-daemon", "postmaster", "post_master")
_NOREPLY = re.compile(r"^(no-?reply|do-?not-?reply|donotreply|bounces?)([+._-].*)?$")
# Out-of-office subjects in German and English (and what Exchange/Outlook, Gmail, Apple
# Mail and Thunderbird put there), anchored at the start so that "Urlaubsplanung geht nicht"
# stays a customer's mail.
_OOO_SUBJECT = re.compile(
    r"^\s*(?:"
    r"(?:automatische antwort|abwesenheitsnotiz|abwesenheitsmeldung|abwesend"
    r"|out of (?:the )?office(?: reply| autoreply)?|automatic reply|auto[- ]?reply"
    r"|auto[- ]?response|autoresponder|ooo|vacation reply|urlaubsnotiz|urlaubsabwesenheit"
    r"|r[ée]ponse automatique|ich bin (?:nicht im b[üu]ro|abwesend|im urlaub|au(?:ß|ss)er haus)"
    r"|i am (?:out of (?:the )?office|away))\s*[:\-–]"
    r"|(?:abwesenheitsnotiz|out of (?:the )?office|automatische antwort|automatic reply"
    r"|ich bin nicht im b[üu]ro|i am out of (?:the )?office)\s*$)",
    re.IGNORECASE,
)
_STATUS_PARTS = {"message/delivery-status", "message/global-delivery-status"}
_RETURNED_PARTS = {"message/rfc822", "message/global", "text/rfc822-headers",
                   "text/global-headers"}
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (?:status|failure|has failed|notification)|returned mail"
    r"|failure notice|mail delivery (?:failed|system|subsystem)|non[- ]?delivery"
    r"|could not be delivered|not delivered|unzustellbar|nicht zugestellt"
    r"|zustellung fehlgeschlagen|unzustellbarkeit|mail error|delivery problem",
    re.IGNORECASE)
_DAEMON_NAME = re.compile(r"mail(?:er)?[- ]daemon|mail delivery", re.IGNORECASE)
_SES_BOUNCE = re.compile(r'\\?"notificationType\\?"\s*:\s*\\?"(?:Bounce|Complaint|Delivery)')
_SUPPRESS = re.compile(r"\b(all|oof|autoreply)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Kind
    reason: str
    reply: bool = True  # False: a person's mail without any address to answer

    @property
    def answer(self) -> bool:
        """Whether an automatic answer may go to the sender."""
        return self.kind == "normal" and self.reply


def classify(mail: InboundMail, support_address: str,
             spam_rule: tuple[str, re.Pattern[str]] | None = None) -> Verdict:
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
    parts = {a.content_type for a in mail.attachments}
    if parts & _STATUS_PARTS:
        return Verdict("bounce", "carries a delivery-status part")
    sender = (mail.from_addr or h.get("from", "")).lower()
    local = sender.partition("@")[0] if "@" in sender else sender
    if h.get("x-failed-recipients") and _reads_like_bounce(mail, parts):
        return Verdict("bounce", "X-Failed-Recipients header, with a bounce's words")
    if h.get("auto-submitted", "").split(";")[0].strip().lower() not in ("", "no"):
        # An explicit marker: automatic, a bounce only from the mail system itself.
        if local == "mailer-daemon" or _DAEMON_NAME.search(h.get("from", "")):
            return Verdict("bounce", "sender is the mail system (MAILER-DAEMON)")
        return _automatic(h) or Verdict("automatic", "Auto-Submitted")
    if local == "mailer-daemon":  # the mail system itself: never a person
        return Verdict("bounce", "sender is MAILER-DAEMON")
    for name in _BOUNCE_SENDERS:
        if local == name and _reads_like_bounce(mail, parts):
            return Verdict("bounce", f"sender is {name}, with a bounce's words or structure")
    robot = (not mail.from_addr or h.get("return-path", "x").strip() in {"<>", ""}
             or bool(_NOREPLY.match(mail.from_addr.partition("@")[0]))
             or bool(_DAEMON_NAME.search(h.get("from", ""))))
    if robot and (_BOUNCE_SUBJECT.search(mail.subject) or parts & _RETURNED_PARTS):
        return Verdict("bounce", "a robot returning a mail (bounce subject or returned copy)")
    if robot and _SES_BOUNCE.search(mail.text):
        return Verdict("bounce", "Amazon SES delivery notification")
    spam = _spam(h, spam_rule)
    if spam:
        return Verdict("spam", spam)
    automatic = _automatic(h)
    if automatic:
        return automatic
    if _OOO_SUBJECT.match(mail.subject):
        return Verdict("automatic", "out-of-office subject")
    bulk = _bulk(mail)
    if bulk:
        return Verdict("automatic", bulk)
    if _NOREPLY.match(mail.from_addr.partition("@")[0]):
        return Verdict("automatic", "sender is a no-reply address")
    readable = bool(mail.text.strip() or mail.attachments or mail.subject.strip())
    defects = _BROKEN_MIME.intersection(mail.defects)
    # (A mail cut at the part caps has parts after the cut: kept raw, the customer told.)
    if defects and not mail.text.strip() and not mail.attachments and not mail.parts_left_out:
        names = ", ".join(sorted(defects))
        return Verdict("unparseable", f"broken MIME ({names}), nothing readable")
    if not mail.from_addr:
        if readable:
            return Verdict("normal", "no usable sender address (From, Reply-To, Sender): "
                           "no reply address", reply=False)
        return Verdict("unparseable", "no usable sender address and nothing readable")
    return Verdict("normal", "")


_DSN_WORDS = re.compile(
    r"\b[45]\.\d{1,3}\.\d{1,3}\b|\b(?:user unknown|unknown user|no such user|mailbox "
    r"(?:unavailable|full|not found|does not exist)|diagnostic-code|final-recipient"
    r"|recipient address rejected|delivery to the following recipients? failed"
    r"|permanent(?:ly)? (?:error|failure|failed)|could not be delivered|undeliverable"
    r"|host (?:unknown|not found)|message (?:could not|was not) be(?:en)? delivered"
    r"|returned to sender|unzustellbar|nicht zugestellt|unable to deliver|failed delivery"
    r"|delivery (?:has )?failed|could not deliver|original message follows"
    r"|undelivered mail|returning to sender|failed addresses|unknown host"
    r"|no valid recipients)\b", re.IGNORECASE)


def _reads_like_bounce(mail: InboundMail, parts: set[str]) -> bool:
    """A postmaster's or MAILER-DAEMON's mail is a bounce by its words or structure (a
    bounce subject, a returned copy, status codes) — a person may write from postmaster@."""
    return bool(_BOUNCE_SUBJECT.search(mail.subject) or parts & _RETURNED_PARTS
                or _DSN_WORDS.search(mail.text[:20_000]))


_BULK_HEADERS = ("feedback-id", "x-campaign", "x-campaignid", "x-campaign-id",
                 "x-mc-user", "x-mailchimp-id", "x-newsletter", "x-sib-id", "x-mailjet-campaign",
                 "x-cr-hashedpuid", "list-unsubscribe-post", "x-csa-complaints")
_BULK_MAILER = re.compile(
    r"mailchimp|sendinblue|brevo|cleverreach|rapidmail|newsletter2go|mailjet|klaviyo"
    r"|hubspot|mailpoet|getresponse|campaign ?monitor|constant ?contact|phplist|mautic"
    r"|sendy|emarsys|inxmail|optivo|mailerlite|acymailing|newsletter", re.IGNORECASE)
_UNSUBSCRIBE = re.compile(
    r"href=[\"']?[^\"'\s>]{0,500}(?:unsubscribe|abmelden|optout|opt-out|abbestellen)"
    r"|>[^<]{0,100}\b(?:unsubscribe|abmelden|austragen|abbestellen)\b[^<]{0,100}</a>",
    re.IGNORECASE)
_REPLY_SUBJECT = re.compile(r"^\s*(?:re|aw|fwd?|wg|tr|sv|antw)\s*:", re.IGNORECASE)


def _bulk(mail: InboundMail) -> str:
    """Newsletters and press mailings without List-* headers: a bulk mailer's headers, or
    an HTML mail with an unsubscribe link that is not a reply or forward."""
    h = mail.headers
    for name in _BULK_HEADERS:
        if h.get(name):
            return f"{name} header (bulk mail)"
    mailer = h.get("x-mailer", "")
    if mailer and _BULK_MAILER.search(mailer[:200]):
        return f"X-Mailer: {mailer.strip()[:60]} (bulk mail software)"
    if (mail.html and not mail.in_reply_to and not _REPLY_SUBJECT.match(mail.subject)
            and _UNSUBSCRIBE.search(mail.html[-50_000:])):
        return "HTML mail with an unsubscribe link (newsletter)"
    return ""


def _spam(h: dict[str, str], rule: tuple[str, re.Pattern[str]] | None) -> str:
    """The upstream filter's verdict: X-Spam-Flag: YES, X-Spam-Status: Yes, or the
    configured header matching the configured pattern."""
    if h.get("x-spam-flag", "").strip().lower() == "yes":
        return "X-Spam-Flag: YES"
    if h.get("x-spam-status", "").strip().lower().startswith("yes"):
        return "X-Spam-Status: Yes"
    if rule is not None:
        name, pattern = rule
        value = h.get(name.lower(), "")
        if value and pattern.search(value):
            return f"{name}: {value.strip()[:80]}"
    return ""


def _unusable(mail: InboundMail) -> str:
    if mail.header_count == 0:
        return "no mail headers found (not an RFC 5322 message)"
    if not mail.has_body_separator and not (mail.from_addr or mail.subject.strip()):
        return "header-only, with neither a sender nor a subject"
    return ""  # header-only with a sender: a customer who wrote only a subject line


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
    for name in ("x-autoreply", "x-autorespond", "x-auto-response", "x-autoresponder"):
        if h.get(name):
            return Verdict("automatic", f"{name} header")
    suppress = h.get("x-auto-response-suppress", "")
    if _SUPPRESS.search(suppress):
        return Verdict("automatic", f"X-Auto-Response-Suppress: {suppress.strip()[:60]}")
    if h.get("list-unsubscribe"):
        return Verdict("automatic", "List-Unsubscribe (bulk mail)")
    return None
