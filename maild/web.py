"""The customer's web pages, served inside the daemon: the ticket page (history, adding
information and files) and the call-back service (escalation), reached by signed links.

No login: a link is the customer's proof (signed, bound to the ticket and the address, with
its issue time, revocable per ticket). GET never changes anything (mail scanners follow
links); every change is a POST carrying a form token derived from the link. Database work
runs in a thread with the daemon's session factory, one transaction per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import uvicorn
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from maild import answers, db, links
from maild.config import Settings
from maild.desk import Desk
from maild.errors import MaildError, StorageUnavailable
from maild.mail import files
from maild.mail.classify import Verdict
from maild.mail.facts import FACTS
from maild.mail.parse import InboundMail, Part
from maild.mail.render import format_size, format_when, render_mail
from maild.models import Attachment, Company, Contact, Event, InboundMessage, Ticket, TicketMessage
from maild.tickets import add_follow_up
from maild.work import customer_thread

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_TOKEN_PATH = re.compile(r"^/(t|escalate)/[^/]+")
_PHONE = re.compile(r"^[0-9+()/.\- ]{5,40}$")
_FORM_OVERHEAD = 256 * 1024  # multipart framing and the text field


# -- pure parts -------------------------------------------------------------------------

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
        max_body_bytes=desk.limits.max_mail_bytes + _FORM_OVERHEAD,
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
    return hmac.compare_digest(form_token(secret, link_token), given)


def clean_phone(text: str) -> str | None:
    """A plausible phone number as typed (digits, +, spaces, - / ( ) .), or None."""
    value = " ".join(text.split())
    return value if _PHONE.match(value) and sum(c.isdigit() for c in value) >= 5 else None


def client_address(peer: str, forwarded_for: str,
                   trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str:
    """The client: the peer, or — only when the peer is a trusted proxy — the rightmost
    X-Forwarded-For entry that is not a trusted proxy itself."""
    def is_trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in trusted)

    if not trusted or not is_trusted(peer):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not is_trusted(hop):
            return hop
    return peer


def loggable_path(path: str) -> str:
    """The path with the link token replaced, so logs never hold a working link."""
    return _TOKEN_PATH.sub(lambda m: f"/{m.group(1)}/…", path)


@dataclass(slots=True)
class TokenBuckets:
    """In-memory token buckets: `rate` requests per minute per key, bursts up to `rate`."""

    rate: int
    clock: Callable[[], float] = time.monotonic
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    swept: float = 0.0

    def allow(self, key: str) -> bool:
        now = self.clock()
        tokens, last = self.buckets.get(key, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + (now - last) * self.rate / 60.0)
        if len(self.buckets) > 10_000 and now - self.swept > 60:
            # A full bucket is as good as none: forget keys idle for a minute or more.
            self.buckets = {k: v for k, v in self.buckets.items() if now - v[1] < 60}
            self.swept = now
        if tokens < 1.0:
            self.buckets[key] = (tokens, now)
            return False
        self.buckets[key] = (tokens - 1.0, now)
        return True


# -- what the pages show (read in a thread) ---------------------------------------------

@dataclass(frozen=True, slots=True)
class Shown:
    """A ticket as its customer's pages show it."""

    number: int
    subject: str
    status: str
    priority: str
    language: str
    zone: str
    due: datetime | None
    escalated_at: datetime | None
    escalation_phone: str
    phone: str
    customer: str
    customer_name: str
    history: list[dict[str, Any]]
    can_add: bool  # False: closed too long ago to reopen (write a new mail)
    can_escalate: bool  # False: closed, spam or merged (a new mail is the way)
    # Fresh tokens for the links between the pages (relative, so any host or path prefix
    # of the reverse proxy works).
    ticket_token: str
    escalation_token: str


def _visible_messages(session: Session, ticket: Ticket) -> list[TicketMessage]:
    """The customer's own mails and what we sent them: never notes, never agents' mail."""
    return list(session.scalars(select(TicketMessage).where(
        TicketMessage.ticket_id == ticket.id, TicketMessage.internal.is_(False),
        (TicketMessage.direction == "out") | (TicketMessage.kind == "customer"))
        .order_by(TicketMessage.created_at, TicketMessage.id)))


