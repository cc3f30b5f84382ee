"""Backups: a consistent copy of the database and the stored files while maild runs, and
putting one back.

A backup is a folder (0700, its files 0600: they hold personal data):

    manifest.json     maild version, schema revision, time, counts
    maild.sqlite3     SQLite: the database, copied with SQLite's online backup API
    maild.pgdump      PostgreSQL: `pg_dump --format=custom`
    blobs/ab/SHA      every stored file the copied database refers to (ab/cd/SHA in
                      backups made before 2026-12: both are read back)

The database is copied first, at one instant (SQLite's backup API in one step; for
PostgreSQL `pg_dump --snapshot` of a snapshot this process holds open meanwhile). Then the
files that snapshot refers to are copied and checked against their SHA-256 names: blobs
are content-addressed and never change, so files written later do not matter.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from maild import __version__, blobs, db
from maild.config import Settings
from maild.errors import MaildError
from maild.progress import Progress

MANIFEST = "manifest.json"
SQLITE_FILE = "maild.sqlite3"
PG_FILE = "maild.pgdump"
BLOB_DIR = "blobs"

# Every blob a row refers to (the same sets `blobs.collect` spares).
_REFERENCED = ("SELECT sha256 FROM blobs WHERE refs > 0 "
               "UNION SELECT raw_sha256 FROM inbound_messages WHERE raw_sha256 IS NOT NULL "
               "UNION SELECT blob_sha256 FROM attachments WHERE blob_sha256 IS NOT NULL")
_COUNTS = {"tickets": "tickets", "inbound_mails": "inbound_messages", "outbox_mails": "outbox"}


class BackupError(MaildError):
    """A backup or restore that cannot be done (said why, and what to do)."""


@dataclass(slots=True)
class Manifest:
    maild_version: str
    database: str  # "sqlite" or "postgresql"
    file: str
    schema: str | None
    created_at: str
    counts: dict[str, int] = field(default_factory=dict)
    blobs: int = 0
    blob_bytes: int = 0
    missing_blobs: list[str] = field(default_factory=list)

    def write(self, folder: Path) -> None:
        _private_file(folder / MANIFEST, json.dumps(asdict(self), indent=2).encode() + b"\n")

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        try:
            data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            return cls(**data)
        except FileNotFoundError:
            raise BackupError(f"{folder}: no {MANIFEST}: not a maild backup") from None
        except (OSError, ValueError, TypeError) as exc:
            raise BackupError(f"{folder / MANIFEST}: unreadable: {exc}") from exc


def backup(settings: Settings, target: Path, now: datetime,
           progress: Progress | None = None) -> Manifest:
    """Write a backup of the configured database and blob store into `target` (a new or
    empty folder). Safe while the daemon runs."""
    _prepare_target(target)
    if db.sqlite_path(settings.database_url) is not None:
        manifest, referenced = _backup_sqlite(settings, target, now)
    elif settings.database_url.startswith("postgresql"):
        manifest, referenced = _backup_postgresql(settings, target, now)
    else:
        raise BackupError(f"backup supports SQLite files and PostgreSQL, not "
                          f"{settings.database_url.partition(':')[0]}")
    _copy_blobs(blobs.FolderStore(settings.blob_dir), target / BLOB_DIR, referenced, manifest,
                progress)
    manifest.write(target)
    return manifest


def _prepare_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target}: exists and is not an empty folder; "
                          "give a new folder for each backup")
    blobs.private_dir(target)
    os.chmod(target, 0o700)


def _backup_sqlite(settings: Settings, target: Path,
                   now: datetime) -> tuple[Manifest, list[str]]:
    source = db.sqlite_path(settings.database_url)
    assert source is not None
    if not source.exists():
        raise BackupError(f"no database at {source}: nothing to back up")
    copy = target / SQLITE_FILE
    _private_file(copy, b"")
    src = sqlite3.connect(_read_only(source), uri=True, timeout=30)
    dst = sqlite3.connect(copy)
    try:
        src.backup(dst)  # one step: a consistent snapshot, writers go on meanwhile
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        schema, counts, referenced = _survey(dst)
    except sqlite3.Error as exc:
        raise BackupError(f"copying {source}: {exc}") from exc
    finally:
        src.close()
        dst.close()
    manifest = Manifest(__version__, "sqlite", SQLITE_FILE, schema, now.isoformat(), counts)
    return manifest, referenced


def _read_only(path: Path) -> str:
    """An SQLite URI opening `path` read-only (any character in the path escaped)."""
    return f"{path.resolve().as_uri()}?mode=ro"


def _survey(conn: sqlite3.Connection) -> tuple[str | None, dict[str, int], list[str]]:
    """Schema revision, row counts and referenced blobs of a database copy."""
    schema = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    counts = {name: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
              for name, table in _COUNTS.items()}
    referenced = [str(r[0]) for r in conn.execute(_REFERENCED)]
    return (str(schema[0]) if schema else None), counts, referenced


def _pg_command(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is not installed (apt-get install postgresql-client; its major version "
            f"at least the server's). Without it: stop maild, run `pg_dump --format=custom "
            f"--file=PATH/{PG_FILE} DBNAME` and copy {{blob_dir}} with `cp -a`; see README, "
            "'Backup and restore'")
    return found


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """The database URL for libpq tools, its password moved to $PGPASSWORD (never on the
    command line, where `ps` shows it)."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _backup_postgresql(settings: Settings, target: Path,
                       now: datetime) -> tuple[Manifest, list[str]]:
    pg_dump = _pg_command("pg_dump")
    dsn, env = _libpq(settings.database_url)
    engine = db.make_engine(settings.database_url, must_exist=True)
    try:
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
            # The snapshot pg_dump reads is the one this transaction sees: the blob list
            # and the counts come from the very same instant.
            snapshot = str(conn.execute(text("SELECT pg_export_snapshot()")).scalar_one())
            dump = target / PG_FILE
            fd = os.open(dump, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                done = subprocess.run([pg_dump, "--format=custom", f"--snapshot={snapshot}",
                                       "--no-password", f"--dbname={dsn}"],
                                      stdout=out, stderr=subprocess.PIPE, env=env, check=False)
            if done.returncode:
                raise BackupError(f"pg_dump failed: {_tail(done.stderr)}")
            schema, counts, referenced = _survey_pg(conn)
    except BackupError:
        raise
    except Exception as exc:  # the driver's errors: said in one line, without the URL
        raise BackupError(f"database: {db._short(exc)}") from exc
    finally:
        engine.dispose()
    manifest = Manifest(__version__, "postgresql", PG_FILE, schema, now.isoformat(), counts)
    return manifest, referenced


def _survey_pg(conn: Connection) -> tuple[str | None, dict[str, int], list[str]]:
    schema = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    counts = {name: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
              for name, table in _COUNTS.items()}
    referenced = [str(r) for r in conn.execute(text(_REFERENCED)).scalars()]
    return (str(schema) if schema else None), counts, referenced


def _tail(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return " / ".join(lines[-3:]) or "no message"


def _copy_blobs(store: blobs.FolderStore, dest: Path, referenced: Iterable[str],
                manifest: Manifest, progress: Progress | None = None) -> None:
    """Copy each referenced blob, checking it against its name; one gone meanwhile (a
    ticket erased during the backup) or damaged is listed in the manifest."""
    blobs.private_dir(dest)
    out = blobs.FolderStore(dest)
    wanted = sorted(set(referenced))
    if progress is not None:
        progress.total = len(wanted)
    for sha in wanted:
        if progress is not None:
            progress.step()
        try:
            data = store.get(sha)
        except (OSError, ValueError):
            manifest.missing_blobs.append(sha)
            continue
        if blobs.digest(data) != sha:
            manifest.missing_blobs.append(sha)
            continue
        out.put(data, sync=False)
        manifest.blobs += 1
        manifest.blob_bytes += len(data)
    out.sync()


def _private_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# Restoring


@dataclass(frozen=True, slots=True)
class Restored:
    manifest: Manifest
    blobs: int
    schema_now: str | None
    head: str


def restore(settings: Settings, source: Path, *, force: bool,
            progress: Progress | None = None) -> Restored:
    """Put the backup in `source` in place of the configured database and add its files to
    the blob store. maild must be stopped; a database holding mail is replaced only with
    `force`."""
    manifest = Manifest.read(source)
    sqlite = db.sqlite_path(settings.database_url)
    if manifest.database == "sqlite" and sqlite is not None:
        _restore_sqlite(source / manifest.file, sqlite, force)
    elif manifest.database == "postgresql" and settings.database_url.startswith("postgresql"):
        _restore_postgresql(settings, source / manifest.file, force)
    else:
        where = "SQLite" if sqlite is not None else "PostgreSQL"
        raise BackupError(f"the backup holds a {manifest.database} database, the config "
                          f"uses {where}: restore it into the same kind of database")
    count = _restore_blobs(source / BLOB_DIR, blobs.FolderStore(settings.blob_dir), progress)
    engine = db.make_engine(settings.database_url, must_exist=True)
    try:
        current, head = db.schema_status(engine)
    finally:
        engine.dispose()
    if os.geteuid() == 0:  # root restored for the service user: its files stay its own
        _hand_over([*([sqlite] if sqlite else []), settings.blob_dir])
    return Restored(manifest, count, current, head)


def sqlite_in_use(path: Path) -> bool:
    """Whether a process has the SQLite database at `path` open: each connection to a WAL
    database holds a shared lock on the DMS byte (128) of its -shm file until it closes.
    (Call it with no connection of this process open on `path`: POSIX locks are per
    process.)"""
    shm = Path(f"{path}-shm")
    try:
        fd = os.open(shm, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128, os.SEEK_SET)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the lock just taken
    return False


def _restore_sqlite(copy: Path, path: Path, force: bool) -> None:
    if not copy.is_file():
        raise BackupError(f"{copy}: missing: the backup is incomplete")
    if sqlite_in_use(path):
        raise BackupError(f"{path} is in use: stop maild (systemctl stop maild) and every "
                          "other maild command first")
    if path.exists() and not force and _holds_mail_sqlite(path):
        raise BackupError(f"{path} already holds tickets or mails: to replace it with the "
                          "backup, run again with --force")
    blobs.private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".restore-")
    try:
        with os.fdopen(fd, "wb") as out, copy.open("rb") as src:
            os.fchmod(out.fileno(), 0o600)
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        for stale in (Path(f"{path}-wal"), Path(f"{path}-shm")):  # the old file's journal
            stale.unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _holds_mail_sqlite(path: Path) -> bool:
    conn = sqlite3.connect(_read_only(path), uri=True, timeout=30)
    try:
        return any(_count_sqlite(conn, table) for table in _COUNTS.values())
    finally:
        conn.close()


def _count_sqlite(conn: sqlite3.Connection, table: str) -> int:
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:  # no such table: an empty or foreign database
        return 0


def _restore_postgresql(settings: Settings, dump: Path, force: bool) -> None:
    if not dump.is_file():
        raise BackupError(f"{dump}: missing: the backup is incomplete")
    pg_restore = _pg_command("pg_restore")
    engine = db.make_engine(settings.database_url)
    lock = db.MailboxLock(engine, settings.imap.mailbox_id)
    try:
        if not lock.try_acquire():
            raise BackupError("maild is running against this database (it holds the "
                              "mailbox lock): stop it first (systemctl stop maild)")
        with engine.connect() as conn:
            holds = _holds_mail_pg(conn)
        if holds and not force:
            raise BackupError("the database already holds tickets or mails: to replace it "
                              "with the backup, run again with --force")
        dsn, env = _libpq(settings.database_url)
        done = subprocess.run([pg_restore, "--clean", "--if-exists", "--no-owner",
                               "--single-transaction", "--exit-on-error", "--no-password",
                               f"--dbname={dsn}", str(dump)],
                              capture_output=True, env=env, check=False)
        if done.returncode:
            raise BackupError(f"pg_restore failed: {_tail(done.stderr)}")
    finally:
        lock.release()
        engine.dispose()


def _holds_mail_pg(conn: Connection) -> bool:
    for table in _COUNTS.values():
        exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar()
        if exists and conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one():
            return True
    return False


def _hand_over(paths: list[Path]) -> None:
    """Give what root just wrote under each of `paths` to the owner of its folder (the
    service user owns /var/lib/maild; a root-owned file there would lock it out)."""
    for top in paths:
        owner = top.parent.stat()
        if owner.st_uid == 0:
            continue
        for path in [top, *(top.rglob("*") if top.is_dir() else [])]:
            if path.lstat().st_uid == 0:
                os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)


def _restore_blobs(source: Path, store: blobs.FolderStore,
                   progress: Progress | None = None) -> int:
    """Add every file of the backup to the store, checked against its SHA-256 name."""
    count = 0
    for path, _ in blobs.FolderStore(source).files():
        if progress is not None:
            progress.step()
        if not blobs.is_blob_name(path.name):
            raise BackupError(f"{path}: not a stored file's name (a SHA-256)")
        data = path.read_bytes()
        if blobs.digest(data) != path.name:
            raise BackupError(f"{path}: damaged (its content does not match its name)")
        store.put(data, sync=False)
        count += 1
    store.sync()
    return count
