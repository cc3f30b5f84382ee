"""`maild backup` and `maild restore`: a copy taken while mails flow through a running
daemon restores to a database with every ticket of that instant and all their files."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from harness import (
    PG_ADMIN_URL,
    Daemon,
    cli_config,
    customer_mail,
    maild,
    offline_settings,
    rows,
    wait_until,
    write_config,
)
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from maild import backup, blobs, db
from maild.models import Attachment, InboundMessage, Ticket


def with_attachment(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Kundin {n} <kundin{n}@firma.example>"
    msg["To"] = "service@example.com"
    msg["Subject"] = f"Protokoll zu Auftrag {n}"
    msg["Message-ID"] = f"<att{n}.{secrets.token_hex(4)}@firma.example>"
    msg.set_content(f"Anbei das Protokoll zu Auftrag {n}.")
    msg.add_attachment(f"Protokoll {n}\n".encode() * 200, maintype="application",
                       subtype="octet-stream", filename=f"protokoll-{n}.log")
    return msg.as_bytes()


class Flow:
    """Appends mails to the mailbox from a thread until stopped."""

    def __init__(self, mailbox) -> None:  # type: ignore[no-untyped-def]
        self.mailbox, self.sent, self.stop = mailbox, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            n = self.sent + 1
            self.mailbox.append(with_attachment(n) if n % 3 == 0 else customer_mail(n))
            self.sent = n
            self.stop.wait(0.05)

    def __enter__(self) -> Flow:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(30)


@pytest.fixture
def empty_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """Where a backup is restored to: a database of the same kind with nothing in it."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'restored' / 'maild.db'}"
        return
    name = f"maild_r_{secrets.token_hex(5)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def private(folder: Path) -> list[str]:
    """What in `folder` others could read: every folder must be 0700, every file 0600."""
    wrong = []
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            wrong.append(f"{path} {mode:o}")
    return wrong


def test_backup_while_mails_flow_restores_every_ticket(tmp_path, dovecot, mailbox, smtp,
                                                       database_url, empty_url):
    # Mails keep arriving while `maild backup` runs against the live daemon; the restore
    # holds every ticket that existed before the backup began, numbered without gaps, and
    # every stored file its rows refer to, intact.
    if database_url.startswith("postgresql") and not backup.shutil.which("pg_dump"):
        reason = "pg_dump is not installed (apt-get install postgresql-client)"
        if os.environ.get("CI") == "true":  # CI has the server, so it has the client
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    config = write_config(tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
                          password=mailbox.password, smtp_port=smtp.port,
                          database_url=database_url)
    daemon = Daemon(config, tmp_path / "maild.log").start()
    target = tmp_path / "backup"
    try:
        with Flow(mailbox):
            assert wait_until(lambda: len(rows(database_url, Ticket)) >= 6, 60), daemon.output()
            before = {t.number for t in rows(database_url, Ticket)}
            taken = maild("backup", str(target), config=config)
            # ...and go on arriving after it
            assert wait_until(lambda: len(rows(database_url, Ticket)) > len(before) + 2, 30)
        assert taken.returncode == 0, taken.stderr
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["database"] == ("sqlite" if database_url.startswith("sqlite")
                                    else "postgresql")
    assert manifest["missing_blobs"] == [] and manifest["schema"]
    assert private(target) == []

    restored_blobs = tmp_path / "restored-blobs"
    restore_config = cli_config(tmp_path / "restore.toml", empty_url, restored_blobs)
    done = maild("restore", str(target), config=restore_config)
    assert done.returncode == 0, done.stderr
    numbers = {t.number for t in rows(empty_url, Ticket)}
    assert before <= numbers  # every ticket of the instant the backup began
    assert numbers == set(range(10001, 10001 + len(numbers)))
    assert len(numbers) == manifest["counts"]["tickets"]
    original = {t.number: (t.subject, t.customer_address) for t in rows(database_url, Ticket)}
    assert {t.number: (t.subject, t.customer_address) for t in rows(empty_url, Ticket)} == {
        n: original[n] for n in numbers}

    # Every stored file the restored rows refer to is there and hashes to its name.
    wanted = {m.raw_sha256 for m in rows(empty_url, InboundMessage) if m.raw_sha256}
    attached = {a.blob_sha256 for a in rows(empty_url, Attachment) if a.blob_sha256}
    assert attached, "the flow sends attachments"
    for sha in wanted | attached:
        path = restored_blobs / sha[:2] / sha
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    shown = maild("tickets", "show", str(max(numbers)), config=restore_config)
    assert shown.returncode == 0, shown.stderr
    assert original[max(numbers)][0] in shown.stdout


