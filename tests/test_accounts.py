"""The account book: CSV import, sender matching, unknown-sender policies; both databases."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from harness import cli_config, offline_settings, raw_of
from sqlalchemy import select

from maild import accounts, db
from maild.daemon import build_desk
from maild.intake import Intake
from maild.mail.fetched import Fetched
from maild.models import OutboxMail, Ticket

DATA = Path(__file__).parent / "data"
NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def load(factory, text: str | None = None) -> accounts.ImportReport:
    text = text if text is not None else (DATA / "accounts.csv").read_text()
    with db.transaction(factory) as session:
        return accounts.import_rows(session, accounts.read_csv(text), NOW)


def make_intake(tmp_path, factory, url, **sections) -> Intake:
    settings = offline_settings(url, tmp_path / "blobs", **sections)
    return Intake(factory, build_desk(settings, factory, NOW), "INBOX", 3, lambda: NOW)


def mail(sender: str, text: str = "Hallo, die App geht nicht. Viele Grüße", n: int = 1) -> Fetched:
    raw = (f"From: {sender}\r\nTo: service@example.com\r\nSubject: Problem {n}\r\n"
           f"Message-ID: <acc{n}@x.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           f"{text}\r\n").encode()
    return Fetched(n, raw, NOW)


def answers(factory, intake: Intake) -> list[str]:
    with db.transaction(factory) as s:
        return [message_from_bytes(raw_of(o, intake.desk.store), policy=policy.default)
                .get_body(("plain",)).get_content()
                for o in s.scalars(select(OutboxMail).order_by(OutboxMail.id))]


def test_import_is_an_idempotent_upsert_with_errors_per_line(factory):
    first = load(factory)
    assert (first.created, first.updated, first.unchanged) == (3, 0, 0)
    assert first.errors == ["line 4: email 'not-an-address' is not an email address",
                            "line 6: language 'fr' must be de, en or empty"]
    again = load(factory)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 3)
    changed = load(factory, "email,name,tier,company,customer_number\n"
                            "bob.smith@customer.example,Robert Smith,gold,Customer Ltd,55012\n")
    assert (changed.created, changed.updated) == (0, 1)
    with db.transaction(factory) as s:
        rows = {r["email"]: r for r in accounts.listing(s)}
    assert rows["bob.smith@customer.example"]["name"] == "Robert Smith"
    assert rows["bob.smith@customer.example"]["tier"] == "gold"
    assert rows["anna.berger@kunde-gmbh.de"]["aliases"] == ["a.berger@kunde-gmbh.de"]
    assert rows["carla.nowak@kunde-gmbh.de"]["company"] == "Kunde GmbH"  # same company


def test_unknown_columns_are_refused_as_a_whole(factory):
    with pytest.raises(accounts.LineError, match="unknown: mobile"):
        load(factory, "email,mobile\na@b.example,1\n")


def test_an_alias_or_domain_of_someone_else_is_refused(factory):
    load(factory)
    report = load(factory, "email,aliases\nnew@x.example,a.berger@kunde-gmbh.de\n")
    assert report.errors == ["line 2: alias 'a.berger@kunde-gmbh.de' already belongs to "
                             "another contact"]


def test_sender_matched_by_alias_gets_account_facts_language_and_tier(
        tmp_path, factory, database_url):
    # Anna writes from her alias, in English words, without her customer number: the
    # account book fills it in, she is answered in German (her preference), and her
    # premium tier makes the ticket high priority.
    load(factory)
    intake = make_intake(tmp_path, factory, database_url,
                         triage={"tier_priority": {"premium": "high"}})
    intake.process(1, mail("A.Berger@KUNDE-GMBH.DE", "Hello, the app does not work. Thanks"))
    with db.transaction(factory) as s:
        t = s.scalars(select(Ticket)).one()
        assert t.verified and t.contact_id is not None and t.company_id is not None
        assert t.language == "de" and t.priority == "high"
        assert t.facts.customer_numbers == ("100234",)
        assert t.facts.company == "Kunde GmbH"
        assert t.facts.contact_name == "Anna Berger"
        assert "company" not in t.missing
    assert "Hinweis: Deine Absenderadresse" not in answers(factory, intake)[0]


def test_accept_policy_flags_unverified_and_asks_for_the_official_address(
        tmp_path, factory, database_url):
    load(factory)
    intake = make_intake(tmp_path, factory, database_url)
    intake.process(1, mail("stranger@somewhere.example"))
    with db.transaction(factory) as s:
        t = s.scalars(select(Ticket)).one()
        assert not t.verified and t.contact_id is None
    assert "von Deiner offiziellen E-Mail-Adresse" in answers(factory, intake)[0]


def test_no_official_address_hint_while_the_account_book_is_empty(
        tmp_path, factory, database_url):
    intake = make_intake(tmp_path, factory, database_url)
    intake.process(1, mail("stranger@somewhere.example"))
    assert "offiziellen E-Mail-Adresse" not in answers(factory, intake)[0]


def test_domain_policy_matches_the_company(tmp_path, factory, database_url):
    load(factory)
    intake = make_intake(tmp_path, factory, database_url, accounts={"unknown_sender": "domain"})
    intake.process(1, mail("new.colleague@kunde-gmbh.de"))
    with db.transaction(factory) as s:
        t = s.scalars(select(Ticket)).one()
        assert t.company_id is not None and t.contact_id is None and not t.verified
        assert t.facts.company == "Kunde GmbH"


def test_reject_policy_answers_politely_without_a_ticket(tmp_path, factory, database_url):
    load(factory)
    intake = make_intake(tmp_path, factory, database_url, accounts={"unknown_sender": "reject"})
    outcome = intake.process(1, mail("stranger@somewhere.example"))
    assert outcome.action == "processed" and "no ticket" in outcome.reason
    intake.process(2, mail("anna.berger@kunde-gmbh.de", n=2))
    with db.transaction(factory) as s:
        assert [t.customer_address for t in s.scalars(select(Ticket))] == [
            "anna.berger@kunde-gmbh.de"]
        rejected = s.scalars(select(OutboxMail).where(OutboxMail.kind == "reject")).one()
        assert rejected.recipients == ["stranger@somewhere.example"]
        assert rejected.ticket_id is None
    msg = message_from_bytes(raw_of(rejected, intake.desk.store), policy=policy.default)
    assert msg["Auto-Submitted"] == "auto-replied" and "[#" not in msg["Subject"]
    assert "kein Support-Ticket angelegt" in msg.get_body(("plain",)).get_content()


def test_cli_import_dry_run_changes_nothing(tmp_path, database_url):
    from harness import maild
    config = cli_config(tmp_path / "cli.toml", database_url)
    dry = maild("accounts", "import", str(DATA / "accounts.csv"), "--dry-run", config=config)
    assert dry.returncode == 1  # two bad lines
    assert "3 created, 0 updated, 0 unchanged would be imported; 2 lines with errors" in dry.stdout
    assert "line 4: email 'not-an-address'" in dry.stderr
    assert maild("accounts", "list", config=config).stdout.strip() == "0 contacts"
    maild("accounts", "import", str(DATA / "accounts.csv"), config=config)
    listed = maild("accounts", "list", config=config).stdout
    assert "anna.berger@kunde-gmbh.de" in listed and "3 contacts" in listed
