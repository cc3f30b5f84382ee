"""Fixtures: a private Dovecot, an SMTP capture and both databases (SQLite and PostgreSQL).

A test meets Dovecot unless it parametrises `imap_server` indirectly with the name of
another server's fixture: `plain_dovecot` (no MOVE, UIDPLUS, IDLE, CONDSTORE) or `cyrus`
(Cyrus IMAP 3.6).

With CI=true a server that cannot start fails the tests loudly; elsewhere it skips them
with the reason.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).parent))

from authority import CLIENT_SECRET, Authority, dovecot_passdb  # noqa: E402
from cyrus import Cyrus  # noqa: E402
from harness import (  # noqa: E402
    PG_ADMIN_URL,
    Dovecot,
    Mailbox,
    ServerUnavailable,
    SmtpCapture,
    write_config,
)

from maild import db  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() == "true"
# What a plain IMAP4rev1 server offers after login (plain_dovecot: imap_capability).
PLAIN_IMAP = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE"


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"required test server unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def running_dovecot(capabilities: str = "",
                    authority: Authority | None = None) -> Iterator[Dovecot]:
    """A private Dovecot, started (or the test failed under CI=true, skipped elsewhere)
    and stopped and removed after; with `authority`, it also takes OAuth2 logins."""
    # Not under pytest's tmp_path: Dovecot's unprivileged processes must reach the folder.
    base = Path(tempfile.mkdtemp(prefix="maild-dovecot-"))
    os.chmod(base, 0o755)
    passdb = dovecot_passdb(authority, base / "oauth2.conf") if authority else None
    server = Dovecot(base, capabilities=capabilities, oauth2=passdb)
    try:
        server.start()
    except (ServerUnavailable, OSError) as exc:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        unavailable(f"cannot start Dovecot: {exc}")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def oauth_authority() -> Iterator[Authority]:
    """The local OAuth2 authority (tests/authority.py) of the whole session."""
    server = Authority(client_secret=CLIENT_SECRET).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def oauth_dovecot(oauth_authority: Authority) -> Iterator[Dovecot]:
    """A Dovecot that checks XOAUTH2 and OAUTHBEARER logins with `oauth_authority`."""
    with running_dovecot(authority=oauth_authority) as server:
        yield server


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    with running_dovecot() as server:
        yield server


@pytest.fixture(scope="session")
def plain_dovecot() -> Iterator[Dovecot]:
    """A Dovecot that advertises only IMAP4rev1 LITERAL+ SASL-IR ID ENABLE: a server without
    MOVE (maild copies, flags \\Deleted and expunges), UIDPLUS and IDLE (maild polls)."""
    with running_dovecot(PLAIN_IMAP) as server:
        yield server


@pytest.fixture(scope="session")
def cyrus() -> Iterator[Cyrus]:
    """A private Cyrus IMAP (scripts/ensure-cyrus unpacks it), or the test failed under
    CI=true, skipped elsewhere."""
    base = Path(tempfile.mkdtemp(prefix="maild-cyrus-"))
    server = Cyrus(base)
    try:
        server.start()
    except (ServerUnavailable, OSError) as exc:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        unavailable(f"cannot start Cyrus IMAP: {exc}")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def imap_server(request: pytest.FixtureRequest) -> Any:
    """The IMAP server of a test: the session's Dovecot, or the fixture named by an indirect
    parametrisation, e.g. `@pytest.mark.parametrize("imap_server", ["dovecot",
    "plain_dovecot"], indirect=True)`."""
    return request.getfixturevalue(getattr(request, "param", "dovecot"))


@pytest.fixture
def mailbox(imap_server: Any) -> Mailbox:
    user, password = imap_server.add_user()
    return Mailbox(imap_server.port, user, password)


@pytest.fixture
def smtp() -> Iterator[SmtpCapture]:
    capture = SmtpCapture().start()
    yield capture
    capture.stop()


def _admin_engine():  # type: ignore[no-untyped-def]
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A PostgreSQL database at the newest schema, copied for each test."""
    name = f"maild_tpl_{os.getpid()}"
    try:
        admin = _admin_engine()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        unavailable(f"PostgreSQL at {PG_ADMIN_URL} unavailable: {exc}")
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database at the newest schema: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'maild.db'}"
        engine = db.make_engine(url)
        db.upgrade(engine)
        engine.dispose()
        yield url
        return
    template = request.getfixturevalue("pg_template")
    name = f"maild_t_{secrets.token_hex(5)}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def factory(database_url: str) -> Iterator[db.SessionFactory]:
    engine = db.make_engine(database_url)
    yield db.session_factory(engine)
    engine.dispose()


@pytest.fixture
def config(tmp_path: Path, imap_server: Any, mailbox: Mailbox, smtp: SmtpCapture,
           database_url: str) -> Path:
    # A server without IDLE is polled: every second here, not every minute.
    polled = imap_server.capabilities and "IDLE" not in imap_server.capabilities.split()
    return write_config(tmp_path / "maild.toml", imap_port=mailbox.port, user=mailbox.user,
                        password=mailbox.password, smtp_port=smtp.port,
                        database_url=database_url,
                        imap_extra="poll_interval = 1\n" if polled else "")
