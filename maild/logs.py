"""Log lines for journald or a collector: one event per line, with the mail's context.

Every record becomes exactly one line on stderr: what a sender wrote (a Message-ID, a
subject, a reason) cannot start a line of its own, since control characters and line
breaks are written as escapes (`\\n`, `\\x1b`), tracebacks included. The ticket and the
Message-ID of the mail in hand are appended (`ticket=#10001 message_id=<…>`) from a
context the intake sets per mail (`with logs.context(...)`; a `contextvars` value, so it
follows the mail into `asyncio.to_thread`). Under systemd (`$JOURNAL_STREAM`) each line
starts with its syslog priority (`<3>`), which journald takes as the entry's priority.

Formats (`[log] format`): `text` (`LEVEL logger: message key=value…`) or `json` (one object
per line: time, level, logger, message, the context fields, exception).

Nothing secret is written: the configured passwords and keys are masked wherever they
appear, and so are the tokens of reply addresses (`service+10001.TOKEN@`) and of links
(`/t/TOKEN`, `/escalate/TOKEN`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from maild.config import Settings

LogFormat = Literal["text", "json"]

NOISY = ("imapclient", "aiosmtplib", "alembic", "mail.log", "apscheduler", "mailparser_reply")
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
            logging.CRITICAL: 2}
MASK = "***"
FIRST = {"ticket": 0, "message_id": 1}  # context fields in this order, then by name

# (key, value) pairs: immutable, so a copied context never shares a mutable dict.
_context: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("maild_log_context", default=())

# C0 and C1 controls, DEL, the Unicode line and paragraph separators and the marks that
# reorder text on screen: none of them may reach a log line as they are.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                       "\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_PLUS_TOKEN = re.compile(r"(\+\d{1,12}\.)[A-Za-z0-9_-]{6,64}(?=@)")
_LINK_TOKEN = re.compile(r"(/(?:t|escalate)/)[A-Za-z0-9_.~-]{16,}")
_BARE = re.compile(r"[^\s\"=\\]+")


@contextmanager
def context(**fields: object) -> Iterator[None]:
    """Append `fields` (None ones left out) to every log line written inside the block,
    in this thread or task and in what it hands to `asyncio.to_thread`."""
    token = _context.set(_merged(fields))
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: object) -> None:
    """Add `fields` to the current context, until the enclosing `context` block ends
    (e.g. the ticket number, once the mail has found or opened its ticket)."""
    _context.set(_merged(fields))


def current() -> dict[str, str]:
    return dict(_context.get())


def _merged(fields: dict[str, object]) -> tuple[tuple[str, str], ...]:
    merged = {**dict(_context.get()),
              **{k: str(v) for k, v in fields.items() if v is not None and v != ""}}
    return tuple(merged.items())


def escape(text: str) -> str:
    """`text` on one line: every control character as an escape (`\\n`, `\\x1b`, `\\u202e`)."""
    def one(match: re.Match[str]) -> str:
        char = match.group(0)
        code = ord(char)
        return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")

    return _CONTROLS.sub(one, text)


class Redactor:
    """Masks the configured secrets and the tokens maild issues wherever they appear."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is masked whole; very short
        # values would mask ordinary words and are left to the patterns.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        text = _PLUS_TOKEN.sub(lambda m: f"{m.group(1)}{MASK}", text)
        return _LINK_TOKEN.sub(lambda m: f"{m.group(1)}{MASK}", text)


class ContextFilter(logging.Filter):
    """Copies the context of the emitting thread or task onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.maild_context = dict(_context.get())
        return True


class _Formatter(logging.Formatter):
    def __init__(self, journal: bool, redact: Redactor) -> None:
        super().__init__()
        self.journal, self.redact = journal, redact

    def format(self, record: logging.LogRecord) -> str:
        line = self.line(record)
        return f"<{PRIORITY.get(record.levelno, 6)}>{line}" if self.journal else line

    def line(self, record: logging.LogRecord) -> str:
        raise NotImplementedError

    def message(self, record: logging.LogRecord) -> str:
        try:
            return record.getMessage()
        except (TypeError, ValueError):  # a call whose arguments do not fit its format
            return f"{record.msg!r} {record.args!r}"

    def exception(self, record: logging.LogRecord) -> str:
        parts = []
        if record.exc_info:
            parts.append(self.formatException(record.exc_info))
        elif record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(parts)

    @staticmethod
    def fields(record: logging.LogRecord) -> dict[str, str]:
        found = getattr(record, "maild_context", None)
        if not isinstance(found, dict):
            return {}
        return dict(sorted(found.items(), key=lambda kv: (FIRST.get(kv[0], len(FIRST)), kv[0])))


class TextFormatter(_Formatter):
    """`LEVEL logger: message ticket=#10001 message_id=<…>` and the traceback, on one line."""

    def line(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname} {record.name}: {self.message(record)}"
        for key, value in self.fields(record).items():
            text += f" {key}={_value(value)}"
        trace = self.exception(record)
        return escape(self.redact(f"{text}\n{trace}" if trace else text))


def _value(value: str) -> str:
    """A field's value, quoted (JSON) when it holds spaces, quotes or `=` (a hostile
    Message-ID cannot pose as another field)."""
    return value if _BARE.fullmatch(value) else json.dumps(value, ensure_ascii=False)


class JsonFormatter(_Formatter):
    """One JSON object per line: time, level, logger, message, context, exception."""

    def line(self, record: logging.LogRecord) -> str:
        data = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(
                    timespec="milliseconds"),
                "level": record.levelname, "logger": record.name,
                "message": self.redact(self.message(record))}
        for key, value in self.fields(record).items():
            data.setdefault(key, self.redact(value))
        trace = self.exception(record)
        if trace:
            data["exception"] = self.redact(trace)
        # ASCII only: every control character and bidi mark is a \u escape.
        return json.dumps(data, ensure_ascii=True)


def secrets_of(settings: Settings) -> list[str]:
    """The configured secrets: the IMAP and SMTP passwords, the database password and the
    signing key (one generated and kept in the database is never logged either)."""
    found = [settings.imap.password, settings.smtp.password, settings.security.secret_key,
             *settings.security.old_secret_keys,
             settings.oauth2.client_secret if settings.oauth2 else ""]
    try:
        found.append(make_url(settings.database_url).password or "")
    except Exception:  # a malformed URL: `maild check` says so; mask it whole
        found.append(settings.database_url)
    return [s for s in found if s]


@dataclass(frozen=True, slots=True)
class Setup:
    """How this process logs: handed to the parse workers, which log the same way."""

    level: str
    fmt: LogFormat
    secrets: tuple[str, ...]


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, given: Setup) -> None:
        super().__init__(sys.stderr)
        self.given = given


def inherited() -> Setup | None:
    """The setup of this process's logging (None when `setup` was not called)."""
    found = [h for h in logging.getLogger().handlers if isinstance(h, _Handler)]
    return found[0].given if found else None


def setup(level: str, fmt: LogFormat = "text", secrets: Iterable[str] = ()) -> None:
    """Send every log record to stderr, one line each, in format `fmt` at `level`."""
    given = Setup(level, fmt, tuple(secrets))
    handler = _Handler(given)
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    redact = Redactor(given.secrets)
    handler.setFormatter(JsonFormatter(journal, redact) if fmt == "json"
                         else TextFormatter(journal, redact))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
