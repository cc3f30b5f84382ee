"""Decide what an incoming mail is: a customer's, automatic, a bounce, ours, or unusable.

Two decisions are kept apart: what to record (almost everything) and whether to answer
(never automatic mail, bounces or our own mail looping back).
"""

from __future__ import annotations

import re
from collections.abc import Callable
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


@dataclass(frozen=True, slots=True)
class Seen:
    """What the rules look at, worked out once per mail."""

    mail: InboundMail
    support: str  # our address, as configured
    spam_rule: tuple[str, re.Pattern[str]] | None
    h: dict[str, str]
    parts: set[str]  # the content types of the attachments
    local: str  # the sender's local part (or the whole From when it has no @)
    robot: bool  # no sender, a null Return-Path, a no-reply name or a mail daemon's name

    @classmethod
    def of(cls, mail: InboundMail, support: str,
           spam_rule: tuple[str, re.Pattern[str]] | None) -> Seen:
        h = mail.headers
        sender = (mail.from_addr or h.get("from", "")).lower()
        robot = (not mail.from_addr or h.get("return-path", "x").strip() in {"<>", ""}
                 or bool(_NOREPLY.match(mail.from_addr.partition("@")[0]))
                 or bool(_DAEMON_NAME.search(h.get("from", ""))))
        return cls(mail, support, spam_rule, h, {a.content_type for a in mail.attachments},
                   sender.partition("@")[0] if "@" in sender else sender, robot)


def _unusable_mail(s: Seen) -> Verdict | None:
    broken = _unusable(s.mail)
    return Verdict("unparseable", broken) if broken else None


def _our_loop_header(s: Seen) -> Verdict | None:
    if s.h.get(LOOP_HEADER.lower(), "").strip().lower() == s.support:
        return Verdict("own", f"carries our {LOOP_HEADER} header")
    return None


def _from_our_address(s: Seen) -> Verdict | None:
    return Verdict("own", "sent from our own address") if s.mail.from_addr == s.support else None


def _report_type(s: Seen) -> Verdict | None:
    if s.mail.content_type == "multipart/report":
        return Verdict("bounce", "multipart/report (delivery or disposition report)")
    return None


def _failed_recipients(s: Seen) -> Verdict | None:
    if s.h.get("x-failed-recipients") and _reads_like_bounce(s.mail, s.parts):
        return Verdict("bounce", "X-Failed-Recipients header, with a bounce's words")
    return None


def _auto_submitted(s: Seen) -> Verdict | None:
    if s.h.get("auto-submitted", "").split(";")[0].strip().lower() in ("", "no"):
        return None
    # An explicit marker: automatic, a bounce only from the mail system itself.
    if s.local == "mailer-daemon" or _DAEMON_NAME.search(s.h.get("from", "")):
        return Verdict("bounce", "sender is the mail system (MAILER-DAEMON)")
    return _automatic(s.h) or Verdict("automatic", "Auto-Submitted")


def _mailer_daemon(s: Seen) -> Verdict | None:
    # The mail system itself: never a person.
    return Verdict("bounce", "sender is MAILER-DAEMON") if s.local == "mailer-daemon" else None


def _postmaster(s: Seen) -> Verdict | None:
    for name in _BOUNCE_SENDERS:
        if s.local == name and _reads_like_bounce(s.mail, s.parts):
            return Verdict("bounce", f"sender is {name}, with a bounce's words or structure")
    return None


def _robot_returning(s: Seen) -> Verdict | None:
    if s.robot and (_BOUNCE_SUBJECT.search(s.mail.subject) or s.parts & _RETURNED_PARTS):
        return Verdict("bounce", "a robot returning a mail (bounce subject or returned copy)")
    return None


def _ses_notification(s: Seen) -> Verdict | None:
    if s.robot and _SES_BOUNCE.search(s.mail.text):
        return Verdict("bounce", "Amazon SES delivery notification")
    return None


def _spam_header(s: Seen) -> Verdict | None:
    spam = _spam(s.h, s.spam_rule)
    return Verdict("spam", spam) if spam else None


def _automatic_headers(s: Seen) -> Verdict | None:
    return _automatic(s.h)


def _out_of_office_subject(s: Seen) -> Verdict | None:
    if _OOO_SUBJECT.match(s.mail.subject):
        return Verdict("automatic", "out-of-office subject")
    return None


def _bulk_mail(s: Seen) -> Verdict | None:
    bulk = _bulk(s.mail)
    return Verdict("automatic", bulk) if bulk else None


def _no_reply_sender(s: Seen) -> Verdict | None:
    if _NOREPLY.match(s.mail.from_addr.partition("@")[0]):
        return Verdict("automatic", "sender is a no-reply address")
    return None


def _broken_mime(s: Seen) -> Verdict | None:
    mail = s.mail
    defects = _BROKEN_MIME.intersection(mail.defects)
    # (A mail cut at the part caps has parts after the cut: kept raw, the customer told.)
    if defects and not mail.text.strip() and not mail.attachments and not mail.parts_left_out:
        return Verdict("unparseable", f"broken MIME ({', '.join(sorted(defects))}), "
                       "nothing readable")
    return None


def _no_sender(s: Seen) -> Verdict | None:
    mail = s.mail
    if mail.from_addr:
        return None
    if mail.text.strip() or mail.attachments or mail.subject.strip():
        return Verdict("normal", "no usable sender address (From, Reply-To, Sender): "
                       "no reply address", reply=False)
    return Verdict("unparseable", "no usable sender address and nothing readable")


# The rules in the order they are asked; the first with a verdict decides, and a mail no
# rule claims is a customer's ("normal"). Loops and bounces come before spam and
# out-of-office, so a bounce of our own answer is never answered as a person's mail.
RULES: tuple[tuple[str, Callable[[Seen], Verdict | None]], ...] = (
    ("unusable", _unusable_mail),
    ("our loop header", _our_loop_header),
    ("from our address", _from_our_address),
    ("multipart/report", _report_type),
    ("X-Failed-Recipients", _failed_recipients),
    ("Auto-Submitted", _auto_submitted),
    ("MAILER-DAEMON", _mailer_daemon),
    ("postmaster", _postmaster),
    ("robot returning a mail", _robot_returning),
    ("Amazon SES", _ses_notification),
    ("spam header", _spam_header),
    ("automatic headers", _automatic_headers),
    ("out-of-office subject", _out_of_office_subject),
    ("bulk", _bulk_mail),
    ("no-reply sender", _no_reply_sender),
    ("broken MIME", _broken_mime),
    ("no sender", _no_sender),
)


def classify(mail: InboundMail, support_address: str,
             spam_rule: tuple[str, re.Pattern[str]] | None = None) -> Verdict:
    """The verdict on `mail` as received by the mailbox of `support_address`."""
    return decided_by(mail, support_address, spam_rule)[1]


def decided_by(mail: InboundMail, support_address: str,
               spam_rule: tuple[str, re.Pattern[str]] | None = None) -> tuple[str, Verdict]:
    """(the name of the rule that decided, its verdict); ("", normal) when none did."""
    seen = Seen.of(mail, support_address, spam_rule)
    for name, rule in RULES:
        verdict = rule(seen)
        if verdict is not None:
            return name, verdict
    return "", Verdict("normal", "")


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
