"""Soak: 1,000 mails arrive while the SMTP server flaps (down, deferring, up) and the
daemon is killed several times. Every mail processed exactly once, every answer sent
exactly once (counted by Message-ID). Prints its figures."""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest
from harness import Daemon, customer_mail, outbox_settled, rows, wait_until
from sqlalchemy import func, select

from maild import db
from maild.models import InboundMessage, OutboxMail, Ticket

TOTAL = 1000


def scalar(url: str, query):
    engine = db.make_engine(url)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            return s.scalar(query)
    finally:
        engine.dispose()


def unsent(url: str) -> list[str]:
    """The outbox rows not sent yet, for a failure message."""
    return [f"#{m.id} {m.state} attempts={m.attempts} next={m.next_attempt_at} "
            f"leased={m.leased_until} error={m.last_error[:100]!r}"
            for m in rows(url, OutboxMail, OutboxMail.state != "sent")][:20]


@pytest.mark.slow
def test_soak_with_a_flapping_smtp_server_and_killed_daemons(
        config, tmp_path, mailbox, smtp, database_url):
    rng = random.Random(20261127)
    mails = [customer_mail(n, size=rng.choice((0, 0, 0, 4000, 40000))) for n in range(TOTAL)]
    started = time.monotonic()
    feeder = threading.Thread(target=lambda: [mailbox.append_many(mails[i:i + 50])
                                              for i in range(0, TOTAL, 50)])
    flaps = {"down": 0, "deferring": 0}
    errors: list[str] = []
    stop_flapping = threading.Event()

    def flap() -> None:
        try:
            flapping()
        except Exception as exc:  # the server could not be restarted: seen below
            errors.append(repr(exc))

    def flapping() -> None:
        while not stop_flapping.wait(rng.uniform(0.5, 1.5)):
            mode = rng.choice(("down", "deferring", "up", "up"))
            if mode == "down":
                smtp.stop()
                flaps["down"] += 1
                stop_flapping.wait(rng.uniform(0.3, 1.0))
                smtp.start()
            elif mode == "deferring":
                smtp.reply = "451 4.3.0 try again later"
                flaps["deferring"] += 1
                stop_flapping.wait(rng.uniform(0.3, 1.0))
                smtp.reply = None

    flapper = threading.Thread(target=flap)
    daemon = Daemon(config, tmp_path / "maild.log")
    feeder.start()
    flapper.start()
    kills = 0
    try:
        for _ in range(6):
            daemon.start()
            time.sleep(rng.uniform(1.0, 4.0))
            daemon.kill(signal.SIGKILL)
            kills += 1
        feeder.join()
        daemon.start()
        assert daemon.watching()  # (the earlier runs may have left it nothing to do)
        assert wait_until(lambda: mailbox.count("INBOX") == 0, timeout=240), daemon.output()
        stop_flapping.set()
        flapper.join()
        smtp.reply = None
        if smtp.controller is None or not smtp.serving():
            smtp.stop()
            smtp.start()
        assert wait_until(lambda: len(smtp.by_message_id()) >= TOTAL, timeout=120), (
            f"{len(smtp.by_message_id())} of {TOTAL} answers arrived; flaps {flaps} {errors}; "
            f"server answering: {smtp.serving()}; unsent: {unsent(database_url)}\n"
            + daemon.output()[-6000:])
        assert wait_until(lambda: outbox_settled(database_url))  # nothing more to go out
    finally:
        stop_flapping.set()
        assert daemon.stop() == 0
    elapsed = time.monotonic() - started
    acks = smtp.by_message_id()
    resent = sum(len(v) - 1 for v in acks.values())
    print(f"\nsoak: {TOTAL} mails in {elapsed:.0f} s, {kills} SIGKILLs, SMTP down "
          f"{flaps['down']}x and deferring {flaps['deferring']}x; {len(smtp.mails)} "
          f"deliveries, {len(acks)} distinct answers, {resent} resent after a crash between "
          f"the server's 250 and our commit")
    assert len(acks) == TOTAL  # every answer, once by Message-ID
    assert len({str(v[0].message["In-Reply-To"]) for v in acks.values()}) == TOTAL
    assert scalar(database_url, select(func.count()).select_from(Ticket)) == TOTAL
    assert scalar(database_url, select(func.count()).select_from(InboundMessage)
                  .where(InboundMessage.state != "processed")) == 0
    assert scalar(database_url, select(func.count()).select_from(OutboxMail)
                  .where(OutboxMail.state != "sent")) == 0
    assert mailbox.count("Processed") == TOTAL and mailbox.count("Quarantine") == 0
