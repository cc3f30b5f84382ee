"""Mails and the command line say only what is true: support hours from the calendar,
dates and sizes in the mail's language, the command help from the one registry, labels
instead of keys, sane sentences in every template, honest CLI output and errors, and a
database in one fixed place that read-only commands never create."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from harness import Clock, cli_config, maild, offline_settings, text_of, with_bytes
from sqlalchemy import select

from maild import config as config_module
from maild import db, history, sla
from maild.config import CalendarSettings, Settings
from maild.daemon import build_desk
from maild.errors import ConfigError
from maild.intake import Intake
from maild.mail import commands, contexts
from maild.mail.facts import FACTS
from maild.mail.fetched import Fetched
from maild.mail.render import environment, format_size, format_when
from maild.models import OutboxMail
from maild.vocab import EventKind

BERLIN = ZoneInfo("Europe/Berlin")
ROOT = Path(__file__).parent.parent
TUE = date(2026, 12, 1)


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN).astimezone(UTC)


def cal(**kw: Any) -> sla.BusinessCalendar:
    return sla.calendar_from(CalendarSettings(**kw))


# -- support hours in words ---------------------------------------------------------------------

@pytest.mark.parametrize(("settings", "today", "de", "en"), [
    # The default week.
    ({}, TUE, "Mo–Fr 09:00–16:00 Uhr", "Mon–Fri 09:00–16:00 (Europe/Berlin)"),
    # The brief's example: a short Friday.
    ({"weekday_hours": {"fri": "09:00-13:00"}}, TUE,
     "Mo–Do 09:00–16:00, Fr 09:00–13:00 Uhr",
     "Mon–Thu 09:00–16:00, Fri 09:00–13:00 (Europe/Berlin)"),
    # Other hours altogether, on three single days.
    ({"weekdays": [1, 3, 5], "open": "08:00", "close": "17:30"}, TUE,
     "Mo, Mi, Fr 08:00–17:30 Uhr", "Mon, Wed, Fri 08:00–17:30 (Europe/Berlin)"),
    # A late Wednesday between equal days, and a Saturday morning.
    ({"weekdays": [1, 2, 3, 4, 5, 6],
      "weekday_hours": {"wed": "10:00-18:00", "sat": "10:00-12:00"}}, TUE,
     "Mo, Di, Do, Fr 09:00–16:00, Mi 10:00–18:00, Sa 10:00–12:00 Uhr",
     "Mon, Tue, Thu, Fri 09:00–16:00, Wed 10:00–18:00, Sat 10:00–12:00 (Europe/Berlin)"),
    # A half day within two weeks is named; one further ahead is not.
    ({"half_days": {"2026-12-24": "12:00", "2027-01-29": "13:00"}}, date(2026, 12, 15),
     "Mo–Fr 09:00–16:00 Uhr; am 24.12. nur bis 12:00 Uhr",
     "Mon–Fri 09:00–16:00 (Europe/Berlin); on 24 Dec until 12:00 only"),
    # A half day on a public holiday is no half day.
    ({"half_days": {"2026-12-25": "12:00"}}, date(2026, 12, 20),
     "Mo–Fr 09:00–16:00 Uhr", "Mon–Fri 09:00–16:00 (Europe/Berlin)"),
    # A zone outside the German-speaking ones is named in German too.
    ({"timezone": "Europe/London", "country": "GB"}, TUE,
     "Mo–Fr 09:00–16:00 Uhr (Europe/London)", "Mon–Fri 09:00–16:00 (Europe/London)"),
])
def test_support_hours_text_follows_the_calendar(settings, today, de, en):
    c = cal(**settings)
    assert sla.hours_text(c, "de", today) == de
    assert sla.hours_text(c, "en", today) == en


class Desk:
    """Intake with an injected clock on the test database (no servers)."""

    def __init__(self, tmp_path: Path, factory: Any, url: str, **sections: Any) -> None:
        self.settings = offline_settings(url, tmp_path / "blobs", **sections)
        self.factory = factory
        self.clock = Clock(at(2026, 11, 30, 10, 0))
        self.desk = build_desk(self.settings, factory, self.clock.now)
        self.intake = Intake(factory, self.desk, "INBOX", 3, self.clock)
        self.uid = 0

    def feed(self, raw: str) -> None:
        self.uid += 1
        self.intake.process(1, Fetched(self.uid, raw.encode(), self.clock.now))

    def outbox(self, kind: str) -> list[OutboxMail]:
        with db.transaction(self.factory) as s:
            return with_bytes(list(s.scalars(select(OutboxMail).where(
                OutboxMail.kind == kind).order_by(OutboxMail.id))), self.desk.store)


def customer(lang: str = "de", attachment: bytes = b"") -> str:
    text = ("Hallo, der Export bricht ab. Viele Grüße" if lang == "de"
            else "Hello, the export fails every time. Thank you and kind regards")
    head = ("From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
            "Subject: Export\r\nMessage-ID: <c1@kunde.example>\r\n")
    if not attachment:
        return head + f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
    import base64
    body = base64.encodebytes(attachment).decode().replace("\n", "\r\n")
    return (head + 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
            f"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
            "--b\r\nContent-Type: application/zip\r\n"
            'Content-Disposition: attachment; filename="log.zip"\r\n'
            f"Content-Transfer-Encoding: base64\r\n\r\n{body}--b--\r\n")


def test_the_acknowledgement_promises_the_configured_hours(tmp_path, factory, database_url):
    # Support works Mon–Thu until 16:00 and Fridays until 13:00: the ack says so.
    desk = Desk(tmp_path, factory, database_url,
                calendar={"weekday_hours": {"fri": "09:00-13:00"}})
    desk.feed(customer("de"))
    text = text_of(desk.outbox("ack")[0])
    assert "Mo–Do 09:00–16:00, Fr 09:00–13:00 Uhr" in text
    assert "Mo–Fr" not in text
    assert "innerhalb von 8 Stunden unserer Supportzeit" in text


def test_the_english_acknowledgement_formats_in_english(tmp_path, factory, database_url):
    # An English customer: English weekday, month, decimal point and the zone named.
    desk = Desk(tmp_path, factory, database_url, attachments={"max_file_mb": 0.5})
    desk.feed(customer("en", attachment=bytes(range(256)) * 5000))  # 1.28 MB
    text = text_of(desk.outbox("ack")[0])
    assert "Received:  Monday, 30 November 2026, 10:00" in text
    assert "Mon–Fri 09:00–16:00 (Europe/Berlin)" in text
    # An unverified sender: the file is not named (it could carry a stranger's words).
    assert "a file (1.3 MB)" in text and "1,3" not in text and "log.zip" not in text
    for german in ("Montag", "November 2026, 10:00 Uhr", "Mo–Fr"):
        assert german not in text


@pytest.mark.parametrize(("language", "size", "shown"), [
    ("de", 1_234_567, "1,2 MB"), ("en", 1_234_567, "1.2 MB"),
    ("de", 12_345_678_901, "12.345,7 MB"), ("en", 5009, "5 KB"), ("de", 999, "999 B"),
])
def test_sizes_in_the_mails_language(language, size, shown):
    assert format_size(size, language) == shown


def test_dates_in_the_mails_language():
    moment = at(2026, 3, 3, 9, 5)
    assert format_when(moment, "de", "Europe/Berlin") == "Dienstag, 3. März 2026, 09:05 Uhr"
    assert format_when(moment, "en", "Europe/Berlin") == "Tuesday, 3 March 2026, 09:05"


# -- the command registry -----------------------------------------------------------------------

def test_every_registered_command_is_parsed_and_has_help_in_both_languages():
    for name, spec in commands.REGISTRY.items():
        assert spec.usage_de.startswith(f"#{name}") and spec.usage_en.startswith(f"#{name}")
        assert spec.effect_de and spec.effect_en
        assert "unknown command" not in " ".join(commands.parse(f"#{name}").errors)
    for language in ("de", "en"):
        help_text = commands.help_text(language)
        for spec in commands.REGISTRY.values():
            assert spec.usage(language) in help_text


def test_readme_lists_exactly_the_registered_commands():
    # README's command table and the registry cannot drift apart.
    readme = (ROOT / "README.md").read_text()
    table = re.findall(r"^\| `(#[^`]+)` \|", readme, re.M)
    listed = [row.replace("\\|", "|") for row in table]
    assert listed == [spec.usage_en for spec in commands.REGISTRY.values()]


@pytest.mark.parametrize("language", ["de", "en"])
def test_mails_to_agents_list_every_registered_command(language, monkeypatch):
    # A command added to the registry (e.g. #cc) appears in every agent mail's help.
    monkeypatch.setitem(commands.REGISTRY, "zzz", commands.Spec(
        "#zzz WERT", "#zzz VALUE", "probiert etwas", "tries something"))
    env = environment()
    for template, context in (("notify", NOTIFY), ("agent_notice", REJECTED)):
        text = env.get_template(f"{template}.{language}.txt.j2").render(
            **BASE, **context, language=language)
        for spec in commands.REGISTRY.values():
            assert spec.usage(language) in text, (template, spec)
        assert "#spam [block]" in text


# -- every template, read as customer and agent -------------------------------------------------

NOW = at(2026, 12, 1, 9, 30)
BASE = {"number": 10001, "subject": "Export bricht ab", "name": "Anna Berger",
        "support_name": "Example Support", "support_address": "service@example.com",
        "timezone": "Europe/Berlin", "reopen_days": "14",
        "escalation_url": "http://127.0.0.1:8025/e/10001",
        "ticket_url": "http://127.0.0.1:8025/t/10001"}
ACK = {"received": NOW, "due": at(2026, 12, 1, 17, 30), "hours": "8",
       "hours_text_de": "Mo–Do 09:00–16:00, Fr 09:00–13:00 Uhr",
       "hours_text_en": "Mon–Thu 09:00–16:00, Fri 09:00–13:00 (Europe/Berlin)",
       "ask_official": False, "attachments": ["log.txt"], "attachment_count": 1,
       "not_stored": [("big.zip", 60_500_000, "too large")],
       "missing": ["company", "software_version"], "urgent": False,
       "encrypted": False}
NOTIFY = {"event": "new", "customer": "anna@kunde.example", "customer_name": "Anna Berger",
          "verified": True, "status": "new", "priority": "normal", "owner": "", "due": NOW,
          "answered": None, "text": "Der Export bricht ab.", "author": "anna@kunde.example",
          "facts": [("company", "Kunde GmbH"), ("order_numbers", ["4711", "4712"])],
          "missing": ["contact_name", "software_version"], "participants": [],
          "files": [("log.zip", 1_234_567, True, ""), ("film.mp4", 80_000_000, True, "")],
          "attached": 1, "warning": "", "cc_not_added": [],
          "text_cut": False}
REJECTED = {"notice": "rejected", "lines": ["'#status bogus': unknown status 'bogus'"],
            "status": "new", "priority": "normal", "owner": "", "sender": "max@example.com",
            "original_subject": "Re: Export"}

# (template, context, language, sentences that must be there, sentences that must not)
CASES: list[tuple[str, dict[str, Any], str, list[str], list[str]]] = [
    ("ack", ACK, "de", [
        "unter der\nTicketnummer #10001 aufgenommen",
        "innerhalb von 8 Stunden unserer Supportzeit, also bis\nDienstag, 1. Dezember 2026, "
        "17:30 Uhr.", "Unsere Supportzeiten: Mo–Do 09:00–16:00, Fr 09:00–13:00 Uhr.",
        "big.zip (60,5 MB)", "  - die Firma, für die Du arbeitest"],
        ["Rückfrage", "Mo–Fr"]),
    ("ack", ACK, "en", [
        "within 8 hours of\nsupport time, that is by Tuesday, 1 December 2026, 17:30.",
        "Our support hours: Mon–Thu 09:00–16:00, Fri 09:00–13:00 (Europe/Berlin).",
        "big.zip (60.5 MB)", "  - the company you work for"],
        ["question of ours", "Uhr"]),
    ("ack", {**ACK, "hours": "1", "missing": []}, "de",
     ["innerhalb von 1 Stunde unserer", "Möchtest Du noch etwas ergänzen?"], ["1 Stunden"]),
    ("ack", {**ACK, "hours": "1", "missing": []}, "en",
     ["within 1 hour of", "Would you like to add something?"], ["1 hours"]),
    ("reject", {}, "de", ["kein Support-Ticket angelegt", "an service@example.com"], []),
    ("reject", {}, "en", ["we have not opened a support ticket"], []),
    ("relay", {"text": "Hallo Anna,\n\nbitte neu starten.\n\nViele Grüße\nMax",
               "agent_name": "Max Muster", "quote": "Der Export bricht ab.",
               "quote_author": "Anna Berger", "quote_date": NOW}, "de", [
        "Viele Grüße\nMax\n\nMax Muster · Example Support\n",
        "Am Dienstag, 1. Dezember 2026, 09:30 Uhr schrieb Anna Berger:\n> Der Export"],
        []),
    ("relay", {"text": "Hello Anna,\n\nplease restart.\n\nKind regards\nMax",
               "agent_name": "Max Muster", "quote": "", "quote_author": "Anna",
               "quote_date": None}, "en",
     ["Kind regards\nMax\n\nMax Muster · Example Support\n"], []),
    ("status", {"status": "in_progress"}, "de", ["wir arbeiten jetzt an Deinem Ticket"], []),
    ("status", {"status": "waiting"}, "en",
     ["we need an answer from you on your ticket #10001"], ["for your ticket"]),
    ("status", {"status": "resolved"}, "de",
     ["Antworte innerhalb von 14 Tagen einfach auf\ndiese E-Mail, dann öffnen wir"], []),
    ("status", {"status": "resolved"}, "en",
     ["within 14 days and we\nwill reopen the ticket"], []),
    ("reminder", {"days": 7}, "de", [
        "schließen wir das Ticket in 7 Arbeitstagen.",
        "Auch danach kannst Du es noch 14 Tage lang mit einer Antwort"], ["Werktag"]),
    ("reminder", {"days": 1}, "en", [
        "we will close the ticket in 1 business day.",
        "For 14 days after that, a reply to this email still reopens it."], ["1 business days"]),
    ("autoclose", {}, "de", ["keine Antwort\nmehr erhalten haben, haben wir es geschlossen"],
     []),
    ("autoclose", {}, "en", ["we will reopen the ticket"], []),
    ("notify", NOTIFY, "de", [
        "  Firma:             Kunde GmbH", "Es fehlen: Ansprechpartner, Software-Version\n",
        "log.zip (1,2 MB)", "(1 davon hängt an dieser E-Mail"],
        ["software_version", "contact_name"]),
    ("notify", NOTIFY, "en", [
        "  Company:           Kunde GmbH", "Missing: Contact, Software version\n",
        "log.zip (1.2 MB)", "(1 of them is attached"], ["software_version"]),
    ("agent_notice", REJECTED, "de", ["wurde NICHT ausgeführt", "#spam [block]"], []),
    ("agent_notice", {**REJECTED, "notice": "confirm", "lines": ["Status: waiting"]}, "en",
     ["Your commands on ticket #10001 were carried out"], []),
    ("sla_warning", {"customer": "anna@kunde.example", "priority": "high", "status": "new",
                     "owner": "", "due": NOW, "share": 75, "left_minutes": 125}, "de",
     ["fällig Dienstag, 1. Dezember 2026, 09:30 Uhr", "noch 2 h 5 min Supportzeit"], []),
    ("sla_breach", {"customer": "anna@kunde.example", "priority": "high", "status": "new",
                    "owner": "", "due": NOW}, "en",
     ["It was due: Tuesday, 1 December 2026, 09:30"], []),
    ("digest", {"day": date(2026, 12, 1), "open": [], "open_count": 0, "due_today": [],
                "due_today_count": 0, "breached": [], "breached_count": 0, "escalated": [],
                "escalated_count": 0}, "de", ["Überfällig (0):\n  keine"], []),
]


@pytest.mark.parametrize(("template", "context", "language", "present", "absent"), CASES,
                         ids=[f"{c[0]}.{c[2]}" for c in CASES])
def test_each_template_reads_true(template, context, language, present, absent):
    env = environment()
    given = {**BASE, **context, "language": language}
    cls = contexts.TEMPLATES[template]  # the template's own context type, all fields set
    ctx = cls(**{k: v for k, v in given.items() if k in contexts.field_names(cls)}).names()
    text = env.get_template(f"{template}.{language}.txt.j2").render(**ctx)
    env.get_template(f"{template}.{language}.subject.j2").render(**ctx)
    for sentence in present:
        assert sentence in text, f"{sentence!r} not in:\n{text}"
    for wrong in absent:
        assert wrong not in text, f"{wrong!r} in:\n{text}"
    if (ROOT / "templates" / f"{template}.{language}.html.j2").exists():
        html = env.get_template(f"{template}.{language}.html.j2").render(**ctx)
        assert "Viele Grüße<br>Max" not in html  # no second sign-off on relays


def test_every_fact_has_a_label_for_customers_and_a_name_for_agents():
    env = environment()
    for language in ("de", "en"):
        module = env.get_template(f"_facts.{language}.j2").module
        assert set(module.labels) == set(FACTS)  # type: ignore[attr-defined]
        assert set(module.names) == set(FACTS)  # type: ignore[attr-defined]


def test_relay_mail_has_one_sign_off(tmp_path, factory, database_url):
    # Through the desk: the agent's own greeting, then only name and desk.
    from test_sweeps import CUSTOMER
    desk = Desk(tmp_path, factory, database_url,
                agents={"members": [{"address": "max@example.com", "name": "Max Muster"}]})
    desk.feed(CUSTOMER.format(n="c1", text="Der Export bricht ab."))
    [notice] = desk.outbox("notify")
    desk.feed("From: max@example.com\r\nTo: service@example.com\r\nSubject: Re: x\r\n"
              f"Message-ID: <a1@example.com>\r\nIn-Reply-To: {notice.message_id}\r\n\r\n"
              "Hallo Anna,\r\nbitte neu starten.\r\n\r\nViele Grüße\r\nMax\r\n")
    text = text_of(desk.outbox("relay")[0])
    assert text.count("Viele Grüße") == 1
    assert "Max\n\nMax Muster · Example Support\n" in text


# -- configuration ------------------------------------------------------------------------------

def base_config(**calendar: Any) -> dict[str, Any]:
    return {"imap": {"host": "h", "username": "u"}, "smtp": {"host": "h"},
            "support": {"address": "service@example.com"}, "calendar": calendar}


@pytest.mark.parametrize(("calendar", "message"), [
    ({"open": time(17, 0), "close": time(16, 0)},
     "[calendar]: open (17:00) must be before close (16:00)"),
    ({"open": time(9, 0), "close": time(9, 0)}, "open (09:00) must be before close (09:00)"),
    ({"weekday_hours": {"fri": "13:00-09:00"}}, "fri: closes before it opens"),
    ({"weekday_hours": {"fri": "9 to 1"}}, 'fri: expected "HH:MM-HH:MM"'),
    ({"half_days": {date(2026, 12, 24): time(8, 0)}},
     "half_days 2026-12-24: closes at 08:00, before the day opens (09:00)"),
])
def test_a_calendar_without_sane_hours_is_refused_readably(calendar, message):
    with pytest.raises(ConfigError) as err:
        config_module.from_mapping(base_config(**calendar), "maild.toml", {})
    assert message in str(err.value)
    assert "Value error" not in str(err.value)


@pytest.mark.parametrize(("environ", "euid", "expected"), [
    ({"STATE_DIRECTORY": "/var/lib/maild"}, 998, "/var/lib/maild"),
    ({"HOME": "/root"}, 0, "/var/lib/maild"),
    ({"HOME": "/home/op", "XDG_STATE_HOME": "/home/op/.state"}, 1000, "/home/op/.state/maild"),
    ({"HOME": "/home/op"}, 1000, "/home/op/.local/state/maild"),
])
def test_the_database_has_a_fixed_default_place(environ, euid, expected):
    assert config_module.default_state_dir(environ, euid) == Path(expected)


def test_without_state_dir_the_database_does_not_follow_the_working_dir(tmp_path,
                                                                       monkeypatch):
    # Two commands run from two folders open the same database.
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    urls = set()
    for folder in (tmp_path / "a", tmp_path / "b"):
        folder.mkdir()
        monkeypatch.chdir(folder)
        urls.add(Settings.model_validate(base_config()).database_url)
    expected = config_module.default_state_dir(os.environ, os.geteuid()) / "maild.db"
    assert urls == {f"sqlite:///{expected}"}


# -- the command line ---------------------------------------------------------------------------

def write_cli(tmp_path: Path, database: str) -> Path:
    path = tmp_path / "maild.toml"
    path.write_text('[imap]\nhost = "127.0.0.1"\nusername = "u"\n[smtp]\nhost = "127.0.0.1"\n'
                    '[support]\naddress = "service@example.com"\n' + database)
    return path


@pytest.mark.parametrize("command", [
    ("tickets", "list"), ("tickets", "show", "10001"), ("sla", "report"),
    ("quarantine", "list"), ("outbox", "list"), ("accounts", "list"), ("agents", "list"),
    ("addresses", "list"),
])
def test_read_only_commands_never_create_a_database(tmp_path, command):
    # A state_dir without a database: said, non-zero, and still no file afterwards.
    cfg = write_cli(tmp_path, f'[paths]\nstate_dir = "{tmp_path / "state"}"\n')
    out = maild(*command, config=cfg)
    assert out.returncode == 1, out
    dbfile = tmp_path / "state" / "maild.db"
    assert f"no database at {dbfile}" in out.stderr
    assert "Traceback" not in out.stderr
    assert not dbfile.exists() and not (tmp_path / "state").exists()


def test_check_names_the_missing_database_without_creating_it(tmp_path):
    cfg = write_cli(tmp_path, f'[paths]\nstate_dir = "{tmp_path / "state"}"\n')
    out = maild("check", config=cfg)
    assert f"FAIL  database: sqlite:///{tmp_path / 'state' / 'maild.db'}: no database" \
        in out.stdout
    assert not (tmp_path / "state" / "maild.db").exists()


def test_db_upgrade_creates_the_default_place(tmp_path):
    cfg = write_cli(tmp_path, f'[paths]\nstate_dir = "{tmp_path / "new" / "state"}"\n')
    out = maild("db", "upgrade", config=cfg)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "new" / "state" / "maild.db").exists()
    listed = maild("tickets", "list", config=cfg)
    assert listed.returncode == 0 and listed.stdout == "0 tickets\n"


@pytest.mark.parametrize(("url", "message"), [
    ("not a url", "[database] url: not a usable database URL"),
    ("nosuch://x/y", "[database] url: not a usable database URL"),
])
def test_a_malformed_database_url_is_one_line_and_exit_2(tmp_path, url, message):
    cfg = write_cli(tmp_path, f'[database]\nurl = "{url}"\n')
    for command in (("db", "upgrade"), ("tickets", "list")):
        out = maild(*command, config=cfg)
        assert out.returncode == 2, out
        assert message in out.stderr and "Traceback" not in out.stderr
    check = maild("check", config=cfg)
    assert check.returncode == 2 and message in check.stdout
    assert "Traceback" not in check.stderr


def test_postgresql_without_the_extra_names_it(tmp_path):
    # psycopg missing: one line naming the extra to install, exit 2, for upgrade and check.
    cfg = write_cli(tmp_path, '[database]\nurl = "postgresql+psycopg://maild:pw@127.0.0.1/x"\n')
    for command in (["db", "upgrade"], ["check"]):
        out = subprocess.run(
            [sys.executable, "-c", "import sys; sys.modules['psycopg'] = None; "
             "from maild.cli import main; sys.exit(main(sys.argv[1:]))",
             "--config", str(cfg), *command], capture_output=True, text=True, timeout=60)
        said = out.stdout + out.stderr
        assert "pip install 'maild[postgresql]'" in said, said
        assert "Traceback" not in said and "pw@" not in said
        assert out.returncode == 2


def test_tickets_list_refuses_an_unknown_status(tmp_path, database_url):
    cfg = cli_config(tmp_path / "cli.toml", database_url)
    out = maild("tickets", "list", "--status", "bogus", config=cfg)
    assert out.returncode == 2
    assert "bogus" in out.stderr
    for status in ("new", "in_progress", "waiting", "resolved", "closed", "spam"):
        assert status in out.stderr


def test_cli_counts_in_singular_and_shows_a_zero_median(tmp_path, factory, database_url):
    # One ticket answered within the same minute: "1 ticket", median 0.
    from test_sweeps import CUSTOMER
    desk = Desk(tmp_path, factory, database_url,
                agents={"members": [{"address": "max@example.com", "name": "Max"}]})
    desk.feed(CUSTOMER.format(n="c1", text="Der Export bricht ab."))
    [notice] = desk.outbox("notify")
    desk.feed("From: max@example.com\r\nTo: service@example.com\r\nSubject: Re: x\r\n"
              f"Message-ID: <a1@example.com>\r\nIn-Reply-To: {notice.message_id}\r\n\r\n"
              "Wir schauen es uns an.\r\n")
    cfg = cli_config(tmp_path / "cli.toml", database_url)
    listed = maild("tickets", "list", config=cfg)
    assert listed.stdout.endswith("\n1 ticket\n"), listed.stdout
    report = maild("sla", "report", config=cfg)
    assert "median 0, p90 0" in report.stdout, report.stdout


def test_errors_name_the_database_they_opened(tmp_path, database_url):
    cfg = cli_config(tmp_path / "cli.toml", database_url)
    out = maild("tickets", "show", "4711", config=cfg)
    assert out.returncode == 1
    shown = database_url.split("@")[-1] if "@" in database_url else database_url
    assert "maild: no ticket #4711" in out.stderr
    assert "maild: database: " in out.stderr and shown in out.stderr


def test_every_registered_command_has_an_effect_and_every_effect_a_command():
    # A command is described (usage, help, form check) in the registry and carried out by
    # its effect in maild.work: one cannot be added without the other.
    from maild import work
    assert set(work.EFFECTS) == set(commands.REGISTRY)


def test_every_event_kind_has_one_detail_type_stored_with_the_keys_events_always_had():
    # The ticket page, `maild ticket show` and old events read the same JSON keys: "from"
    # and "to", and an empty optional key left out.
    assert set(history.DETAILS) == set(EventKind)
    assert all(cls.kind == kind for kind, cls in history.DETAILS.items())
    due = datetime(2026, 12, 1, 16, 0, tzinfo=UTC)
    assert history.Status("waiting", "in_progress").to_json() == {
        "from": "waiting", "to": "in_progress"}
    assert history.PriorityChanged("normal", "urgent").to_json() == {
        "from": "normal", "to": "urgent"}
    assert history.MergedFrom(10001).to_json() == {"from": 10001}
    assert history.Created(7, "person", "", "normal", "").to_json() == {
        "inbound_id": 7, "kind": "person", "reason": "", "priority": "normal",
        "priority_reason": ""}
    assert history.Created(7, "person", "", "normal", "", refers_to=10001,
                           cc_not_added=["x@evil.example"]).to_json()["refers_to"] == 10001
    assert history.FollowUp(8, "tag", "person", status=["resolved", "in_progress"],
                            reopened=True).to_json() == {
        "inbound_id": 8, "how": "tag", "kind": "person",
        "status": ["resolved", "in_progress"], "reopened": True}
    assert history.FirstResponse("answer", due, True).to_json() == {
        "what": "answer", "due": "2026-12-01T16:00:00+00:00", "in_time": True}
    assert history.FirstResponse("answer", None, True).to_json()["due"] is None