def test_restore_refuses_a_database_in_use_or_holding_mail(tmp_path, dovecot, mailbox, smtp):
    # SQLite: while the daemon has its database open, restore refuses; once it is stopped,
    # a database with mail in it is replaced only with --force.
    url = f"sqlite:///{tmp_path / 'state' / 'maild.db'}"
    config = write_config(tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
                          password=mailbox.password, smtp_port=smtp.port, database_url=url)
    assert maild("db", "upgrade", config=config).returncode == 0
    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        mailbox.append(customer_mail(1))
        assert wait_until(lambda: len(rows(url, Ticket)) == 1, 30), daemon.output()
        assert maild("backup", str(tmp_path / "b1"), config=config).returncode == 0
        mailbox.append(customer_mail(2))
        assert wait_until(lambda: len(rows(url, Ticket)) == 2, 30)
        busy = maild("restore", str(tmp_path / "b1"), config=config)
        assert busy.returncode == 1 and "is in use: stop maild" in busy.stderr
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    full = maild("restore", str(tmp_path / "b1"), config=config)
    assert full.returncode == 1 and "--force" in full.stderr
    assert len(rows(url, Ticket)) == 2
    forced = maild("restore", str(tmp_path / "b1"), "--force", config=config)
    assert forced.returncode == 0, forced.stderr
    assert [t.number for t in rows(url, Ticket)] == [10001]
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "maild.db").st_mode) == 0o600


def test_backup_wants_a_new_folder_and_restore_a_backup(tmp_path):
    # A folder with something in it is never written into; a folder without a manifest is
    # not restored from.
    url = f"sqlite:///{tmp_path / 'maild.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    config = cli_config(tmp_path / "maild.toml", url, tmp_path / "blobs")
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    out = maild("backup", str(used), config=config)
    assert out.returncode == 1 and "not an empty folder" in out.stderr
    assert sorted(p.name for p in used.iterdir()) == ["notes.txt"]
    out = maild("restore", str(used), config=config)
    assert out.returncode == 1 and "not a maild backup" in out.stderr


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_backup_without_pg_dump_says_what_to_do(database_url, tmp_path,
                                                            monkeypatch):
    # No pg_dump on PATH: the backup stops with the package to install and the manual way.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    settings = offline_settings(database_url, tmp_path / "blobs")
    with pytest.raises(backup.BackupError, match="pg_dump is not installed.*postgresql-client"):
        backup.backup(settings, tmp_path / "b", datetime.now(UTC))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can restore for another user")
def test_root_restores_for_the_service_user(tmp_path):
    # Root restores into a state folder the service user owns: the database and the
    # stored files are the service user's afterwards, or the daemon could not open them.
    import pwd

    nobody = pwd.getpwnam("nobody")
    url = f"sqlite:///{tmp_path / 'maild.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    sha = blobs.FolderStore(tmp_path / "blobs").put(b"a raw mail")
    with db.transaction(db.session_factory(engine)) as session:
        blobs.add_ref(session, sha, 10, datetime.now(UTC))
    engine.dispose()
    taken = maild("backup", str(tmp_path / "b"), config=cli_config(
        tmp_path / "maild.toml", url, tmp_path / "blobs"))
    assert taken.returncode == 0, taken.stderr
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    target = cli_config(tmp_path / "target.toml", f"sqlite:///{state / 'maild.db'}",
                        state / "blobs")
    done = maild("restore", str(tmp_path / "b"), config=target)
    assert done.returncode == 0, done.stderr
    owners = {p.relative_to(state).as_posix(): p.stat().st_uid for p in state.rglob("*")}
    assert f"blobs/{sha[:2]}/{sha}" in owners and "maild.db" in owners
    assert set(owners.values()) == {nobody.pw_uid}, owners
