"""decide(): every route and every "answer or not" rule, as a table; no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from maild.decide import (
    ANSWER_LIMIT,
    NO_REPLY_ADDRESS,
    Answer,
    Decision,
    Known,
    Policy,
    Route,
    UnknownSender,
    decide,
    may_join,
)
from maild.mail.classify import Kind, Verdict

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
ACCEPT = Policy(UnknownSender.ACCEPT, reopen_days=30)
REJECT = Policy(UnknownSender.REJECT, reopen_days=30)

PERSON = Verdict("normal", "a person")
NO_REPLY = Verdict("normal", "a person", reply=False)
AUTO = Verdict("automatic", "out of office")
SPAM = Verdict("spam", "spam header")
BOUNCE = Verdict("bounce", "multipart/report")
OWN = Verdict("own", "carries our loop header")
BROKEN = Verdict("unparseable", "no headers")

ON_TICKET = {"matched": True, "attach": True, "ticket_status": "in_progress"}
AGENT = {"agent": True, "proven": "agent token in the reply address"}


def done(days: float, status: str = "closed") -> dict[str, object]:
    return {**ON_TICKET, "ticket_status": status, "ticket_done_at": NOW - timedelta(days=days)}


CASES: list[tuple[str, Verdict, dict[str, object], Policy, Route, Kind, Answer, str]] = [
    # name, verdict, known, policy → route, kind recorded, answer, not_answered
    ("unparseable is quarantined", BROKEN, {}, ACCEPT,
     Route.QUARANTINE, "unparseable", Answer.NONE, ""),
    ("a copy of our own mail", OWN, {}, ACCEPT, Route.OWN, "own", Answer.NONE, ""),
    ("one of our Message-IDs makes any mail ours", PERSON, {"ours": True}, ACCEPT,
     Route.OWN, "own", Answer.NONE, ""),
    ("a bounce", BOUNCE, {}, ACCEPT, Route.BOUNCE, "bounce", Answer.NONE, ""),
    ("a bounce carrying our Message-ID is our own", BOUNCE, {"ours": True}, ACCEPT,
     Route.OWN, "own", Answer.NONE, ""),
    ("a new person is acknowledged", PERSON, {}, ACCEPT,
     Route.NEW_TICKET, "normal", Answer.ACK, ""),
    ("over the answer limit: a ticket, no answer", PERSON, {"answer_limited": True}, ACCEPT,
     Route.NEW_TICKET, "normal", Answer.NONE, ANSWER_LIMIT),
    ("no address to answer: a ticket, agents told", NO_REPLY, {}, ACCEPT,
     Route.NEW_TICKET, "normal", Answer.NONE, NO_REPLY_ADDRESS),
    ("an out-of-office reply is a ticket without answer", AUTO, {}, ACCEPT,
     Route.NEW_TICKET, "automatic", Answer.NONE, ""),
    ("spam is a ticket without answer", SPAM, {}, ACCEPT,
     Route.NEW_TICKET, "spam", Answer.NONE, ""),
    ("a blocked sender is spam", PERSON, {"blocked_by": "agent@example.com"}, ACCEPT,
     Route.NEW_TICKET, "spam", Answer.NONE, ""),
    ("a blocked sender on a ticket joins it as spam",
     PERSON, {"blocked_by": "agent@example.com", **ON_TICKET}, ACCEPT,
     Route.FOLLOW_UP, "spam", Answer.NONE, ""),
    ("a follow-up is not acknowledged", PERSON, ON_TICKET, ACCEPT,
     Route.FOLLOW_UP, "normal", Answer.NONE, ""),
    ("an out-of-office reply joins the ticket", AUTO, ON_TICKET, ACCEPT,
     Route.FOLLOW_UP, "automatic", Answer.NONE, ""),
    ("a stranger's tag opens a new ticket", PERSON, {**ON_TICKET, "attach": False}, ACCEPT,
     Route.NEW_TICKET, "normal", Answer.ACK, ""),
    ("a recently closed ticket is reopened", PERSON, done(29), ACCEPT,
     Route.FOLLOW_UP, "normal", Answer.NONE, ""),
    ("a long-closed ticket: a new ticket", PERSON, done(31), ACCEPT,
     Route.NEW_TICKET, "normal", Answer.ACK, ""),
    ("a long-resolved ticket: a new ticket", PERSON, done(31, "resolved"), ACCEPT,
     Route.NEW_TICKET, "normal", Answer.ACK, ""),
    ("an automatic reply joins a long-closed ticket", AUTO, done(400), ACCEPT,
     Route.FOLLOW_UP, "automatic", Answer.NONE, ""),
    ("a proven agent on a ticket", PERSON, {**AGENT, **ON_TICKET}, ACCEPT,
     Route.AGENT, "normal", Answer.NONE, ""),
    ("a proven agent without a ticket is a customer", PERSON, AGENT, ACCEPT,
     Route.NEW_TICKET, "normal", Answer.ACK, ""),
    ("an unproven agent is a customer", PERSON, {"agent": True, **ON_TICKET}, ACCEPT,
     Route.FOLLOW_UP, "normal", Answer.NONE, ""),
    ("an agent's out-of-office reply is no agent mail", AUTO, {**AGENT, **ON_TICKET}, ACCEPT,
     Route.FOLLOW_UP, "automatic", Answer.NONE, ""),
    ("unknown sender, policy reject: told, no ticket", PERSON, {}, REJECT,
     Route.REJECT, "normal", Answer.REJECT, ""),
    ("unknown sender over the limit: no ticket, no answer",
     PERSON, {"answer_limited": True}, REJECT,
     Route.REJECT, "normal", Answer.NONE, ANSWER_LIMIT),
    ("known sender, policy reject: acknowledged", PERSON, {"account": True}, REJECT,
     Route.NEW_TICKET, "normal", Answer.ACK, ""),
    ("unknown sender on a ticket, policy reject: joins it", PERSON, ON_TICKET, REJECT,
     Route.FOLLOW_UP, "normal", Answer.NONE, ""),
    ("automatic mail of an unknown sender, policy reject: a ticket", AUTO, {}, REJECT,
     Route.NEW_TICKET, "automatic", Answer.NONE, ""),
]


@pytest.mark.parametrize(("verdict", "known", "policy", "route", "kind", "answer",
                          "not_answered"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_decide(verdict: Verdict, known: dict[str, object], policy: Policy, route: Route,
                kind: Kind, answer: Answer, not_answered: str) -> None:
    d = decide(verdict, Known(**known), policy, NOW)  # type: ignore[arg-type]
    assert (d.route, d.kind, d.answer, d.not_answered) == (route, kind, answer, not_answered)


def test_an_unproven_agent_is_flagged_forged_and_a_proven_one_is_not() -> None:
    forged = decide(PERSON, Known(agent=True, **ON_TICKET), ACCEPT, NOW)  # type: ignore[arg-type]
    assert forged.forged and forged.route == Route.FOLLOW_UP
    proven = decide(PERSON, Known(**AGENT, **ON_TICKET), ACCEPT, NOW)  # type: ignore[arg-type]
    assert not proven.forged and proven.reason == AGENT["proven"]
    assert not decide(AUTO, Known(agent=True), ACCEPT, NOW).forged


def test_a_new_ticket_names_the_ticket_it_could_not_join() -> None:
    assert decide(PERSON, Known(**done(31)), ACCEPT, NOW).refers  # type: ignore[arg-type]
    stranger = Known(matched=True, attach=False)
    assert decide(PERSON, stranger, ACCEPT, NOW).refers
    assert not decide(PERSON, Known(), ACCEPT, NOW).refers


def test_reasons_say_why() -> None:
    assert decide(PERSON, Known(blocked_by="lead@example.com"), ACCEPT, NOW).reason \
        == "sender blocked by lead@example.com"
    assert "no ticket" in decide(PERSON, Known(), REJECT, NOW).reason


def test_may_join_counts_from_when_the_ticket_was_done() -> None:
    day = timedelta(days=1)
    assert may_join("normal", "closed", NOW - 30 * day, 30, NOW)
    assert not may_join("normal", "closed", NOW - 30 * day - timedelta(seconds=1), 30, NOW)
    assert may_join("normal", "waiting", NOW - 400 * day, 30, NOW)
    assert may_join("automatic", "closed", NOW - 400 * day, 30, NOW)


def test_every_route_is_covered_by_the_table() -> None:
    assert {case[4] for case in CASES} == set(Route)
    assert {case[6] for case in CASES} == set(Answer)
    assert isinstance(decide(PERSON, Known(), ACCEPT, NOW), Decision)


def test_the_reopen_window_has_one_default_and_one_rule():
    # Once 30 in decide, 14 in desk and config: the decision and the ticket disagreed.
    from maild import config, decide, desk, vocab
    assert config.ThreadingSettings().reopen_days == desk.Threading().reopen_days == \
        decide.Policy().reopen_days == vocab.REOPEN_DAYS
    done = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    days = vocab.REOPEN_DAYS
    assert decide.within_reopen(done, days, done + timedelta(days=days))
    assert not decide.within_reopen(done, days, done + timedelta(days=days, seconds=1))
    assert decide.may_join("normal", "resolved", done, days, done + timedelta(days=days))
    assert not decide.may_join("normal", "closed", done, days,
                               done + timedelta(days=days, seconds=1))


@pytest.mark.parametrize("kind", ["normal", "automatic", "spam", "unparseable", "own",
                                  "bounce"])
def test_which_kinds_may_open_a_ticket_is_said_once_and_decide_keeps_to_it(kind):
    from maild import decide as d
    decision = d.decide(Verdict(kind, "r"), Known(), Policy(), datetime(2026, 12, 1, tzinfo=UTC))
    assert (decision.route == d.Route.NEW_TICKET) == d.may_open(kind)
