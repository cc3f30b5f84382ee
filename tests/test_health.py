"""/healthz: the daemon's own view (mailbox, SMTP) and the database's counts, 200 or 503.

In-process against both databases for the verdicts; end to end with the daemon, a
Dovecot of its own (stopped and started) and the SMTP capture for the outages.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import running_dovecot
from harness import (
    Clock,
    Daemon,
    free_port,
    healthz,
    maild,
    offline_settings,
    wait_for_port,
    wait_until,
    write_config,
)
from starlette.testclient import TestClient

from maild import db, health, web
from maild.config import HealthSettings
from maild.daemon import build_desk
from maild.intake import Fetched, Intake
from maild.models import InboundMessage

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
MAIL = (b"From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
        b"Subject: App stuerzt ab\r\nMessage-ID: <first@kunde.example>\r\n\r\n"
        b"Die App stuerzt ab.\r\n")


class Desk:
    """The web app of a daemon whose Runtime the test writes, over a database."""

    def __init__(self, tmp_path: Path, factory: db.SessionFactory, database_url: str,
                 **sections: object) -> None:
        self.clock = Clock(NOW)
        self.settings = offline_settings(database_url, tmp_path / "blobs", **sections)
        self.desk = build_desk(self.settings, factory, NOW)
        self.factory = factory
        self.runtime = health.Runtime(started_at=NOW - timedelta(minutes=5))
        self.runtime.fetched(NOW - timedelta(seconds=10), 0)
        self.runtime.smtp_ok(NOW - timedelta(seconds=20))
        self.app = web.make_app(self.desk, factory, self.settings, self.clock,
                                runtime=self.runtime)
        # monitoring on this host: a loopback peer, no proxy's headers
        self.client = TestClient(self.app, client=("127.0.0.1", 50000))

    def healthz(self) -> tuple[int, dict[str, object]]:
        answer = self.client.get("/healthz")
        return answer.status_code, answer.json()

    def mail_in(self) -> None:
        Intake(self.factory, self.desk, "INBOX", 3, self.clock).process(
            1, Fetched(1, MAIL, self.clock()))


def test_healthz_answers_200_with_every_part_when_all_works(tmp_path, factory, database_url):
    # Mailbox fetched, SMTP took us, database at the current schema: 200 and a body that
    # names each part.
    site = Desk(tmp_path, factory, database_url)
    status, body = site.healthz()
    assert status == 200, body
    assert body["status"] == "ok" and body["problems"] == []
    assert body["database"]["reachable"] and body["database"]["schema_current"]
    assert body["database"]["schema"] == health.schema_head()
    assert body["mailbox"]["connected"] and body["mailbox"]["error"] == ""
    assert body["mailbox"]["last_fetch_at"] == "2026-11-26T09:59:50+00:00"
    assert body["smtp"]["reachable"]
    assert body["smtp"]["last_ok_at"] == "2026-11-26T09:59:40+00:00"
    assert body["outbox"] == {"pending": 0, "failed": 0, "oldest_pending_at": None,
                              "oldest_pending_seconds": None}
    assert body["quarantine"] == 0
    assert body["failing_mails"] == {"retrying": 0, "crashed": 0}


def test_a_failing_mailbox_turns_503_after_its_grace_and_200_when_mended(
        tmp_path, factory, database_url):
    # The watcher reports the first failure at once; /healthz waits the configured grace
    # (30 s by default: a wrong password shows within a minute), then names it.
    site = Desk(tmp_path, factory, database_url)
    site.runtime.mailbox_failed(NOW, "IMAP 127.0.0.1:993: login refused: wrong password")
    status, body = site.healthz()
    assert status == 200 and not body["mailbox"]["connected"]
    assert body["mailbox"]["error_since"] == "2026-11-26T10:00:00+00:00"
    site.clock.now = NOW + timedelta(seconds=31)
    status, body = site.healthz()
    assert status == 503
    assert body["problems"] == ["mailbox failing since 2026-11-26T10:00:00+00:00: "
                                "IMAP 127.0.0.1:993: login refused: wrong password"]
    site.runtime.fetched(site.clock(), 0)
    assert site.healthz()[0] == 200


def test_smtp_failing_turns_503(tmp_path, factory, database_url):
    site = Desk(tmp_path, factory, database_url, health={"smtp_failing_seconds": 0})
    site.runtime.smtp_failed(NOW, "SMTP 127.0.0.1:25 unavailable: Connection refused")
    status, body = site.healthz()
    assert status == 503 and not body["smtp"]["reachable"]
    assert "SMTP failing since" in body["problems"][0]
    assert "Connection refused" in body["problems"][0]


def test_an_unsent_mail_older_than_the_limit_turns_503(tmp_path, factory, database_url):
    # A customer's mail was answered at 10:00 but the answer never left: at 10:30 that is
    # a backlog worth a look, at 11:01 (limit 60 minutes) it is unhealthy.
    site = Desk(tmp_path, factory, database_url)
    site.mail_in()
    site.clock.now = NOW + timedelta(minutes=30)
    status, body = site.healthz()
    assert status == 200
    assert body["outbox"]["pending"] == 1 and body["outbox"]["oldest_pending_seconds"] == 1800
    assert body["tickets"] == {"open": {"new": 1}, "open_total": 1, "breached": 0}
    site.clock.now = NOW + timedelta(minutes=61)
    status, body = site.healthz()
    assert status == 503
    assert body["problems"] == ["the oldest unsent mail waits since 2026-11-26T10:00:00+00:00 "
                                "(more than 60 minutes)"]


def test_a_mail_failing_again_and_again_is_named_but_not_unhealthy(
        tmp_path, factory, database_url):
    # A mail that failed once and waits for its next try: a warning (it ends in quarantine
    # after max_attempts), not a reason to page anyone.
    site = Desk(tmp_path, factory, database_url)
    with db.transaction(factory) as s:
        s.add(InboundMessage(mailbox="INBOX", uidvalidity=1, uid=7, dedupe_key="k" * 64,
                             size=10, received_at=NOW, state="failed", attempts=2,
                             error="KeyError: 'x' [error id 0badc0de]"))
    status, body = site.healthz()
    assert status == 200
    assert body["failing_mails"] == {"retrying": 1, "crashed": 0}
    assert body["warnings"] == ["1 mails failing and tried again, 0 crashed a parse worker"]


def test_an_unreachable_database_is_unhealthy():
    # The database does not answer: the verdict says so and names no counts.
    engine = db.make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    try:
        report = health.check(health.Runtime(started_at=NOW), db.session_factory(engine),
                              health.schema_head(), HealthSettings(), NOW)
    finally:
        engine.dispose()
    assert not report.healthy
    assert report.problems[0].startswith("database unreachable: database unavailable")
    assert report.body["database"]["reachable"] is False and "outbox" not in report.body


def test_beside_the_pages_only_a_local_request_sees_the_details(tmp_path, factory,
                                                                database_url):
    # From elsewhere, or through a reverse proxy on this host (it adds X-Forwarded-For or
    # Forwarded): the bare status with 200/503 and no /metrics; from this host, everything.
    site = Desk(tmp_path, factory, database_url, health={"smtp_failing_seconds": 0})
    outside = TestClient(site.app, client=("203.0.113.9", 40000))
    assert outside.get("/healthz").json() == {"status": "ok"}
    assert outside.get("/metrics").status_code == 404
    for header in ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"},
                   {"X-Real-IP": "203.0.113.9"}):
        answer = site.client.get("/healthz", headers=header)
        assert answer.json() == {"status": "ok"}, header
        assert site.client.get("/metrics", headers=header).status_code == 404
    site.runtime.smtp_failed(NOW, "SMTP 10.1.2.3:25 unavailable: Connection refused")
    answer = outside.get("/healthz")
    assert (answer.status_code, answer.json()) == (503, {"status": "unhealthy"})
    status, body = site.healthz()
    assert status == 503 and "10.1.2.3" in body["problems"][0] and "version" in body
    assert "maild_" in site.client.get("/metrics").text


def test_metrics_listen_shows_everything_to_whoever_reaches_it(tmp_path, factory,
                                                               database_url):
    # `[http] metrics_listen` is the operator's own address: no local check there.
    site = Desk(tmp_path, factory, database_url)
    app = web.make_ops_app(site.runtime, factory, site.settings.health, site.clock)
    client = TestClient(app, client=("203.0.113.9", 40000))
    body = client.get("/healthz", headers={"X-Forwarded-For": "198.51.100.1"}).json()
    assert body["status"] == "ok" and "database" in body
    assert client.get("/metrics").status_code == 200


def test_pages_stay_as_they_were_without_a_runtime(tmp_path, factory, database_url):
    # The app built without the daemon's Runtime (as the page tests do) has no /healthz.
    settings = offline_settings(database_url, tmp_path / "blobs")
    app = web.make_app(build_desk(settings, factory, NOW), factory, settings, Clock(NOW))
    client = TestClient(app)
    assert client.get("/healthz").status_code == 404
    assert client.get("/t/nonsense").status_code == 404


# -- end to end ------------------------------------------------------------------------

@pytest.fixture
def own_dovecot():
    """A Dovecot for this test alone: it is stopped and started again."""
    with running_dovecot() as server:
        yield server


def test_healthz_turns_503_when_imap_stops_and_200_when_it_is_back(
        tmp_path, own_dovecot, smtp, database_url):
    # The daemon watches a mailbox; its IMAP server goes away: /healthz says 503 and why
    # (no grace here); the server comes back: 200 again, with a newer last fetch.
    user, password = own_dovecot.add_user()
    port = free_port()
    config = write_config(
        tmp_path / "maild.toml", imap_port=own_dovecot.port, user=user, password=password,
        smtp_port=smtp.port, database_url=database_url,
        extra=f'[http]\nlisten = "127.0.0.1:{port}"\nrate_per_minute = 6000\n'
              '[health]\nmailbox_failing_seconds = 0\n')
    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        wait_for_port(port, 30)
        assert wait_until(lambda: healthz(port)[1].get("mailbox", {}).get("connected"),
                          timeout=30), (healthz(port), daemon.output())
        status, body = healthz(port)
        assert status == 200, body
        before = body["mailbox"]["last_fetch_at"]
        own_dovecot.stop()
        assert wait_until(lambda: healthz(port)[0] == 503, timeout=60), daemon.output()
        status, body = healthz(port)
        assert not body["mailbox"]["connected"]
        assert body["problems"][0].startswith("mailbox failing since")
        assert f"IMAP 127.0.0.1:{own_dovecot.port}" in body["problems"][0]
        own_dovecot.start()
        assert wait_until(lambda: healthz(port)[0] == 200, timeout=90), daemon.output()
        status, body = healthz(port)
        assert body["mailbox"]["connected"] and body["mailbox"]["last_fetch_at"] >= before
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_a_wrong_imap_password_turns_healthz_503_and_status_names_it(
        tmp_path, dovecot, mailbox, smtp, database_url):
    # Someone changed the mailbox's password: the daemon keeps running and retrying, but
    # /healthz answers 503 with the server's refusal, and `maild status` exits 1 saying so.
    port = free_port()
    config = write_config(
        tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
        password="not-the-password", smtp_port=smtp.port, database_url=database_url,
        extra=f'[http]\nlisten = "127.0.0.1:{port}"\nrate_per_minute = 6000\n'
              '[health]\nmailbox_failing_seconds = 2\n')
    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        wait_for_port(port, 30)
        assert wait_until(lambda: healthz(port)[0] == 503, timeout=60), daemon.output()
        status, body = healthz(port)
        assert "login refused" in body["problems"][0], body
        assert body["mailbox"]["connected"] is False
        out = maild("status", config=config)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "UNHEALTHY" in out.stdout
        assert "FAIL  imap:" in out.stdout and "login refused" in out.stdout
        assert "not-the-password" not in out.stdout + out.stderr
        # The server's words as text, never as Python bytes (b'[AUTHENTICATIONFAILED] …').
        checked = maild("check", config=config)
        assert "FAIL  imap:" in checked.stdout and "AUTHENTICATIONFAILED" in checked.stdout
        assert "AUTHENTICATIONFAILED" in out.stdout and "AUTHENTICATIONFAILED" in json.dumps(body)
        for shown in (json.dumps(body), out.stdout, checked.stdout, daemon.output()):
            assert "b'" not in shown and 'b"' not in shown, shown
    finally:
        daemon.kill()
