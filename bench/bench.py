"""`make bench`: throughput, latency and memory of `maild run` against a real Dovecot.

    python bench/bench.py [--mails 2000] [--latency-mails 40] [--database URL]

1. Fills a private Dovecot with N generated mails (about 20 % with a 50–500 KB
   attachment, German and English, some HTML-only, 10 % replies).
2. Bound: raw imapclient fetch (BODY.PEEK[], batches of 100) + stdlib parse of that mailbox.
3. Throughput: starts the daemon, measures until the inbox is empty and every
   acknowledgement has reached the SMTP capture.
4. Latency: with the daemon idle in IDLE, appends one mail at a time and measures
   append → acknowledgement at the SMTP capture (p50, p99).
5. Peak RSS of the daemon (VmHWM).
"""

from __future__ import annotations

import argparse
import base64
import random
import shutil
import statistics
import sys
import tempfile
import time
from email import message_from_bytes, policy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import (  # noqa: E402
    Daemon,
    Dovecot,
    Mailbox,
    SmtpCapture,
    maild,
    wait_until,
    write_config,
)

DE = ["Hallo Support-Team,", "seit heute Morgen funktioniert die Auftragsliste nicht mehr.",
      "Es erscheint die Fehlermeldung 'Verbindung fehlgeschlagen'.",
      "Gerät: iPhone 14, iOS 18.1, App-Version 4.2.1, WLAN.", "Kundennummer: 10{n:04d}",
      "Viele Grüße", "Kunde {n}"]
EN = ["Hello support,", "since this morning the order list does not load.",
      "The error message says 'connection failed'.",
      "Device: Windows 11 PC, Chrome 131, office network.", "Customer number: 20{n:04d}",
      "Best regards", "Customer {n}"]


