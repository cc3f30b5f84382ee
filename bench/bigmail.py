"""Memory of one big mail: peak RSS of the daemon process and of the parse worker.

    python bench/bigmail.py [--mb 37] [--workers 1] [--database URL]

Generates a ~50 MB mail (a PDF-like attachment of `--mb` MB, base64-encoded) into a file,
reads it as the IMAP fetch would hand it over, and processes it through `Intake` (the
daemon's intake path: analysis in the parse worker, blobs, one transaction) against a
SQLite database in a temporary folder. Prints the daemon's resident memory before and its
peak (VmHWM) after, and the worker's peaks (resident, and address space: what
`[intake] parse_memory_mb` limits). Other child processes (multiprocessing's resource
tracker) are listed too.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import offline_settings  # noqa: E402

from maild import db  # noqa: E402
from maild.daemon import build_desk  # noqa: E402
from maild.intake import Intake  # noqa: E402
from maild.mail.fetched import Fetched  # noqa: E402

MB = 1_000_000


def status(pid: int | str, field: str) -> int:
    """A `kB` field of /proc/PID/status, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1000
    return 0


def children() -> list[int]:
    """Processes whose parent is this one (the parse worker)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
            found.append(int(proc.name))
    return found


def write_mail(path: Path, attachment_mb: int) -> None:
    """A customer mail with a PDF-like attachment, written in chunks (so generating it does
    not count towards the peak)."""
    rng = random.Random(7)
    head = (b"From: Kunde <kunde@firma.example>\r\nTo: service@example.com\r\n"
            b"Subject: Der Bericht\r\nMessage-ID: <big.1@firma.example>\r\n"
            b"Date: Thu, 26 Nov 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            b"Hallo, anbei der Bericht. Auftrag 4711.\r\n"
            b"--b1\r\nContent-Type: application/pdf; name=\"bericht.pdf\"\r\n"
            b"Content-Disposition: attachment; filename=\"bericht.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n")
    chunk = 57 * 20_000  # whole base64 lines per chunk
    with path.open("wb") as fh:
        fh.write(head)
        left = attachment_mb * MB
        first = True
        while left > 0:
            size = min(chunk, left)
            data = rng.randbytes(size)
            if first:
                data = b"%PDF-1.7\n" + data[9:]
                first = False
            fh.write(base64.encodebytes(data).replace(b"\n", b"\r\n"))
            left -= size
        fh.write(b"--b1--\r\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=37, help="attachment size (decoded), MB")
    ap.add_argument("--workers", type=int, default=1, help="[intake] parse_workers")
    ap.add_argument("--database", default="")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        mail_file = folder / "big.eml"
        write_mail(mail_file, args.mb)
        url = args.database or f"sqlite:///{folder / 'bench.db'}"
        engine = db.make_engine(url)
        db.upgrade(engine)
        factory = db.session_factory(engine)
        now = datetime.now(UTC)
        settings = offline_settings(url, folder / "blobs", attachments={
            "max_file_mb": 100, "max_mail_mb": 100})
        desk = build_desk(settings, factory, now)
        intake = Intake(factory, desk, "INBOX", 3, lambda: now, workers=args.workers)
        start = getattr(intake, "start", None)
        if start is not None:
            start()
        time.sleep(2)  # the worker is up
        raw = mail_file.read_bytes()
        before = status("self", "VmRSS")
        began = time.monotonic()
        outcome = intake.process(7, Fetched(1, raw, now))
        took = time.monotonic() - began
        workers = {pid: (status(pid, "VmHWM"), status(pid, "VmPeak")) for pid in children()}
        intake.close()
        engine.dispose()
    print(f"mail: {len(raw) / MB:.1f} MB, attachment {args.mb} MB; outcome: {outcome.action} "
          f"{outcome.reason} ticket {outcome.ticket_number}; {took:.2f} s")
    print(f"daemon: RSS before {before} MB, peak (VmHWM) {status('self', 'VmHWM')} MB")
    for pid, (hwm, peak) in workers.items():
        print(f"worker {pid}: peak (VmHWM) {hwm} MB, address space peak (VmPeak, what "
              f"parse_memory_mb limits) {peak} MB")


if __name__ == "__main__":
    main()
