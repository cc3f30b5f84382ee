"""No mail waits: mail appended while maild is busy is taken as soon as the work in hand
is done, not at the next IDLE renewal or poll (daemon subprocess, Dovecot, both databases)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime
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


class _Box:
    """The IMAP side of `Watcher._drain`: a folder of mails of given sizes."""

    uidvalidity = 1

    def __init__(self, sizes: dict[int, int], log: list[str]) -> None:
        self.sizes_of, self.log, self.held = sizes, log, 0

    def uids(self) -> list[int]:
        return list(self.sizes_of)

    def sizes(self, uids: list[int]) -> dict[int, int]:
        return {u: self.sizes_of[u] for u in uids}

    def fetch(self, uids: list[int], sizes: dict[int, int]) -> list[object]:
        from maild.mail.fetched import Fetched
        self.log.append(f"fetch {uids[0]}")
        return [Fetched(u, b"x", datetime.now(UTC)) for u in uids]

    def half_moved(self) -> list[int]:
        return []

    def move(self, uids: list[int], folder: str, again: bool = False) -> None:
        pass


class _Intake:
    """The database side: records what is analysed and written, and how much is held."""

    def __init__(self, box: _Box) -> None:
        self.box, self.written = box, []

    def known(self, uidvalidity: int, uids: list[int]) -> dict[int, str]:
        return {}

    def analyse(self, uidvalidity: int, fetched: list) -> Future:
        self.box.held += sum(self.box.sizes_of[f.uid] for f in fetched)
        self.box.log.append(f"held {self.box.held}")
        done: Future = Future()
        done.set_result([])
        return done

    def process_batch(self, uidvalidity: int, fetched: list, analysed: Future) -> list:
        from maild.intake import Outcome
        self.box.log.append(f"write {fetched[0].uid}")
        self.written += [f.uid for f in fetched]
        self.box.held -= sum(self.box.sizes_of[f.uid] for f in fetched)
        return [Outcome(f.uid, "processed", kind="normal") for f in fetched]


def test_the_next_batch_is_analysed_while_one_is_written_within_the_memory_bound():
    # While batch k is written, k+1 is already fetched and in analysis; never more than
    # twice fetch_batch_mb of mail is held, and every mail is written once, in order.
    from maild.config import ImapSettings, IntakeSettings
    from maild.watcher import Watcher

    log: list[str] = []
    sizes = {u: 10_000 for u in range(1, 11)} | {u: 400_000 for u in range(11, 17)}
    box = _Box(sizes, log)
    intake = _Intake(box)
    imap = ImapSettings(host="127.0.0.1", username="u", password="p", batch_size=2,
                        fetch_batch_mb=1.0)
    watcher = Watcher(imap, IntakeSettings(), intake, None, threading.Event(),  # type: ignore[arg-type]
                      lambda: None, lambda: datetime.now(UTC))
    assert watcher._drain(box, 0) == 16  # type: ignore[arg-type]
    assert intake.written == list(range(1, 17))
    assert log[:5] == ["fetch 1", "held 20000", "fetch 3", "held 40000", "write 1"]
    peak = max(int(line.split()[1]) for line in log if line.startswith("held"))
    assert peak <= 2 * 1_000_000
    assert box.held == 0