def generate(n: int, rng: random.Random, previous: list[str]) -> tuple[bytes, str]:
    german = rng.random() < 0.6
    lines = [line.format(n=n) for line in (DE if german else EN)]
    mid = f"<bench.{n}.{rng.getrandbits(40):x}@kunde{n % 50}.example>"
    subject = ("Fehler in der App" if german else "Error in the app") + f" {n}"
    headers = [f"From: Kunde {n} <kunde{n}@firma{n % 50}.example>", "To: service@example.com",
               f"Message-ID: {mid}", "Date: Thu, 26 Nov 2026 10:00:00 +0100",
               "MIME-Version: 1.0"]
    if previous and rng.random() < 0.10:
        parent = rng.choice(previous)
        headers += [f"In-Reply-To: {parent}", f"References: {parent}"]
        subject = ("AW: " if german else "Re: ") + subject
    headers.append(f"Subject: {subject}")
    text = "\r\n".join(lines) + "\r\n"
    html_only = rng.random() < 0.10
    if html_only:
        body_part = ("Content-Type: text/html; charset=utf-8\r\n\r\n<html><body>"
                     + "".join(f"<p>{line}</p>" for line in lines) + "</body></html>\r\n")
    else:
        body_part = f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}"
    if rng.random() < 0.20:
        size = rng.randint(50_000, 500_000)
        data = base64.encodebytes(rng.randbytes(size)).decode().replace("\n", "\r\n")
        raw = "\r\n".join(headers) + (
            '\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n' + body_part
            + '\r\n--B\r\nContent-Type: application/pdf; name="report.pdf"\r\n'
            'Content-Disposition: attachment; filename="report.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n" + data + "--B--\r\n")
    else:
        raw = "\r\n".join(headers) + "\r\n" + body_part
    return raw.encode("utf-8"), mid


def fill(box: Mailbox, count: int, seed: int) -> tuple[int, int]:
    """Append `count` generated mails; (bytes, how many are replies to earlier ones)."""
    rng = random.Random(seed)
    previous: list[str] = []
    total = replies = 0
    client = box.client()
    try:
        for n in range(count):
            raw, mid = generate(n, rng, previous)
            previous.append(mid)
            client.append("INBOX", raw)
            total += len(raw)
            replies += b"\r\nIn-Reply-To: " in raw.split(b"\r\n\r\n", 1)[0]
    finally:
        client.logout()
    return total, replies


def bound(box: Mailbox) -> tuple[float, float, int]:
    """Seconds for raw fetch and for stdlib parse (+ body + attachments) of the whole INBOX."""
    client = box.client()
    client._imap.debug = 0
    client.select_folder("INBOX", readonly=True)
    uids = client.search(["ALL"])
    started = time.perf_counter()
    raws: list[bytes] = []
    for i in range(0, len(uids), 100):
        data = client.fetch(uids[i:i + 100], ["BODY.PEEK[]"])
        raws.extend(item[b"BODY[]"] for item in data.values())
    fetched = time.perf_counter()
    for raw in raws:
        msg = message_from_bytes(raw, policy=policy.default)
        _ = (msg["From"], msg["Subject"], msg["Message-ID"])
        body = msg.get_body(preferencelist=("plain", "html"))
        if body is not None:
            body.get_content()
        for part in msg.iter_attachments():
            part.get_content()
    parsed = time.perf_counter()
    client.logout()
    return fetched - started, parsed - fetched, len(raws)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mails", type=int, default=2000)
    p.add_argument("--latency-mails", type=int, default=40)
    p.add_argument("--database", default="", help="SQLAlchemy URL (default: a temp SQLite)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="maild-bench-"))
    work.chmod(0o755)
    dovecot = Dovecot(work / "dovecot").start()
    smtp = SmtpCapture().start()
    user, password = dovecot.add_user()
    box = Mailbox(dovecot.port, user, password)
    url = args.database or f"sqlite:///{work / 'maild.db'}"
    config = write_config(work / "maild.toml", imap_port=dovecot.port, user=user,
                          password=password, smtp_port=smtp.port, database_url=url)
    daemon = Daemon(config, work / "maild.log")
    try:
        print(f"filling INBOX with {args.mails} mails ...", flush=True)
        size, replies = fill(box, args.mails, args.seed)
        answers = args.mails - replies  # a reply joins its ticket: no acknowledgement
        fetch_s, parse_s, n = bound(box)
        print(f"mailbox: {n} mails, {size / 1e6:.0f} MB")
        print(f"bound: raw fetch {n / fetch_s:,.0f} mails/s, stdlib parse {n / parse_s:,.0f} "
              f"mails/s, fetch + parse {n / (fetch_s + parse_s):,.0f} mails/s")
        upgraded = maild("db", "upgrade", config=config)
        if upgraded.returncode:
            print(upgraded.stderr)
            return 1
        daemon.start()
        assert daemon.process is not None
        wait_until(lambda: "watching" in daemon.output(), timeout=30, interval=0.01)
        started = time.perf_counter()
        done = wait_until(lambda: len(smtp.mails) >= answers, timeout=1800, interval=0.02)
        elapsed = time.perf_counter() - started
        inbox = box.count("INBOX")
        print(f"maild: {args.mails} mails in {elapsed:.1f} s = {args.mails / elapsed:,.0f} "
              f"mails/s, answers {len(smtp.mails)} (+{replies} replies joined their tickets), "
              f"left in INBOX {inbox}"
              + ("" if done else "  (TIMED OUT)"))
        latencies = []
        rng = random.Random(args.seed + 1)
        for i in range(args.latency_mails):
            raw, _ = generate(100_000 + i, rng, [])
            expected = len(smtp.mails) + 1
            t0 = time.perf_counter()
            box.append(raw)
            wait_until(lambda e=expected: len(smtp.mails) >= e, timeout=30, interval=0.002)
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.1)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"latency arrival → acknowledgement ({len(latencies)} single mails, IDLE): "
              f"p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
        print(f"peak RSS of the daemon: {peak_rss_mb(daemon.process.pid):.0f} MB")
    finally:
        daemon.stop()
        smtp.stop()
        dovecot.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
