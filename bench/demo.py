"""`make demo`: a throwaway Dovecot and SMTP capture, SQLite, the daemon, sample mails, and
an agent answering one ticket by replying to its notification.

Tells the story in a few lines (the mails in, the tickets, the answers, the agent's reply
and what the customer then got); the full record goes to .demo/demo.log. On a terminal
maild keeps running with a mail client's connection details shown until Ctrl-C; without
one it stops by itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import (  # noqa: E402
    Captured,
    Daemon,
    Dovecot,
    Mailbox,
    ServerUnavailable,
    SmtpCapture,
    http_get,
    maild,
    wait_until,
    write_config,
)
from inscriptis import get_text  # noqa: E402

SAMPLES = [
    ("customer_de.eml", "app error, with customer and order number"),
    ("customer_en.eml", "cannot log in, screenshot attached"),
    ("customer_de_html.eml", "an outage, as Outlook HTML"),
    ("out_of_office.eml", "an out-of-office reply"),
]
AGENTS = """
[agents]
team_address = "team@example.com"
members = [{ address = "max@example.com", name = "Max Agent" }]
"""
# The demo's state (config, SQLite, log); MAILD_DEMO_DIR moves it (the tests do).
WORK = Path(os.environ.get("MAILD_DEMO_DIR") or ROOT / ".demo")
HERE = WORK.relative_to(ROOT) if WORK.is_relative_to(ROOT) else WORK
LOG = WORK / "demo.log"


def agent_answer(notice: bytes) -> bytes:
    """What Max's mail client sends when he answers a ticket notification."""
    msg = message_from_bytes(notice, policy=policy.default)
    return (f"From: Max Agent <max@example.com>\r\nTo: service@example.com\r\n"
            f"Subject: AW: {msg['Subject']}\r\nMessage-ID: <demo-agent-1@example.com>\r\n"
            f"In-Reply-To: {msg['Message-ID']}\r\nReferences: {msg['Message-ID']}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            "#status in_progress\r\n#assign me\r\n\r\nHallo Anna,\r\n"
            "wir haben den Fehler nachgestellt und spielen heute Abend ein Update ein.\r\n"
            "\r\nMax\r\n").encode()


def stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Ctrl-C or a plain kill stops everything and cleans up (even when started in the
    # background, where SIGINT comes ignored).
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    # Not under the checkout: Dovecot's unprivileged processes must reach the folder.
    imap_dir = Path(tempfile.mkdtemp(prefix="maild-demo-dovecot-"))
    dovecot, smtp, daemon = Dovecot(imap_dir), SmtpCapture(), None
    try:
        dovecot.start()
        smtp.start()
        user, password = dovecot.add_user()
        box = Mailbox(dovecot.port, user, password)
        config = write_config(WORK / "maild.toml", imap_port=dovecot.port, user=user,
                              password=password, smtp_port=smtp.port,
                              database_url=f"sqlite:///{WORK / 'maild.db'}", extra=AGENTS)
        web_port = own_pages(config)
        upgraded = maild("db", "upgrade", config=config)
        if upgraded.returncode:
            raise RuntimeError(f"maild db upgrade failed: {upgraded.stderr.strip()}")
        daemon = Daemon(config, WORK / "maild.log").start()
        if not wait_until(lambda: "watching" in daemon.output(), timeout=20):
            raise RuntimeError("the daemon did not start watching the mailbox")
        story(box, smtp, config)
        ticket_page(smtp, web_port)
        shown = len(smtp.mails)
        record(config, smtp, daemon)
        print(f"\nThe full record (daemon log, every ticket, every mail decoded): {LOG}")
        print(LOOK_AGAIN)
        if sys.stdin.isatty():
            keep_running(dovecot, box, smtp, shown, web_port)
    except KeyboardInterrupt:
        pass
    except (ServerUnavailable, RuntimeError, AssertionError, OSError) as exc:
        print(f"\nThe demo could not go on: {str(exc).splitlines()[0]}", file=sys.stderr)
        if daemon is not None:
            record_log(daemon)
            print(f"See {LOG}", file=sys.stderr)
        return 1
    finally:
        if daemon is not None:
            daemon.stop()
        smtp.stop()
        dovecot.stop()
        shutil.rmtree(imap_dir, ignore_errors=True)
    print("Stopped: daemon, Dovecot and the SMTP capture.")
    return 0


LOOK_AGAIN = f"""
Look again afterwards (the database stays in {HERE}/):
   .venv/bin/maild --config {HERE}/maild.toml tickets list
   .venv/bin/maild --config {HERE}/maild.toml tickets show 10001
   .venv/bin/maild --config {HERE}/maild.toml outbox list
   .venv/bin/maild --config {HERE}/maild.toml sla report"""


def own_pages(config: Path) -> int:
    """Point the links in maild's mails at the demo's own listener (the test config
    points them at a public address that does not exist here); returns its port."""
    text = config.read_text()
    found = re.search(r'^listen = "127\.0\.0\.1:(\d+)"$', text, re.MULTILINE)
    if found is None:
        raise RuntimeError("the demo config has no [http] listen address")
    port = int(found.group(1))
    config.write_text(text.replace('public_url = "https://support.example.com"',
                                   f'public_url = "http://127.0.0.1:{port}"'))
    return port


def ticket_page(smtp: SmtpCapture, port: int) -> None:
    """Open the link of the first acknowledgement, as the customer would."""
    for mail in list(smtp.mails):
        if mail.recipients == ["team@example.com"]:
            continue
        link = re.search(rf"http://127\.0\.0\.1:{port}/\S+", "\n".join(body_lines(mail.message)))
        if link is None:
            continue
        status, _, html = http_get(port, link.group(0)[len(f"http://127.0.0.1:{port}"):])
        print(f"\n6. The customer opens the link in the acknowledgement (HTTP {status}):\n"
              f"   {link.group(0)}")
        html = re.sub(r"</(dt|dd|th|td)>", r" </\1>", html)  # "Status neu", not "Statusneu"
        lines = [line.strip() for line in get_text(html).splitlines() if line.strip()]
        for line in lines[:8]:
            print(f"       {short(line, 80)}")
        return
    print("\n6. No acknowledgement carried a link to the ticket's page.")


def story(box: Mailbox, smtp: SmtpCapture, config: Path) -> None:
    print(f"maild demo: Dovecot on 127.0.0.1:{box.port}, SMTP capture on 127.0.0.1:{smtp.port}, "
          f"SQLite in {WORK / 'maild.db'}\n\n1. Mail arrives in the support mailbox:")
    for name, what in SAMPLES:
        raw = (ROOT / "tests" / "data" / name).read_bytes()
        msg = message_from_bytes(raw, policy=policy.default)
        sender = msg["From"].addresses[0]
        print(f"   {sender.display_name or sender.addr_spec:<14} "
              f"{short(str(msg['Subject']), 46):<46} ({what})")
        box.append(raw)
    smtp.wait_for(6, timeout=30)  # 3 acknowledgements, 3 notifications to the team
    print("\n2. Tickets (maild tickets list):")
    for t in reversed(json.loads(maild("tickets", "list", "--json", config=config).stdout)):
        if t.get("automatic"):
            print(f"   #{t['number']}  {t['customer']}: automatic mail, recorded, not answered")
            continue
        missing = ", ".join(t.get("missing") or []) or "nothing"
        print(f"   #{t['number']}  {t['customer']:<32} {t['priority']:<7} missing: {missing}")
    print("\n3. Answers sent at once (the SMTP capture):")
    for mail in list(smtp.mails):
        show_mail(mail, lines=3 if mail.recipients != ["team@example.com"] else 0)
    # Several SMTP connections send at once: the notices arrive in any order.
    notice = next(m for m in smtp.mails if m.recipients == ["team@example.com"]
                  and "[#10001]" in str(m.message["Subject"]))
    print("\n4. Max (agent) answers the team's notification for #10001:")
    print("   #status in_progress / #assign me / Hallo Anna, wir haben den Fehler nachgestellt…")
    seen = len(smtp.mails)
    box.append(agent_answer(notice.raw))
    smtp.wait_for(seen + 2, timeout=30)  # the relayed answer and the status mail
    print("   and the customer gets:")
    for mail in smtp.mails[seen:]:
        show_mail(mail, lines=3)
    wait_until(lambda: box.count("INBOX") == 0, timeout=10)
    print(f"\n5. Folders: INBOX {box.count('INBOX')}, Processed {box.count('Processed')}, "
          f"Quarantine {box.count('Quarantine')}")


def show_mail(mail: Captured, lines: int) -> None:
    msg = mail.message
    print(f"   → {', '.join(mail.recipients):<30} {short(str(msg['Subject']), 60)}")
    for line in body_lines(msg)[:lines]:
        print(f"       {short(line, 80)}")


def body_lines(msg: Any) -> list[str]:
    body = msg.get_body(preferencelist=("plain",))
    text = body.get_content() if body is not None else ""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.startswith("##-")]


