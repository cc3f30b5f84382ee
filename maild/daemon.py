"""Composition root and lifecycle of `maild run`: startup → ready → watch and send (reloads
on SIGHUP) → bounded shutdown, each step told to systemd (see sdnotify)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from maild import (
    agents,
    blobs,
    config,
    db,
    health,
    logins,
    logs,
    oauth,
    reload,
    sdnotify,
    sla,
    web,
)
from maild.analyse import Budget
from maild.config import Settings
from maild.desk import AgentPolicy, Answering, Desk, Promise, Reading, Threading
from maild.errors import ConfigError, StorageUnavailable, Temporary
from maild.intake import Intake
from maild.mail import files
from maild.mail.render import Sender, environment
from maild.models import OAuthToken
from maild.outbox import Outbox
from maild.retry import Backoff, Outage
from maild.sweeps import Sweeper
from maild.watcher import Watcher

log = logging.getLogger(__name__)

DRAIN_SECONDS = 10.0
READY_WAIT = 60.0  # the first look at the mailbox may take this long before READY=1 anyway
FIRST_SWEEP_WAIT = 60.0  # the first SLA sweep waits for the inbox backlog this long at most
STATUS_SECONDS = 15.0  # STATUS= is refreshed this often, and after mail was processed or sent


def login_tokens(s: Settings, factory: db.SessionFactory, clock: Callable[[], datetime],
                 runtime: health.Runtime | None = None,
                 on_refused: Callable[[Session, OAuthToken], None] | None = None,
                 ) -> oauth.Tokens | None:
    """The OAuth2 tokens IMAP and SMTP log in with (one store for both), if any."""
    if s.oauth2 is None or "oauth2" not in (s.imap.auth, s.smtp.auth):
        return None
    return oauth.Tokens(s.oauth2, factory, oauth.account_of(s), clock,
                        on_refused=on_refused,
                        count=runtime.count if runtime is not None else None)


def utcnow() -> datetime:
    return datetime.now(UTC)


def flight_file(settings: Settings) -> Path:
    """Where the mails being parsed are recorded for this mailbox (see analyse.Flight)."""
    name = hashlib.sha256(settings.imap.mailbox_id.encode()).hexdigest()[:16]
    return settings.state_dir / f"parsing-{name}.json"


def build_desk(settings: Settings, factory: db.SessionFactory, now: datetime) -> Desk:
    secret = settings.security.secret_key or db.app_secret(factory, "signing_key", now)
    return Desk(
        sender=Sender(settings.support.address, settings.support.name),
        public_url=settings.support.public_url,
        default_language=settings.support.default_language,
        timezone=settings.calendar.timezone,
        calendar=sla.calendar_from(settings.calendar),
        templates=environment(settings.paths.templates_dir),
        secret=secret,
        store=blobs.FolderStore(settings.blob_dir),
        verp=settings.outbox.verp,
        promise=Promise(
            hours=settings.calendar.first_response_hours,
            by_priority={str(k): v for k, v in
                         settings.calendar.first_response_by_priority.items()},
            by_tier=settings.calendar.first_response_by_tier),
        reading=Reading(
            required_facts=settings.facts.required,
            fact_patterns=settings.facts.patterns,
            urgent_keywords=settings.triage.urgent_keywords,
            tier_priority=settings.triage.tier_priority,
            limits=files.Limits(int(settings.attachments.max_file_mb * 1_000_000),
                                int(settings.attachments.max_mail_mb * 1_000_000),
                                settings.attachments.max_count),
            logo_max_bytes=int(settings.attachments.logo_max_kb * 1000),
            spam_rule=(settings.spam.header, re.compile(settings.spam.pattern))
            if settings.spam.header else None),
        threading=Threading(
            reopen_days=settings.threading.reopen_days,
            stranger_tag=settings.threading.stranger_tag,
            plus_addressing=settings.threading.plus_addressing),
        answering=Answering(
            unknown_sender=settings.accounts.unknown_sender,
            per_address_per_hour=settings.limits.answers_per_address_per_hour,
            per_hour=settings.limits.answers_per_hour,
            reserved_share=settings.limits.answers_reserved_share,
            subject_max_chars=settings.limits.subject_max_chars),
        agents=AgentPolicy(
            roster=agents.roster_from(settings.agents.members, settings.agents.team_address),
            language=settings.agents.language,
            require_proof=settings.agents.require_proof,
            trusted_authserv_ids=settings.agents.trusted_authserv_ids,
            trusted_hosts=settings.agents.trusted_hosts,
            relay_to_participants=settings.agents.relay_to_participants,
            quote_customer=settings.agents.quote_customer,
            notify_files_max_bytes=int(settings.agents.notify_attachments_max_mb * 1_000_000),
            notify_text_max_bytes=int(settings.limits.notify_text_max_kb * 1000),
            token_days=settings.agents.token_days,
            max_relay_recipients=settings.agents.max_relay_recipients,
            key_version=settings.security.agent_key_version),
    )


class Daemon:
    def __init__(self, settings: Settings, clock: Callable[[], datetime] = utcnow,
                 notifier: sdnotify.Notifier | None = None, *, upgrade: bool = False) -> None:
        self.settings = settings
        self.upgrade = upgrade  # `run --upgrade`: migrate an older schema before starting
        self.clock = clock
        self.stop = threading.Event()
        self.should_exit = asyncio.Event()
        self.wakeup = asyncio.Event()
        self.force_exit = False
        # Taken from the environment before any worker process is started (see sdnotify).
        self.notifier = notifier or sdnotify.Notifier.from_environ()
        self.reload_asked = asyncio.Event()
        self.status_due = asyncio.Event()
        self.runtime: health.Runtime | None = None  # made in _main
        self.sweep_outage = Outage(log, "sweeping again", "sweep skipped: %s")

    def request_exit(self, signum: int = 0) -> None:
        """Signal handler: the first signal drains, a second one forces."""
        if self.should_exit.is_set():
            self.force_exit = True
            log.warning("second signal: stopping now")
        else:
            log.info("stopping (signal %s): finishing the mail in hand", signum or "-")
        self.stop.set()
        self.should_exit.set()
        self.wakeup.set()

    def request_reload(self) -> None:
        """SIGHUP handler: the reload runs once the daemon is ready (never before)."""
        log.info("reload asked (SIGHUP)")
        self.reload_asked.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_exit, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)  # before anything else
        self.notifier.status("starting")
        watchdog = asyncio.create_task(sdnotify.keep_alive(self.notifier), name="watchdog")
        engine = db.make_engine(self.settings.database_url)
        try:
            factory = await self._startup(engine)
            if factory is None:
                self.notifier.stopping()
                return 0
            await self._main(engine, factory)
        finally:
            engine.dispose()
            watchdog.cancel()
        log.info("stopped")
        return 0

    async def _startup(self, engine: Engine) -> db.SessionFactory | None:
        """Wait for a database at the current schema; None when asked to stop meanwhile."""
        delay = Backoff(1.0, 30.0)
        while not self.should_exit.is_set():
            try:
                current, head = await asyncio.to_thread(db.schema_status, engine)
                if self.upgrade and current != head and (not current or current < head):
                    log.info("migrating the database's schema from %s to %s",
                             current or "nothing", head)
                    self.notifier.status(f"migrating the database to schema {head}")
                    await asyncio.to_thread(db.upgrade, engine)
                    current, head = await asyncio.to_thread(db.schema_status, engine)
                problem = db.schema_problem(current, head)
                if problem:
                    raise ConfigError(problem)
                return db.session_factory(engine)
            except StorageUnavailable as exc:
                log.warning("%s; retrying", exc)
                self.notifier.status(f"waiting for the database: {exc}")
                await self._sleep(delay.next())
        return None

    async def _main(self, engine: Engine, factory: db.SessionFactory) -> None:
        s = self.settings
        self.runtime = health.Runtime(started_at=self.clock())
        desk = await asyncio.to_thread(build_desk, s, factory, self.clock())
        # Bound before anything starts: a taken address is a start-up error, not a surprise.
        nofile = web.raise_nofile()  # the listeners' connections stay below it (a reserve)
        web_socket = web.bind(s) if s.http.enabled else None
        ops_socket = web.bind(s, "metrics_listen") if s.http.metrics_listen else None
        runtime = self.runtime  # one: what STATUS=, /healthz and /metrics show
        tokens = login_tokens(s, factory, self.clock, runtime,
                              logins.lead_notice(desk, s))
        intake = Intake(factory, desk, s.imap.mailbox_id, s.intake.max_attempts, self.clock,
                        workers=s.intake.parse_workers,
                        budget=Budget(s.intake.parse_timeout, s.intake.parse_memory_mb),
                        max_crashes=s.intake.max_crashes, flight=flight_file(s))
        intake.start()  # the parse workers, warm before the first mail
        try:  # meanwhile every template is compiled: a broken one stops the start
            pages_env = await asyncio.to_thread(reload.compiled, desk, s)
        except BaseException:
            intake.close()
            raise
        loop = asyncio.get_running_loop()

        def wake_outbox() -> None:
            loop.call_soon_threadsafe(self.wakeup.set)
            loop.call_soon_threadsafe(self.status_due.set)

        lock = db.MailboxLock(engine, s.imap.mailbox_id)
        watcher = Watcher(s.imap, s.intake, intake, factory, self.stop, wake_outbox, self.clock,
                          lock, runtime=runtime,
                          tokens=tokens if s.imap.auth == "oauth2" else None)
        outbox = Outbox(factory, s.outbox, s.smtp, self.clock, desk.store, runtime=runtime,
                        probe_seconds=s.health.smtp_probe_seconds,
                        tokens=tokens if s.smtp.auth == "oauth2" else None)
        tasks = [
            asyncio.create_task(watcher.run(), name="watcher"),
            asyncio.create_task(self._send_loop(outbox), name="outbox"),
        ]
        site = None
        if web_socket is not None:  # the ticket pages and the escalation link
            site = web.make_app(desk, factory, s, self.clock, wake_outbox, runtime=runtime)
            site.pages.env = pages_env
            tasks.append(asyncio.create_task(web.serve(site, web_socket, self.should_exit,
                                                       web.gate(s, nofile)),
                                             name="web"))
            log.info("web pages on http://%s (links: %s)", s.http.listen, s.support.public_url)
        if ops_socket is not None:  # /healthz and /metrics on an address of their own
            ops = web.make_ops_app(runtime, factory, s.health, self.clock)
            tasks.append(asyncio.create_task(web.serve(ops, ops_socket, self.should_exit,
                                                       web.gate(s, nofile, ops=True)),
                                             name="ops"))
            log.info("/healthz and /metrics on http://%s", s.http.metrics_listen)
        # The sweeps over deadlines. The first catches up after downtime once the inbox's
        # backlog is through (customers' acknowledgements before agents' warnings), at most
        # FIRST_SWEEP_WAIT after start.
        sweeper = Sweeper(factory, desk, s.sla, self.clock, runtime=runtime,
                          keep_sent_days=s.outbox.keep_sent_days)
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(self._sweep, "interval", args=[sweeper], id="sla-sweep",
                          seconds=s.sla.sweep_seconds,
                          next_run_time=datetime.now(UTC) + timedelta(
                              seconds=FIRST_SWEEP_WAIT),
                          max_instances=1, coalesce=True, misfire_grace_time=None)
        scheduler.start()
        log.info("maild running: mailbox %s, support address %s", s.imap.mailbox_id,
                 s.support.address)
        parts = reload.Parts(intake, watcher, outbox, sweeper, scheduler, site)
        helpers: list[asyncio.Task[None]] = []
        try:
            if await self._until_tried(watcher) and not self.should_exit.is_set():
                scheduler.modify_job("sla-sweep", next_run_time=datetime.now(UTC))
            if not self.should_exit.is_set():
                self.notifier.ready(await self._status(factory))
                helpers = [asyncio.create_task(self._reloads(parts, factory), name="reload"),
                           asyncio.create_task(self._report(factory), name="status")]
            await self.should_exit.wait()
            self.notifier.stopping()
            for helper in helpers:
                helper.cancel()
            scheduler.shutdown(wait=False)
            await self._shutdown(tasks)
        finally:
            intake.close()

    async def _until_tried(self, watcher: Watcher) -> bool:
        """Until the mailbox was tried once (reached, failing, or another process watches
        it), at most READY_WAIT: systemd's start timeout must not kill a daemon whose
        mailbox is down; STATUS= says so instead. False when the wait ran out."""
        deadline = time.monotonic() + READY_WAIT
        while not (watcher.looked.is_set() or self.should_exit.is_set()):
            if time.monotonic() >= deadline:
                log.warning("no answer from the mailbox within %.0fs; ready without it",
                            READY_WAIT)
                return False
            await asyncio.sleep(0.05)
        return True

    async def _status(self, factory: db.SessionFactory) -> str:
        """The STATUS= line: the backlog and what is failing."""
        if self.runtime is None:
            return "starting"
        try:
            counts = await asyncio.to_thread(health.backlog, factory)
        except Exception as exc:  # the database down: the line says so, the daemon goes on
            log.debug("backlog not counted: %r", exc)
            return "database unreachable: backlog unknown"
        return health.status_line(self.runtime, counts)

    async def _report(self, factory: db.SessionFactory) -> None:
        """Refresh STATUS= every STATUS_SECONDS and after mail went in or out (at most
        once a second)."""
        if not self.notifier.enabled:
            return
        while not self.should_exit.is_set():
            await self._sleep(STATUS_SECONDS, self.status_due)
            self.status_due.clear()
            self.notifier.status(await self._status(factory))
            await asyncio.sleep(1.0)

    async def _reloads(self, parts: reload.Parts, factory: db.SessionFactory) -> None:
        """One reload per SIGHUP (several at once are one), RELOADING=1 … READY=1 around it."""
        while True:
            await self.reload_asked.wait()
            self.reload_asked.clear()
            self.notifier.reloading()
            try:
                await self._reload(parts, factory)
            except Exception:  # a bug in a reload must not end the daemon
                log.exception("reload failed; the running config is kept")
            self.notifier.ready(await self._status(factory))

    async def _reload(self, parts: reload.Parts, factory: db.SessionFactory) -> None:
        """Read the config file and the templates again; keep the old ones when invalid."""
        old = self.settings
        try:
            new = await asyncio.to_thread(config.load, old.source)
            settings = reload.effective(old, new)
            desk = await asyncio.to_thread(build_desk, settings, factory, self.clock())
            pages_env = await asyncio.to_thread(reload.compiled, desk, settings)
        except (ConfigError, Temporary) as exc:
            log.error("reload: %s; the running config is kept",
                      str(exc).replace("\n", "; "))
            return
        for name in reload.restart_only(old, new):
            log.warning("reload: %s changed: takes effect after a restart", name)
        parts.use(desk, pages_env, old, settings)
        self.settings = settings
        logs.setup(settings.log.level, settings.log.format, logs.secrets_of(settings))
        log.info("reloaded %s: templates, calendar, limits, agents and the rest in effect",
                 settings.source)

    async def _sweep(self, sweeper: Sweeper) -> None:
        try:
            counts = await asyncio.to_thread(sweeper.run)
        except Temporary as exc:
            self.sweep_outage.failed(str(exc))
            return
        except Exception:  # a bug must not stop the scheduler
            log.exception("sweep failed")
            return
        self.sweep_outage.over()
        if counts.any():
            self.wakeup.set()

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        done, pending = await asyncio.wait(tasks, timeout=0 if self.force_exit else DRAIN_SECONDS)
        for task in pending:
            log.warning("cancelling %s after %.0fs", task.get_name(), DRAIN_SECONDS)
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("%s ended with %r", task.get_name(), task.exception())

    async def _send_loop(self, outbox: Outbox) -> None:
        delay = Backoff(1.0, 60.0)
        outage = Outage(log, "sending again")
        while not self.should_exit.is_set():
            self.wakeup.clear()
            outbox.reached = False
            try:
                await outbox.deliver_due()
                self.status_due.set()
                next_due = await asyncio.to_thread(outbox.next_due)
                delay.reset()
                outage.over()
            except Temporary as exc:
                outage.failed(str(exc))
                if outbox.reached:  # the server answered in this round: not a long outage
                    delay.reset()
                await self._sleep(delay.next())
                continue
            except Exception:  # a bug must not stop sending for good
                log.exception("outbox round failed; retrying with backoff")
                await self._sleep(delay.next())
                continue
            wait = 30.0
            if next_due is not None:
                wait = min(wait, max(0.1, (next_due - self.clock()).total_seconds()))
            await self._sleep(wait, self.wakeup)

    async def _sleep(self, seconds: float, event: asyncio.Event | None = None) -> None:
        """Sleep up to `seconds`, ending early on `event` or on shutdown."""
        waiters = [asyncio.ensure_future(self.should_exit.wait())]
        if event is not None:
            waiters.append(asyncio.ensure_future(event.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
