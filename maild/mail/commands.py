"""Commands at the top of an agent's reply, one per line: `#status resolved` (pure).

The command block is the run of lines starting with `#word` at the top of the new text
(blank lines between them are fine); the text after it is what the customer may see.
Every line is checked here for form; whether e.g. `#assign ADDRESS` names an agent is
decided where the database is at hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from maild.mail.bounded import bounded

STATUSES = ("in_progress", "waiting", "resolved", "closed")
PRIORITIES = ("urgent", "high", "normal", "low")
CAUSES = ("ours", "customer", "third-party")
NAMES = ("status", "priority", "assign", "note", "cause", "merge", "spam")
USAGE = {
    "status": f"#status {'|'.join(STATUSES)}",
    "priority": f"#priority {'|'.join(PRIORITIES)}",
    "assign": "#assign ADDRESS|me",
    "note": "#note",
    "cause": f"#cause {'|'.join(CAUSES)}",
    "merge": "#merge NUMBER",
    "spam": "#spam [block]",
}
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
        checked, problem = _check(name, value)
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


def _check(name: str, value: str) -> tuple[str, str]:
    """(normalised value, '') or ('', what is wrong)."""
    word = value.lower().replace(" ", "_")
    if name == "note":
        return "", ""
    if name == "spam":
        return (word, "") if word in ("", "block") else ("", f"unknown option {value!r}")
    if not value:
        return "", "needs a value"
    if name == "status":
        word = word.replace("-", "_")
        return (word, "") if word in STATUSES else ("", f"unknown status {value!r}")
    if name == "priority":
        return (word, "") if word in PRIORITIES else ("", f"unknown priority {value!r}")
    if name == "cause":
        word = word.replace("_", "-")
        if word in ("thirdparty", "third"):
            word = "third-party"
        return (word, "") if word in CAUSES else ("", f"unknown cause {value!r}")
    if name == "assign":
        address = value.strip("<>").lower()
        if address == "me" or _ADDRESS.match(address):
            return address, ""
        return "", f"not an address: {value!r}"
    number = value.lstrip("#")
    if number.isdigit() and len(number) <= 12:
        return str(int(number)), ""
    return "", f"not a ticket number: {value!r}"
