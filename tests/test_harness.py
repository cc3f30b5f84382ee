"""The test harness itself: a wait that times out says what it saw."""

from __future__ import annotations

import smtplib

import pytest
from harness import SmtpCapture


def test_waiting_for_mail_that_never_comes_fails_with_what_came(smtp: SmtpCapture):
    # One mail arrives where two were expected: the failure names the one that came.
    with smtplib.SMTP("127.0.0.1", smtp.port, timeout=10) as client:
        client.sendmail("service@example.com", ["anna@kunde.example"],
                        b"From: service@example.com\r\nTo: anna@kunde.example\r\n"
                        b"Subject: [#10001] Ihr Ticket\r\n\r\nHallo\r\n")
    assert len(smtp.wait_for(1, timeout=5)) == 1
    with pytest.raises(AssertionError) as failure:
        smtp.wait_for(2, timeout=0.3)
    message = str(failure.value)
    assert "expected 2 mails" in message and "got 1" in message
    assert "To: anna@kunde.example  Subject: [#10001] Ihr Ticket" in message
