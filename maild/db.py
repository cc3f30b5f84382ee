"""The database edge: engines, transactions, migrations; driver errors translated here."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from maild.blobs import private_dir
from maild.errors import ConfigError, SchemaMismatch, StorageUnavailable
from maild.models import AppSecret, Counter, Ticket

log = logging.getLogger(__name__)

SessionFactory = sessionmaker[Session]


def make_engine(url: str, *, must_exist: bool = False) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys, full sync and IMMEDIATE writes.

    `must_exist`: a read-only use (listing, showing, checking) never creates an empty
    SQLite file; a missing one is reported instead. Otherwise its folder is created.
    A missing driver or a malformed URL is a configuration error, said in one line."""
    path = sqlite_path(url)
    if path is not None:
        if must_exist and not path.exists():
            raise StorageUnavailable(
                f"no database at {path} (nothing was created): run `maild db upgrade` to "
                "create it, or point [paths] state_dir or [database] url at the existing one")
        if not must_exist:
            _private_sqlite_file(url)
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
            return engine
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
        event.listen(engine, "begin", _read_only_on_begin)
        return engine
    except ImportError as exc:
        hint = ("pip install 'maild[postgresql]' and use postgresql+psycopg://…"
                if url.startswith("postgres") else "maild supports sqlite and postgresql")
        raise ConfigError(f"[database] url: the driver for {_dialect(url)} is not "
                          f"installed (no module {exc.name or exc}): {hint}") from None
    except ValueError:  # e.g. a port that is not a number; the URL may hold a password
        raise ConfigError("[database] url: not a usable database URL; expected "
                          "e.g. postgresql+psycopg://USER:PASSWORD@HOST/DB or "
                          "sqlite:////var/lib/maild/maild.db") from None
    except sa_exc.ArgumentError as exc:
        raise ConfigError(f"[database] url: not a usable database URL ({exc}); expected "
                          "e.g. postgresql+psycopg://USER:PASSWORD@HOST/DB or "
                          "sqlite:////var/lib/maild/maild.db") from None


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL (None for other databases and in-memory ones)."""
    if not url.startswith("sqlite:///") or url in ("sqlite:///:memory:", "sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])


def _dialect(url: str) -> str:
    return url.partition(":")[0] or "this database"


def _private_sqlite_file(url: str) -> None:
    """Create the SQLite file 0600 (its folder 0700 if missing) whatever the umask; SQLite
    gives its -wal and -shm files the database file's mode."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    try:
        private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StorageUnavailable(f"database file {path}: {exc.strerror or exc}") from exc
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control from pysqlite so every transaction is BEGIN IMMEDIATE:
    # writers queue on the lock instead of failing on a read→write upgrade.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")
    # 32 MB of pages (the default is 2 MB): a desk of 100,000 tickets writes into indexes
    # (dedupe keys, Message-IDs) far larger than that, at random places.
    cursor.execute("PRAGMA cache_size=-32768")
    cursor.close()


READ_ONLY = "maild_read_only"  # connection execution option set by `read_only()`


def _sqlite_on_begin(connection: Any) -> None:
    # A reading transaction is a deferred BEGIN: a WAL snapshot that neither waits for
    # nor blocks the writer; `query_only` makes a write in it an error, not a lock grab.
    reading = bool(connection.get_execution_options().get(READ_ONLY))
    if connection.info.get("query_only", False) != reading:
        connection.exec_driver_sql(f"PRAGMA query_only={int(reading)}")
        connection.info["query_only"] = reading
    connection.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")


def _read_only_on_begin(connection: Any) -> None:
    if connection.get_execution_options().get(READ_ONLY):
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")


def session_factory(engine: Engine) -> SessionFactory:
    factory = sessionmaker(engine, expire_on_commit=False)
    event.listen(factory, "before_flush", _assign_ids)
    return factory


def _assign_ids(session: Session, _context: object, instances: object) -> None:
    """Give the new rows of a flush their ids, in one statement for all tables, so the
    flush can write each table's rows as one executemany without RETURNING.

    Without ids the ORM must read each row's id back: on PostgreSQL one multi-row
    `INSERT … RETURNING` whose placeholders psycopg converts anew every time (statements
    over 4 KB are not cached), on SQLite one `INSERT` per row (its RETURNING cannot keep
    the order of a multi-row one). Ids follow the order the rows were added, as the
    database's own would. On PostgreSQL they come from the column's sequence (other
    processes draw from it too; a rollback leaves a gap, as ever); on SQLite they follow
    the largest id, which stays put: every writing transaction holds the write lock from
    its BEGIN IMMEDIATE on (above any id a pending row was given by hand). A flush of
    chosen objects only (`flush(objects)`) is left to the ORM."""
    if instances is not None:
        return
    pending: dict[Table, list[Any]] = {}
    given: dict[Table, int] = {}  # the highest id set by hand on a pending row
    for obj in session.new:
        state = inspect(obj)
        table = state.mapper.local_table
        column = table.autoincrement_column if isinstance(table, Table) else None
        if column is None or column.key != "id":
            continue
        if obj.id is None:
            pending.setdefault(table, []).append(state)
        elif isinstance(obj.id, int):
            given[table] = max(given.get(table, 0), obj.id)
    many = {table: states for table, states in pending.items() if len(states) > 1}
    if not many:  # one row's INSERT … RETURNING is one statement anyway
        return
    taken = _take_ids(session, {table: len(states) for table, states in many.items()}, given)
    for table, states in many.items():
        states.sort(key=lambda state: state.insert_order)
        for state, new_id in zip(states, taken.get(table, ()), strict=False):
            state.obj().id = new_id


