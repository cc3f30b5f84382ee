"""Exchange Online's and Gmail's ways of saying "not now" -- `NO [UNAVAILABLE]`, a BYE at any
time, "User is authenticated but not connected" -- are outages, not refusals: maild
reconnects with backoff, warns once per outage and loses nothing. Their answers come from
a proxy in front of Dovecot (tests/imapfaults.py)."""

from __future__ import annotations

import ssl

import pytest
from harness import Daemon, customer_mail, outbox_settled, rows, wait_until, write_config
from imapfaults import Answer, FaultyImap

from maild import imap
from maild.config import ImapSettings
from maild.errors import ImapLoginRefused, ImapUnavailable
from maild.imap import ImapMailbox
from maild.models import Ticket


@pytest.fixture
def proxy(imap_server):
    faulty = FaultyImap(imap_server.port)
    yield faulty
    faulty.close()


def settings(port: int, mailbox) -> ImapSettings:
    return ImapSettings(host="127.0.0.1", port=port, username=mailbox.user,
                        password=mailbox.password, tls="none", timeout=10)


@pytest.mark.parametrize("command, reply", [
    ("LOGIN", "NO [UNAVAILABLE] Server Unavailable. 15"),  # Exchange Online, throttled
    ("LOGIN", "NO User is authenticated but not connected."),  # Exchange, backend away
    ("LOGIN", "NO [ALERT] Too many simultaneous connections. (Failure)"),  # Gmail
    ("LOGIN", "BYE Server Unavailable. 21"),
    ("LIST", "BAD User is authenticated but not connected."),  # after the login
    ("SELECT", "NO User is authenticated but not connected."),
    ("SELECT", "NO [UNAVAILABLE] Server Unavailable. 15"),
    ("CREATE", "BYE Connection closed. 14"),
])
def test_a_throttling_answer_is_an_outage_and_the_next_try_gets_in(
        proxy, mailbox, command, reply):
    # The server answers one command of the connection's start with "not now": maild
    # sees an outage (to retry), says what the server said, and the next try works.
    proxy.add(Answer(command, reply))
    box = ImapMailbox(settings(proxy.port, mailbox))
    with pytest.raises(ImapUnavailable) as failure:
        box.connect()
    box.close()
    assert reply.split(" ", 1)[1] in str(failure.value)
    assert proxy.answered == [f"{command} → {reply}"]
    box.connect()
    assert box.uids() == []
    box.close()


@pytest.mark.parametrize("reply", ["NO [AUTHENTICATIONFAILED] Authentication failed.",
                                   "NO LOGIN failed."])  # Exchange's word for a bad password
def test_a_wrong_password_is_still_a_refused_login(proxy, mailbox, reply):
    proxy.add(Answer("LOGIN", reply))
    box = ImapMailbox(settings(proxy.port, mailbox))
    with pytest.raises(ImapLoginRefused, match="login refused"):
        box.connect()
    box.close()


@pytest.mark.parametrize("cut", [ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
                                 ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed")])
def test_a_tls_link_cut_by_the_server_is_an_outage(cut):
    # A TLS link the server drops (as Exchange does when it throttles) is not a TLS
    # failure: no certificate or protocol problem to mend, only a reconnect.
    with pytest.raises(ImapUnavailable, match="violation|closed"), imap._translated("IMAP x"):
        raise cut


def test_throttling_and_byes_cost_no_mail_and_warn_once_per_outage(
        tmp_path, proxy, mailbox, smtp, database_url):
    # Exchange-like: three logins refused as unavailable and a SELECT answered "not
    # connected" (one outage), a BYE in the middle of a fetch, a BYE out of the blue
    # while maild waits with IDLE. Each mail: one ticket, one acknowledgement, in Processed.
    proxy.add(Answer("LOGIN", "NO [UNAVAILABLE] Server Unavailable. 15", times=3))
    proxy.add(Answer("SELECT", "BAD User is authenticated but not connected."))
    config = write_config(tmp_path / "maild.toml", imap_port=proxy.port, user=mailbox.user,
                          password=mailbox.password, smtp_port=smtp.port,
                          database_url=database_url)
    daemon = Daemon(config, tmp_path / "maild.log")
    again = "mail intake running again"

    def idling() -> bool:  # (a mail is then announced, not met half-way through a look)
        return proxy.commands[-1:] == ["IDLE"]
    try:
        mailbox.append(customer_mail(1))
        daemon.start()
        smtp.wait_for(1, timeout=60)
        assert len(proxy.answered) == 4
        proxy.add(Answer("UID FETCH", "BYE Connection closed. 14"))
        assert wait_until(idling)
        mailbox.append(customer_mail(2))
        smtp.wait_for(2, timeout=60)
        assert wait_until(lambda: daemon.output().count(again) == 2), daemon.output()
        assert wait_until(idling)
        proxy.bye()  # (noticed at once, not at the IDLE renewal 30 s later)
        assert wait_until(lambda: daemon.output().count(again) == 3), daemon.output()
        assert wait_until(idling)
        mailbox.append(customer_mail(3))
        smtp.wait_for(3, timeout=60)
        assert wait_until(lambda: (mailbox.count("INBOX"), mailbox.count("Processed")) == (0, 3))
        assert wait_until(lambda: outbox_settled(database_url))
    finally:
        daemon.kill()
    sent = smtp.by_message_id()
    assert len(sent) == 3 and all(len(copies) == 1 for copies in sent.values())
    assert len(rows(database_url, Ticket)) == 3
    log = daemon.output()
    warned = [line for line in log.splitlines()
              if line.startswith("WARNING") and "retrying with backoff" in line]
    assert len(warned) == 3, warned  # one per outage, not one per failed try
    assert "Server Unavailable. 15" in warned[0] and "login refused" not in log


@pytest.mark.parametrize("imap_server", ["plain_dovecot"], indirect=True)
def test_a_move_cut_half_way_is_finished_without_a_second_copy(
        tmp_path, proxy, mailbox, smtp, database_url):
    # A server without MOVE drops maild after the COPY (before the \Deleted flag), then
    # after the flag (before the EXPUNGE): each mail ends in Processed once, none stays in
    # the INBOX, and each has one ticket and one acknowledgement.
    proxy.add(Answer("UID STORE", "BYE Connection closed. 14"))
    config = write_config(tmp_path / "maild.toml", imap_port=proxy.port, user=mailbox.user,
                          password=mailbox.password, smtp_port=smtp.port,
                          database_url=database_url, imap_extra="poll_interval = 1\n")
    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        mailbox.append(customer_mail(1))
        smtp.wait_for(1, timeout=30)
        assert wait_until(lambda: (mailbox.count("INBOX"), mailbox.count("Processed")) == (0, 1))
        proxy.add(Answer("EXPUNGE", "BYE Connection closed. 14"))
        mailbox.append(customer_mail(2))
        smtp.wait_for(2, timeout=30)
        assert wait_until(lambda: len(proxy.answered) == 2)
        assert wait_until(lambda: (mailbox.count("INBOX"), mailbox.count("Processed")) == (0, 2))
        assert wait_until(lambda: outbox_settled(database_url))
    finally:
        daemon.kill()
    processed = [raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0]
                 for raw in mailbox.messages("Processed")]
    assert len(set(processed)) == 2, processed
    sent = smtp.by_message_id()
    assert len(sent) == 2 and all(len(copies) == 1 for copies in sent.values())
    assert len(rows(database_url, Ticket)) == 2
