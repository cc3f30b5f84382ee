"""Connection limits of the web listener: how many at once (in all and per client), how
long a request may take to arrive, and one log line per overload episode.

A connection past a limit is closed as soon as it is accepted, so the listener never holds
more than `Gate.total` descriptors and intake, sending and the database keep theirs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_remote_addr

from maild.web.guard import rate_key

log = logging.getLogger(__name__)

# Descriptors the listener never takes: database pool, IMAP, SMTP lanes, parse workers'
# pipes, blob files, logs.
RESERVE = 256
TICK = 1.0  # how often a connection checks its deadlines (seconds)
CALM = 10.0  # an overload episode ends this long after the last refused connection


def raise_nofile() -> int:
    """Raise the soft limit of open files to the hard limit; the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def listener_cap(wanted: int, nofile: int) -> int:
    """Connections the listener may hold: `wanted`, but never into the reserve."""
    return max(1, min(wanted, nofile - RESERVE))


@dataclass(slots=True)
class Gate:
    """Who may connect: at most `total` connections, `per_client` per client (IPv6: per
    /64; not for trusted proxies, whose connections carry many clients)."""

    total: int
    per_client: int
    header_timeout: float
    body_timeout: float
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    clock: Callable[[], float] = time.monotonic
    open: Counter[str] = field(default_factory=Counter)
    count: int = 0
    refused: int = 0  # in the current overload episode
    last_refused: float | None = None

    def admit(self, host: str) -> bool:
        key = self._key(host)
        if self.count >= self.total or (key and self.open[key] >= self.per_client):
            self._refuse()
            return False
        self.count += 1
        if key:
            self.open[key] += 1
        self.calm_down()
        return True

    def release(self, host: str) -> None:
        key = self._key(host)
        self.count -= 1
        if key:
            self.open[key] -= 1
            if self.open[key] <= 0:
                del self.open[key]
        self.calm_down()

    def calm_down(self) -> None:
        now = self.clock()
        if self.last_refused is not None and now - self.last_refused >= CALM:
            log.warning("web listener overload over: %d connections refused", self.refused)
            self.last_refused, self.refused = None, 0

    def _refuse(self) -> None:
        if self.last_refused is None:
            log.warning("web listener overloaded: refusing connections past %d at once "
                        "(%d per client); one line when it is over", self.total,
                        self.per_client)
        self.refused += 1
        self.last_refused = self.clock()

    def _key(self, host: str) -> str:
        try:
            if any(ipaddress.ip_address(host) in net for net in self.trusted):
                return ""
        except ValueError:
            pass
        return rate_key(host)


def gated_protocol(gate: Gate) -> type[H11Protocol]:
    """uvicorn's h11 protocol behind `gate`, with the header and body deadlines."""
    return type("GatedH11", (_Gated,), {"gate": gate})


class _Gated(H11Protocol):
    gate: ClassVar[Gate]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = get_remote_addr(transport)
        self._host = peer[0] if peer else "-"
        self._admitted = self.gate.admit(self._host)
        if not self._admitted:
            transport.abort()  # the descriptor is free at once
            return
        super().connection_made(transport)
        self._seen: Any = None
        self._since = self.gate.clock()
        self._tick = self.loop.call_later(TICK, self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._tick.cancel()
        self.gate.release(self._host)
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._since = self.gate.clock()  # the next request's headers: from now
        super().on_response_complete()

    def _check(self) -> None:
        now = self.gate.clock()
        if self.cycle is not None and self.cycle is not self._seen:
            self._seen, self._since = self.cycle, now  # headers in: the body's deadline
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and now - self._since > self.gate.header_timeout:
            self.transport.abort()
            return
        if (not waiting and self.conn.their_state is h11.SEND_BODY
                and now - self._since > self.gate.body_timeout):
            self.transport.abort()
            return
        self._tick = self.loop.call_later(TICK, self._check)
