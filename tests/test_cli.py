"""The command line at its edges: a reader that stops early (`| head -1`) and a database
whose schema is behind this maild."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from alembic import command
from harness import cli_config

from maild import db, health
from maild.models import InboundMessage

HEAD = health.schema_head()  # the newest migration
QUARANTINED = 2000  # well over a pipe's 64 KiB of output


@pytest.fixture
def crowded(tmp_path: Path, database_url: str) -> Path:
    """A config whose database holds QUARANTINED quarantined mails."""
    engine = db.make_engine(database_url)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            s.add_all(InboundMessage(
                mailbox="u@127.0.0.1/INBOX", uidvalidity=1, uid=n, dedupe_key=f"k{n:060}",
                message_id=f"<m{n}@firma.example>", size=1000, received_at=datetime.now(UTC),
                state="quarantined", reason=f"processing failed 3 times: mail {n}",
                attempts=3) for n in range(QUARANTINED))
    finally:
        engine.dispose()
    return cli_config(tmp_path / "maild.toml", database_url, tmp_path / "blobs")


def read_once(config: Path, *args: str) -> tuple[bytes, int, str]:
    """Run a command, read the first chunk of its output and close the pipe (what
    `| head -1` does): the first bytes, the exit code and what it wrote to stderr."""
    process = subprocess.Popen([sys.executable, "-m", "maild", "--config", str(config), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.read(100)
    process.stdout.close()
    error = process.stderr.read().decode()
    return first, process.wait(timeout=60), error


@pytest.mark.parametrize("args", [("quarantine", "list", "--json"), ("quarantine", "list")])
def test_a_closed_pipe_ends_a_command_quietly(crowded, args):
    first, code, error = read_once(crowded, *args)
    assert first  # it did write
    assert error == "", error  # no BrokenPipeError traceback, no "Exception ignored"
    assert code == 141  # 128 + SIGPIPE, as a shell reports a tool ended by the closed pipe


@pytest.fixture
def old_schema(tmp_path: Path, database_url: str) -> Path:
    """A config whose database is one schema behind (0013: before the outbox's stored
    bytes and the OAuth2 tokens), as after installing a new maild without `db upgrade`."""
    engine = db.make_engine(database_url)
    try:
        command.downgrade(db._alembic_config(engine), "0013")
    finally:
        engine.dispose()
    return cli_config(tmp_path / "maild.toml", database_url, tmp_path / "blobs")


@pytest.mark.parametrize("args", [
    ("status",), ("status", "--json"), ("tickets", "list"), ("tickets", "show", "10001"),
    ("quarantine", "list"), ("outbox", "list"), ("accounts", "list"), ("agents", "list"),
    ("addresses", "list"), ("sla", "report"), ("callbacks", "report")])
def test_an_old_schema_is_named_by_every_command_with_what_to_run(old_schema, args):
    # Not "database unreachable … no such table" or "no such column": the database is
    # there and answers, it only needs `maild db upgrade`.
    done = subprocess.run([sys.executable, "-m", "maild", "--config", str(old_schema), *args],
                          capture_output=True, text=True, timeout=60)
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert f"the database's schema is 0013, this maild needs {HEAD}: run `maild db upgrade`" \
        in said, said
    for wrong in ("no such", "does not exist", "unreachable", "Traceback", "UndefinedColumn"):
        assert wrong not in said, said


def test_run_with_upgrade_migrates_an_old_schema_then_starts(old_schema, database_url):
    # What the unit's ExecStart does: no ExecStartPre (whose exit 2 systemd would retry).
    with old_schema.open("a") as f:
        f.write("[http]\nenabled = false\n")
    daemon = subprocess.Popen([sys.executable, "-m", "maild", "--config", str(old_schema),
                               "run", "--upgrade"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    engine = db.make_engine(database_url)
    try:
        deadline = time.monotonic() + 60
        while db.schema_problem(*db.schema_status(engine)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert db.schema_problem(*db.schema_status(engine)) == ""
    finally:
        engine.dispose()
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=60)
    assert f"migrating the database's schema from 0013 to {HEAD}" in out, out
    assert daemon.returncode == 0, out
    assert "Traceback" not in out, out


def test_run_without_upgrade_refuses_an_old_schema_as_a_config_error(old_schema):
    done = subprocess.run([sys.executable, "-m", "maild", "--config", str(old_schema), "run"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr  # not restarted by systemd
    assert f"this maild needs {HEAD}: run `maild db upgrade`" in done.stderr, done.stderr


def test_run_with_upgrade_ends_a_bad_config_with_exit_2(tmp_path):
    config = tmp_path / "maild.toml"
    config.write_text('[imap]\nhost = "127.0.0.1"\n[support]\naddress = "not an address"\n')
    done = subprocess.run([sys.executable, "-m", "maild", "--config", str(config), "run",
                           "--upgrade"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("maild: "), done.stderr


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_processes_starting_at_once_migrate_once(database_url):
    # Three units started together on one PostgreSQL database, each `run --upgrade`: the
    # advisory lock lets one migrate, the others wait and find the schema at head (without
    # it, two would create the same tables and one start would fail).
    import threading
    engine = db.make_engine(database_url)
    try:
        command.downgrade(db._alembic_config(engine), "base")
    finally:
        engine.dispose()
    failures: list[BaseException] = []

    def start() -> None:
        own = db.make_engine(database_url)
        try:
            db.upgrade(own)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    engine = db.make_engine(database_url)
    try:
        assert db.schema_problem(*db.schema_status(engine)) == ""
    finally:
        engine.dispose()


def test_the_manual_page_is_what_the_parser_makes():
    # docs/maild.1 ships in the wheel (share/man/man1); `make man` after a parser change.
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "scripts" / "make-man"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    page = (root / "docs" / "maild.1").read_text()
    for needed in ("maild outbox retry", "maild auth login", ".SH EXIT STATUS",
                   "MAILD_CONFIG", "/etc/maild/maild.toml"):
        assert needed in page, needed


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_shell_completion_comes_from_the_parser_and_needs_no_config(tmp_path, shell):
    done = subprocess.run([sys.executable, "-m", "maild", "completion", shell],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    for word in ("outbox", "retry", "quarantine", "--config", "--failed"):
        assert word in done.stdout, word
    if shell == "bash":
        script = tmp_path / "maild.bash"
        script.write_text(done.stdout)
        assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0


@pytest.fixture
def one_quarantined(tmp_path: Path, database_url: str) -> Path:
    engine = db.make_engine(database_url)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            s.add(InboundMessage(
                mailbox="u@127.0.0.1/INBOX", uidvalidity=1, uid=1, dedupe_key="k" * 60,
                message_id="<q1@firma.example>", size=10, received_at=datetime.now(UTC),
                state="quarantined", reason="processing failed 3 times", attempts=3))
    finally:
        engine.dispose()
    return cli_config(tmp_path / "maild.toml", database_url, tmp_path / "blobs")


def test_every_reporting_command_speaks_json(one_quarantined, tmp_path):
    # Scripts read the outcome as JSON; the exit code stays the same convention.
    accounts_csv = Path(__file__).resolve().parent / "data" / "accounts.csv"
    backup = tmp_path / "backup"
    commands = [
        (("db", "upgrade"), 0, "schema"),
        (("blobs", "gc"), 0, "deleted"),
        (("accounts", "import", str(accounts_csv), "--dry-run"), 1, "created"),  # a bad line
        (("quarantine", "show", "1"), 0, "reason"),
        (("customers", "purge", "nobody@kunde.example", "--yes"), 0, "tickets"),
        (("check",), 1, "checks"),  # no IMAP or SMTP server here
        (("backup", str(backup)), 0, "schema"),
        (("restore", str(backup), "--force"), 0, "schema_needed"),
    ]
    for args, code, key in commands:
        done = subprocess.run([sys.executable, "-m", "maild", "--config", str(one_quarantined),
                               *args, "--json"], capture_output=True, text=True, timeout=120)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        assert key in json.loads(done.stdout), (args, done.stdout)
    found = json.loads(subprocess.run(
        [sys.executable, "-m", "maild", "--config", str(one_quarantined), "check", "--json"],
        capture_output=True, text=True, timeout=120).stdout)
    assert {c["check"] for c in found["checks"]} >= {"config", "templates", "database", "imap",
                                                      "smtp"}
    assert found["ok"] is False and found["exit"] == 1


def test_times_are_shown_in_the_support_calendars_zone(one_quarantined):
    # As in the mails and pages: Europe/Berlin by default (+01:00 in winter), not UTC.
    done = subprocess.run([sys.executable, "-m", "maild", "--config", str(one_quarantined),
                           "quarantine", "list", "--json"], capture_output=True, text=True,
                          timeout=60)
    [row] = json.loads(done.stdout)
    shown = datetime.fromisoformat(row["received_at"])
    assert shown.utcoffset() == ZoneInfo("Europe/Berlin").utcoffset(shown.replace(tzinfo=None))
    with one_quarantined.open("a") as f:
        f.write('[calendar]\ntimezone = "America/New_York"\n')
    done = subprocess.run([sys.executable, "-m", "maild", "--config", str(one_quarantined),
                           "quarantine", "show", "1", "--json"], capture_output=True, text=True,
                          timeout=60)
    moment = datetime.fromisoformat(json.loads(done.stdout)["received_at"])
    assert moment.utcoffset() == ZoneInfo("America/New_York").utcoffset(
        moment.replace(tzinfo=None))
    assert moment == shown  # the same moment


def test_in_zone_converts_times_only():
    from maild.views import in_zone
    zone = ZoneInfo("Europe/Berlin")
    view = {"opened_at": "2026-12-08T09:00:00+00:00", "subject": "2026-12-08T09:00:00+00:00",
            "events": [{"at": "2026-07-01T12:00:00+00:00", "kind": "x"}],
            "first_response_due": None, "bouncing_since": "not a time"}
    assert in_zone(view, zone) == {
        "opened_at": "2026-12-08T10:00:00+01:00", "subject": "2026-12-08T09:00:00+00:00",
        "events": [{"at": "2026-07-01T14:00:00+02:00", "kind": "x"}],
        "first_response_due": None, "bouncing_since": "not a time"}
