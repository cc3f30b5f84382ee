"""Hostile analyses for tests/test_budget.py: module-level (picklable to the parse worker),
each acting on a marker header of the mail and analysing other mails normally."""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from maild.analyse import Analysis, Rules, analyse

ANALYSED = "analysed"  # a file a recording analysis touches, for "was it called?"


def analysis(raw: bytes, rules: Rules) -> Analysis:
    """X-Hostile: hang (a runaway regex), memory (4 GB), kill (SIGKILL, a segfault),
    raise (a parser bug)."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    if b"\nX-Hostile: raise" in head:
        raise ValueError("a parser bug on this mail")
    if b"\nX-Hostile: hang" in head:
        while True:
            pass
    if b"\nX-Hostile: sleep" in head:
        time.sleep(3600)
    if b"\nX-Hostile: memory" in head:
        hog = bytearray(4 * 1024 ** 3)
        return Analysis(None, None, None, None, error=f"allocated {len(hog)}")
    if b"\nX-Hostile: kill" in head:
        os.kill(os.getpid(), signal.SIGKILL)
    return analyse(raw, rules)


def hostile_mail(n: int, how: str) -> bytes:
    return (f"From: Kunde {n} <kunde{n}@firma.example>\r\nTo: service@example.com\r\n"
            f"Subject: Anfrage {n}\r\nMessage-ID: <hostile{n}.{how}@firma.example>\r\n"
            f"X-Hostile: {how}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Hallo {n}\r\n").encode()


def run_in_process(url: str, blob_dir: str, mail_file: str) -> None:
    """One "daemon run" analysing in its own process (parse_workers = 0) that a mail kills."""
    from harness import offline_settings

    from maild import db
    from maild.daemon import build_desk
    from maild.intake import Intake
    from maild.mail.fetched import Fetched

    now = datetime.now(UTC)
    factory = db.session_factory(db.make_engine(url))
    desk = build_desk(offline_settings(url, Path(blob_dir)), factory, now)
    intake = Intake(factory, desk, "INBOX", 3, lambda: now, workers=0, analysis=analysis,
                    flight=Path(blob_dir).parent / "parsing.json")
    intake.process(7, Fetched(1, Path(mail_file).read_bytes(), now))
    sys.exit("the mail did not kill the process")


if __name__ == "__main__":
    run_in_process(*sys.argv[1:4])
