"""A connection that ends in the middle of a move on a server without MOVE: the move is
finished later, without a second copy. The cuts come from a proxy in front of Dovecot
(tests/imapfaults.py)."""

from __future__ import annotations

import pytest
from harness import Daemon, customer_mail, outbox_settled, rows, wait_until, write_config
from imapfaults import Answer, FaultyImap

from maild.models import Ticket


@pytest.fixture
def proxy(imap_server):
    faulty = FaultyImap(imap_server.port)
    yield faulty
    faulty.close()



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
