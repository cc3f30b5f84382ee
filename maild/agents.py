"""Agents: who may work tickets by mail, and where notifications go.

Agents come from two places: the config file (`[[agents.members]]`, changed by editing it)
and the database (`maild agents add|remove`, changed at run time). Both are read together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild.models import Agent


@dataclass(frozen=True, slots=True)
class AgentInfo:
    address: str
    name: str
    lead: bool
    source: str  # "config" or "database"


@dataclass(frozen=True, slots=True)
class Roster:
    """The configured agents and the team address; the database's are looked up live."""

    configured: tuple[AgentInfo, ...] = ()
    team_address: str = ""

    def all(self, session: Session) -> list[AgentInfo]:
        found = {a.address: a for a in self.configured}
        for row in session.scalars(select(Agent).order_by(Agent.address)):
            found.setdefault(row.address, AgentInfo(row.address, row.name, row.lead, "database"))
        return sorted(found.values(), key=lambda a: a.address)

    def get(self, session: Session, address: str) -> AgentInfo | None:
        address = address.lower()
        for a in self.configured:
            if a.address == address:
                return a
        row = session.get(Agent, address) if address else None
        return AgentInfo(row.address, row.name, row.lead, "database") if row else None

    def notify_to(self, session: Session, owner: str) -> list[str]:
        """Who hears about a ticket: its owner, else the team address, else every agent."""
        if owner:
            return [owner]
        if self.team_address:
            return [self.team_address]
        return [a.address for a in self.all(session)]

    def lead_to(self, session: Session, lead_address: str) -> list[str]:
        """Who gets breaches and the digest: the configured lead address, else the team
        address, else the agents marked lead, else every agent."""
        if lead_address:
            return [lead_address]
        if self.team_address:
            return [self.team_address]
        everyone = self.all(session)
        return [a.address for a in everyone if a.lead] or [a.address for a in everyone]

    def is_ours(self, address: str) -> bool:
        return bool(self.team_address) and address.lower() == self.team_address


def roster_from(members: Sequence[Any], team_address: str) -> Roster:
    return Roster(tuple(AgentInfo(m.address, m.name, m.lead, "config") for m in members),
                  team_address)


def add(session: Session, address: str, name: str, lead: bool, now: datetime) -> bool:
    """Add or update an agent in the database; True when it is new."""
    address = address.strip().lower()
    row = session.get(Agent, address)
    if row is None:
        session.add(Agent(address=address, name=name, lead=lead, created_at=now))
        return True
    row.name, row.lead = name or row.name, lead
    return False


def remove(session: Session, address: str) -> bool:
    row = session.get(Agent, address.strip().lower())
    if row is None:
        return False
    session.delete(row)
    return True
