"""What the text-heavy extraction found in a mail, computed in the parse worker (within the
mail's budget) and handed to the ticket code, which computes it itself when not given."""

from __future__ import annotations

from dataclasses import dataclass

from maild.mail.facts import Facts


@dataclass(frozen=True, slots=True)
class Extracted:
    facts: Facts  # facts.extract of the text (before the account book fills gaps)
    new_text: str  # body.latest_reply of the text
    new_content: str  # facts.new_content of the text (for triage)
    language: str  # language.guess of subject and text
    agent_text: str  # work.agent_words of the text (what an agent wrote)
