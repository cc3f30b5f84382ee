"""Logs: one line per event with the mail's ticket and Message-ID, journald priorities,
an optional JSON format, and never a secret or a token maild issued."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from harness import (
    Captured,
    Daemon,
    free_port,
    offline_settings,
    wait_for_port,
    wait_until,
    write_config,
)

from maild import config, logs
from maild.errors import ConfigError

LINE = re.compile(r"^(<[0-7]>)?(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
HOSTILE_ID = "<a@b>\r\nERROR maild.intake: ticket created ticket=#99999\x1b[2J\u202e"
HOSTILE_SUBJECT = "Rechnung\r\n\r\nINFO maild: forged line\n\x00"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_hostile_message_id_and_subject_stay_on_their_line(capsys, restore_logging,
                                                          monkeypatch):
    # A Message-ID and a subject with CR/LF, ESC and a bidi override, and an exception
    # whose message carries them: each event is one line, its text escaped.
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logs.setup("INFO", "text")
    log = logging.getLogger("maild.test")
    with logs.context(message_id=HOSTILE_ID):
        logs.bind(ticket="#10001")
        log.info("subject=%s", HOSTILE_SUBJECT)
        try:
            raise ValueError(HOSTILE_SUBJECT)
        except ValueError:
            log.exception("mail failed")
    out = lines(capsys.readouterr().err)
    assert len(out) == 2 and all(LINE.match(line) for line in out), out
    assert out[0].startswith("INFO maild.test: subject=Rechnung\\r\\n\\r\\nINFO maild: forged "
                             "line\\n\\x00 ticket=#10001 message_id=")
    assert '"<a@b>\\r\\nERROR maild.intake: ticket created ticket=#99999\\u001b[2J' in out[0]
    assert "\x1b" not in out[0] and "\u202e" not in out[0]
    assert out[1].startswith("ERROR maild.test: mail failed ticket=#10001 message_id=")
    assert "\\nTraceback (most recent call last):\\n" in out[1]
    assert out[1].endswith("ValueError: Rechnung\\r\\n\\r\\nINFO maild: forged line\\n\\x00")


def test_json_format_is_one_object_per_line(capsys, restore_logging, monkeypatch):
    # [log] format = "json": time, level, logger, message, the context and the exception;
    # the hostile text comes back unchanged when the line is parsed.
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logs.setup("INFO", "json")
    log = logging.getLogger("maild.test")
    with logs.context(ticket="#10002", message_id=HOSTILE_ID):
        log.warning("subject=%s", HOSTILE_SUBJECT)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("sweep failed")
    log.info("outside any mail")
    out = lines(capsys.readouterr().err)
    assert len(out) == 3 and all(line.isascii() for line in out)
    first, second, third = (json.loads(line) for line in out)
    assert set(first) == {"time", "level", "logger", "message", "ticket", "message_id"}
    assert (first["level"], first["logger"], first["ticket"]) == ("WARNING", "maild.test",
                                                                   "#10002")
    assert first["message"] == f"subject={HOSTILE_SUBJECT}"
    assert first["message_id"] == HOSTILE_ID
    assert first["time"].endswith("+00:00")
    assert second["exception"].startswith("Traceback") and "RuntimeError: boom" in second[
        "exception"]
    assert "ticket" not in third and "message_id" not in third


def test_journald_gets_the_priority_of_each_line(capsys, restore_logging, monkeypatch):
    # Under systemd ($JOURNAL_STREAM set) each line starts with its syslog priority.
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    for fmt in ("text", "json"):
        logs.setup("DEBUG", fmt)  # type: ignore[arg-type]
        log = logging.getLogger("maild.test")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        log.critical("c")
        out = lines(capsys.readouterr().err)
        assert [line[:3] for line in out] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    assert json.loads(out[2][3:])["level"] == "WARNING"


def test_the_context_follows_the_mail_into_worker_threads(capsys, restore_logging,
                                                          monkeypatch):
    # asyncio.to_thread copies the context: lines written in the worker carry the mail's
    # fields; two mails handled at once keep their own; nothing stays after the block.
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logs.setup("INFO", "text")
    log = logging.getLogger("maild.test")

    async def one(mid: str) -> None:
        with logs.context(message_id=mid):
            await asyncio.sleep(0.01)
            await asyncio.to_thread(log.info, "in the worker")

    async def both() -> None:
        await asyncio.gather(one("<one@x>"), one("<two@x>"))

    asyncio.run(both())
    log.info("after")
    out = sorted(lines(capsys.readouterr().err))
    assert out == ["INFO maild.test: after",
                   "INFO maild.test: in the worker message_id=<one@x>",
                   "INFO maild.test: in the worker message_id=<two@x>"]


def test_configured_secrets_and_issued_tokens_are_masked(capsys, restore_logging,
                                                         monkeypatch, tmp_path):
    # Passwords, the database password, signing keys (current and old), reply-address and
    # link tokens never reach a line, whatever logs them.
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    settings = offline_settings(
        "postgresql+psycopg://maild:db-Pa55word@127.0.0.1/maild", tmp_path,
        imap={"host": "127.0.0.1", "username": "u", "password": "imap-Pa55"},
        smtp={"host": "127.0.0.1", "password": "smtp-Pa55"},
        security={"secret_key": "k" * 40, "old_secret_keys": ["o" * 40]})
    for fmt in ("text", "json"):
        logs.setup("INFO", fmt, logs.secrets_of(settings))  # type: ignore[arg-type]
        logging.getLogger("maild.test").error(
            "login imap-Pa55 smtp-Pa55 db-Pa55word %s %s to service+10001.a0b1c2d3e4f5a6b7c8d9"
            "e0f1a2@example.com via https://support.example.com/t/AbCdEf0123456789.xyz_-Q "
            "and /escalate/ZZZZZZZZZZZZZZZZZZZZ", "k" * 40, "o" * 40)
        out = capsys.readouterr().err
        for secret in ("imap-Pa55", "smtp-Pa55", "db-Pa55word", "k" * 40, "o" * 40,
                       "a0b1c2d3e4f5", "AbCdEf0123456789", "ZZZZZZZZZZZZ"):
            assert secret not in out, (fmt, out)
        assert "service+10001.***@example.com" in out and "/t/***" in out


def test_log_format_is_validated(tmp_path):
    # Only "text" and "json": anything else is a config error naming the key.
    path = tmp_path / "maild.toml"
    path.write_text('[imap]\nhost = "h"\nusername = "u"\n[smtp]\nhost = "h"\n'
                    '[support]\naddress = "service@example.com"\n[log]\nformat = "xml"\n')
    with pytest.raises(ConfigError, match=r"\[log\] format"):
        config.load(path)


# End to end: a daemon through a customer mail, an escalation and an agent's reply.

AGENTS = """
[security]
secret_key = "s3cret-signing-key-for-the-log-test-0123456789"

