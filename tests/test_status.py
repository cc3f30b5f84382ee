"""`maild status`: is mail flowing? Its own IMAP and SMTP check, the daemon's heartbeat,
the counts; exit 0 healthy, 1 unhealthy, 2 config error."""

from __future__ import annotations

import json

from alembic import command
from harness import Daemon, customer_mail, free_port, maild, wait_until, write_config
from sqlalchemy.engine import make_url

from maild import db, health


def status(config) -> tuple[int, dict]:
    out = maild("status", "--json", config=config)
    return out.returncode, json.loads(out.stdout) if out.stdout.startswith("{") else {}


def test_status_of_a_running_daemon_is_healthy_with_every_field(
        tmp_path, dovecot, mailbox, smtp, database_url):
    # A daemon has processed a mail: exit 0, and the JSON names the database (no
    # password), the state folder, the daemon's last fetch, the backlog and the tickets.
    url = database_url
    if url.startswith("postgresql"):  # trust auth: a password shows it is masked
        url = make_url(url).set(password="s3cret-pw").render_as_string(hide_password=False)
    config = write_config(tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
                          password=mailbox.password, smtp_port=smtp.port, database_url=url)
    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        mailbox.append(customer_mail(1))
        smtp.wait_for(1)
        assert wait_until(lambda: status(config)[0] == 0, timeout=40, interval=1), (
            status(config), daemon.output())
        code, body = status(config)
        assert body["status"] == "ok" and body["problems"] == []
        assert body["state_dir"] == str(tmp_path) and body["config"] == str(config)
        assert body["database"]["reachable"] and body["database"]["schema_current"]
        assert body["database"]["schema"] == health.schema_head()
        assert "s3cret-pw" not in json.dumps(body)
        if url != database_url:
            assert ":***@" in body["database"]["url"]
        assert body["imap"]["ok"] and body["imap"]["inbox"] == 0
        assert body["smtp_check"]["ok"]
        assert body["daemon"]["running"] and body["mailbox"]["last_fetch_at"]
        assert body["outbox"]["pending"] == 0 and body["outbox"]["oldest_pending_at"] is None
        assert body["quarantine"] == 0
        assert body["tickets"] == {"open": {"new": 1}, "open_total": 1, "breached": 0}
        text = maild("status", config=config)
        assert text.returncode == 0
        assert text.stdout.startswith("maild 0.1.0: healthy\n")
        assert "ok    imap:" in text.stdout and "ok    smtp:" in text.stdout
        assert "tickets     1 open (new 1), 0 breached" in text.stdout
        assert "s3cret-pw" not in text.stdout + text.stderr
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_status_without_a_daemon_is_unhealthy(tmp_path, dovecot, mailbox, smtp, database_url):
    # IMAP and SMTP answer, the database is fine, but no daemon watches the mailbox: mail
    # is not flowing, exit 1.
    config = write_config(tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
                          password=mailbox.password, smtp_port=smtp.port,
                          database_url=database_url)
    mailbox.append(customer_mail(1))
    code, body = status(config)
    assert code == 1
    assert body["problems"] == [f"no maild daemon watches mailbox {mailbox.user}@127.0.0.1/"
                                f"INBOX (no heartbeat ever)"]
    assert body["imap"]["inbox"] == 1 and body["daemon"] == {"running": False,
                                                             "heartbeat_at": None}
    out = maild("status", config=config)
    assert out.returncode == 1 and "UNHEALTHY" in out.stdout
    assert "daemon      not running (last heartbeat: never)" in out.stdout


def test_status_when_smtp_and_the_database_are_down(tmp_path, dovecot, mailbox):
    # Nothing but IMAP answers: each failure is named; exit 1.
    config = write_config(tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
                          password=mailbox.password, smtp_port=free_port(),
                          database_url=f"postgresql+psycopg://postgres@127.0.0.1:"
                                       f"{free_port()}/none")
    code, body = status(config)
    assert code == 1
    assert body["problems"][0].startswith("smtp: SMTP 127.0.0.1:")
    assert body["problems"][1].startswith("database unreachable:")
    assert body["database"]["reachable"] is False


def test_status_with_a_broken_config_exits_2(tmp_path):
    path = tmp_path / "maild.toml"
    path.write_text('[imap]\nhost = "127.0.0.1"\n')
    out = maild("status", config=path)
    assert out.returncode == 2 and "config error" in out.stderr


def test_status_on_an_old_schema_says_to_upgrade(tmp_path, database_url):
    # The database is one migration behind (no heartbeats table yet): named, exit 1.
    engine = db.make_engine(database_url)
    command.downgrade(db._alembic_config(engine), "0012")
    engine.dispose()
    config = write_config(tmp_path / "maild.toml", imap_port=free_port(), user="u",
                          password="p", smtp_port=free_port(), database_url=database_url)
    code, body = status(config)
    assert code == 1
    assert body["database"]["schema"] == "0012" and not body["database"]["schema_current"]
    assert any("run `maild db upgrade`" in p for p in body["problems"]), body["problems"]