def short(text: str, width: int) -> str:
    return textwrap.shorten(text, width, placeholder="…")


def record(config: Path, smtp: SmtpCapture, daemon: Daemon) -> None:
    """Everything the short story leaves out, into the log file."""
    tickets = json.loads(maild("tickets", "list", "--json", config=config).stdout)
    parts = ["=== maild tickets list ===", maild("tickets", "list", config=config).stdout]
    for t in reversed(tickets):
        parts += [f"=== maild tickets show {t['number']} ===",
                  maild("tickets", "show", str(t["number"]), config=config).stdout]
    parts.append(f"=== {len(smtp.mails)} mails sent (decoded) ===")
    for mail in list(smtp.mails):
        parts += [f"--- envelope to {', '.join(mail.recipients)} ---", decoded(mail)]
    LOG.write_text("\n".join(parts) + "\n")
    record_log(daemon)


def decoded(mail: Captured) -> str:
    """A sent mail as a person reads it: its headers decoded, its text part, and what
    other parts it has (the raw bytes are in the SMTP capture, not needed here)."""
    msg = mail.message
    lines = [f"{name}: {msg[name]}" for name in (
        "From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "In-Reply-To",
        "Auto-Submitted") if msg[name] is not None]
    body = msg.get_body(preferencelist=("plain",))
    lines += ["", body.get_content().rstrip() if body is not None else "(no text part)"]
    others = [f"{part.get_content_type()}" + (f" {part.get_filename()}" if part.get_filename()
                                              else "")
              for part in msg.walk() if not part.is_multipart() and part is not body]
    if others:
        lines += ["", f"[other parts: {', '.join(others)}]"]
    return "\n".join(lines) + "\n"


def record_log(daemon: Daemon) -> None:
    with LOG.open("a") as fh:
        fh.write("=== daemon log ===\n" + daemon.output())


def keep_running(dovecot: Dovecot, box: Mailbox, smtp: SmtpCapture, seen: int,
                 web_port: int) -> None:
    print(f"""
maild keeps running. Connect a mail client to the support mailbox:
   IMAP  127.0.0.1 port {dovecot.port}, no TLS, user {box.user}, password {box.password}
         (folders INBOX, Processed, Quarantine; put mail into INBOX)
   Web   the links in the mails open http://127.0.0.1:{web_port}/… (ticket pages,
         escalation) on this machine
   SMTP  nothing leaves this machine: the capture on 127.0.0.1:{smtp.port} keeps what maild
         sends and lists it here. Ctrl-C stops everything.""")
    while True:
        time.sleep(1)
        for mail in smtp.mails[seen:]:
            show_mail(mail, lines=0)
        seen = len(smtp.mails)


if __name__ == "__main__":
    raise SystemExit(main())