def _shown_files(session: Session, ticket: Ticket,
                 messages: list[TicketMessage]) -> dict[int, list[Attachment]]:
    """Stored files the customer has seen, by the visible message they came with: their
    own, and those an agent's answer passed on (recorded on the agent's mail, shown with
    the relayed answer written in the same moment)."""
    relays = {m.created_at: m.id for m in messages if m.kind == "relay"}
    answers_ = {m.id: relays[m.created_at] for m in session.scalars(select(TicketMessage).where(
        TicketMessage.ticket_id == ticket.id, TicketMessage.kind == "agent",
        TicketMessage.internal.is_(False))) if m.created_at in relays}
    owners = {m.id: m.id for m in messages} | answers_
    found = session.scalars(select(Attachment).where(
        Attachment.ticket_message_id.in_(list(owners)), Attachment.listed.is_(True),
        Attachment.blob_sha256.is_not(None)).order_by(Attachment.id)).all()
    by_message: dict[int, list[Attachment]] = {}
    for a in found:
        by_message.setdefault(owners[a.ticket_message_id], []).append(a)
    return by_message


def _zone(session: Session, desk: Desk, ticket: Ticket) -> str:
    contact = session.get(Contact, ticket.contact_id) if ticket.contact_id else None
    return contact.timezone if contact is not None and contact.timezone else desk.timezone


def can_escalate(ticket: Ticket) -> bool:
    return ticket.status not in ("closed", "spam") and ticket.merged_into is None


def _can_add(desk: Desk, ticket: Ticket, now: datetime) -> bool:
    if ticket.status not in ("resolved", "closed"):
        return ticket.merged_into is None and ticket.status != "spam"
    since = ticket.resolved_at or ticket.closed_at or ticket.updated_at
    return ticket.merged_into is None and (now - since) <= timedelta(days=desk.reopen_days)


def show(session: Session, desk: Desk, cfg: WebConfig, ticket: Ticket,
         now: datetime) -> Shown:
    messages = _visible_messages(session, ticket)
    by_message = {mid: [{"id": a.id, "filename": a.filename, "size": a.size} for a in found]
                  for mid, found in _shown_files(session, ticket, messages).items()}
    history = [{"at": m.created_at, "ours": m.direction == "out", "kind": m.kind,
                "author": "" if m.direction == "out" or m.author == ticket.customer_address
                else m.author,
                "subject": m.subject, "text": (m.body_text or m.new_text).strip(),
                "files": by_message.get(m.id, [])} for m in messages]
    args = (cfg.secret, ticket.number, ticket.customer_address, ticket.link_version, now)
    return Shown(
        number=ticket.number, subject=ticket.subject, status=ticket.status,
        priority=ticket.priority, language=ticket.language if ticket.language in ("de", "en")
        else "de", zone=_zone(session, desk, ticket), due=ticket.first_response_due,
        escalated_at=ticket.escalated_at, escalation_phone=ticket.escalation_phone,
        phone=str(ticket.facts.get("phone") or _contact_phone(session, ticket)),
        customer=ticket.customer_address, customer_name=ticket.customer_name,
        history=history, can_add=_can_add(desk, ticket, now),
        can_escalate=can_escalate(ticket),
        ticket_token=links.customer_token(args[0], "ticket", *args[1:]),
        escalation_token=links.customer_token(args[0], "escalate", *args[1:]))


def _contact_phone(session: Session, ticket: Ticket) -> str:
    contact = session.get(Contact, ticket.contact_id) if ticket.contact_id else None
    return contact.phone if contact is not None else ""


def attachment_of(session: Session, ticket: Ticket, attachment_id: int) -> Attachment | None:
    """A stored file of a message the customer may see, or None."""
    shown = _shown_files(session, ticket, _visible_messages(session, ticket))
    return next((a for found in shown.values() for a in found if a.id == attachment_id),
                None)


# -- what the pages change (in a thread, one transaction) -------------------------------

