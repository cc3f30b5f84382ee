"""The account book: companies, contacts and their addresses; CSV import and sender lookup."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from maild import db
from maild.mail.facts import Facts
from maild.mail.parse import plausible_address
from maild.models import Company, CompanyDomain, Contact, ContactAddress, Ticket
from maild.progress import Progress

COLUMNS = ("email", "name", "phone", "language", "timezone", "company", "customer_number",
           "tier", "aliases", "domains")


@dataclass(frozen=True, slots=True)
class Account:
    """Who a sender is, as far as the account book knows."""

    contact_id: int | None
    company_id: int | None
    name: str = ""
    phone: str = ""
    language: str = ""
    timezone: str = ""
    company: str = ""
    customer_number: str = ""
    tier: str = ""
    verified: bool = False

    def facts(self, address: str) -> Facts:
        """What the account book adds to a ticket's facts."""
        return Facts(email=address, contact_name=self.name, phone=self.phone,
                     company=self.company, customer_numbers=(
                         (self.customer_number,) if self.customer_number else ()))


def lookup(session: Session, address: str) -> Account | None:
    """The contact owning `address` (any of its addresses), or None."""
    return lookup_many(session, [address]).get(address.lower())


def lookup_many(session: Session, addresses: Iterable[str]) -> dict[str, Account]:
    """The accounts of those `addresses` that have one (by lower-cased address), in one
    read per `db.IN_LIMIT` addresses (the intake asks for a whole batch's senders at once)."""
    wanted = sorted({a.lower() for a in addresses if a})
    found: dict[str, Account] = {}
    for chunk in db.chunks(wanted):
        for address, contact, company in session.execute(
            select(ContactAddress.address, Contact, Company)
            .join(Contact, ContactAddress.contact_id == Contact.id)
            .outerjoin(Company, Company.id == Contact.company_id)
            .where(ContactAddress.address.in_(chunk))
        ):
            found[address] = _account(contact, company)
    return found


def _account(contact: Contact, company: Company | None) -> Account:
    return Account(
        contact_id=contact.id, company_id=company.id if company else None,
        name=contact.name, phone=contact.phone, language=contact.language,
        timezone=contact.timezone, company=company.name if company else "",
        customer_number=(company.customer_number or "") if company else "",
        tier=company.tier if company else "", verified=True,
    )


def by_domain(session: Session, address: str) -> Account | None:
    """The company owning the mail domain of `address`, as an unverified account."""
    domain = address.rpartition("@")[2].lower()
    company = session.scalars(
        select(Company).join(CompanyDomain, CompanyDomain.company_id == Company.id)
        .where(CompanyDomain.domain == domain)
    ).one_or_none()
    if company is None:
        return None
    return Account(contact_id=None, company_id=company.id, company=company.name,
                   customer_number=company.customer_number or "", tier=company.tier)


def has_accounts(session: Session) -> bool:
    """Whether the account book holds anyone (asked once per transaction: the intake asks
    for every mail of a batch, and the book does not change under it)."""
    if _HAS_ACCOUNTS not in session.info:
        session.info[_HAS_ACCOUNTS] = bool(
            session.scalar(select(exists().where(Contact.id.is_not(None)))))
    return bool(session.info[_HAS_ACCOUNTS])


_HAS_ACCOUNTS = "maild.accounts.has_accounts"


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)


class LineError(ValueError):
    """One CSV line cannot be imported; the message says why."""


