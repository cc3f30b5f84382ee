"""Tell systemd how the daemon is doing (sd_notify): READY, STATUS, WATCHDOG, RELOADING,
STOPPING — a datagram to $NOTIFY_SOCKET, nothing at all when that is unset.

`Notifier.from_environ` takes NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID out of the
environment, so the parse worker processes (and anything else started later) neither
inherit nor use them: only the main process speaks for the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import MutableMapping

log = logging.getLogger(__name__)


class Notifier:
    """The service manager's end of the notify protocol; every method is a no-op without one."""

    def __init__(self, address: str = "", watchdog_usec: int = 0) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self.sock: socket.socket | None = None
        self.warned = False
        if address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None,
                     pid: int | None = None) -> Notifier:
        """The notifier systemd set up for this process, its variables removed from
        `environ` (os.environ by default). A watchdog meant for another PID is not ours."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", "")
        usec, owner = env.pop("WATCHDOG_USEC", ""), env.pop("WATCHDOG_PID", "")
        watchdog = int(usec) if usec.isdigit() else 0
        if owner and owner != str(os.getpid() if pid is None else pid):
            watchdog = 0
        if address and not (address.startswith("/") or address.startswith("@")):
            log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract name: ignored",
                        address)
            address = ""
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two pings (half the watchdog timeout), None without a watchdog."""
        if self.sock is None or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2_000_000

    def send(self, *fields: str) -> None:
        """One datagram of `KEY=value` lines; a failure is logged once, never raised."""
        if self.sock is None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self.sock.sendto("\n".join(fields).encode(), target)
        except OSError as exc:
            if not self.warned:
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
                self.warned = True

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={_one_line(text)}")

    def reloading(self) -> None:
        """Before a reload; systemd 253+ (Type=notify-reload) wants the monotonic time too."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


async def keep_alive(notifier: Notifier) -> None:
    """Ping the watchdog from the event loop until cancelled: a loop that is stuck sends
    nothing, and systemd restarts the service after WatchdogSec=."""
    interval = notifier.watchdog_interval
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
