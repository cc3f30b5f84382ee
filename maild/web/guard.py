"""The guard around the pages: client address, rate limits, body limit, security
headers, an access log without tokens, and our own page instead of any error's details."""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import Response

from maild.errors import MaildError, StorageUnavailable
from maild.web.access import WebConfig

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


class Refused(HTTPException):
    """A request we answer with a page of our own (413, 429): raised in the guard, or while
    the app reads a body that grows past the limit (then Starlette hands it to our page)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Guard:
    """Around the app: client address, rate limits, body limit, security headers, an
    access log without tokens, and our own page instead of any error's details."""

    def __init__(self, app: ASGIApp, cfg: WebConfig,
                 refuse: Callable[[int], Response]) -> None:
        self.app, self.cfg, self.refuse = app, cfg, refuse
        self.per_client = TokenBuckets(cfg.rate_per_minute)
        self.per_link = TokenBuckets(cfg.rate_per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        peer = (scope.get("client") or ("-", 0))[0]
        client = client_address(peer, headers.get("x-forwarded-for", ""),
                                self.cfg.trusted_proxies)
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
                raise Refused(429)
            length = headers.get("content-length", "")
            if length and (not length.isdigit()
                           or int(length) > self.cfg.max_body_bytes):
                raise Refused(413)
            await self.app(scope, self._limited(receive), guarded_send)
        except Refused as refused:
            if not status["code"]:
                await self.refuse(refused.status)(scope, receive, guarded_send)
        except Exception as exc:
            if isinstance(exc, StorageUnavailable | MaildError):
                log.warning("web request failed: %s", exc)
            else:
                log.exception("web request failed path=%s", loggable_path(path))
            if not status["code"]:
                await self.refuse(500)(scope, receive, guarded_send)
        finally:  # monitoring's frequent polls of /healthz and /metrics: debug only
            log.log(logging.DEBUG if path in ("/healthz", "/metrics") else logging.INFO,
                    "web %s %s %s %.0fms client=%s", scope.get("method"),
                    loggable_path(path), status["code"] or "-",
                    (time.monotonic() - started) * 1000, client)

    def _limited(self, receive: Receive) -> Receive:
        seen = {"bytes": 0}
        limit = self.cfg.max_body_bytes

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
                if seen["bytes"] > limit:
                    raise Refused(413)
            return message
        return counted
