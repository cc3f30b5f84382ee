"""The web app (Starlette routes over the pages) and its place in the daemon's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import uvicorn
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from maild import db, health, links, sla
from maild.config import Settings
from maild.desk import Desk
from maild.errors import MaildError
from maild.mail import files
from maild.mail.parse import Part
from maild.mail.render import format_size, format_when
from maild.models import Ticket
from maild.web.access import (
    WebConfig,
    clean_phone,
    form_token,
    form_token_valid,
    link_holds,
    web_config,
)
from maild.web.actions import add_information, escalate
from maild.web.conns import Gate, gated_protocol, listener_cap
from maild.web.guard import ASGIApp, Guard
from maild.web.ops import ops_routes
from maild.web.views import Shown, attachment_of, can_escalate, show

log = logging.getLogger(__name__)


def page_environment(override_dir: str = "") -> Environment:
    """The pages' templates: `<templates_dir>/web/` first (ops' wording), then ours."""
    loaders = [FileSystemLoader(str(Path(override_dir) / "web"))] if override_dir else []
    loaders.append(FileSystemLoader(str(resources.files("maild.templates") / "web")))
    env = Environment(
        loader=ChoiceLoader(loaders), auto_reload=False,  # reloaded on SIGHUP
        autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = format_when
    env.filters["size"] = format_size
    return env


@dataclass(slots=True)
class Pages:
    """The handlers of the customer's pages; every database step runs in a thread."""

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
        name = {400: "broken", 413: "too_large", 414: "broken", 429: "slow_down",
                500: "broken"}.get(status, "no_link")
        limit = self.desk.reading.limits.max_file_bytes
        return self.page(name, "de", status, max_mb=f"{limit / 1e6:g}")

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

    def minted(self, kind: str, token: str, now: datetime) -> datetime:
        """When the link a page was opened by was issued: the links the page mints carry
        that time, so a link opened once still expires when it would have."""
        claim = links.read_customer_token(self.cfg.keys, kind, token)
        return claim.issued if claim is not None and claim.issued is not None else now

    # the ticket page

    async def ticket_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        now = self.clock()

        def read(session: Session) -> Shown | None:
            ticket = self.ticket_of(session, "ticket", token)
            return show(session, self.desk, self.cfg, ticket, now,
                            self.minted("ticket", token, now)) if ticket else None

        shown = await self.run(read)
        if shown is None:
            return self.refused(404)
        return self.ticket_response(shown, token, added=request.query_params.get("added"))

    def ticket_response(self, shown: Shown, token: str, *, added: str | None = None,
                        error: str = "", status: int = 200) -> HTMLResponse:
        return self.page("ticket", shown.language, status, t=shown, token=token, added=added,
                         error=error, once=secrets.token_hex(16),
                         form=form_token(self.cfg.secret, token),
                         max_mb=f"{self.desk.reading.limits.max_file_bytes / 1e6:g}",
                         open_now=self.desk.calendar.is_open(self.clock()))

    async def add(self, request: Request) -> Response:
        token = request.path_params["token"]
        form = await request.form(max_files=20, max_fields=20,
                                  max_part_size=self.desk.reading.limits.max_file_bytes + 1)
        now = self.clock()
        text = str(form.get("text") or "").strip()
        uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)
                   and (f.filename or f.size)]
        parts = []
        for upload in uploads:
            data = await upload.read(self.desk.reading.limits.max_file_bytes + 1)
            if len(data) > self.desk.reading.limits.max_file_bytes:
                return self.refused(413)
            if data or upload.filename:
                parts.append(Part(files.safe_filename(upload.filename or "file"),
                                  upload.content_type or "application/octet-stream", data,
                                  False, ""))
        if sum(len(p.data) for p in parts) > self.desk.reading.limits.max_mail_bytes:
            return self.refused(413)
        csrf_ok = form_token_valid(self.cfg.secret, token, str(form.get("form") or ""))
        once = str(form.get("once") or "")[:64] or secrets.token_hex(16)

        def write(session: Session) -> tuple[Shown | None, str]:
            ticket = self.ticket_of(session, "ticket", token)
            if ticket is None:
                return None, ""
            if not csrf_ok:
                return show(session, self.desk, self.cfg, ticket, now,
                                self.minted("ticket", token, now)), "form"
            if not text and not parts:
                return show(session, self.desk, self.cfg, ticket, now,
                                self.minted("ticket", token, now)), "empty"
            done = add_information(session, self.desk, self.cfg, ticket, text,
                                   tuple(parts), now, once)
            return show(session, self.desk, self.cfg, ticket, now,
                            self.minted("ticket", token, now)), (
                done if done in ("closed", "quota") else "")

        try:
            shown, error = await self.run(write)
        except sa_exc.IntegrityError:  # the same form twice at once: the other one added it
            return RedirectResponse(f"{request.url.path}?added=1", status_code=303)
        if shown is None:
            return self.refused(404)
        if error:
            return self.ticket_response(shown, token, error=error,
                                        status=429 if error == "quota" else 400)
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
            return show(session, self.desk, self.cfg, ticket, now,
                            self.minted("escalate", token, now)) if ticket else None

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
                         callback=self.desk.calendar.next_open(now),
                         hours=sla.hours_text(self.desk.calendar, shown.language,
                                              now.astimezone(self.desk.calendar.zone).date()))

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
                    return show(session, self.desk, self.cfg, ticket, now,
                                    self.minted("escalate", token, now)), "form"
                if phone is None:
                    return show(session, self.desk, self.cfg, ticket, now,
                                    self.minted("escalate", token, now)), "phone"
                escalate(session, self.desk, self.cfg, ticket.id, phone, now)
            return show(session, self.desk, self.cfg, ticket, now,
                            self.minted("escalate", token, now)), ""

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


