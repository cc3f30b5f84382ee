"""No mail waits: mail appended while maild is busy is taken as soon as the work in hand
is done, not at the next IDLE renewal or poll (daemon subprocess, Dovecot, both databases)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from harness import Daemon, customer_mail, free_port, wait_until, write_config

BURST = 300


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["idle", "poll", "smtp-down"])
def test_burst_while_busy_leaves_the_inbox_empty_within_seconds(
        mode, tmp_path: Path, dovecot, mailbox, smtp, database_url):
    # 300 mails arrive in a burst while the daemon is fetching and committing: renewal and
    # poll intervals are 5 minutes, yet the inbox is empty a few seconds after the last one.
    smtp_port = free_port() if mode == "smtp-down" else smtp.port
    config = write_config(
        tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
        password=mailbox.password, smtp_port=smtp_port, database_url=database_url,
        imap_extra="poll_interval = 300\nbatch_size = 20\n"
                   + ("idle = false\n" if mode == "poll" else ""))
    config.write_text(config.read_text().replace("idle_renew = 30\n", "idle_renew = 300\n"))
    # Polling: nothing announces new mail, so the burst comes while a backlog is drained.
    backlog = 300 if mode == "poll" else 1
    burst = 100 if mode == "poll" else BURST
    mailbox.append_many([customer_mail(n) for n in range(backlog)])
    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        assert wait_until(lambda: mailbox.count("Processed") >= 1, timeout=30), \
            daemon.output()
        mailbox.append_many([customer_mail(n) for n in range(backlog, backlog + burst)])
        last_append = time.monotonic()
        emptied = wait_until(lambda: mailbox.count("INBOX") == 0, timeout=20, interval=0.25)
        waited = time.monotonic() - last_append
        left = mailbox.count("INBOX")
        assert emptied, f"{left} of {burst} mails still in the inbox after {waited:.0f} s"
        assert mailbox.count("Processed") == backlog + burst
        if mode != "smtp-down":
            smtp.wait_for(backlog + burst, timeout=60)
    finally:
        daemon.kill()


def test_batches_are_bounded_by_count_and_bytes():
    # A burst of big mails is fetched a few at a time; one mail over the limit goes alone.
    from maild.watcher import batches

    sizes = {1: 40, 2: 40, 3: 40, 4: 500, 5: 10, 6: 10, 7: 10}
    assert list(batches(list(sizes), sizes, count=2, limit=100)) == [
        [1, 2], [3], [4], [5, 6], [7]]
    assert list(batches(list(sizes), sizes, count=50, limit=100)) == [
        [1, 2], [3], [4], [5, 6, 7]]
    assert list(batches([], {}, count=5, limit=100)) == []
