"""Render outgoing mails from Jinja2 templates into complete `EmailMessage`s."""

from __future__ import annotations

import base64
import binascii
import functools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from email.charset import QP, Charset
from email.header import Header
from email.mime.base import MIMEBase
from email.policy import Compat32
from email.utils import format_datetime, formataddr
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_time
from babel.numbers import format_decimal
from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    pass_context,
)
from jinja2.runtime import Context as JinjaContext

from maild.mail import commands
from maild.mail.classify import LOOP_HEADER
from maild.mail.contexts import TEMPLATES, Context

# Babel's locale per mail language: German as in Germany, English with a 24-hour clock
# and day-month order (our customers are in Europe).
LOCALES = {"de": "de_DE", "en": "en_GB"}


@dataclass(frozen=True, slots=True)
class Sender:
    """Who our mails come from."""

    address: str
    name: str

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


def environment(override_dir: str = "") -> Environment:
    """Templates from the ops folder `override_dir` first, then those shipped in the package."""
    loaders = [FileSystemLoader(override_dir)] if override_dir else []
    loaders.append(FileSystemLoader(str(resources.files("maild.templates"))))
    env = Environment(
        loader=ChoiceLoader(loaders),
        auto_reload=False,  # changed templates take effect on reload (SIGHUP)
        undefined=StrictUndefined,
        autoescape=lambda name: bool(name and name.endswith(".html.j2")),
        keep_trailing_newline=True,
        trim_blocks=True,
    )
    env.filters["when"] = format_when
    env.filters["size"] = _size
    env.filters["day"] = format_day
    env.globals["command_help"] = commands.help_text
    return env


def _locale(language: str) -> str:
    return LOCALES.get(language, LOCALES["en"])


@pass_context
def _size(context: JinjaContext, size: int) -> str:
    """The `size` filter: in the language of the mail being rendered."""
    return format_size(size, str(context.get("language", "en")))


def format_size(size: int, language: str = "en") -> str:
    """1234567 → '1.2 MB' ('1,2 MB' in German), 5009 → '5 KB'."""
    locale = _locale(language)
    if size >= 1_000_000:
        return f"{format_decimal(size / 1_000_000, '#,##0.0', locale=locale)} MB"
    if size >= 1000:
        return f"{format_decimal(size // 1000, '#,##0', locale=locale)} KB"
    return f"{size} B"


@functools.lru_cache(maxsize=4096)  # babel is slow; a batch's mails share their moments
def format_when(moment: datetime, language: str, zone: str) -> str:
    """A reader-friendly local date and time, e.g. 'Dienstag, 1. Dezember 2026, 09:30 Uhr'
    or 'Tuesday, 1 December 2026, 09:30'."""
    local = moment.astimezone(ZoneInfo(zone))
    locale = _locale(language)
    text = (f"{format_date(local, 'full', locale=locale)}, "
            f"{format_time(local, 'HH:mm', locale=locale)}")
    return f"{text} Uhr" if language == "de" else text


def format_day(day: date, language: str) -> str:
    """A date without time, e.g. '01.12.2026' or '1 Dec 2026'."""
    return format_date(day, "medium", locale=_locale(language))


def new_message_id(sender: Sender, ticket_number: int | None) -> str:
    tag = f"t{ticket_number}." if ticket_number else ""
    return f"<maild.{tag}{secrets.token_hex(10)}@{sender.domain}>"


@dataclass(frozen=True, slots=True)
class Rendered:
    """A mail ready for the outbox: its bytes and what we keep on the ticket's record."""

    message_id: str
    subject: str
    text: str
    raw: bytes


class _Policy(Compat32):
    """compat32 with CRLF, and a short ASCII header written as it is: the stdlib folds
    every value through a `Header` object, which is most of the cost of a small mail."""

    def _fold(self, name: str, value: Any, sanitize: bool) -> str:
        if (isinstance(value, str) and value.isascii() and len(name) + len(value) < 77
                and "\r" not in value and "\n" not in value):
            return f"{name}: {value}{self.linesep}"
        folded: str = super()._fold(name, value, sanitize)  # type: ignore[misc]
        return folded


class _Utf8QP(Charset):
    """UTF-8 bodies in quoted-printable, encoded by `binascii` (C) rather than the stdlib's
    pure-Python `quoprimime`; the same encoding, decoded to the same text."""

    def __init__(self) -> None:
        super().__init__("utf-8")
        self.body_encoding = QP

    def body_encode(self, string: str | bytes) -> str:  # type: ignore[override]
        if not string:
            return ""
        data = string.encode("utf-8") if isinstance(string, str) else string
        return binascii.b2a_qp(data, istext=True).decode("ascii")


_CRLF = _Policy(linesep="\r\n")
_QP_UTF8 = _Utf8QP()


def _encode_subject(subject: str) -> str | Header:
    """RFC 2047 only where needed, so the ASCII ticket tag stays readable in the raw header.
    A `Header` (not its encoded text), so the first line is folded knowing the name."""
    if subject.isascii():
        return subject
    words = subject.split(" ")
    cut = next(i for i, w in enumerate(words) if not w.isascii())
    header = Header(header_name="Subject")
    if cut:
        header.append(" ".join(words[:cut]), "us-ascii")
    header.append(" ".join(words[cut:]), "utf-8")
    return header


