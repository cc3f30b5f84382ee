"""What a reload (SIGHUP) may change in the running daemon, and what only a restart can.

The config file is read again as at start; the connections, the database, the listener,
the folders and the parse workers stay as they run (each changed key is named in the log),
everything else — templates, calendar, limits, agents, facts, triage, SLA, outbox
backoff, log level — takes effect with a new `Desk` that `Parts.use` hands to the parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from jinja2 import Environment, TemplateSyntaxError

from maild import web
from maild.config import Settings
from maild.desk import Desk
from maild.errors import ConfigError
from maild.intake import Intake
from maild.mail import contexts
from maild.outbox import Outbox
from maild.sweeps import Sweeper
from maild.watcher import Watcher
from maild.web.app import page_environment

# Per section: the keys only a restart applies (None: the whole section).
RESTART_ONLY: dict[str, tuple[str, ...] | None] = {
    "imap": None,  # the connection, the watched folder and the mailbox's identity
    "smtp": None,
    "oauth2": None,  # the token store is made at start
    "database": None,
    "paths": ("state_dir", "blob_dir"),
    "http": ("listen", "enabled", "max_connections", "max_connections_per_client",
             "header_timeout", "body_timeout"),  # the listeners' gates are made at start
    "intake": ("parse_workers", "parse_timeout", "parse_memory_mb"),  # the workers
}


def restart_only(old: Settings, new: Settings) -> list[str]:
    """The changed keys only a restart applies, as "[imap] host": names only, never
    values (a password or the database URL may be among them)."""
    changed: list[str] = []
    for section, keys in RESTART_ONLY.items():
        before, after = getattr(old, section), getattr(new, section)
        if before is None or after is None:  # an optional section added or removed
            changed += [f"[{section}]"] if before != after else []
            continue
        names = keys if keys is not None else tuple(type(before).model_fields)
        changed += [f"[{section}] {key}" for key in names
                    if getattr(before, key) != getattr(after, key)]
    return changed


def effective(old: Settings, new: Settings) -> Settings:
    """`new`, with everything only a restart applies kept as it runs in `old`."""
    update: dict[str, Any] = {}
    for section, keys in RESTART_ONLY.items():
        if keys is None:
            update[section] = getattr(old, section)
        else:
            running = getattr(old, section)
            update[section] = getattr(new, section).model_copy(
                update={key: getattr(running, key) for key in keys})
    return new.model_copy(update=update)


def check_templates(*envs: Environment) -> None:
    """Compile every template of `envs` (an ops folder's first): a syntax error is a
    ConfigError naming the file and line, so a broken template never reaches a mail."""
    for env in envs:
        for name in env.list_templates(extensions=["j2"]):
            try:
                env.get_template(name)
            except TemplateSyntaxError as exc:
                raise ConfigError(f"template {exc.filename or name}, line {exc.lineno}: "
                                  f"{exc.message}") from None
            unknown = contexts.unknown_names(env, name)
            if unknown:
                fields = ", ".join(contexts.field_names(contexts.TEMPLATES[name.split(".")[0]]))
                raise ConfigError(f"template {name} uses {', '.join(sorted(unknown))}, which "
                                  f"its mails do not have (it has: {fields})")


def compiled(desk: Desk, settings: Settings) -> Environment:
    """Compile every template of the desk's mails and of the pages (returned): a broken one
    is a config error, and the running daemon never reads the folder again (they stay
    cached, auto_reload off) — only a reload does."""
    pages_env = page_environment(settings.paths.templates_dir)
    check_templates(desk.templates, pages_env)
    return pages_env


@dataclass
class Parts:
    """What a reload points at the new desk and settings."""

    intake: Intake
    watcher: Watcher
    outbox: Outbox
    sweeper: Sweeper
    scheduler: AsyncIOScheduler
    site: web.Site | None

    def use(self, desk: Desk, pages_env: Environment, old: Settings,
            new: Settings) -> None:
        self.intake.use(desk, new.intake.max_attempts, new.intake.max_crashes)
        self.watcher.intake_settings = new.intake
        self.outbox.settings = new.outbox
        self.sweeper.desk, self.sweeper.settings = desk, new.sla
        if new.sla.sweep_seconds != old.sla.sweep_seconds:
            self.scheduler.reschedule_job("sla-sweep", trigger="interval",
                                          seconds=new.sla.sweep_seconds)
        if self.site is not None:
            self.site.use(desk, new, pages_env)
