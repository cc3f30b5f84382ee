"""Rendering writes a mail's MIME itself (the stdlib's generator was most of the cost of
an acknowledgement): what a mail client reads of it must be exactly what was rendered."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from jinja2 import DictLoader, Environment, StrictUndefined

from maild.mail.classify import LOOP_HEADER
from maild.mail.contexts import TEMPLATES, Relay, field_names, names_read
from maild.mail.render import File, Sender, render_mail
from maild.mail.render import environment as mail_environment

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
SENDER = Sender("service@example.com", "Süpport Team")
TEXT = ("Hallo Jürgen,\n\nZeile mit Leerzeichen am Ende   \n"
        + "lang " * 60 + "\n=3D ist kein Code, \tTab, ein einzelnes\rCR, Ende.\n"
        "Unicode: ✓ 😀 ß\n\n-- \nDein Team\n")
HTML = "<p>Hallo J&uuml;rgen, <b>✓</b></p>\n" + "<i>x</i> " * 100 + "\n"


def environment(html: bool) -> Environment:
    templates = {"relay.de.subject.j2": "{{ subject }}", "relay.de.txt.j2": "{{ text }}"}
    if html:
        templates["relay.de.html.j2"] = "{{ quote }}"
    return Environment(loader=DictLoader(templates), undefined=StrictUndefined,
                       keep_trailing_newline=True, autoescape=False)


def render(html: bool, files: tuple[File, ...] = (), subject: str = "Dein Anliegen [#42]"):
    refs = tuple(f"<ref{i}.{'x' * 40}@kunde.example>" for i in range(25))
    return render_mail(
        environment(html), "relay", Relay(
            subject=subject, text=TEXT, quote=HTML, number=42, language="de", agent_name="A",
            support_name="S", quote_author="", quote_date=None, timezone="Europe/Berlin"),
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


def test_every_mail_template_reads_only_its_contexts_fields_and_every_field_is_read():
    # A template naming something its context lacks would fail on the mail it renders
    # (StrictUndefined), maybe a rare one; a field no template reads is a dead value.
    env = mail_environment()
    files = [n for n in env.list_templates(extensions=["j2"])
             if not n.startswith(("_", "web/"))]
    by_name: dict[str, set[str]] = {}
    for file in files:
        name, language, kind, _ = file.split(".")
        assert name in TEMPLATES, f"{file}: no context type in contexts.TEMPLATES"
        assert language in ("de", "en") and kind in ("subject", "txt", "html"), file
        fields = set(field_names(TEMPLATES[name]))
        used = names_read(env, file)
        assert used <= fields, f"{file} reads {sorted(used - fields)}, not in its context"
        by_name.setdefault(name, set()).update(used)
    for name in TEMPLATES:
        for language in ("de", "en"):
            for kind in ("subject", "txt"):
                assert f"{name}.{language}.{kind}.j2" in files
    for cls in set(TEMPLATES.values()):
        read = set().union(*(by_name[n] for n, c in TEMPLATES.items() if c is cls))
        unread = set(field_names(cls)) - read - {"language", "number"}
        assert not unread, f"{cls.__name__}: no template reads {sorted(unread)}"


def test_a_template_is_given_its_own_context_type_only():
    context = Relay(subject="s", text="t", quote="", number=1, language="de", agent_name="A",
                    support_name="S", quote_author="", quote_date=None, timezone="UTC")
    with pytest.raises(TypeError, match="'ack' takes a Ack context, not a Relay"):
        render_mail(mail_environment(), "ack", context, sender=SENDER, to="a@kunde.example",
                    now=NOW)


def test_an_override_is_checked_for_its_own_names_and_may_split_a_part_into_an_include(
        tmp_path):
    # An include sees its includer's loop variables: an ops override that moves a loop's
    # body into a partial is fine; a name the mail lacks is refused before any mail.
    from maild.errors import ConfigError
    from maild.reload import check_templates
    (tmp_path / "notify.de.txt.j2").write_text(
        "{% set sep = '----' %}Ticket #{{ number }}\n"
        "{% for name, value in facts %}{% include '_fact_row.j2' %}{% endfor %}\n")
    (tmp_path / "_fact_row.j2").write_text("{{ sep }} {{ name }}: {{ value }}\n")
    check_templates(mail_environment(str(tmp_path)))
    (tmp_path / "notify.de.txt.j2").write_text("Ticket #{{ nummer }}\n")
    with pytest.raises(ConfigError, match="notify.de.txt.j2 uses nummer"):
        check_templates(mail_environment(str(tmp_path)))
    (tmp_path / "notify.de.txt.j2").unlink()
    # A shipped partial overridden with a name no mail including it has.
    (tmp_path / "_reply_above.j2").write_text("{{ numbr }}\n")
    with pytest.raises(ConfigError, match="uses numbr"):
        check_templates(mail_environment(str(tmp_path)))
