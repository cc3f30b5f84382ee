"""`make demo` as a newcomer runs it: the story, a ticket page that opens from the link
in an acknowledgement, the commands to look again, and a log a person can read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # ~20 s: make test runs it, make test-quick not
def test_the_demo_tells_its_story_and_its_links_open_its_own_pages(tmp_path, dovecot):
    # The `dovecot` fixture: Dovecot is there (the demo starts a server of its own).
    work = tmp_path / "demo"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "demo.py")],
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
                          env={**os.environ, "MAILD_DEMO_DIR": str(work)})
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "6. The customer opens the link in the acknowledgement (HTTP 200)" in out, out
    assert "Ticket #1000" in out  # the page itself, as text
    assert f"--config {work}/maild.toml tickets show 10001" in out
    log = (work / "demo.log").read_text()
    assert "=== 8 mails sent (decoded) ===" in log
    assert "Subject: [#10001] Dein Support-Ticket: Auftragsliste lädt nicht mehr" in log
    assert "vielen Dank für Deine Nachricht!" in log  # the text, not quoted-printable
    # Afterwards the commands shown work on what the demo left.
    shown = subprocess.run([sys.executable, "-m", "maild", "--config", str(work / "maild.toml"),
                            "tickets", "show", "10001"], capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0 and "10001" in shown.stdout, shown.stderr

