"""What a reload (SIGHUP) may change in the running daemon, and what only a restart can.

The config file is read again as at start; the connections, the database, the listener,
the folders and the parse workers stay as they run (each changed key is named in the log),
everything else — templates, calendar, limits, agents, facts, triage, SLA, outbox
backoff, log level — takes effect with a new `Desk` that `Parts.use` hands to the parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from jinja2 import Environment, TemplateError, TemplateNotFound, TemplateSyntaxError, nodes

from maild import web
from maild.config import Settings
from maild.desk import Desk
from maild.errors import ConfigError
from maild.intake import Intake
from maild.mail import contexts, render
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


def check_templates(mails: Environment, pages: Environment | None = None,
                    folder: str = "") -> None:
    """Compile every template of the mails and the pages (an ops folder's first) with what
    it includes: each problem is a line of one ConfigError, so a broken template never
    reaches a mail."""
    problems = template_problems(mails, pages, folder=folder)
    if problems:
        raise ConfigError("\n".join(problems))


def template_problems(mails: Environment, pages: Environment | None = None,
                      folder: str = "") -> list[str]:
    """One line per problem of the templates: a syntax error (file and line), an include,
    import or extends of a template that does not exist, a name its mails do not have; and
    an ops folder (`[paths] templates_dir`) that is not there."""
    problems: list[str] = []
    if folder and not Path(folder).is_dir():
        problems.append(f"[paths] templates_dir {folder}: no such folder")
    for name in mails.list_templates(extensions=["j2"]):
        if not name.startswith("web/"):  # the pages' folder, below
            problems += _problems_of(mails, name)
    if pages is not None:
        for name in pages.list_templates(extensions=["j2"]):
            problems += _problems_of(pages, name)
    return problems


VERBS = {nodes.Include: "includes", nodes.Import: "imports", nodes.FromImport: "imports",
         nodes.Extends: "extends"}


def _problems_of(env: Environment, name: str) -> list[str]:
    try:
        template = env.get_template(name)
        source = env.loader.get_source(env, name)[0] if env.loader else ""
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        return [f"template {exc.filename or name}, line {exc.lineno}: {exc.message}"]
    missing = []
    for node in ast.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        target = getattr(node, "template", None)  # a name in a variable is not checked
        if (isinstance(target, nodes.Const) and not getattr(node, "ignore_missing", False)
                and not _exists(env, target.value)):
            missing.append(f"template {template.filename or name}, line {node.lineno}: "
                           f"{VERBS[type(node)]} {target.value}, which does not exist")
    if missing:  # the names below cannot be read through a file that is not there
        return missing
    try:
        unknown = contexts.unknown_names(env, name)
    except TemplateError as exc:  # an include of an include that does not parse
        return [f"template {name}: {exc}"]
    if not unknown:
        return []
    fields = ", ".join(contexts.field_names(contexts.TEMPLATES[name.split(".")[0]]))
    return [f"template {name} uses {', '.join(sorted(unknown))}, which its mails do not "
            f"have (it has: {fields})"]


def _exists(env: Environment, name: object) -> bool:
    try:
        env.get_template(str(name))
    except TemplateNotFound:
        return False
    except TemplateError:
        return True  # it is there; its own line says what is wrong with it
    return True


def settings_problems(settings: Settings) -> list[str]:
    """`template_problems` of the templates `settings` name (for `maild check`)."""
    folder = settings.paths.templates_dir
    return template_problems(render.environment(folder), page_environment(folder),
                             folder=folder)


def compiled(desk: Desk, settings: Settings) -> Environment:
    """Compile every template of the desk's mails and of the pages (returned): a broken one
    is a config error, and the running daemon never reads the folder again (they stay
    cached, auto_reload off) — only a reload does."""
    pages_env = page_environment(settings.paths.templates_dir)
    check_templates(desk.templates, pages_env, folder=settings.paths.templates_dir)
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