[agents]
team_address = "team@example.com"
members = [{ address = "max@example.com", name = "Max Agent", lead = true }]
"""
CUSTOMER = ("From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
            "Subject: Auftragsliste leer\r\nMessage-ID: <start@kunde.example>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            "Seit heute frueh ist die Auftragsliste leer.\r\n")
LINK = re.compile(r"https?://[^\s\"<>]+/(?:t|escalate)/([A-Za-z0-9_.\-]+)")
PLUS = re.compile(r"\+\d{1,12}\.([A-Za-z0-9_-]{6,64})@")


def http(port: int, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return None

    data = urllib.parse.urlencode(form).encode() if form is not None else None
    try:
        with urllib.request.build_opener(NoRedirect).open(
                f"http://127.0.0.1:{port}{path}", data=data, timeout=20) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def tokens(mails: list[Captured]) -> set[str]:
    """Every link and reply-address token in the mails maild sent."""
    found: set[str] = set()
    for mail in mails:
        raw = mail.raw.decode("utf-8", "replace")
        found.update(PLUS.findall(raw))
        for part in mail.message.walk():
            if part.get_content_maintype() == "text":
                found.update(LINK.findall(part.get_content()))
    return found


def agent_reply(notice: Captured) -> bytes:
    reply_to = notice.message["Reply-To"] or notice.message["From"]
    return (f"From: Max Agent <max@example.com>\r\nTo: {reply_to}\r\n"
            f"Subject: AW: {notice.message['Subject']}\r\n"
            "Message-ID: <reply1@example.com>\r\n"
            f"In-Reply-To: {notice.message['Message-ID']}\r\n"
            f"References: {notice.message['Message-ID']}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            "#status in_progress\r\n\r\nHallo Anna,\r\nbitte einmal neu anmelden.\r\n").encode()


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_daemon_log_carries_context_and_no_secret(tmp_path: Path, dovecot, mailbox, smtp,
                                                  database_url, fmt):
    # A customer mail, the escalation through its link, the agent's reply through his
    # token: the log names ticket and Message-ID on the mail's lines, every line is one
    # event, and neither a password, the signing key nor any token we issued is in it.
    port = free_port()
    cfg = write_config(tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
                       password=mailbox.password, smtp_port=smtp.port,
                       database_url=database_url,
                       extra=f'[http]\nlisten = "127.0.0.1:{port}"\n{AGENTS}\n'
                             f'[log]\nlevel = "DEBUG"\nformat = "{fmt}"\n')
    daemon = Daemon(cfg, tmp_path / "maild.log").start()
    try:
        mailbox.append(CUSTOMER.encode())
        smtp.wait_for(2)
        [ack] = [m for m in smtp.mails if m.recipients == ["anna@kunde.example"]]
        [notice] = [m for m in smtp.mails if m.recipients == ["team@example.com"]]
        links = LINK.finditer(ack.message.get_body(("plain",)).get_content())
        escalate = next(urlsplit(m.group(0)).path for m in links if "/escalate/" in m.group(0))
        wait_for_port(port)
        status, page = http(port, escalate)
        assert status == 200, page
        form = re.search(r'name="form" value="([0-9a-f]+)"', page)
        assert form is not None
        assert http(port, escalate, {"form": form.group(1), "phone": "+49 30 7654321"})[0] == 303
        smtp.wait_for(4)
        mailbox.append(agent_reply(notice))
        assert wait_until(lambda: "<reply1@example.com>" in daemon.output(), 30), \
            daemon.output()
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    output = daemon.output()
    issued = tokens(smtp.mails)
    assert len(issued) >= 2, issued  # the ticket page and the escalation, reply addresses
    for secret in (mailbox.password, "s3cret-signing-key-for-the-log-test", *issued):
        assert secret not in output, secret
    out = lines(output)
    if fmt == "json":
        records = [json.loads(line) for line in out]
        created = [r for r in records if r["message"].startswith("ticket created")]
        assert [(r["ticket"], r["message_id"]) for r in created] == [
            ("#10001", "<start@kunde.example>")]
        agent = [r for r in records if r["message"].startswith("agent mail")]
        assert [(r["ticket"], r["message_id"]) for r in agent] == [
            ("#10001", "<reply1@example.com>")]
        return
    assert all(LINE.match(line) for line in out), [x for x in out if not LINE.match(x)]
    [created] = [line for line in out if "ticket created" in line]
    assert created.endswith(" ticket=#10001 message_id=<start@kunde.example>")
    [agent] = [line for line in out if "agent mail" in line]
    assert agent.endswith(" ticket=#10001 message_id=<reply1@example.com>")


def chatty_analysis(raw: bytes, rules):  # type: ignore[no-untyped-def]
    """The analysis, saying something hostile in the worker's own log first."""
    from maild.analyse import analyse
    logging.getLogger("maild.analyse").warning("worker read %s", HOSTILE_SUBJECT)
    return analyse(raw, rules)


def test_parse_workers_log_like_the_daemon(capfd, restore_logging, monkeypatch, tmp_path):
    # A parse worker (a process of its own) writes its lines in the daemon's format, one
    # line each: here one JSON object.
    from harness import customer_mail

    from maild import blobs
    from maild.analyse import Analyser, Rules
    from maild.mail import files

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logs.setup("INFO", "json")
    rules = Rules("service@example.com", "example.com", None, files.Limits(10**6, 10**6))
    analyser = Analyser(rules, 1, blobs.FolderStore(tmp_path / "blobs"), fn=chatty_analysis)
    try:
        [result] = analyser.submit([customer_mail(1)]).result(timeout=60)
    finally:
        analyser.close()
    assert not result.error, result.trace
    out = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    assert [(r["logger"], r["message"]) for r in out] == [
        ("maild.analyse", f"worker read {HOSTILE_SUBJECT}")]