def make_app(desk: Desk, factory: db.SessionFactory, settings: Settings,
             clock: Callable[[], datetime], wake: Callable[[], None] | None = None,
             runtime: health.Runtime | None = None) -> Site:
    """The web app, buildable without the daemon (tests drive it in-process); `wake` is
    called after a change that queued mail. With the daemon's `runtime`, /healthz and
    /metrics are served beside the pages (unless `[http] metrics_listen` has them)."""
    pages = Pages(desk, factory, web_config(settings, desk), clock, wake or (lambda: None),
                  page_environment(settings.paths.templates_dir))
    ops = ops_routes(runtime, factory, settings.health, clock) if (
        runtime is not None and not settings.http.metrics_listen) else []
    app = Starlette(routes=[
        *ops,
        Route("/t/{token}", pages.ticket_page, methods=["GET"]),
        Route("/t/{token}", pages.add, methods=["POST"]),
        Route("/t/{token}/files/{file}", pages.download, methods=["GET"]),
        Route("/escalate/{token}", pages.escalation_page, methods=["GET"]),
        Route("/escalate/{token}", pages.escalate, methods=["POST"]),
        Route("/static/web.css", pages.stylesheet, methods=["GET"]),
    ], exception_handlers={status: _handler(pages, 404 if status == 405 else status)
                           for status in (400, 404, 405, 413, 414, 429, 500)})
    return Site(app, pages)


class Site(Guard):
    """The guarded app and its pages; a reload (SIGHUP) points them at new settings."""

    def __init__(self, app: ASGIApp, pages: Pages) -> None:
        super().__init__(app, pages.cfg, pages.refused)
        self.pages = pages

    def use(self, desk: Desk, settings: Settings, env: Environment) -> None:
        cfg = web_config(settings, desk)
        self.pages.desk, self.pages.cfg, self.cfg, self.pages.env = desk, cfg, cfg, env
        self.per_client.rate = self.per_link.rate = cfg.rate_per_minute


def _handler(pages: Pages, status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(_request: Request, exc: Exception) -> Response:
        if status == 500:
            log.error("web request failed: %r", exc)
        return pages.refused(status)
    return handle


# -- inside the daemon ------------------------------------------------------------------

def bind(settings: Settings, key: str = "listen") -> socket.socket:
    """The listening socket for `[http] listen` (or `metrics_listen`), bound before anything
    starts: a clear start-up error when the address is taken or not ours. SO_REUSEPORT: a
    second maild on the same host (standing by for the mailbox) serves the pages too."""
    listen = str(getattr(settings.http, key))
    host, port = listen.rpartition(":")[0].strip("[]"), int(listen.rpartition(":")[2])
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
        raise MaildError(f"[http] {key} = {listen!r}: cannot listen there: "
                         f"{exc.strerror or exc}") from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


ACCEPT_BURST = 32  # listen queue, and sockets accepted at once (see serve)
OPS_CONNECTIONS = 64  # `metrics_listen` is for monitoring: a few connections at once


def gate(settings: Settings, nofile: int, *, ops: bool = False) -> Gate:
    """The connection limits of one listener, from `[http]` and the open-files limit: the
    pages' listener leaves room for the ops listener's few, both stay out of the reserve."""
    http = settings.http
    total = (min(OPS_CONNECTIONS, http.max_connections) if ops
             else listener_cap(http.max_connections, nofile - OPS_CONNECTIONS))
    return Gate(total, http.max_connections_per_client,
                http.header_timeout, http.body_timeout,
                tuple(ipaddress.ip_network(p, strict=False) for p in http.trusted_proxies))


async def serve(app: ASGIApp, sock: socket.socket, should_exit: asyncio.Event,
                limits: Gate | None = None) -> None:
    """Serve `app` on `sock` in this event loop until `should_exit` is set, behind
    `limits` (connections at once, header and body deadlines)."""
    protocol: Any = gated_protocol(limits) if limits is not None else "h11"
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                            http=protocol,
                            server_header=False, date_header=True, proxy_headers=False,
                            timeout_graceful_shutdown=5, h11_max_incomplete_event_size=65536,
                            # asyncio accepts up to `backlog` sockets per wake-up before
                            # any is refused: keep that burst well inside the reserve
                            backlog=ACCEPT_BURST)
    server = _Server(config)

    async def stop_when_asked() -> None:
        await should_exit.wait()
        server.should_exit = True

    stopper = asyncio.create_task(stop_when_asked())
    try:
        await server.serve(sockets=[sock])
    finally:
        stopper.cancel()
