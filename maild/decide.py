"""One mail, one decision: where it goes and whether its sender gets an answer.

Pure: `decide()` reads the classifier's verdict and what the database said about the mail
(`Known`, read before) and returns a `Decision`; it touches no database, clock or network.
Every "answer or not" rule of the intake lives here, so it can be read in one place and
tested as a table (tests/test_decide.py). The intake reads, decides, then writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from maild.mail.classify import Kind, Verdict
from maild.vocab import DONE, REOPEN_DAYS


class Route(StrEnum):
    QUARANTINE = "quarantine"  # unusable: an operator looks at it
    OWN = "own"  # a copy of a mail we sent: nothing to do
    BOUNCE = "bounce"  # a delivery report about a mail of ours
    AGENT = "agent"  # a proven agent working a ticket
    FOLLOW_UP = "follow_up"  # the customer's further mail on a ticket
    REJECT = "reject"  # an unknown sender where only customers get tickets: no ticket
    NEW_TICKET = "new_ticket"


class Answer(StrEnum):
    """What goes back to the sender at once."""

    NONE = "none"
    ACK = "ack"  # the acknowledgement with ticket number and links
    REJECT = "reject"  # how to reach support (unknown sender, no ticket)


class UnknownSender(StrEnum):
    """`[accounts] unknown_sender`: what a sender outside the account book gets."""

    ACCEPT = "accept"
    DOMAIN = "domain"  # a contact of a company with the sender's domain counts as known
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Known:
    """What the database says about one mail and its sender."""

    ours: bool = False  # its Message-ID is one we gave a mail we sent
    blocked_by: str | None = None  # the sender was blocked (by whom)
    bouncing: bool = False  # mail to the sender bounced (it works again once they write)
    agent: bool = False  # the From is an agent's address
    proven: str = ""  # why an agent's mail is believed to be theirs ('' not proven)
    matched: bool = False  # it continues a ticket (by reference, subject tag, ...)
    attach: bool = False  # … strongly enough to join it (not only a stranger's tag)
    ticket_status: str = ""  # that ticket's status
    ticket_done_at: datetime | None = None  # when it was resolved or closed
    account: bool = False  # the sender is in the account book (or its domain, by policy)
    answer_limited: bool = False  # the sender (or everybody) had their answers this hour


@dataclass(frozen=True, slots=True)
class Policy:
    unknown_sender: UnknownSender = UnknownSender.ACCEPT
    reopen_days: float = REOPEN_DAYS


@dataclass(frozen=True, slots=True)
class Decision:
    route: Route
    kind: Kind  # what the mail is, as recorded (the verdict's, or corrected here)
    reason: str
    answer: Answer = Answer.NONE
    # Why a person's mail gets no answer (recorded as a `not_answered` event), or ''.
    not_answered: str = ""
    # A mail From an agent's address without proof: handled as anyone's, agents warned.
    forged: bool = False
    # A new ticket that names the matched one (too old to reopen, or a stranger's tag).
    refers: bool = False


ANSWER_LIMIT = "answer limit per address reached"
NO_REPLY_ADDRESS = "no reply address"


# Kinds of mail that never open a ticket, whatever the database knows: unreadable mail
# (quarantine), our own mail coming back and bounces. `decide()` routes them first; the
# intake skips the database reads for them and reserves no ticket number for them.
NEVER_A_TICKET: tuple[Kind, ...] = ("unparseable", "own", "bounce")


def may_open(kind: Kind) -> bool:
    """Whether a mail of this kind can open a ticket at all (decide() says whether it does)."""
    return kind not in NEVER_A_TICKET


def decide(verdict: Verdict, known: Known, policy: Policy, now: datetime) -> Decision:
    """The route of a mail and the answer it gets; `now` decides whether a closed ticket
    may still be reopened."""
    kind, reason = verdict.kind, verdict.reason
    if kind == "unparseable":
        return Decision(Route.QUARANTINE, kind, reason)
    if kind != "own" and known.ours:
        return Decision(Route.OWN, "own", "one of our own Message-IDs (a copy of a mail we sent)")
    if kind == "own":
        return Decision(Route.OWN, kind, reason)
    if kind == "bounce":
        return Decision(Route.BOUNCE, kind, reason)
    person = answerable(verdict, known.blocked_by)
    if verdict.answer and not person:
        kind, reason = "spam", f"sender blocked by {known.blocked_by}"
    agent = person and known.agent
    if agent and known.proven and known.matched:
        return Decision(Route.AGENT, kind, known.proven)
    forged = agent and not known.proven
    if known.matched and known.attach and may_join(kind, known.ticket_status,
                                                   known.ticket_done_at, policy.reopen_days, now):
        return Decision(Route.FOLLOW_UP, kind, reason, forged=forged)
    refers = known.matched
    if person and not known.account and policy.unknown_sender == UnknownSender.REJECT:
        if known.answer_limited:
            return Decision(Route.REJECT, kind, "unknown sender: no ticket, not answered "
                            "(answer limit reached)", not_answered=ANSWER_LIMIT)
        return Decision(Route.REJECT, kind, "unknown sender: told how to reach support, "
                        "no ticket", Answer.REJECT)
    if person and known.answer_limited:
        return Decision(Route.NEW_TICKET, kind, reason, not_answered=ANSWER_LIMIT,
                        forged=forged, refers=refers)
    if person:
        return Decision(Route.NEW_TICKET, kind, reason, Answer.ACK, forged=forged,
                        refers=refers)
    return Decision(Route.NEW_TICKET, kind, reason, forged=forged, refers=refers,
                    not_answered=NO_REPLY_ADDRESS if kind == "normal" else "")


def answerable(verdict: Verdict, blocked_by: str | None) -> bool:
    """A person's mail with an address to answer, from a sender nobody blocked: only such
    a mail is answered, and only such a mail may be an agent's."""
    return verdict.answer and blocked_by is None


def may_join(kind: Kind, status: str, done_at: datetime | None, reopen_days: float,
             now: datetime) -> bool:
    """Whether a mail may join a ticket it continues: a person's mail on a ticket resolved
    or closed more than `reopen_days` ago opens a new ticket instead (which names the old
    one); other mail joins whatever the ticket's age."""
    if kind != "normal" or status not in DONE or done_at is None:
        return True
    return within_reopen(done_at, reopen_days, now)


def within_reopen(done_at: datetime, reopen_days: float, now: datetime) -> bool:
    """Whether a ticket done (resolved or closed) at `done_at` may still be reopened: the
    one rule for mail (`may_join`, `tickets.add_follow_up`) and the ticket page's form."""
    return (now - done_at).total_seconds() <= reopen_days * 86400
