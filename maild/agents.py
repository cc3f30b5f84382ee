"""Agents: who may work tickets by mail, and where notifications go.

Agents come from two places: the config file (`[[agents.members]]`, changed by editing it)
and the database (`maild agents add|remove`, changed at run time). Both are read together.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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


REFRESH_SECONDS = 30.0  # a running daemon sees `maild agents add|remove` within this


@dataclass(slots=True)
class _Cache:
    loaded_at: float = -REFRESH_SECONDS
    agents: dict[str, AgentInfo] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Roster:
    """The configured agents and the team address, and those in the database (read at
    most every REFRESH_SECONDS: every incoming mail asks whether its sender is an agent)."""

    configured: tuple[AgentInfo, ...] = ()
    team_address: str = ""
    cache: _Cache = field(default_factory=_Cache, compare=False)

    def _stored(self, session: Session) -> dict[str, AgentInfo]:
        now = time.monotonic()
        if now - self.cache.loaded_at >= REFRESH_SECONDS:
            self.cache.agents = {
                row.address: AgentInfo(row.address, row.name, row.lead, "database")
                for row in session.scalars(select(Agent))}
            self.cache.loaded_at = now
        return self.cache.agents

    def all(self, session: Session) -> list[AgentInfo]:
        found = {a.address: a for a in self.configured}
        for address, info in self._stored(session).items():
            found.setdefault(address, info)
        return sorted(found.values(), key=lambda a: a.address)

    def get(self, session: Session, address: str) -> AgentInfo | None:
        address = address.lower()
        for a in self.configured:
            if a.address == address:
                return a
        return self._stored(session).get(address) if address else None

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
