"""`make demo`: a throwaway Dovecot and SMTP capture, SQLite, the daemon, three sample mails.

Shows the tickets created and the answers sent; Ctrl-C stops everything (without a
terminal it stops by itself once everything is shown).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import Daemon, Dovecot, Mailbox, SmtpCapture, maild, wait_until, write_config  # noqa: E402

SAMPLES = [
    ("customer_de.eml", "a German customer, app error with customer and order number"),
    ("customer_en.eml", "an English customer with a screenshot attached"),
    ("customer_de_html.eml", "an Outlook HTML mail about an outage"),
    ("out_of_office.eml", "an out-of-office reply (recorded, never answered)"),
]


def main() -> int:
    work = ROOT / ".demo"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    imap_dir = Path(tempfile.mkdtemp(prefix="maild-demo-dovecot-"))
    dovecot = Dovecot(imap_dir).start()
    smtp = SmtpCapture().start()
    user, password = dovecot.add_user()
    box = Mailbox(dovecot.port, user, password)
    config = write_config(work / "maild.toml", imap_port=dovecot.port, user=user,
                          password=password, smtp_port=smtp.port,
                          database_url=f"sqlite:///{work / 'maild.db'}")
    print(f"Dovecot on 127.0.0.1:{dovecot.port}, SMTP capture on 127.0.0.1:{smtp.port}, "
          f"SQLite in {work}/maild.db")
    print(maild("db", "upgrade", config=config).stdout.strip())
    daemon = Daemon(config, work / "maild.log").start()
    try:
        wait_until(lambda: "watching" in daemon.output(), timeout=20)
        for name, what in SAMPLES:
            print(f"→ mail into INBOX: {what}")
            box.append((ROOT / "tests" / "data" / name).read_bytes())
        smtp.wait_for(3, timeout=30)
        wait_until(lambda: box.count("INBOX") == 0, timeout=10)
        show(config, smtp, box, daemon)
        if sys.stdin.isatty():
            print("\nmaild keeps running; append more mail or press Ctrl-C to stop.")
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        daemon.stop()
        smtp.stop()
        dovecot.stop()
        shutil.rmtree(imap_dir, ignore_errors=True)
        print("\nstopped: daemon, Dovecot and the SMTP capture.")
    return 0


def show(config: Path, smtp: SmtpCapture, box: Mailbox, daemon: Daemon) -> None:
    print("\n=== daemon log ===")
    print(daemon.output().rstrip())
    print("\n=== maild tickets list ===")
    print(maild("tickets", "list", config=config).stdout.rstrip())
    print(f"\n=== folders: INBOX {box.count('INBOX')}, Processed {box.count('Processed')}, "
          f"Quarantine {box.count('Quarantine')} ===")
    print(f"\n=== {len(smtp.mails)} answers sent ===")
    for mail in smtp.mails:
        msg = mail.message
        print(f"\nTo: {', '.join(mail.recipients)}\nSubject: {msg['Subject']}\n"
              f"In-Reply-To: {msg['In-Reply-To']}\nAuto-Submitted: {msg['Auto-Submitted']}\n")
        body = msg.get_body(preferencelist=("plain",))
        print("    " + body.get_content().rstrip().replace("\n", "\n    "))


if __name__ == "__main__":
    raise SystemExit(main())