def _take_ids(session: Session, counts: dict[Table, int],
              given: dict[Table, int]) -> dict[Table, list[int]]:
    """`counts[table]` new ids of each table, in one statement; a table whose ids come
    from no sequence (PostgreSQL) is left out: its rows read their ids back."""
    connection = session.connection()
    tables = list(counts)
    if connection.dialect.name == "sqlite":
        tops = connection.execute(select(*(
            select(func.max(table.c.id)).scalar_subquery() for table in tables))).one()
        firsts = [max(top or 0, given.get(table, 0)) + 1
                  for table, top in zip(tables, tops, strict=True)]
        return {table: list(range(first, first + counts[table]))
                for table, first in zip(tables, firsts, strict=True)}
    sequences: dict[str, str | None] = connection.info.setdefault(_SEQUENCES, {})
    for table in tables:
        if sequences.get(table.name) is None:
            sequences[table.name] = connection.execute(
                select(func.pg_get_serial_sequence(table.name, "id"))).scalar_one()
    tables = [table for table in tables if sequences[table.name] is not None]
    if not tables:
        return {}
    arrays = connection.execute(select(*(
        func.array(select(func.nextval(sequences[table.name]))
                   .select_from(func.generate_series(1, counts[table])).scalar_subquery())
        for table in tables))).one()
    return {table: sorted(ids) for table, ids in zip(tables, arrays, strict=True)}


_SEQUENCES = "maild.db.sequences"  # connection.info: table name → its id sequence


def is_unavailable(exc: BaseException) -> bool:
    """True when a driver error means the database is down, not that our data is wrong."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    return isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError)


@contextmanager
def transaction(factory: SessionFactory) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error; outages → StorageUnavailable."""
    try:
        with factory() as session, session.begin():
            yield session
    except sa_exc.SQLAlchemyError as exc:
        if is_unavailable(exc):
            raise StorageUnavailable(f"database unavailable: {_short(exc)}") from exc
        raise


IN_LIMIT = 500  # values in one `IN (…)` list: far under every driver's parameter limit

T = TypeVar("T")