def escalate(session: Session, desk: Desk, cfg: WebConfig, ticket_id: int, phone: str,
             now: datetime) -> bool:
    """Activate the call-back service once: True when this call did it. The conditional
    UPDATE decides (a double click, the back button, two concurrent POSTs: one wins)."""
    done = session.execute(
        update(Ticket).where(Ticket.id == ticket_id, Ticket.escalated_at.is_(None))
        .values(escalated_at=now, escalation_phone=phone, updated_at=now)
        .execution_options(synchronize_session=False))
    if getattr(done, "rowcount", 0) != 1:
        return False
    ticket = session.get(Ticket, ticket_id, populate_existing=True)
    assert ticket is not None
    actor = ticket.customer_address
    session.add(Event(ticket_id=ticket.id, at=now, actor=actor, kind="escalated",
                      detail={"phone": phone, "by": actor, "via": "web"}))
    if ticket.priority != "urgent":
        session.add(Event(ticket_id=ticket.id, at=now, actor="maild", kind="priority",
                          detail={"from": ticket.priority, "to": "urgent",
                                  "reason": "escalated"}))
        ticket.priority = "urgent"
    if phone and ticket.facts.get("phone") != phone:
        ticket.facts = {**ticket.facts, "phone": phone}
    callback = desk.calendar.next_open(now)
    _staff_mail(session, desk, cfg, ticket, phone, callback, now)
    _customer_mail(session, desk, cfg, ticket, phone, callback, now)
    log.info("ticket escalated number=%s", ticket.number)
    return True


def _staff(session: Session, desk: Desk, cfg: WebConfig, ticket: Ticket) -> list[str]:
    """The lead and the owner (or the team): everyone who must know at once."""
    found = [*desk.roster.lead_to(session, cfg.lead_address),
             *desk.roster.notify_to(session, ticket.owner)]
    return [a for a in dict.fromkeys(found) if a and not answers.is_ours(desk, a)]


