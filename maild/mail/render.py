"""Render outgoing mails from Jinja2 templates into complete `EmailMessage`s."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined

from maild.mail.classify import LOOP_HEADER

_WEEKDAYS = {
    "de": ["Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag"],
    "en": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
}
_MONTHS = {
    "de": ["Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August",
           "September", "Oktober", "November", "Dezember"],
    "en": ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"],
}


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
        undefined=StrictUndefined,
        autoescape=lambda name: bool(name and name.endswith(".html.j2")),
        keep_trailing_newline=True,
    )
    env.filters["when"] = format_when
    return env


def format_when(moment: datetime, language: str, zone: str) -> str:
    """A reader-friendly local date and time, e.g. 'Dienstag, 1. Dezember 2026, 09:30 Uhr'."""
    local = moment.astimezone(ZoneInfo(zone))
    weekday = _WEEKDAYS[language][local.weekday()]
    month = _MONTHS[language][local.month - 1]
    if language == "de":
        return f"{weekday}, {local.day}. {month} {local.year}, {local:%H:%M} Uhr"
    return f"{weekday}, {local.day} {month} {local.year}, {local:%H:%M}"


def new_message_id(sender: Sender, ticket_number: int | None) -> str:
    tag = f"t{ticket_number}." if ticket_number else ""
    return f"<maild.{tag}{secrets.token_hex(10)}@{sender.domain}>"


def tagged_subject(number: int, subject: str) -> str:
    tag = f"[#{number}]"
    return subject if tag in subject else f"{tag} {subject}".strip()


def render_mail(
    env: Environment,
    template: str,
    language: str,
    context: dict[str, Any],
    *,
    sender: Sender,
    to: str,
    now: datetime,
    in_reply_to: str | None = None,
    references: tuple[str, ...] = (),
    auto_submitted: str | None = None,
) -> EmailMessage:
    """The mail `template` (``<template>.<lang>.{subject,txt,html}.j2``) for `to`."""
    def part(kind: str) -> str:
        return env.get_template(f"{template}.{language}.{kind}.j2").render(**context)

    msg = EmailMessage()
    msg["From"] = Address(sender.name, addr_spec=sender.address)
    msg["To"] = to
    msg["Subject"] = " ".join(part("subject").split())
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = new_message_id(sender, context.get("number"))
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = " ".join((*references, in_reply_to)[-20:])
    if auto_submitted:
        msg["Auto-Submitted"] = auto_submitted
        msg["X-Auto-Response-Suppress"] = "All"
    msg[LOOP_HEADER] = sender.address
    msg["Content-Language"] = language
    msg.set_content(part("txt"))
    msg.add_alternative(part("html"), subtype="html")
    return msg


def template_dir_exists(path: str) -> bool:
    return not path or Path(path).is_dir()
