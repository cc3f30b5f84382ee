"""Killed daemons, a database that goes away: no mail lost, none processed twice."""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from harness import Daemon, TcpProxy, customer_mail, outbox_settled, wait_until
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from maild import db
from maild.models import InboundMessage, OutboxMail, Ticket

# Killed daemons, outages, takeovers: long scenarios, left out of `make test-quick`.
pytestmark = pytest.mark.slow


def count(url: str, model, *where) -> int:
    engine = db.make_engine(url)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            return int(s.scalar(select(func.count()).select_from(model).where(*where)))
    finally:
        engine.dispose()


def _parse_workers() -> list[str]:
    """Processes of multiprocessing's spawn start method still alive on this machine that
    run our interpreter (another checkout's tests may run beside these)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "multiprocessing.spawn" in cmd and cmd.startswith(f"{sys.executable} "):
            found.append(f"{proc.name}: {cmd[:100]}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("imap_server", ["dovecot", "plain_dovecot"], indirect=True)
def test_sigkill_at_random_moments_loses_and_doubles_nothing(
        config, tmp_path, mailbox, smtp, database_url):
    # 200 mails arrive while the daemon is killed with SIGKILL at random moments and
    # restarted: exactly 200 tickets and one acknowledgement per mail.
    total = 200
    mails = [customer_mail(n) for n in range(total)]
    feeder = threading.Thread(target=lambda: [mailbox.append_many(mails[i:i + 25])
                                              for i in range(0, total, 25)])
    rng = random.Random(20261127)
    daemon = Daemon(config, tmp_path / "maild.log")
    feeder.start()
    kills = 0
    for _ in range(12):
        daemon.start()
        time.sleep(rng.uniform(0.4, 2.0))
        daemon.kill(signal.SIGKILL)
        kills += 1
    feeder.join()
    daemon.start()
    try:
        assert daemon.watching()  # (the earlier runs may have left it nothing to do)
        assert wait_until(lambda: mailbox.count("INBOX") == 0, timeout=120), daemon.output()
        assert wait_until(lambda: len(smtp.by_message_id()) >= total, timeout=60)
        assert wait_until(lambda: outbox_settled(database_url))  # nothing more to go out
    finally:
        assert daemon.stop() == 0
    acks = smtp.by_message_id()
    resent = {mid: len(v) for mid, v in acks.items() if len(v) > 1}
    print(f"{kills} kills; {len(smtp.mails)} deliveries, {len(acks)} distinct; resent: {resent}")
    assert len(acks) == total
    # The parse workers of the killed daemons ended with them (no orphans left behind).
    assert wait_until(lambda: not _parse_workers(), timeout=10), _parse_workers()
    answered = {str(v[0].message["In-Reply-To"]) for v in acks.values()}
    assert len(answered) == total
    assert count(database_url, Ticket) == total
    assert count(database_url, OutboxMail) == total
    assert count(database_url, OutboxMail, OutboxMail.state != "sent") == 0
    assert mailbox.count("Processed") == total and mailbox.count("Quarantine") == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_unreachable_quarantines_nothing(
        tmp_path, dovecot, mailbox, smtp, database_url):
    # The database goes away behind a TCP proxy while mails arrive: they stay in the
    # INBOX, nothing is quarantined, and all are processed once it is back.
    from harness import write_config
    url = make_url(database_url)
    proxy = TcpProxy(url.port or 5432)
    via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(
        hide_password=False)
    config = write_config(tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
                          password=mailbox.password, smtp_port=smtp.port,
                          database_url=via_proxy)
    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        mailbox.append(customer_mail(1))
        smtp.wait_for(1)
        proxy.cut()
        for n in range(2, 6):
            mailbox.append(customer_mail(n))
        # The intake itself met the outage (not only the outbox's polling), then kept
        # retrying for a while: the mails are still waiting, none quarantined.
        assert wait_until(lambda: any("maild.watcher" in line and "database unavailable" in line
                                      for line in daemon.output().splitlines()), timeout=30), (
            daemon.output())
        time.sleep(2)
        assert mailbox.count("INBOX") == 4 and mailbox.count("Quarantine") == 0
        proxy.restore()
        smtp.wait_for(5, timeout=60)
        assert wait_until(lambda: mailbox.count("INBOX") == 0)
        assert mailbox.count("Quarantine") == 0 and mailbox.count("Processed") == 5
        assert count(database_url, InboundMessage, InboundMessage.state != "processed") == 0
        warnings = [line for line in daemon.output().splitlines()
                    if line.startswith("WARNING") and "database unavailable" in line]
        # Once per outage and loop: intake, sending and (when one fell in the outage) sweeps.
        loops = [("sweep skipped" in line, "maild.watcher" in line) for line in warnings]
        assert len(loops) == len(set(loops)) <= 3, warnings
    finally:
        daemon.kill()
        proxy.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_daemons_on_one_database_share_the_work_without_doubling(
        config, tmp_path, mailbox, smtp, database_url):
    # Two maild processes on one PostgreSQL database and one mailbox: one watches (the
    # advisory lock), the other stands by; when the first is killed the second takes over.
    first = Daemon(config, tmp_path / "first.log").start()
    assert wait_until(lambda: "watching" in first.output())
    second = Daemon(config, tmp_path / "second.log").start()
    try:
        assert wait_until(lambda: "standing by" in second.output())
        for n in range(5):
            mailbox.append(customer_mail(n))
        smtp.wait_for(5)
        first.kill(signal.SIGKILL)
        before_kill = set(smtp.by_message_id())
        for n in range(5, 10):
            mailbox.append(customer_mail(n))
        smtp.wait_for(10, timeout=40)
        assert "taken over" in second.output()
        assert wait_until(lambda: outbox_settled(database_url))  # nothing more to go out
        # Counted by Message-ID (DESIGN.md): a mail the first daemon had handed over when it
        # was killed, but not yet marked sent, may go out again -- as the same mail. Nothing
        # that was not in flight at the kill is ever sent twice.
        sent = smtp.by_message_id()
        assert len(sent) == 10
        resent = {mid for mid, copies in sent.items() if len(copies) > 1}
        assert resent <= before_kill and all(len(c) <= 2 for c in sent.values())
        assert count(database_url, Ticket) == 10
    finally:
        first.kill()
        second.kill()
