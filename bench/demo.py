"""`make demo`: a throwaway Dovecot and SMTP capture, SQLite, the daemon, sample mails, and
an agent answering one ticket by replying to its notification.

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


AGENTS = """
[agents]
team_address = "team@example.com"
members = [{ address = "max@example.com", name = "Max Agent" }]
"""


def agent_answer(notice: bytes) -> bytes:
    """What Max's mail client sends when he answers a ticket notification."""
    from email import message_from_bytes, policy
    msg = message_from_bytes(notice, policy=policy.default)
    return (f"From: Max Agent <max@example.com>\r\nTo: service@example.com\r\n"
            f"Subject: AW: {msg['Subject']}\r\nMessage-ID: <demo-agent-1@example.com>\r\n"
            f"In-Reply-To: {msg['Message-ID']}\r\nReferences: {msg['Message-ID']}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            "#status in_progress\r\n#assign me\r\n\r\nHallo Anna,\r\n"
            "wir haben den Fehler nachgestellt und spielen heute Abend ein Update ein.\r\n"
            "\r\nMax\r\n").encode()


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
                          database_url=f"sqlite:///{work / 'maild.db'}", extra=AGENTS)
    print(f"Dovecot on 127.0.0.1:{dovecot.port}, SMTP capture on 127.0.0.1:{smtp.port}, "
          f"SQLite in {work}/maild.db")
    print(maild("db", "upgrade", config=config).stdout.strip())
    daemon = Daemon(config, work / "maild.log").start()
    try:
        wait_until(lambda: "watching" in daemon.output(), timeout=20)
        for name, what in SAMPLES:
            print(f"→ mail into INBOX: {what}")
            box.append((ROOT / "tests" / "data" / name).read_bytes())
        smtp.wait_for(6, timeout=30)  # 3 acknowledgements, 3 notifications to the team
        notice = next(m for m in smtp.mails if m.recipients == ["team@example.com"])
        print("→ Max (agent) answers the first notification: #status in_progress, #assign me")
        box.append(agent_answer(notice.raw))
        smtp.wait_for(8, timeout=30)  # the relayed answer and the status mail
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
    print("\n=== maild tickets show 10001 ===")
    print(maild("tickets", "show", "10001", config=config).stdout.rstrip())
    print(f"\n=== {len(smtp.mails)} mails sent ===")
    for mail in smtp.mails:
        msg = mail.message
        print(f"\nTo: {', '.join(mail.recipients)}\nSubject: {msg['Subject']}\n"
              f"In-Reply-To: {msg['In-Reply-To']}\nAuto-Submitted: {msg['Auto-Submitted']}\n")
        body = msg.get_body(preferencelist=("plain",))
        print("    " + body.get_content().rstrip().replace("\n", "\n    "))


if __name__ == "__main__":
    raise SystemExit(main())
