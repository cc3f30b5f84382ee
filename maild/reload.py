"""What a reload (SIGHUP) may change in the running daemon, and what only a restart can.

The config file is read again as at start; the connections, the database, the listener,
the folders and the parse workers stay as they run (each changed key is named in the log),
everything else — templates, calendar, limits, agents, facts, triage, SLA, outbox
backoff, log level — takes effect with a new `Desk`.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, TemplateSyntaxError

from maild.config import Settings
from maild.errors import ConfigError

# Per section: the keys only a restart applies (None: the whole section).
RESTART_ONLY: dict[str, tuple[str, ...] | None] = {
    "imap": None,  # the connection, the watched folder and the mailbox's identity
    "smtp": None,
    "database": None,
    "paths": ("state_dir", "blob_dir"),
    "http": ("listen", "enabled"),
    "intake": ("parse_workers", "parse_timeout", "parse_memory_mb"),  # the workers
}


def restart_only(old: Settings, new: Settings) -> list[str]:
    """The changed keys only a restart applies, as "[imap] host": names only, never
    values (a password or the database URL may be among them)."""
    changed: list[str] = []
    for section, keys in RESTART_ONLY.items():
        before, after = getattr(old, section), getattr(new, section)
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
