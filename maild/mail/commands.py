"""Commands at the top of an agent's reply, one per line: `#status resolved` (pure).

The command block is the run of lines starting with `#word` at the top of the new text
(blank lines between them are fine); the text after it is what the customer may see.
Every line is checked here for form; whether e.g. `#assign ADDRESS` names an agent is
decided where the database is at hand.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from maild.mail.bounded import bounded
from maild.vocab import SETTABLE

STATUSES = tuple(str(s) for s in SETTABLE)
PRIORITIES = ("urgent", "high", "normal", "low")
CAUSES = ("ours", "customer", "third-party")


# A command's form check: its value normalised, or what is wrong ('', problem).
Check = Callable[[str], tuple[str, str]]


def _any_value(value: str) -> tuple[str, str]:
    return (value, "") if value else ("", "needs a value")


@dataclass(frozen=True, slots=True)
class Spec:
    """One command: how it is written (placeholders in the reader's language), what it
    does, in German and English, and the check of its form. The one place a command is
    described: the parser, its errors, the help in mails to agents and README's table all
    come from here; what it does to a ticket is `maild.work.EFFECTS` under the same name
    (a test keeps the two in step)."""

    usage_de: str
    usage_en: str
    effect_de: str
    effect_en: str
    check: Check = _any_value

    def usage(self, language: str) -> str:
        return self.usage_de if language == "de" else self.usage_en

    def effect(self, language: str) -> str:
        return self.effect_de if language == "de" else self.effect_en


def _one_of(what: str, allowed: tuple[str, ...], aliases: dict[str, str] | None = None,
            dash: str = "_") -> Check:
    """A check for a value out of `allowed` (spaces and the other dash read as `dash`)."""
    def check(value: str) -> tuple[str, str]:
        if not value:
            return "", "needs a value"
        word = value.lower().replace(" ", "_").replace("-" if dash == "_" else "_", dash)
        word = (aliases or {}).get(word, word)
        return (word, "") if word in allowed else ("", f"unknown {what} {value!r}")
    return check


def _nothing(_value: str) -> tuple[str, str]:
    return "", ""


def _spam_option(value: str) -> tuple[str, str]:
    word = value.lower()
    return (word, "") if word in ("", "block") else ("", f"unknown option {value!r}")


def _agent_address(value: str) -> tuple[str, str]:
    if not value:
        return "", "needs a value"
    address = value.strip("<>").lower()
    if address == "me" or _ADDRESS.match(address):
        return address, ""
    return "", f"not an address: {value!r}"


def _ticket_number(value: str) -> tuple[str, str]:
    if not value:
        return "", "needs a value"
    number = value.lstrip("#")
    if number.isdigit() and len(number) <= 12:
        return str(int(number)), ""
    return "", f"not a ticket number: {value!r}"


def _cc(value: str) -> tuple[str, str]:
    """`#cc ADDRESS` adds a person to the ticket, `#cc remove ADDRESS` takes them off:
    value 'ADDRESS' or 'remove ADDRESS'."""
    if not value:
        return "", "needs a value"
    words = value.split()
    remove = len(words) == 2 and words[0].lower() == "remove"
    address = (words[-1] if remove or len(words) == 1 else "").strip("<>").lower()
    if not _ADDRESS.match(address):
        return "", f"not an address: {value!r}"
    return (f"remove {address}" if remove else address), ""


REGISTRY: dict[str, Spec] = {
    "status": Spec(
        f"#status {'|'.join(STATUSES)}", f"#status {'|'.join(STATUSES)}",
        "neuer Status; der Kunde bekommt für die ersten drei eine Mail",
        "new state; the customer is told for the first three",
        _one_of("status", STATUSES)),
    "priority": Spec(
        f"#priority {'|'.join(PRIORITIES)}", f"#priority {'|'.join(PRIORITIES)}",
        "neue Priorität", "new priority", _one_of("priority", PRIORITIES)),
    "assign": Spec(
        "#assign ADRESSE|me", "#assign ADDRESS|me",
        "neuer Bearbeiter (ein Agent); er bekommt ab jetzt die Benachrichtigungen",
        "new owner (an agent), who gets the notifications from now on", _agent_address),
    "note": Spec(
        "#note", "#note",
        "die ganze Mail ist eine interne Notiz, der Kunde sieht nichts",
        "the whole mail is an internal note; the customer sees nothing", _nothing),
    "cause": Spec(
        f"#cause {'|'.join(CAUSES)}", f"#cause {'|'.join(CAUSES)}",
        "Ursache: entscheidet, ob ein Call-Back kostenpflichtig ist (nicht bei ours)",
        "cause: decides whether a call-back is billable (not for ours)",
        _one_of("cause", CAUSES, {"thirdparty": "third-party", "third": "third-party"},
                dash="-")),
    "merge": Spec(
        "#merge NUMMER", "#merge NUMBER",
        "dieses Ticket wird geschlossen und geht in Ticket NUMMER weiter",
        "this ticket is closed and continues in ticket NUMBER", _ticket_number),
    "spam": Spec(
        "#spam [block]", "#spam [block]",
        "still als Spam schließen; block: Mails des Absenders sind ab jetzt Spam",
        "close silently as spam; block: the sender's mail is spam from now on",
        _spam_option),
    "cc": Spec(
        "#cc [remove] ADRESSE", "#cc [remove] ADDRESS",
        "ADRESSE bekommt ab jetzt die Antworten an den Kunden in Kopie (remove: nicht mehr)",
        "ADDRESS is copied on the answers to the customer from now on (remove: no longer)",
        _cc),
}
NAMES = tuple(REGISTRY)
USAGE = {name: spec.usage_en for name, spec in REGISTRY.items()}


def help_text(language: str, indent: str = "  ") -> str:
    """Every command of the registry, one per line with what it does, for mails to agents."""
    return "\n".join(f"{indent}{s.usage(language)} – {s.effect(language)}"
                     for s in REGISTRY.values())


_LINE = re.compile(r"^#([A-Za-z][A-Za-z_-]*+)(?:[ \t]++(.*))?$")
# local@domain, the domain with a '.' that neither starts nor ends it (found left to right,
# so the check is linear).
_ADDRESS = re.compile(r"^[^\s@<>]++@[^\s@<>](?=[^\s@<>]*?\.[^\s@<>])[^\s@<>]*+$")


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    value: str
    line: str


@dataclass(frozen=True, slots=True)
class Commands:
    commands: tuple[Command, ...] = ()
    errors: tuple[str, ...] = ()
    text: str = ""

    def get(self, name: str) -> Command | None:
        return next((c for c in self.commands if c.name == name), None)

    @property
    def note(self) -> bool:
        return self.get("note") is not None


def parse(text: str) -> Commands:
    """Split `text` (the agent's new words) into commands, errors and the remaining text
    (of at most `bounded.MAX_TEXT` characters, lines cut at `bounded.MAX_LINE`)."""
    lines = bounded(text.replace("\r\n", "\n")).split("\n")
    commands: list[Command] = []
    errors: list[str] = []
    note_words = ""
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            i += 1
            continue
        match = _LINE.match(line)
        if not match:
            break
        name = match.group(1).lower().replace("-", "_")
        value = (match.group(2) or "").strip()
        i += 1
        if name not in NAMES:
            errors.append(f"{line!r}: unknown command; known: "
                          f"{', '.join('#' + n for n in NAMES)}")
            continue
        if any(c.name == name for c in commands):
            errors.append(f"{line!r}: #{name} given twice")
            continue
        checked, problem = REGISTRY[name].check(value)
        if problem:
            errors.append(f"{line!r}: {problem} (use: {USAGE[name]})")
            continue
        if name == "note":
            note_words = value
        commands.append(Command(name, checked, line))
    rest = "\n".join(lines[i:]).strip()
    if note_words:
        rest = f"{note_words}\n{rest}".strip()
    return Commands(tuple(commands), tuple(errors), rest)


def cc_change(value: str) -> tuple[bool, str]:
    """(True to remove / False to add, the address) of a checked `#cc` value."""
    word, _, address = value.rpartition(" ")
    return word == "remove", address