def chunks(items: Sequence[T], size: int = IN_LIMIT) -> Iterator[Sequence[T]]:
    """`items` in slices of at most `size`, for reads with `IN (…)` over many values."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


@contextmanager
def read_only(factory: SessionFactory) -> Iterator[Session]:
    """A transaction that only reads: on SQLite it takes no write lock (a deferred BEGIN,
    writes refused), so it never waits behind the intake's writes nor holds them up.
    On PostgreSQL (where readers never wait for writers) it is READ ONLY: a write in it
    is an error there too, never silently rolled back."""
    try:
        with factory() as session:
            session.connection(execution_options={READ_ONLY: True})
            yield session
            session.rollback()  # nothing to keep: ends the snapshot
    except sa_exc.SQLAlchemyError as exc:
        if is_unavailable(exc):
            raise StorageUnavailable(f"database unavailable: {_short(exc)}") from exc
        raise


def _short(exc: BaseException) -> str:
    said = str(getattr(exc, "orig", None) or exc)
    return said.strip().splitlines()[0][:300] if said.strip() else type(exc).__name__


def next_number(session: Session, name: str) -> int:
    """Take the next value of counter `name`; the row lock serialises concurrent takers
    (until the transaction ends). Values `reserve_numbers` took come first."""
    pool: deque[int] | None = session.info.get(_POOL, {}).get(name)
    if pool:
        return pool.popleft()
    return _bump(session, name, 1)


def reserve_numbers(session: Session, name: str, count: int) -> int | None:
    """Take `count` values of counter `name` in one statement, for `next_number` to hand
    out in order in this transaction; returns the first (None when `count` is 0). Every
    value taken in this transaction from then on is that or higher. `release_numbers`
    gives back those not used before the commit: nobody else can have taken one since
    (the row stays locked), so the counter continues without a gap."""
    if count <= 0:
        return None
    top = _bump(session, name, count)
    session.info.setdefault(_POOL, {})[name] = deque(range(top - count + 1, top + 1))
    return top - count + 1


def release_numbers(session: Session, name: str) -> None:
    """Give back what `reserve_numbers` took of counter `name` and was not used."""
    pool: deque[int] | None = session.info.get(_POOL, {}).pop(name, None)
    if pool:
        _bump(session, name, -len(pool))


_POOL = "maild.db.reserved"  # session.info: counter name → values reserved, not yet used


def _bump(session: Session, name: str, by: int) -> int:
    stmt = (
        update(Counter).where(Counter.name == name)
        .values(value=Counter.value + by).returning(Counter.value)
    )
    value = session.connection().execute(stmt).scalar_one_or_none()
    if value is None:
        raise RuntimeError(f"counter {name!r} missing: run `maild db upgrade`")
    return int(value)


def ticket_by_number(session: Session, number: int) -> Ticket | None:
    """The ticket with the human-friendly `number`, or None."""
    return session.scalars(select(Ticket).where(Ticket.number == number)).one_or_none()


def app_secret(factory: SessionFactory, name: str, now: datetime) -> str:
    """The secret `name`, generated once and kept (a race keeps the first one written)."""
    with read_only(factory) as session:
        found = session.scalar(select(AppSecret.value).where(AppSecret.name == name))
        if found:
            return found
    try:
        with transaction(factory) as session:
            value = secrets.token_urlsafe(48)
            session.execute(insert(AppSecret).values(name=name, value=value, created_at=now))
    except sa_exc.IntegrityError:
        # Another process wrote it first, if a fresh look finds it; else a real failure.
        with read_only(factory) as session:
            found = session.scalar(select(AppSecret.value).where(AppSecret.name == name))
        if not found:
            raise
        return found
    return value


class MailboxLock:
    """Held while this process watches a mailbox, so only one process does at a time.

    PostgreSQL: a session advisory lock on a connection of its own (released by the server
    if we die). SQLite: no lock (one host; the unique mail keys keep a second process from
    doubling anything anyway). Correctness never depends on it; it saves duplicate work.
    """

    def __init__(self, engine: Engine, mailbox: str) -> None:
        self.engine = engine
        digest = hashlib.sha256(f"maild mailbox {mailbox}".encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        self._conn: Connection | None = None

    def try_acquire(self) -> bool:
        if self.engine.dialect.name != "postgresql":
            return True
        try:
            if self._conn is None:
                self._conn = self.engine.connect()
            got = bool(self._conn.execute(select(func.pg_try_advisory_lock(self.key))).scalar())
            self._conn.commit()
        except sa_exc.SQLAlchemyError as exc:
            self.release()
            raise StorageUnavailable(f"database unavailable: {_short(exc)}") from exc
        return got

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()  # ends the session, and with it the advisory lock
            except sa_exc.SQLAlchemyError:
                conn.invalidate()


def _alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("maild.migrations")))
    cfg.attributes["engine"] = engine
    return cfg


UPGRADE_LOCK = 0x6D61696C64  # "maild": one migration at a time on a shared PostgreSQL


def upgrade(engine: Engine) -> None:
    """Migrate the database to the newest schema (idempotent). On PostgreSQL several
    processes may start at once (`maild run --upgrade` in each unit): an advisory lock
    lets one migrate while the others wait, then find the schema at head."""
    try:
        if engine.dialect.name != "postgresql":
            command.upgrade(_alembic_config(engine), "head")
            return
        with engine.connect() as lock:
            lock.execute(text("SELECT pg_advisory_lock(:k)"), {"k": UPGRADE_LOCK})
            lock.commit()  # the session's lock outlives it; no "idle in transaction" meanwhile
            try:
                command.upgrade(_alembic_config(engine), "head")
            finally:
                lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": UPGRADE_LOCK})
                lock.commit()
    except sa_exc.SQLAlchemyError as exc:
        if is_unavailable(exc):
            raise StorageUnavailable(f"database unavailable: {_short(exc)}") from exc
        raise


def schema_problem(current: str | None, head: str) -> str:
    """What is wrong with a database at schema `current` for this maild (at `head`), and
    what to do, in one sentence; "" when nothing is. Every command says it the same way."""
    if current == head:
        return ""
    if not current:
        return "the database has no schema yet: run `maild db upgrade`"
    if current < head:  # revisions are numbered 0001, 0002, …
        return (f"the database's schema is {current}, this maild needs {head}: run "
                "`maild db upgrade` (a backup first: `maild backup`)")
    return (f"the database's schema is {current}, newer than this maild knows ({head}): "
            "run the maild that upgraded it, or restore the backup taken before")


def open_existing(url: str) -> Engine:
    """An engine for an existing database at the schema this maild needs, for a command
    that reads or changes it; SchemaMismatch says what to run instead of "no such table"."""
    engine = make_engine(url, must_exist=True)
    try:
        problem = schema_problem(*schema_status(engine))
    except BaseException:
        engine.dispose()
        raise
    if problem:
        engine.dispose()
        raise SchemaMismatch(problem)
    return engine


def schema_status(engine: Engine) -> tuple[str | None, str]:
    """(current revision, head revision) of the database."""
    head = ScriptDirectory.from_config(_alembic_config(engine)).get_current_head() or ""
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except sa_exc.SQLAlchemyError as exc:
        raise StorageUnavailable(f"database unavailable: {_short(exc)}") from exc
    return current, head