def _staff_mail(session: Session, desk: Desk, cfg: WebConfig, ticket: Ticket, phone: str,
                callback: datetime, now: datetime) -> None:
    to = _staff(session, desk, cfg, ticket)
    if not to:
        log.warning("escalation of ticket=%s: no agent to tell", ticket.number)
        return
    last = session.scalars(select(TicketMessage).where(
        TicketMessage.ticket_id == ticket.id, TicketMessage.kind == "customer")
        .order_by(TicketMessage.id.desc())).first()
    context = {
        "number": ticket.number, "subject": ticket.subject, "phone": phone,
        "customer": ticket.customer_address, "customer_name": ticket.customer_name,
        "status": ticket.status, "priority": ticket.priority, "owner": ticket.owner,
        "due": ticket.first_response_due, "timezone": desk.timezone, "callback": callback,
        "open_now": desk.calendar.is_open(now), "cause": ticket.cause,
        "facts": [(name, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
                  for name in FACTS if (value := ticket.facts.get(name))],
        "text": (last.new_text or last.body_text).strip()[:4000] if last else "",
        "language": desk.agent_language,
    }
    rendered = render_mail(
        desk.templates, "escalated_staff", desk.agent_language, context, sender=desk.sender,
        to=", ".join(to), now=now, auto_submitted="auto-generated",
        in_reply_to=session.scalars(select(TicketMessage.message_id).where(  # agents' thread
            TicketMessage.ticket_id == ticket.id, TicketMessage.kind == "notify")
            .order_by(TicketMessage.id.desc())).first(),
        reply_to=links.agent_reply_address(desk.sender.address, desk.secret, ticket.number)
        if desk.plus_addressing else None)
    urgent = b"Importance: high\r\nX-Priority: 1 (Highest)\r\n"
    answers.enqueue(session, desk, replace(rendered, raw=urgent + rendered.raw), to, ticket,
                    "escalated_staff", now, automatic=True, internal=True)


def _customer_mail(session: Session, desk: Desk, cfg: WebConfig, ticket: Ticket, phone: str,
                   callback: datetime, now: datetime) -> None:
    ids = customer_thread(session, ticket)
    context = {
        "number": ticket.number, "subject": ticket.subject, "name": ticket.customer_name,
        "phone": phone, "callback": callback, "open_now": desk.calendar.is_open(now),
        "timezone": desk.timezone, "support_name": desk.sender.name,
        "language": ticket.language,
        "ticket_url": links.ticket_url(cfg.public_url, cfg.secret, ticket.number,
                                       ticket.customer_address, ticket.link_version, now),
    }
    rendered = render_mail(
        desk.templates, "escalated", ticket.language, context, sender=desk.sender,
        to=ticket.customer_address, now=now, in_reply_to=ids[-1] if ids else None,
        references=tuple(ids[:-1]), auto_submitted="auto-generated",
        reply_to=links.reply_address(desk.sender.address, desk.secret, ticket.number)
        if desk.plus_addressing else None)
    answers.enqueue(session, desk, rendered, [ticket.customer_address], ticket, "escalated",
                    now, automatic=True)


def add_information(session: Session, desk: Desk, ticket: Ticket, text: str,
                    parts: tuple[Part, ...], now: datetime, once: str) -> str:
    """The form's text and files, exactly as if the customer had replied by mail (facts
    merged, what is missing updated, the owner told, a closed ticket reopened): "added";
    "again" when this form (its `once` value) was sent before (a double click, a reload);
    "closed" when the ticket was closed too long ago to reopen."""
    key = hashlib.sha256(f"maild.web.{ticket.id}.{once}".encode()).hexdigest()
    if session.scalar(select(InboundMessage.id).where(InboundMessage.dedupe_key == key)):
        return "again"
    if not _can_add(desk, ticket, now):
        return "closed"
    mail = InboundMail(
        message_id=None, subject=f"[#{ticket.number}] {ticket.subject}",
        from_addr=ticket.customer_address, from_name=ticket.customer_name, to=(), cc=(),
        reply_to="", date=now, in_reply_to=None, references=(), headers={},
        content_type="text/plain", text=text, html="", attachments=parts,
        header_count=0, has_body_separator=True, defects=())
    size = len(text.encode()) + sum(len(p.data) for p in parts)
    row = InboundMessage(  # the record of every way information came in
        mailbox="web", uidvalidity=0, uid=0, dedupe_key=key,
        message_id=None, raw_sha256=None, size=size, internaldate=now, received_at=now,
        state="processed", kind="normal", reason="ticket page", attempts=1, error="",
        ticket_id=ticket.id, finished_at=now)
    session.add(row)
    session.flush()
    added = add_follow_up(session, desk, ticket, mail, Verdict("normal", "ticket page"),
                          inbound_id=row.id, how="web", now=now, planned=None,
                          reopen_days=desk.reopen_days)
    assert added, "the reopen rule is checked above"
    return "added"


def billable(cause: str) -> str:
    """Whether a call-back is charged: 'no' when the problem was ours, 'yes' when the
    customer's or a third party's, 'open' until an agent records the cause (#cause)."""
    return "no" if cause == "ours" else "yes" if cause else "open"


def callback_report(session: Session, since: datetime | None,
                    until: datetime | None) -> list[dict[str, Any]]:
    """Every escalation (call-back) in [since, until), oldest first, with what billing needs."""
    query = (select(Ticket, Company.name).outerjoin(Company, Company.id == Ticket.company_id)
             .where(Ticket.escalated_at.is_not(None)).order_by(Ticket.escalated_at))
    if since is not None:
        query = query.where(Ticket.escalated_at >= since)
    if until is not None:
        query = query.where(Ticket.escalated_at < until)
    return [{"ticket": t.number, "company": company or "", "customer": t.customer_address,
             "escalated_at": t.escalated_at.isoformat() if t.escalated_at else None,
             "phone": t.escalation_phone, "cause": t.cause or "", "billable": billable(t.cause),
             "status": t.status, "subject": t.subject}
            for t, company in session.execute(query)]


def revoke_links(session: Session, number: int, actor: str, now: datetime) -> int | None:
    """Every link issued for ticket `number` stops working; the new link version, or None
    when there is no such ticket. New mails carry new links."""
    ticket = db.ticket_by_number(session, number)
    if ticket is None:
        return None
    ticket.link_version = (ticket.link_version or 0) + 1
    session.add(Event(ticket_id=ticket.id, at=now, actor=actor, kind="links_revoked",
                      detail={"version": ticket.link_version}))
    return ticket.link_version


# -- the HTTP side ----------------------------------------------------------------------

def page_environment(override_dir: str = "") -> Environment:
    """The pages' templates: `<templates_dir>/web/` first (ops' wording), then ours."""
    loaders = [FileSystemLoader(str(Path(override_dir) / "web"))] if override_dir else []
    loaders.append(FileSystemLoader(str(resources.files("maild.templates") / "web")))
    env = Environment(
        loader=ChoiceLoader(loaders),
        autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = format_when
    env.filters["size"] = format_size
    return env


class _Refused(HTTPException):
    """A request we answer with a page of our own (413, 429): raised in the guard, or while
    the app reads a body that grows past the limit (then Starlette hands it to our page)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(slots=True)
class Pages:
    desk: Desk
    factory: db.SessionFactory
    cfg: WebConfig
    clock: Callable[[], datetime]
    wake: Callable[[], None] = lambda: None  # tells the outbox that mail is waiting
    env: Environment = field(default_factory=page_environment)

    # rendering

    def page(self, name: str, lang: str, status: int = 200, **context: Any) -> HTMLResponse:
        def tr(de: str, en: str) -> str:
            return de if lang == "de" else en

        html = self.env.get_template(f"{name}.html.j2").render(
            lang=lang, tr=tr, support_address=self.desk.sender.address,
            stylesheet=urlsplit(self.cfg.public_url).path.rstrip("/") + "/static/web.css",
            support_name=self.desk.sender.name, **context)
        return HTMLResponse(html, status_code=status)

    def refused(self, status: int) -> HTMLResponse:
        """The one page for a link that does not open anything: forged, expired, revoked,
        another ticket's, or no such page. Says how to get a new link, leaks nothing."""
        name = {400: "broken", 413: "too_large", 429: "slow_down", 500: "broken"}.get(
            status, "no_link")
        return self.page(name, "de", status, max_mb=f"{self.desk.limits.max_file_bytes / 1e6:g}")

    async def run(self, fn: Callable[[Session], Any]) -> Any:
        def work() -> Any:
            with db.transaction(self.factory) as session:
                return fn(session)
        return await asyncio.to_thread(work)

    def ticket_of(self, session: Session, kind: str, token: str) -> Ticket | None:
        claim = links.read_customer_token(self.cfg.keys, kind, token)
        # Always one lookup, whatever the token: a forged link takes as long as a revoked one.
        ticket = db.ticket_by_number(session, claim.number if claim else -1)
        holds = link_holds(claim, ticket, self.clock(), self.cfg.link_days, self.cfg.keys)
        return ticket if holds else None

    # the ticket page

    async def ticket_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        now = self.clock()

        def read(session: Session) -> Shown | None:
            ticket = self.ticket_of(session, "ticket", token)
            return show(session, self.desk, self.cfg, ticket, now) if ticket else None

        shown = await self.run(read)
        if shown is None:
            return self.refused(404)
        return self.ticket_response(shown, token, added=request.query_params.get("added"))

    def ticket_response(self, shown: Shown, token: str, *, added: str | None = None,
                        error: str = "", status: int = 200) -> HTMLResponse:
        return self.page("ticket", shown.language, status, t=shown, token=token, added=added,
                         error=error, once=secrets.token_hex(16),
                         form=form_token(self.cfg.secret, token),
                         max_mb=f"{self.desk.limits.max_file_bytes / 1e6:g}",
                         open_now=self.desk.calendar.is_open(self.clock()))

    async def add(self, request: Request) -> Response:
        token = request.path_params["token"]
        form = await request.form(max_files=20, max_fields=20,
                                  max_part_size=self.desk.limits.max_file_bytes + 1)
        now = self.clock()
        text = str(form.get("text") or "").strip()
        uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)
                   and (f.filename or f.size)]
        parts = []
        for upload in uploads:
            data = await upload.read(self.desk.limits.max_file_bytes + 1)
            if len(data) > self.desk.limits.max_file_bytes:
                return self.refused(413)
            if data or upload.filename:
                parts.append(Part(files.safe_filename(upload.filename or "file"),
                                  upload.content_type or "application/octet-stream", data,
                                  False, ""))
        if sum(len(p.data) for p in parts) > self.desk.limits.max_mail_bytes:
            return self.refused(413)
        csrf_ok = form_token_valid(self.cfg.secret, token, str(form.get("form") or ""))
        once = str(form.get("once") or "")[:64] or secrets.token_hex(16)

        def write(session: Session) -> tuple[Shown | None, str]:
            ticket = self.ticket_of(session, "ticket", token)
            if ticket is None:
                return None, ""
            if not csrf_ok:
                return show(session, self.desk, self.cfg, ticket, now), "form"
            if not text and not parts:
                return show(session, self.desk, self.cfg, ticket, now), "empty"
            done = add_information(session, self.desk, ticket, text, tuple(parts), now, once)
            return show(session, self.desk, self.cfg, ticket, now), (
                "closed" if done == "closed" else "")

        try:
            shown, error = await self.run(write)
        except sa_exc.IntegrityError:  # the same form twice at once: the other one added it
            return RedirectResponse(f"{request.url.path}?added=1", status_code=303)
        if shown is None:
            return self.refused(404)
        if error:
            return self.ticket_response(shown, token, error=error, status=400)
        self.wake()
        return RedirectResponse(f"{request.url.path}?added=1", status_code=303)

    async def download(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            wanted = int(request.path_params["file"])
        except ValueError:
            return self.refused(404)

        def read(session: Session) -> tuple[str, str, bytes] | None:
            ticket = self.ticket_of(session, "ticket", token)
            found = attachment_of(session, ticket, wanted) if ticket else None
            if found is None or found.blob_sha256 is None:
                return None
            return found.filename, found.content_type, self.desk.store.get(found.blob_sha256)

        got = await self.run(read)
        if got is None:
            return self.refused(404)
        name, kind, data = got
        quoted = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "file"
        return Response(data, media_type=kind if "/" in kind else "application/octet-stream",
                        headers={"Content-Disposition": f"attachment; filename=\"{quoted}\"; "
                                                        f"filename*=UTF-8''{quote(name)}"})

    # the call-back service

    async def escalation_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        now = self.clock()

        def read(session: Session) -> Shown | None:
            ticket = self.ticket_of(session, "escalate", token)
            return show(session, self.desk, self.cfg, ticket, now) if ticket else None

        shown = await self.run(read)
        if shown is None:
            return self.refused(404)
        return self.escalation_response(shown, token, shown.phone)

    def escalation_response(self, shown: Shown, token: str, phone: str, error: str = "",
                            status: int = 200) -> HTMLResponse:
        now = self.clock()
        return self.page("escalate", shown.language, status, t=shown, token=token, phone=phone,
                         error=error, form=form_token(self.cfg.secret, token),
                         open_now=self.desk.calendar.is_open(now),
                         callback=self.desk.calendar.next_open(now))

    async def escalate(self, request: Request) -> Response:
        token = request.path_params["token"]
        form = await request.form(max_files=0, max_fields=10, max_part_size=10_000)
        typed = str(form.get("phone") or "")
        phone = clean_phone(typed)
        csrf_ok = form_token_valid(self.cfg.secret, token, str(form.get("form") or ""))
        now = self.clock()

        def write(session: Session) -> tuple[Shown | None, str]:
            ticket = self.ticket_of(session, "escalate", token)
            if ticket is None:
                return None, ""
            if ticket.escalated_at is None and can_escalate(ticket):
                if not csrf_ok:
                    return show(session, self.desk, self.cfg, ticket, now), "form"
                if phone is None:
                    return show(session, self.desk, self.cfg, ticket, now), "phone"
                escalate(session, self.desk, self.cfg, ticket.id, phone, now)
            return show(session, self.desk, self.cfg, ticket, now), ""

        shown, error = await self.run(write)
        if shown is None:
            return self.refused(404)
        if error:
            return self.escalation_response(shown, token, typed[:100], error, status=400)
        self.wake()
        return RedirectResponse(request.url.path, status_code=303)

    async def not_found(self, request: Request) -> Response:
        return self.refused(404)

    async def stylesheet(self, request: Request) -> Response:
        css = (resources.files("maild.templates") / "web" / "web.css").read_bytes()
        return Response(css, media_type="text/css",
                        headers={"Cache-Control": "public, max-age=86400"})


class Guard:
    """Around the app: client address, rate limits, body limit, security headers, an
    access log without tokens, and our own page instead of any error's details."""

    def __init__(self, app: ASGIApp, pages: Pages) -> None:
        self.app, self.pages = app, pages
        self.per_client = TokenBuckets(pages.cfg.rate_per_minute)
        self.per_link = TokenBuckets(pages.cfg.rate_per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        peer = (scope.get("client") or ("-", 0))[0]
        client = client_address(peer, headers.get("x-forwarded-for", ""),
                                self.pages.cfg.trusted_proxies)
        path = str(scope.get("path", ""))
        status = {"code": 0}

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                kept = [(k, v) for k, v in message.get("headers", [])
                        if k.lower() not in {h for h, _ in SECURITY_HEADERS}
                        or (k.lower() == b"cache-control" and path.startswith("/static/"))]
                if path.startswith("/static/"):
                    extra = [h for h in SECURITY_HEADERS if h[0] != b"cache-control"]
                else:
                    extra = SECURITY_HEADERS
                message["headers"] = [*kept, *extra]
            await send(message)

        link = _TOKEN_PATH.match(path)
        try:
            if not self.per_client.allow(client) or (
                    link is not None and not self.per_link.allow(link.group(0))):
                raise _Refused(429)
            length = headers.get("content-length", "")
            if length and (not length.isdigit()
                           or int(length) > self.pages.cfg.max_body_bytes):
                raise _Refused(413)
            await self.app(scope, self._limited(receive), guarded_send)
        except _Refused as refused:
            if not status["code"]:
                await self.pages.refused(refused.status)(scope, receive, guarded_send)
        except Exception as exc:
            if isinstance(exc, StorageUnavailable | MaildError):
                log.warning("web request failed: %s", exc)
            else:
                log.exception("web request failed path=%s", loggable_path(path))
            if not status["code"]:
                await self.pages.refused(500)(scope, receive, guarded_send)
        finally:
            log.info("web %s %s %s %.0fms client=%s", scope.get("method"),
                     loggable_path(path), status["code"] or "-",
                     (time.monotonic() - started) * 1000, client)

    def _limited(self, receive: Receive) -> Receive:
        seen = {"bytes": 0}
        limit = self.pages.cfg.max_body_bytes

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
                if seen["bytes"] > limit:
                    raise _Refused(413)
            return message
        return counted


def make_app(desk: Desk, factory: db.SessionFactory, settings: Settings,
             clock: Callable[[], datetime], wake: Callable[[], None] | None = None) -> ASGIApp:
    """The web app, buildable without the daemon (tests drive it in-process); `wake` is
    called after a change that queued mail."""
    pages = Pages(desk, factory, web_config(settings, desk), clock, wake or (lambda: None),
                  page_environment(settings.paths.templates_dir))
    app = Starlette(routes=[
        Route("/t/{token}", pages.ticket_page, methods=["GET"]),
        Route("/t/{token}", pages.add, methods=["POST"]),
        Route("/t/{token}/files/{file}", pages.download, methods=["GET"]),
        Route("/escalate/{token}", pages.escalation_page, methods=["GET"]),
        Route("/escalate/{token}", pages.escalate, methods=["POST"]),
        Route("/static/web.css", pages.stylesheet, methods=["GET"]),
    ], exception_handlers={status: _handler(pages, 404 if status == 405 else status)
                           for status in (400, 404, 405, 413, 429, 500)})
    return Guard(app, pages)


def _handler(pages: Pages, status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(_request: Request, exc: Exception) -> Response:
        if status == 500:
            log.error("web request failed: %r", exc)
        return pages.refused(status)
    return handle


# -- inside the daemon ------------------------------------------------------------------

def bind(settings: Settings) -> socket.socket:
    """The listening socket, bound before anything starts: a clear start-up error when the
    address is taken or not ours. SO_REUSEPORT: a second maild on the same host (standing
    by for the mailbox) serves the pages too."""
    host, port = settings.http.host, settings.http.port
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        raise MaildError(f"[http] listen = {settings.http.listen!r}: cannot listen there: "
                         f"{exc.strerror or exc}") from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(app: ASGIApp, sock: socket.socket, should_exit: asyncio.Event) -> None:
    """Serve `app` on `sock` in this event loop until `should_exit` is set."""
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                            server_header=False, date_header=True, proxy_headers=False,
                            timeout_graceful_shutdown=5, h11_max_incomplete_event_size=65536)
    server = _Server(config)

    async def stop_when_asked() -> None:
        await should_exit.wait()
        server.should_exit = True

    stopper = asyncio.create_task(stop_when_asked())
    try:
        await server.serve(sockets=[sock])
    finally:
        stopper.cancel()
