"""The guard around the pages: client address, rate limits, body limit, security
headers, an access log without tokens, and our own page instead of any error's details."""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import Response

from maild import links
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
_TOKEN_PATH = re.compile(r"^/(t|escalate)/([^/]+)")
# A link is ~100 characters; no page of ours needs more. Longer targets get 414 before
# the limiter or the log keep anything of them.
MAX_TARGET = 2048
# Keys the limiter remembers at most (per limiter); past this the least recently seen key
# is forgotten. ~200 bytes a key: about 4 MB for both limiters.
MAX_KEYS = 10_000


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


PROXY_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")
OPS_PATHS = ("/healthz", "/metrics")


def is_local(peer: str, headers: dict[str, str]) -> bool:
    """Whether a request comes straight from this host: a loopback peer and none of the
    headers a reverse proxy adds (a proxy on the same host is a loopback peer too)."""
    try:
        loopback = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return loopback.is_loopback and not any(h in headers for h in PROXY_HEADERS)


def rate_key(client: str) -> str:
    """The key a client is limited by: an IPv6 address by its /64 (one customer's network
    holds a whole /64), an IPv4-mapped address as IPv4, anything else as given."""
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return client[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def link_key(kind: str, token: str, keys: tuple[str, ...]) -> str:
    """The key a link is limited by: its ticket (every link of a ticket shares one bucket),
    or one bucket per kind for all links that are not ours."""
    claim = links.read_customer_token(keys, "ticket" if kind == "t" else "escalate", token)
    return f"{kind}:{claim.number}" if claim else f"{kind}:forged"


def loggable_path(path: str) -> str:
    """The path with the link token replaced, so logs never hold a working link."""
    return _TOKEN_PATH.sub(lambda m: f"/{m.group(1)}/…", path)


@dataclass(slots=True)
class TokenBuckets:
    """In-memory token buckets: `rate` requests per minute per key, bursts up to `rate`.
    At most `size` keys: a new key past that evicts the least recently seen one (a
    forgotten key starts full again, so eviction only ever errs towards allowing)."""

    rate: int
    clock: Callable[[], float] = time.monotonic
    size: int = MAX_KEYS
    buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    def allow(self, key: str) -> bool:
        now = self.clock()
        tokens, last = self.buckets.pop(key, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + (now - last) * self.rate / 60.0)
        while len(self.buckets) >= self.size:
            self.buckets.popitem(last=False)
        allowed = tokens >= 1.0
        self.buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


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
        too_long = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) \
            > MAX_TARGET or len(path) > MAX_TARGET
        if too_long:
            path = path[:100]
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
            if too_long:
                raise Refused(414)
            monitoring = path in OPS_PATHS and is_local(peer, headers)  # never limited
            if (not monitoring and not self.per_client.allow(rate_key(client))) or (
                    link is not None and not self.per_link.allow(
                        link_key(link.group(1), link.group(2), self.cfg.keys))):
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
            log.log(logging.DEBUG if path in OPS_PATHS else logging.INFO,
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
