"""Rendering writes a mail's MIME itself (the stdlib's generator was most of the cost of
an acknowledgement): what a mail client reads of it must be exactly what was rendered."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from jinja2 import DictLoader, Environment, StrictUndefined

from maild.mail.classify import LOOP_HEADER
from maild.mail.render import File, Sender, render_mail

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
SENDER = Sender("service@example.com", "Süpport Team")
TEXT = ("Hallo Jürgen,\n\nZeile mit Leerzeichen am Ende   \n"
        + "lang " * 60 + "\n=3D ist kein Code, \tTab, ein einzelnes\rCR, Ende.\n"
        "Unicode: ✓ 😀 ß\n\n-- \nDein Team\n")
HTML = "<p>Hallo J&uuml;rgen, <b>✓</b></p>\n" + "<i>x</i> " * 100 + "\n"


def environment(html: bool) -> Environment:
    templates = {"t.de.subject.j2": "{{ subject }}", "t.de.txt.j2": "{{ text }}"}
    if html:
        templates["t.de.html.j2"] = "{{ html }}"
    return Environment(loader=DictLoader(templates), undefined=StrictUndefined,
                       keep_trailing_newline=True, autoescape=False)


def render(html: bool, files: tuple[File, ...] = (), subject: str = "Dein Anliegen [#42]"):
    refs = tuple(f"<ref{i}.{'x' * 40}@kunde.example>" for i in range(25))
    return render_mail(
        environment(html), "t", "de", {"subject": subject, "text": TEXT, "html": HTML,
                                       "number": 42},
        sender=SENDER, to="juergen@kunde.example", now=NOW,
        in_reply_to="<orig@kunde.example>", references=refs, auto_submitted="auto-replied",
        reply_to="service+t42@example.com", cc=("a@kunde.example", "b@kunde.example"),
        files=files)


def lines(text: str) -> str:
    """A decoded body with its line ends as the template wrote them (on the wire: CRLF)."""
    return text.replace("\r\n", "\n")


def read(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


@pytest.mark.parametrize("html", [False, True], ids=["text", "text+html"])
@pytest.mark.parametrize("files", [(), (File("Bericht ü.pdf", "application/pdf", b"%PDF"),)],
                         ids=["no-files", "files"])
@pytest.mark.parametrize("subject", ["Dein Anliegen [#42]", "Grüße zum Fehler ✓ [#42] "
                                     + "sehr lang " * 12])
def test_a_rendered_mail_reads_back_exactly(html, files, subject):
    rendered = render(html, files, subject)
    raw = rendered.raw
    assert b"\n" not in raw.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in raw.replace(b"\r\n", b""), "bare CR"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    raw.decode("ascii")  # 7 bit: every server takes it
    msg = read(raw)
    assert msg["Subject"] == " ".join(subject.split()) == rendered.subject
    assert msg["From"].addresses[0].display_name == "Süpport Team"
    assert msg["From"].addresses[0].addr_spec == "service@example.com"
    assert msg["To"].addresses[0].addr_spec == "juergen@kunde.example"
    assert msg["Cc"] == "a@kunde.example, b@kunde.example"
    assert msg["Message-ID"] == rendered.message_id
    assert msg["In-Reply-To"] == "<orig@kunde.example>"
    references = msg["References"].split()
    assert len(references) == 20 and references[-1] == "<orig@kunde.example>"
    assert msg["Reply-To"].addresses[0].addr_spec == "service+t42@example.com"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg[LOOP_HEADER] == "service@example.com"
    assert msg["Content-Language"] == "de"
    assert msg["MIME-Version"] == "1.0"
    # The text as rendered (the lone CR is a line end to every reader).
    assert lines(msg.get_body(("plain",)).get_content()) == TEXT.replace("\r", "\n")
    assert rendered.text == TEXT
    body_html = msg.get_body(("html",))
    if html:
        assert body_html is not None and lines(body_html.get_content()) == HTML
    else:
        assert body_html is None or body_html.get_content_type() == "text/plain"
    attached = [(p.get_filename(), p.get_content()) for p in msg.iter_attachments()]
    assert attached == [(f.filename, f.data) for f in files]