def read_csv(text: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV export (comma or semicolon, with or without BOM)."""
    text = text.lstrip("\ufeff")
    first = text.splitlines()[0] if text else ""
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    unknown = [c for c in (reader.fieldnames or []) if c.strip().lower() not in COLUMNS]
    if unknown or "email" not in [c.strip().lower() for c in reader.fieldnames or []]:
        raise LineError(f"line 1: columns must be among {', '.join(COLUMNS)} with email "
                        f"required; unknown: {', '.join(unknown) or '-'}")
    for row in reader:
        clean = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        yield reader.line_num, clean


def import_rows(session: Session, rows: Iterable[tuple[int, dict[str, str]]],
                now: datetime, progress: Progress | None = None) -> ImportReport:
    """Upsert contacts (keyed by email) and companies (by customer number, else name).

    Each line is its own savepoint: a bad line is reported and the others still land.
    """
    report = ImportReport()
    for line, row in rows:
        if progress is not None:
            progress.step()
        try:
            with session.begin_nested():
                outcome = _upsert(session, row, now)
        except LineError as exc:
            report.errors.append(f"line {line}: {exc}")
            continue
        setattr(report, outcome, getattr(report, outcome) + 1)
    return report


def _split(value: str) -> list[str]:
    return [v.strip().lower() for v in value.replace(",", ";").split(";") if v.strip()]


def _validate(row: dict[str, str]) -> None:
    email = row.get("email", "").lower()
    if not plausible_address(email):
        raise LineError(f"email {email!r} is not an email address")
    if row.get("language", "") not in ("", "de", "en"):
        raise LineError(f"language {row['language']!r} must be de, en or empty")
    if row.get("timezone"):
        try:
            ZoneInfo(row["timezone"])
        except (ZoneInfoNotFoundError, ValueError):
            raise LineError(f"unknown time zone {row['timezone']!r}") from None
    for alias in _split(row.get("aliases", "")):
        if not plausible_address(alias):
            raise LineError(f"alias {alias!r} is not an email address")
    for domain in _split(row.get("domains", "")):
        if "@" in domain or "." not in domain:
            raise LineError(f"domain {domain!r} is not a mail domain (like example.com)")


def _upsert(session: Session, row: dict[str, str], now: datetime) -> str:
    _validate(row)
    changed = False
    company, company_changed = _company(session, row, now)
    email = row["email"].lower()
    owner = session.get(ContactAddress, email)
    contact = session.get(Contact, owner.contact_id) if owner else None
    created = contact is None
    if contact is None:
        contact = Contact(created_at=now, updated_at=now, name="", phone="", language="",
                          timezone="")
        session.add(contact)
        session.flush()
        session.add(ContactAddress(address=email, contact_id=contact.id, primary=True))
    wanted: dict[str, Any] = {
        "name": row.get("name", ""), "phone": row.get("phone", ""),
        "language": row.get("language", ""), "timezone": row.get("timezone", ""),
        "company_id": company.id if company else None,
    }
    for key, value in wanted.items():
        if (value or key == "company_id") and getattr(contact, key) != value:
            setattr(contact, key, value)
            changed = True
    for alias in _split(row.get("aliases", "")):
        holder = session.get(ContactAddress, alias)
        if holder is None:
            session.add(ContactAddress(address=alias, contact_id=contact.id, primary=False))
            changed = True
        elif holder.contact_id != contact.id:
            raise LineError(f"alias {alias!r} already belongs to another contact")
    if changed:
        contact.updated_at = now
    if created:
        return "created"
    return "updated" if changed or company_changed else "unchanged"


def _company(session: Session, row: dict[str, str], now: datetime) -> tuple[Company | None, bool]:
    name, number = row.get("company", ""), row.get("customer_number", "")
    if not name and not number:
        return None, False
    company = None
    if number:
        company = session.scalars(select(Company).where(Company.customer_number == number)
                                  ).one_or_none()
    if company is None and name:
        company = session.scalars(select(Company).where(
            func.lower(Company.name) == name.lower(),
            Company.customer_number.is_(None) if not number else Company.customer_number == number,
        )).first()
    changed = False
    if company is None:
        company = Company(name=name or number, customer_number=number or None,
                          tier=row.get("tier", ""), created_at=now, updated_at=now)
        session.add(company)
        session.flush()
        changed = True
    for key, value in (("name", name), ("tier", row.get("tier", ""))):
        if value and getattr(company, key) != value:
            setattr(company, key, value)
            changed = True
    for domain in _split(row.get("domains", "")):
        holder = session.get(CompanyDomain, domain)
        if holder is None:
            session.add(CompanyDomain(domain=domain, company_id=company.id))
            changed = True
        elif holder.company_id != company.id:
            raise LineError(f"domain {domain!r} already belongs to another company")
    if changed:
        company.updated_at = now
    return company, changed


def listing(session: Session) -> list[dict[str, Any]]:
    """Every contact with its addresses and company, for `maild accounts list`."""
    addresses: dict[int, list[str]] = {}
    for a in session.scalars(select(ContactAddress).order_by(ContactAddress.primary.desc(),
                                                             ContactAddress.address)):
        addresses.setdefault(a.contact_id, []).append(a.address)
    domains: dict[int, list[str]] = {}
    for d in session.scalars(select(CompanyDomain).order_by(CompanyDomain.domain)):
        domains.setdefault(d.company_id, []).append(d.domain)
    rows = session.execute(select(Contact, Company).outerjoin(
        Company, Company.id == Contact.company_id).order_by(Contact.id)).all()
    return [{
        "email": (addresses.get(c.id) or [""])[0], "aliases": addresses.get(c.id, [])[1:],
        "name": c.name, "phone": c.phone, "language": c.language, "timezone": c.timezone,
        "company": co.name if co else "", "customer_number": (co.customer_number or "")
        if co else "", "tier": co.tier if co else "",
        "domains": domains.get(co.id, []) if co else [],
    } for c, co in rows]


def belongs(session: Session, ticket: Ticket, address: str) -> bool:
    """`address` is on `ticket`: its customer (any of the contact's addresses) or a
    participant. Anyone else is a stranger to it, whatever they quote or reference."""
    if address == ticket.customer_address or address in ticket.participants:
        return True
    if ticket.contact_id is None:
        return False
    account = lookup(session, address)
    return account is not None and account.contact_id == ticket.contact_id
