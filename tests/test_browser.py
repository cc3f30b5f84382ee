"""A person with a real browser (Debian's Chromium, headless, driven by Playwright): the
ticket link from the acknowledgement, adding information and a file, then the escalation
link and its confirmation. Screenshots of the pages go to docs/screenshots/ with
MAILD_SCREENSHOTS=docs (else to a temporary folder).

Needs `apt-get install chromium` and `pip install playwright` (no browser download: the
system's Chromium is used). With CI=true a missing browser fails the test; elsewhere it
skips with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from harness import ROOT, Daemon, free_port, rows, wait_for_port, wait_until, write_config

from maild.models import Event, Ticket, TicketMessage

CHROMIUM = "/usr/bin/chromium"
# The screenshots in docs/ are refreshed on request (MAILD_SCREENSHOTS=docs); otherwise
# they go to a temporary folder, so a test run leaves the checkout as it was.
SHOTS = ROOT / "docs" / "screenshots"
IN_CI = os.environ.get("CI", "").lower() == "true"
FIRST = ("From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
         "Subject: Auftragsliste lädt nicht\r\nMessage-ID: <browser@kunde.example>\r\n"
         "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
         "Content-Transfer-Encoding: 8bit\r\n\r\n"
         "Hallo, seit heute früh lädt die Auftragsliste nicht mehr. Android 14.\r\n"
         "Telefon: +49 30 1234567\r\n\r\nViele Grüße\r\nAnna Berger, Kunde GmbH\r\n")
LINK = re.compile(r"https?://[^\s\"<>]+/(?:t|escalate)/[A-Za-z0-9_.\-]+")


def _browser_or_skip():  # type: ignore[no-untyped-def]
    reason = ""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        reason = "Chromium missing: apt-get install -y chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = reason or "Playwright missing: pip install playwright"
        sync_playwright = None
    if reason:
        if IN_CI:
            pytest.fail(f"real-browser test needs a browser in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    return sync_playwright


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_customer_adds_information_and_escalates_in_a_real_browser(
        tmp_path, dovecot, mailbox, smtp, database_url):
    # Anna opens the ticket link from her acknowledgement, adds a note and a screenshot,
    # then opens the escalation link and confirms: the ticket is escalated, her note is on
    # the ticket, the staff mail and her confirmation are sent once; no CSP violation.
    sync_playwright = _browser_or_skip()
    shots = SHOTS if os.environ.get("MAILD_SCREENSHOTS") == "docs" else tmp_path
    port = free_port()
    config = write_config(
        tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
        password=mailbox.password, smtp_port=smtp.port, database_url=database_url,
        extra=f'[http]\nlisten = "127.0.0.1:{port}"\n\n[agents]\n'
              f'members = [{{ address = "lea@example.com", name = "Lea", lead = true }}]\n')
    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        mailbox.append(FIRST.encode())
        assert wait_until(lambda: any(m.recipients == ["anna@kunde.example"]
                                      for m in smtp.mails))
        [ack] = [m for m in smtp.mails if m.recipients == ["anna@kunde.example"]]
        text = ack.message.get_body(("plain",)).get_content()
        found = {urlsplit(u).path.split("/")[1]: urlsplit(u).path for u in LINK.findall(text)}
        base = f"http://127.0.0.1:{port}"
        wait_for_port(port)
        attachment = tmp_path / "fehler.txt"
        attachment.write_text("E42 beim Laden der Auftragsliste\n")
        shots.mkdir(parents=True, exist_ok=True)
        problems: list[str] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1000, "height": 900}, locale="de-DE")
            page.on("console", lambda m: problems.append(m.text)
                    if "Content Security Policy" in m.text else None)
            page.goto(base + found["t"])
            assert "Ticket #10001" in page.inner_text("h1")
            page.fill("#text", "Version 4.2.1; die Fehlermeldung ist E42.")
            page.set_input_files("#files", str(attachment))
            page.click("button[type=submit]")
            page.wait_for_selector("text=Deine Informationen sind bei uns angekommen")
            page.screenshot(path=str(shots / "ticket-page.png"), full_page=True)
            page.goto(base + found["escalate"])
            assert page.input_value("#phone") == "+49 30 1234567"
            page.screenshot(path=str(shots / "escalation-page.png"), full_page=True)
            page.fill("#phone", "+49 171 5550123")
            page.click("button[type=submit]")
            page.wait_for_selector("text=Dein Ticket ist eskaliert")
            page.screenshot(path=str(shots / "escalation-confirmed.png"), full_page=True)
            browser.close()
        assert problems == []
        [ticket] = rows(database_url, Ticket)
        assert ticket.escalated_at is not None and ticket.escalation_phone == "+49 171 5550123"
        notes = [m.body_text for m in rows(database_url, TicketMessage,
                                           TicketMessage.kind == "customer")]
        assert any("E42" in n for n in notes)
        assert len(rows(database_url, Event, Event.kind == "escalated")) == 1
        assert wait_until(lambda: any("ESKALIERT" in str(m.message["Subject"])
                                      for m in smtp.mails)
                          and any("Call-Back-Service aktiviert" in str(m.message["Subject"])
                                  for m in smtp.mails))
        subjects = [str(m.message["Subject"]) for m in smtp.mails]
        assert sum("ESKALIERT" in s for s in subjects) == 1
        assert sum("Call-Back-Service aktiviert" in s for s in subjects) == 1
        assert daemon.stop() == 0
    finally:
        daemon.kill()
