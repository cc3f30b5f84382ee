"""The one backoff rule: exponential from `first` to `cap` seconds, with optional jitter.

Used per failure count for a mail's next attempt (the outbox) and as a running delay
between reconnects (`Backoff`: the mailbox, the database at start-up, the send loop).
"""

from __future__ import annotations

import logging
import random


def delay(first: float, cap: float, failures: int, jitter: float = 0.0,
          rng: random.Random | None = None) -> float:
    """Seconds to wait after the `failures`-th failure in a row (1: `first`), doubled each
    time, at most `cap`, then spread by ±`jitter` (0.2: ±20 %) so many waiters don't
    come back at once."""
    base = min(cap, first * 2.0 ** max(failures - 1, 0))
    if not jitter:
        return base
    return base * (rng or random.Random()).uniform(1 - jitter, 1 + jitter)


class Backoff:
    """Delays of `delay()` one after the other; `reset()` after a success."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap, self.failures = first, cap, 0

    def next(self) -> float:
        self.failures += 1
        return delay(self.first, self.cap, self.failures)

    def reset(self) -> None:
        self.failures = 0


class Outage:
    """One outage of a loop's server (the mailbox, SMTP, the database), told once: the
    first failure as a warning ("…; retrying with backoff"), its later variations at
    debug, and the end once at info ("<again> after: …"). The watcher, the send loop and
    the sweeps share it, so every outage reads the same in the journal."""

    def __init__(self, log: logging.Logger, again: str,
                 warn: str = "%s; retrying with backoff") -> None:
        self.log, self.again, self.warn = log, again, warn
        self.text = ""  # the first failure's text while the outage lasts, else ""

    def failed(self, text: str) -> None:
        if self.text:
            self.log.debug("still failing: %s", text)
        else:
            self.log.warning(self.warn, text)
            self.text = text

    def over(self) -> None:
        if self.text:
            self.log.info("%s after: %s", self.again, self.text)
            self.text = ""