def render_mail(
    env: Environment,
    template: str,
    context: Context,
    *,
    sender: Sender,
    to: str,
    now: datetime,
    in_reply_to: str | None = None,
    references: tuple[str, ...] = (),
    auto_submitted: str | None = None,
    reply_to: str | None = None,
    cc: Sequence[str] = (),
    from_name: str | None = None,
    files: Sequence[File] = (),
) -> Rendered:
    """The mail `template` (``<template>.<lang>.{subject,txt,html}.j2``, in the context's
    language) for `to`; the HTML part only where the template has one, `files` attached.
    `context` is the template's own type (`contexts.TEMPLATES`).

    Built with the stdlib's compat32 MIME classes: our own headers need no parsing, and
    this is several times cheaper than `EmailMessage` on the per-mail path.
    """
    if type(context) is not TEMPLATES[template]:
        raise TypeError(f"template {template!r} takes a {TEMPLATES[template].__name__} "
                        f"context, not a {type(context).__name__}")
    language, names = context.language, context.names()

    def part(kind: str) -> str:
        return env.get_template(f"{template}.{language}.{kind}.j2").render(names)

    subject = " ".join(part("subject").split())
    text = part("txt")
    html = part("html") if _has_template(env, f"{template}.{language}.html.j2") else None
    message_id = new_message_id(sender, context.number)
    headers: list[tuple[str, Any]] = [
        ("From", formataddr((from_name or sender.name, sender.address), charset="utf-8")),
        ("To", to)]
    if cc:
        headers.append(("Cc", ", ".join(cc)))
    headers += [("Subject", _encode_subject(subject)), ("Date", format_datetime(now)),
                ("Message-ID", message_id)]
    if in_reply_to:
        headers += [("In-Reply-To", in_reply_to),
                    ("References", " ".join((*references, in_reply_to)[-20:]))]
    if auto_submitted:
        headers += [("Auto-Submitted", auto_submitted), ("X-Auto-Response-Suppress", "All")]
    if reply_to:
        headers.append(("Reply-To", formataddr((sender.name, reply_to), charset="utf-8")))
    headers += [(LOOP_HEADER, sender.address), ("Content-Language", language)]
    raw = _mime(headers, text, html, files)
    return Rendered(message_id, subject, text, raw)


def _mime(headers: list[tuple[str, Any]], text: str, html: str | None,
          files: Sequence[File]) -> bytes:
    """The mail written out directly: the MIME the stdlib's classes and generator would
    write for it, without their cost (most of rendering an acknowledgement, and of a
    notification with files: the generator writes base64 line by line). Headers are
    folded by the same policy. Boundaries start with "=_", which occurs neither in
    quoted-printable ("=" is always encoded there) nor in base64."""
    if html is None:
        head = [("Content-Type", 'text/plain; charset="utf-8"'), ("MIME-Version", "1.0"),
                ("Content-Transfer-Encoding", "quoted-printable")]
        body = _qp(text)
    else:
        boundary = _boundary()
        head = [("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
                ("MIME-Version", "1.0")]
        body = (f"--{boundary}\r\n{_PART_HEAD.format(kind='plain')}{_qp(text)}\r\n"
                f"--{boundary}\r\n{_PART_HEAD.format(kind='html')}{_qp(html)}\r\n"
                f"--{boundary}--\r\n")
    if files:
        boundary = _boundary()
        parts = [_entity(head, body), *(_file_entity(f) for f in files)]
        head = [("Content-Type", f'multipart/mixed; boundary="{boundary}"'),
                ("MIME-Version", "1.0")]
        body = "".join(f"--{boundary}\r\n{part}\r\n" for part in parts) + f"--{boundary}--\r\n"
    written = b"".join(_CRLF.fold_binary(name, value) for name, value in (*head, *headers))
    return written + b"\r\n" + body.encode("ascii")


_PART_HEAD = ('Content-Type: text/{kind}; charset="utf-8"\r\nMIME-Version: 1.0\r\n'
              "Content-Transfer-Encoding: quoted-printable\r\n\r\n")


def _boundary() -> str:
    return f"=_maild_{secrets.token_hex(12)}"


def _entity(head: Sequence[tuple[str, Any]], body: str) -> str:
    """A body part: its headers, folded, a blank line, its (encoded) body."""
    return "".join(_CRLF.fold(name, value) for name, value in head) + "\r\n" + body


def _file_entity(f: File) -> str:
    """A file as a base64 body part (its headers made by the stdlib's MIME classes, for
    the RFC 2231 file name)."""
    main, _, sub = f.content_type.partition("/")
    if not sub or main == "multipart":
        main, sub = "application", "octet-stream"
    part = MIMEBase(main, sub)
    part["Content-Transfer-Encoding"] = "base64"
    part.add_header("Content-Disposition", "attachment",
                    filename=f.filename if f.filename.isascii() else ("utf-8", "", f.filename))
    data = base64.encodebytes(f.data).decode("ascii").replace("\n", "\r\n")
    return _entity(part.items(), data)


def _qp(text: str) -> str:
    """`text` as UTF-8 quoted-printable, with CRLF line ends (binascii leaves a lone CR
    as it is: a line end too, as the stdlib generator takes it)."""
    encoded = _QP_UTF8.body_encode(text)
    return "\r\n".join(encoded.splitlines()) + ("\r\n" if encoded.endswith(("\n", "\r"))
                                                  else "")


@dataclass(frozen=True, slots=True)
class File:
    """A file to attach to an outgoing mail."""

    filename: str
    content_type: str
    data: bytes


def _has_template(env: Environment, name: str) -> bool:
    try:
        env.get_template(name)
    except TemplateNotFound:
        return False
    return True
