"""End to end: `maild run` as a subprocess against Dovecot, the SMTP capture, both databases;
its core also against a Dovecot without MOVE, UIDPLUS and IDLE (`plain_dovecot`)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from harness import Daemon, maild, outbox_settled, rows, wait_until

from maild.models import Event, InboundMessage, OutboxMail, Ticket

DATA = Path(__file__).parent / "data"


@pytest.fixture
def daemon(config: Path, tmp_path: Path):
    d = Daemon(config, tmp_path / "maild.log")
    yield d
    d.kill()


@pytest.mark.parametrize("imap_server", ["dovecot", "plain_dovecot"], indirect=True)
def test_new_mail_gets_one_acknowledgement_and_is_moved(daemon, mailbox, smtp, database_url):
    # A customer writes while maild runs: one answer with tag and threading, a ticket row,
    # the mail in Processed.
    daemon.start()
    mailbox.append((DATA / "customer_de.eml").read_bytes())
    [mail] = smtp.wait_for(1)
    msg = mail.message
    assert mail.recipients == ["anna.berger@kunde-gmbh.de"]
    assert mail.envelope_from == "service@example.com"
    assert msg["Subject"] == "[#10001] Dein Support-Ticket: Auftragsliste lädt nicht mehr"
    assert msg["In-Reply-To"] == "<20261126101500.4711@kunde-gmbh.de>"
    assert msg["References"] == "<20261126101500.4711@kunde-gmbh.de>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Maild-Loop"] == "service@example.com"
    assert msg["From"].addresses[0].addr_spec == "service@example.com"
    assert msg["Message-ID"].endswith("@example.com>")
    text = msg.get_body(preferencelist=("plain",)).get_content()
    assert "Ticketnummer #10001" in text and "innerhalb von 8 Stunden" in text
    assert "https://support.example.com/escalate/" in text
    html = msg.get_body(preferencelist=("html",)).get_content()
    assert "<strong>#10001</strong>" in html
    assert wait_until(lambda: mailbox.count("INBOX") == 0 and mailbox.count("Processed") == 1)
    [ticket] = rows(database_url, Ticket)
    assert (ticket.number, ticket.status, ticket.customer_address, ticket.language) == (
        10001, "new", "anna.berger@kunde-gmbh.de", "de")
    [out] = rows(database_url, OutboxMail)
    assert out.state == "sent" and out.message_id == msg["Message-ID"]
    assert wait_until(lambda: outbox_settled(database_url))
    assert len(smtp.mails) == 1
    assert daemon.stop() == 0


def test_english_mail_is_answered_in_english(daemon, mailbox, smtp):
    daemon.start()
    mailbox.append((DATA / "customer_en.eml").read_bytes())
    [mail] = smtp.wait_for(1)
    assert mail.message["Subject"].startswith("[#10001] Your support ticket:")
    text = mail.message.get_body(("plain",)).get_content()
    assert "Attached:  1 file" in text and "screenshot.png" not in text  # sender unverified


def test_automatic_mail_and_bounces_get_no_answer(daemon, mailbox, smtp, database_url):
    daemon.start()
    for name in ("out_of_office.eml", "bounce.eml", "customer_de.eml"):
        mailbox.append((DATA / name).read_bytes())
    smtp.wait_for(1)
    assert wait_until(lambda: mailbox.count("Processed") == 3)
    assert wait_until(lambda: outbox_settled(database_url))  # all three are through
    assert [m.recipients for m in smtp.mails] == [["anna.berger@kunde-gmbh.de"]]
    assert len(rows(database_url, OutboxMail)) == 1
    # The out-of-office reply is a ticket flagged automatic; the bounce (about no mail of
    # ours) is recorded without one.
    assert sorted(t.automatic for t in rows(database_url, Ticket)) == [False, True]
    bounce = rows(database_url, InboundMessage, InboundMessage.kind == "bounce")
    assert len(bounce) == 1 and bounce[0].ticket_id is None


@pytest.mark.parametrize("imap_server", ["dovecot", "plain_dovecot"], indirect=True)
def test_garbage_is_quarantined_and_the_next_mail_still_processed(
        daemon, mailbox, smtp, database_url):
    garbage = [
        bytes(range(256)) * 4,
        b"one single line\r\n",
        b"X-Mailer: nothing else\r\n",
        b"From: y@example.org\r\nSubject: broken\r\nContent-Type: multipart/mixed; "
        b"boundary=NOPE\r\n\r\n\r\n",
    ]
    daemon.start()
    for raw in garbage:
        mailbox.append(raw)
    mailbox.append((DATA / "customer_en.eml").read_bytes())
    smtp.wait_for(1)
    assert wait_until(lambda: mailbox.count("Quarantine") == 4 and mailbox.count("INBOX") == 0)
    reasons = sorted(r.reason for r in rows(database_url, InboundMessage,
                                            InboundMessage.state == "quarantined"))
    assert len(reasons) == 4 and all(reasons), reasons
    assert any("no mail headers" in r for r in reasons)
    assert any("header-only" in r for r in reasons)
    assert any("broken MIME" in r for r in reasons)
    assert len(rows(database_url, Ticket)) == 1


def test_smtp_down_delays_answers_but_loses_none(daemon, mailbox, smtp, database_url):
    # The SMTP server defers everything while mails arrive; tickets are created anyway and
    # every answer arrives exactly once when it is back.
    smtp.reply = "451 4.3.0 try again later"
    daemon.start()
    for n in range(5):
        mailbox.append(f"From: c{n}@kunde.example\r\nSubject: Problem {n}\r\n"
                       f"Message-ID: <p{n}@kunde.example>\r\n\r\nHilfe bitte {n}\r\n".encode())
    assert wait_until(lambda: len(rows(database_url, Ticket)) == 5)
    assert wait_until(lambda: all(o.attempts >= 1 for o in rows(database_url, OutboxMail)))
    assert smtp.mails == []
    smtp.reply = None
    smtp.wait_for(5, timeout=30)
    assert wait_until(lambda: outbox_settled(database_url))
    ids = smtp.by_message_id()
    assert len(ids) == 5 and all(len(v) == 1 for v in ids.values())
    assert {o.state for o in rows(database_url, OutboxMail)} == {"sent"}


def test_smtp_5xx_marks_the_answer_failed_with_the_reason(daemon, mailbox, smtp, database_url):
    smtp.reply = "550 5.1.1 mailbox unavailable"
    daemon.start()
    mailbox.append((DATA / "customer_de.eml").read_bytes())
    assert wait_until(lambda: [o.state for o in rows(database_url, OutboxMail)] == ["failed"])
    [out] = rows(database_url, OutboxMail)
    assert "550 5.1.1 mailbox unavailable" in out.last_error


@pytest.mark.parametrize("imap_server", ["dovecot", "plain_dovecot"], indirect=True)
def test_imap_server_restart_mid_run(daemon, imap_server, mailbox, smtp):
    daemon.start()
    mailbox.append((DATA / "customer_de.eml").read_bytes())
    smtp.wait_for(1)
    imap_server.restart()
    mailbox.append((DATA / "customer_en.eml").read_bytes())
    smtp.wait_for(2, timeout=30)
    assert wait_until(lambda: mailbox.count("Processed") == 2)


def test_sigterm_stops_cleanly_and_quickly(daemon, mailbox, smtp):
    daemon.start()
    mailbox.append((DATA / "customer_de.eml").read_bytes())
    smtp.wait_for(1)
    started = time.monotonic()
    assert daemon.kill(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert "stopped" in daemon.output()


def test_first_start_can_leave_existing_mail_alone(config, tmp_path, mailbox, smtp):
    # process_existing = false: mail already waiting stays; new mail is processed.
    mailbox.append((DATA / "customer_de.eml").read_bytes())
    text = config.read_text().replace("[imap]\n", "[imap]\nprocess_existing = false\n")
    config.write_text(text)
    d = Daemon(config, tmp_path / "maild.log").start()
    try:
        assert wait_until(lambda: "watching" in d.output())
        mailbox.append((DATA / "customer_en.eml").read_bytes())
        [mail] = smtp.wait_for(1)
        assert mail.recipients == ["bob.smith@customer.example"]
        assert mailbox.count("INBOX") == 1
    finally:
        d.kill()


def test_check_reports_each_problem_in_one_line(config, mailbox, smtp):
    ok = maild("check", config=config)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # config, templates, database, imap, smtp
    assert [line.split()[0] for line in ok.stdout.splitlines()] == ["ok"] * 5
    assert "Processed, Quarantine will be created at start" in ok.stdout
    with mailbox.client() as client:  # a check changes nothing
        assert not client.folder_exists("Processed")

    config.write_text(config.read_text().replace(f'password = "{mailbox.password}"',
                                                 'password = "wrong"'))
    bad = maild("check", config=config)
    assert bad.returncode == 1
    [line] = [x for x in bad.stdout.splitlines() if x.startswith("FAIL")]
    assert line.startswith("FAIL  imap:") and "login refused" in line

    config.write_text(config.read_text().replace(f"port = {smtp.port}", "port = 1"))
    bad = maild("check", config=config)
    [_, line] = [x for x in bad.stdout.splitlines() if x.startswith("FAIL")]
    assert line.startswith("FAIL  smtp:") and "127.0.0.1:1 unavailable" in line

    config.write_text(config.read_text().replace("[smtp]\n", "[smtp]\nhots = 'x'\n"))
    bad = maild("check", config=config)
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"maild: config error: {config}: [smtp] hots: unknown key"


def test_run_refuses_an_unmigrated_database(tmp_path, dovecot, mailbox, smtp):
    from harness import write_config
    cfg = write_config(tmp_path / "m.toml", imap_port=dovecot.port, user=mailbox.user,
                       password=mailbox.password, smtp_port=smtp.port,
                       database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    result = maild("run", config=cfg, timeout=30)
    assert result.returncode == 2
    assert "run `maild db upgrade`" in result.stderr


def test_tls_is_never_downgraded(config):
    # The test servers speak no TLS: asking for starttls or ssl fails closed, never plain.
    config.write_text(config.read_text().replace('tls = "none"', 'tls = "starttls"'))
    result = maild("check", config=config)
    assert result.returncode == 1
    fails = [x for x in result.stdout.splitlines() if x.startswith("FAIL")]
    assert "STARTTLS" in fails[0] and fails[0].startswith("FAIL  imap:")
    assert "STARTTLS" in fails[1] and fails[1].startswith("FAIL  smtp:")
    config.write_text(config.read_text().replace('tls = "starttls"', 'tls = "ssl"'))
    fails = [x for x in maild("check", config=config).stdout.splitlines()
             if x.startswith("FAIL")]
    assert len(fails) == 2 and all("SSL" in x for x in fails)


def test_an_unsendable_address_fails_one_answer_not_the_outbox(
        daemon, mailbox, smtp, database_url):
    # A From without brackets is answered at the address it names; a non-ASCII address
    # the server refuses fails only its own answer; later mails still go out.
    smtp.utf8 = False
    daemon.start()
    mailbox.append(b"From: big bug bb@bug.com\r\nSubject: x\r\nMessage-ID: <s1@x>\r\n\r\nhi\r\n")
    mailbox.append("From: jörg@müller.example\r\nSubject: y\r\nMessage-ID: <s2@x>\r\n\r\nhi\r\n"
                   .encode())
    mailbox.append((DATA / "customer_de.eml").read_bytes())
    assert wait_until(lambda: len(smtp.mails) == 2)
    assert sorted(m.recipients[0] for m in smtp.mails) == [
        "anna.berger@kunde-gmbh.de", "bb@bug.com"]
    assert wait_until(lambda: mailbox.count("Processed") == 3)
    assert mailbox.count("Quarantine") == 0
    states = sorted(o.state for o in rows(database_url, OutboxMail))
    assert wait_until(lambda: sorted(o.state for o in rows(database_url, OutboxMail))
                      == ["failed", "sent", "sent"]), states


def test_customer_reply_lands_in_the_same_ticket_without_a_second_answer(
        daemon, mailbox, smtp, database_url):
    daemon.start()
    mailbox.append((DATA / "customer_en.eml").read_bytes())
    [ack] = smtp.wait_for(1)
    reply = (f"From: Bob Smith <bob.smith@customer.example>\r\nTo: service@example.com\r\n"
             f"Subject: Re: {ack.message['Subject']}\r\nMessage-ID: <reply1@customer.example>\r\n"
             f"In-Reply-To: {ack.message['Message-ID']}\r\n"
             f"References: {ack.message['Message-ID']}\r\n\r\n"
             f"App version: 3.8.0\r\n").encode()
    mailbox.append(reply)
    assert wait_until(lambda: mailbox.count("Processed") == 2)
    assert wait_until(lambda: outbox_settled(database_url))  # the reply is through
    assert len(smtp.mails) == len(rows(database_url, OutboxMail)) == 1
    [ticket] = rows(database_url, Ticket)
    assert ticket.facts.software_version == "3.8.0"
    assert "software_version" not in ticket.missing


def test_ping_pong_with_a_header_less_auto_responder_ends_at_the_limit(
        daemon, mailbox, smtp, database_url):
    # A robot answers every mail with a fresh one (no Auto-Submitted, no References, new
    # subject): maild answers at most answers_per_address_per_hour (5) times, then stops.
    daemon.start()
    answered = 0
    for n in range(12):
        mailbox.append(f"From: Robot <robot@autoresponder.example>\r\nTo: service@example.com"
                       f"\r\nSubject: Your mail number {n}\r\nMessage-ID: <bot{n}@robot>\r\n"
                       f"\r\nThank you for your mail, we received it.\r\n".encode())
        # The first five are answered (the first includes the daemon's start-up: no short
        # deadline there); after the limit, 3 s without an answer ends the loop.
        if not wait_until(lambda a=answered: len(smtp.mails) > a, timeout=3 if n >= 5 else 30):
            break
        answered = len(smtp.mails)
    assert wait_until(lambda: mailbox.count("INBOX") == 0)
    assert wait_until(lambda: outbox_settled(database_url))  # all twelve are through
    assert len(smtp.mails) == len(rows(database_url, OutboxMail)) == 5
    assert len(rows(database_url, Ticket)) == 6  # the sixth is recorded, not answered
    [limited] = rows(database_url, Event, Event.kind == "not_answered")
    assert limited.detail == {"reason": "answer limit per address reached"}
