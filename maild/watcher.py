"""Keep one watched IMAP folder drained: fetch, hand each mail to intake, move after commit.

Runs as an asyncio task; every blocking IMAP or database step runs in a worker thread.
Connection errors and database outages are retried with backoff and logged once per
outage; the mail stays where it is until its outcome is committed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import datetime

from maild import db, health, oauth
from maild.analyse import Analysis
from maild.config import ImapSettings, IntakeSettings
from maild.errors import (
    ImapLoginRefused,
    ImapRejected,
    ImapUnavailable,
    OAuthRefused,
    Temporary,
)
from maild.imap import ImapMailbox
from maild.intake import Intake, Outcome
from maild.mail.fetched import Fetched
from maild.models import MailboxState
from maild.oauth import Tokens
from maild.retry import Backoff, Outage

log = logging.getLogger(__name__)


# A refused login is tried again after this many seconds at the least: Dovecot, for one,
# delays each failure from an address that keeps failing (up to 15 s), and fail2ban-style
# guards ban it; one try in 30 s shows a mended password soon enough.
LOGIN_RETRY_SECONDS = 30.0
# With the OAuth2 grant refused, the stored row is read this often (no request to the
# authority): a new `maild auth login` is taken within seconds, without a restart.
GRANT_RETRY_SECONDS = 3.0


def batches(uids: list[int], sizes: dict[int, int], count: int,
            limit: int) -> Iterator[list[int]]:
    """`uids` in order, in batches of at most `count` mails and `limit` bytes (a mail larger
    than `limit` alone), so a burst of big mails never sits in memory at once."""
    batch: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if batch and (len(batch) >= count or total + size > limit):
            yield batch
            batch, total = [], 0
        batch.append(uid)
        total += size
    if batch:
        yield batch


class Watcher:
    def __init__(
        self, imap: ImapSettings, intake_settings: IntakeSettings, intake: Intake,
        factory: db.SessionFactory, stop: threading.Event,
        on_committed: Callable[[], None], clock: Callable[[], datetime],
        lock: db.MailboxLock | None = None, runtime: health.Runtime | None = None,
        tokens: Tokens | None = None,
    ) -> None:
        self.lock = lock
        self.tokens = tokens  # [imap] auth = "oauth2"
        self._lifetime_of: tuple[datetime | None, int] = (None, 3600)
        # What /healthz, /metrics and the heartbeat row read: fetches, failures, counts.
        self.runtime = runtime or health.Runtime(started_at=clock())
        self.runtime.standby = lock is not None  # until the lock is ours
        self.imap = imap
        self.intake_settings = intake_settings
        self.intake = intake
        self.factory = factory
        self.stop = stop
        self.on_committed = on_committed
        self.clock = clock
        self.retry_at: dict[tuple[int, int], tuple[float, int]] = {}
        self.outage = Outage(log, "mail intake running again")
        # Between reconnects; from its first step again once a session has drained the
        # folder (a server that drops us now and then, as Exchange Online does, is not a
        # server that keeps failing).
        self.backoff = Backoff(1.0, 60.0)
        self.warned_plain = False
        # Set at the first look at the folder, the first failure or when standing by:
        # the daemon is ready for systemd (READY=1) once the mailbox was tried.
        self.looked = threading.Event()

    async def run(self) -> None:
        delay = self.backoff
        bugs = Backoff(1.0, 60.0)  # never reset: a bug met in every session is not hammered
        beating = asyncio.create_task(self._heartbeat(), name="heartbeat")
        while not self.stop.is_set():
            box = ImapMailbox(self.imap, self.tokens)
            try:
                await asyncio.to_thread(self._session, box)
            except OAuthRefused as exc:  # waits for `maild auth login`; mail stays put
                self._failed(str(exc))
                self.outage.failed(str(exc))
                self.looked.set()
                await asyncio.to_thread(self.stop.wait, GRANT_RETRY_SECONDS)
            except (ImapUnavailable, ImapRejected, Temporary) as exc:
                self._failed(str(exc))  # at the first failure: /healthz counts from here
                self.outage.failed(str(exc))
                self.looked.set()
                # Logged out before the wait: a session the server answered "not now" (and
                # still counts against the account's limit) is not held through it.
                await asyncio.to_thread(box.close)
                wait = delay.next()
                if isinstance(exc, ImapLoginRefused):  # not faster: servers penalise it
                    wait = max(wait, LOGIN_RETRY_SECONDS)
                await asyncio.to_thread(self.stop.wait, wait)
            except Exception as exc:  # a bug must not stop the intake for good
                self._failed(f"{type(exc).__name__}: {exc}")
                log.exception("mailbox round failed; reconnecting with backoff")
                self.looked.set()
                await asyncio.to_thread(self.stop.wait, bugs.next())
            else:
                delay.reset()
            finally:
                await asyncio.to_thread(box.close)
        beating.cancel()
        if self.lock is not None:
            self.lock.release()

    def _failed(self, text: str) -> None:
        self.runtime.mailbox_failed(self.clock(), text)
        self.runtime.count("mailbox_failures")

    async def _heartbeat(self) -> None:
        """Write the Runtime to the database every HEARTBEAT_SECONDS (the first 3 s after
        start, out of start-up's way), and at once when the mailbox or SMTP starts or stops
        failing (not while standing by: the row belongs to the process that watches), for
        `maild status`."""
        r = self.runtime
        written = (r.mailbox_error, r.smtp_error)
        last = time.monotonic() - health.HEARTBEAT_SECONDS + 3.0  # the first after start-up
        while not self.stop.is_set():
            state = (r.mailbox_error, r.smtp_error)
            due = state != written or time.monotonic() - last >= health.HEARTBEAT_SECONDS
            if due and not r.standby:
                written, last = state, time.monotonic()  # a failed write waits its turn
                try:
                    await asyncio.to_thread(health.beat, self.factory, self.imap.mailbox_id,
                                            r, self.clock())
                except Temporary as exc:
                    log.debug("heartbeat not written: %s", exc)
                except Exception:  # a bug must not stop the watcher
                    log.exception("heartbeat not written")
            await asyncio.sleep(1.0)

    def _hold_lock(self) -> bool:
        """Wait until this process may watch the mailbox; False when asked to stop."""
        if self.lock is None:
            return True
        waiting = False
        while not self.stop.is_set():
            if self.lock.try_acquire():
                if waiting:
                    log.info("mailbox lock taken over: watching %s now", self.imap.folder)
                self.runtime.standby = False
                return True
            if not waiting:
                log.info("another maild process watches %s; standing by", self.imap.folder)
                self.looked.set()
                waiting = True
            self.runtime.standby = True
            self.stop.wait(5.0)
        return False

    def _session(self, box: ImapMailbox) -> None:
        """One connection's life: drain the folder, then wait for news, until stopped."""
        if not self._hold_lock():
            return
        box.connect()
        if self.imap.tls == "none" and not self.warned_plain:
            log.warning("IMAP without TLS to %s: use tls = \"none\" only on loopback", box.where)
            self.warned_plain = True
        start_uid = self._start_uid(box)
        log.info("watching %s folder=%s uidvalidity=%s wait=%s move=%s", box.where,
                 self.imap.folder, box.uidvalidity,
                 "IDLE" if box.idles else f"poll every {self.imap.poll_interval:g}s",
                 "MOVE" if box.moves else "COPY+EXPUNGE")
        seen = 0
        # A token already due at login (the authority away, the stored one still valid):
        # this session lives until the server ends it, rather than reconnecting at once.
        renew = self._token_left(box) > 0
        while not self.stop.is_set():
            seen = max(seen, self._drain(box, start_uid))
            self.looked.set()
            self.backoff.reset()
            self.outage.over()
            # Mail that arrived while we were busy was announced during FETCH or MOVE, and
            # IDLE would wait only for newer changes: ask before waiting.
            if box.uids_after(seen):
                continue
            if renew and self._token_left(box) <= 0:
                # Servers drop a session whose token expired (Exchange does): a new one
                # with a fresh token now, rather than a broken one later.
                log.info("reconnecting to %s before the OAuth2 token expires", box.where)
                return
            box.wait(self._wait_seconds(box, renew), self.stop)

    def _token_left(self, box: ImapMailbox) -> float:
        """Seconds until the session's OAuth2 token is due for renewal (inf: no token)."""
        if box.token_expires_at is None or self.tokens is None:
            return float("inf")
        left = (box.token_expires_at - self.clock()).total_seconds()
        lifetime = self._lifetime(box)
        return left - oauth.margin(lifetime, self.tokens.settings)

    def _lifetime(self, box: ImapMailbox) -> int:
        """The lifetime of the session's token (read once per token)."""
        key = box.token_expires_at
        if self._lifetime_of[0] != key:
            row = self.tokens.row() if self.tokens is not None else None
            self._lifetime_of = (key, row.access_lifetime if row is not None else 3600)
        return self._lifetime_of[1]

    def _wait_seconds(self, box: ImapMailbox, renew: bool = True) -> float:
        limit = self.imap.idle_renew if box.idles else self.imap.poll_interval
        if renew:
            limit = max(0.05, min(limit, self._token_left(box)))
        if self.retry_at:
            soonest = min(t for t, _ in self.retry_at.values()) - time.monotonic()
            limit = max(0.05, min(limit, soonest))
        return limit

    def _start_uid(self, box: ImapMailbox) -> int:
        """The first UID to process, fixed at the very first start (see process_existing)."""
        now = self.clock()
        with db.transaction(self.factory) as session:
            state = session.get(MailboxState, self.imap.mailbox_id)
            if state is None:
                start = 0 if self.imap.process_existing else box.uidnext
                state = MailboxState(name=self.imap.mailbox_id, uidvalidity=box.uidvalidity,
                                     start_uid=start, updated_at=now)
                session.add(state)
                if start:
                    log.info("first start: mails already in %s are left alone (UID < %s)",
                             self.imap.folder, start)
            elif state.uidvalidity != box.uidvalidity:
                log.warning("UIDVALIDITY of %s changed %s → %s: rescanning the whole folder",
                            self.imap.folder, state.uidvalidity, box.uidvalidity)
                state.uidvalidity, state.start_uid, state.updated_at = box.uidvalidity, 0, now
            return state.start_uid

    def _drain(self, box: ImapMailbox, start_uid: int) -> int:
        """Handle every mail now in the folder, batch by batch; returns the highest UID seen."""
        now = time.monotonic()
        uids = [u for u in box.uids() if u >= start_uid]
        self.runtime.fetched(self.clock(), len(uids))  # a complete look at the folder
        due = [u for u in uids if self.retry_at.get((box.uidvalidity, u), (0.0, 0))[0] <= now]
        # Mails finished with but still here: the move after the commit did not happen or
        # stopped half-way (a server without MOVE: copied, maybe flagged \Deleted).
        half = [u for u in box.half_moved() if u >= start_uid]
        known = self.intake.known(box.uidvalidity, due + half)
        self._move(box, [Outcome(u, "processed" if s == "processed" else "quarantine")
                         for u, s in known.items()], again=True)
        fresh = [u for u in due if u not in known]
        # A pipeline: batch k+1 is fetched and analysed (parsed in the worker pool) while
        # batch k is committed and moved.
        pending: tuple[list[Fetched], Future[list[Analysis]], float] | None = None
        sizes = box.sizes(fresh)
        limit = int(self.imap.fetch_batch_mb * 1_000_000)
        for batch in batches([u for u in fresh if u in sizes], sizes, self.imap.batch_size,
                             limit):
            if self.stop.is_set():
                break
            started = time.monotonic()
            fetched = box.fetch(batch, sizes)
            self.runtime.count("mails_fetched", n=len(fetched))
            ahead = ((fetched, self.intake.analyse(box.uidvalidity, fetched), started)
                     if fetched else None)
            if pending is not None:
                self._finish(box, *pending)
            pending = ahead
        if pending is not None:
            self._finish(box, *pending)
        self.runtime.inbox_waiting = len(self.retry_at)  # the rest is processed
        return max(uids, default=0)

    def _finish(self, box: ImapMailbox, fetched: list[Fetched],
                analysed: Future[list[Analysis]], started: float) -> None:
        outcomes = self.intake.process_batch(box.uidvalidity, fetched, analysed)
        self.on_committed()
        self._count(outcomes, time.monotonic() - started)
        self._move(box, outcomes)

    def _count(self, outcomes: list[Outcome], seconds: float) -> None:
        for o in outcomes:
            if o.action == "processed":
                self.runtime.count("mails_processed", o.kind or "duplicate")
                if o.kind in health.AUTOMATIC_KINDS:
                    self.runtime.count("mails_automatic_unanswered")
                self.runtime.observe(seconds)
            elif o.action == "quarantine":
                self.runtime.count("mails_quarantined")
            else:
                self.runtime.count("mails_retried")

    def _move(self, box: ImapMailbox, outcomes: list[Outcome], again: bool = False) -> None:
        done = [o.uid for o in outcomes if o.action == "processed"]
        bad = [o for o in outcomes if o.action == "quarantine"]
        for o in bad:
            log.warning("mail quarantined uid=%s folder=%s reason=%s",
                        o.uid, self.imap.quarantine_folder, o.reason)
        for o in outcomes:
            if o.action == "retry":
                self._schedule_retry(box.uidvalidity, o)
            else:
                self.retry_at.pop((box.uidvalidity, o.uid), None)
        box.move(done, self.imap.processed_folder, again)
        box.move([o.uid for o in bad], self.imap.quarantine_folder, again)

    def _schedule_retry(self, uidvalidity: int, outcome: Outcome) -> None:
        _, tries = self.retry_at.get((uidvalidity, outcome.uid), (0.0, 0))
        s = self.intake_settings
        delay = min(s.retry_backoff * 2 ** tries, s.retry_backoff_max)
        self.retry_at[(uidvalidity, outcome.uid)] = (time.monotonic() + delay, tries + 1)
        log.info("mail will be retried uid=%s in=%.0fs: %s", outcome.uid, delay, outcome.reason)
