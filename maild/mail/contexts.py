"""What each mail template is given: one frozen dataclass per template.

A template `<name>.<language>.{subject,txt,html}.j2` is rendered with the fields of
`TEMPLATES[name]` and nothing else; `tests/test_render.py` reads every template and
checks that it uses no name its context lacks and that no field goes unused. An ops
override of a template (`[paths] templates_dir`) has the same names to work with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any, Protocol

from jinja2 import Environment, meta, nodes


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """Every mail: its language (`size` and other filters read it) and the ticket's number
    (the Message-ID carries it; None for a mail about no ticket)."""

    language: str
    number: int | None = None

    def names(self) -> dict[str, Any]:
        """The fields, as the template sees them (not a deep copy, unlike `asdict`)."""
        return {name: getattr(self, name) for name in field_names(type(self))}


_FIELDS: dict[type[Context], tuple[str, ...]] = {}


def field_names(cls: type[Context]) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    return names


# -- to customers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Reject(Context):
    """An unknown sender: how to reach support."""

    name: str
    subject: str
    support_address: str
    support_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Context):
    """The acknowledgement: ticket number, promise, links, what is missing."""

    name: str
    subject: str
    received: datetime
    due: datetime | None
    hours: str  # the promise in business hours, formatted for the language
    hours_text_de: str
    hours_text_en: str
    timezone: str
    ask_official: bool  # ask for an official contact (the sender is no known contact)
    attachments: Sequence[str]  # the names of stored files (to a known sender only)
    attachment_count: int
    not_stored: Sequence[tuple[str, int, str]]  # (name or "", size, why)
    parts_left_out: int = 0  # MIME parts over the caps, not read (parse.InboundMail)
    ticket_url: str
    escalation_url: str
    missing: Sequence[str]  # facts still missing
    urgent: bool
    encrypted: bool
    support_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Relay(Context):
    """An agent's answer, sent to the customer under the agent's name."""

    subject: str
    text: str
    agent_name: str
    support_name: str
    quote: str  # the customer's last words, or ""
    quote_author: str
    quote_date: datetime | None
    timezone: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomerNotice(Context):
    """An automatic mail about the ticket (`autoclose`)."""

    subject: str
    name: str
    support_name: str
    reopen_days: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reminder(CustomerNotice):
    days: int  # business days left until the ticket is closed


@dataclass(frozen=True, slots=True, kw_only=True)
class Status(CustomerNotice):
    status: str
    ticket_url: str
    escalation_url: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Escalated(Context):
    """The customer asked for a call back on the escalation page."""

    subject: str
    name: str
    phone: str
    callback: datetime
    open_now: bool
    timezone: str
    support_name: str
    hours: str
    ticket_url: str


# -- to agents -------------------------------------------------------------------------------


Fact = tuple[str, str | tuple[str, ...]]  # (name, value): a tuple for reference numbers


@dataclass(frozen=True, slots=True, kw_only=True)
class Notify(Context):
    """A new ticket or a customer's follow-up, told to the owner, the team or all agents."""

    event: str  # "new" or "followup"
    subject: str
    customer_name: str
    author: str
    verified: bool
    status: str
    priority: str
    owner: str
    due: datetime | None
    answered: datetime | None
    timezone: str
    text: str
    text_cut: bool
    cc_not_added: Sequence[str]
    facts: Sequence[Fact]
    missing: Sequence[str]
    participants: Sequence[str]
    files: Sequence[tuple[str, int, bool, str]]  # (name, size, stored, note)
    attached: int
    warning: str
    support_address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentNotice(Context):
    """An answer to an agent's mail, a bounce, or a warning about a forged agent mail."""

    subject: str
    notice: str  # "confirm", "rejected", "forged" or "bounce"
    lines: Sequence[str]
    status: str
    priority: str
    owner: str
    sender: str
    original_subject: str
    permanent: bool = False  # a bounce: the address does not exist


@dataclass(frozen=True, slots=True, kw_only=True)
class SlaMail(Context):
    """`sla_warning` (the first response is due soon) and `sla_breach` (it is overdue)."""

    subject: str
    customer: str
    priority: str
    status: str
    owner: str
    due: datetime
    timezone: str
    share: int = 0  # a warning: per cent of the time used
    left_minutes: int = 0  # a warning: business minutes left


@dataclass(frozen=True, slots=True, kw_only=True)
class EscalatedStaff(Context):
    """The customer asked for a call back: told to the agents."""

    subject: str
    phone: str
    customer: str
    customer_name: str
    status: str
    priority: str
    owner: str
    due: datetime | None
    timezone: str
    callback: datetime
    open_now: bool
    facts: Sequence[tuple[str, str]]
    text: str


class DigestLine(Protocol):
    """What the digest shows of a ticket (a `models.Ticket` is one)."""

    @property
    def number(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def priority(self) -> str: ...
    @property
    def customer_address(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def first_response_due(self) -> datetime | None: ...
    @property
    def first_response_at(self) -> datetime | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Digest(Context):
    """The daily digest: up to a few tickets of each list, and each list's count."""

    day: date
    open: Sequence[DigestLine]
    open_count: int
    due_today: Sequence[DigestLine]
    due_today_count: int
    breached: Sequence[DigestLine]
    breached_count: int
    escalated: Sequence[DigestLine]
    escalated_count: int
    timezone: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginLost(Context):
    """To the lead: the OAuth2 grant was refused, mail waits until `maild auth login`."""

    account: str
    error: str
    since: datetime
    timezone: str


def names_read(env: Environment, name: str, seen: set[str] | None = None) -> set[str]:
    """The names template `name` and the templates it includes read from the context:
    not those it sets, imports from another template, or the environment's globals. An
    included template also sees what its includer sets or loops over."""
    seen = set() if seen is None else seen
    if name in seen or env.loader is None:
        return set()
    seen.add(name)
    ast = env.parse(env.loader.get_source(env, name)[0])
    used = set(meta.find_undeclared_variables(ast))
    for imported in ast.find_all((nodes.FromImport, nodes.Import)):
        if isinstance(imported, nodes.FromImport):
            used -= {n if isinstance(n, str) else n[1] for n in imported.names}
        elif isinstance(imported, nodes.Import):
            used.discard(imported.target)
    declared = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    for include in ast.find_all(nodes.Include):
        if isinstance(include.template, nodes.Const):
            used |= names_read(env, include.template.value, seen) - declared
    return used - set(env.globals)


def unknown_names(env: Environment, file: str) -> set[str]:
    """The names the mail template `file` (``<name>.<lang>.<kind>.j2``) reads that its
    context does not have: a template an operator overrode with an older or mistyped
    name would fail on the mail it renders, so the daemon refuses it at start."""
    context = TEMPLATES.get(file.split(".")[0])
    if context is None:  # a partial (`_….j2`, read with each mail that includes it)
        return set()
    return names_read(env, file) - set(field_names(context))


TEMPLATES: dict[str, type[Context]] = {
    "reject": Reject, "ack": Ack, "relay": Relay, "autoclose": CustomerNotice,
    "reminder": Reminder, "status": Status, "escalated": Escalated, "notify": Notify,
    "agent_notice": AgentNotice, "sla_breach": SlaMail, "sla_warning": SlaMail,
    "escalated_staff": EscalatedStaff, "digest": Digest, "login_lost": LoginLost,
}
