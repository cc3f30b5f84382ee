"""The customer's web pages: signed links, the ticket page, adding information, the
call-back service (escalation), and the guard around them.

In-process with Starlette's TestClient against both databases (intake + outbox rows); the
whole path through the daemon, Dovecot and SMTP is the last test here.
"""

from __future__ import annotations

import base64
import email
import ipaddress
import json
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from urllib.parse import urlsplit

import pytest
from harness import (
    Clock,
    Daemon,
    cli_config,
    free_port,
    offline_settings,
    outbox_settled,
    rows,
    wait_for_port,
    wait_until,
    with_bytes,
    write_config,
)
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from maild import cli, config, db, health, links, web
from maild.daemon import build_desk
from maild.errors import ConfigError
from maild.intake import Intake
from maild.mail.fetched import Fetched
from maild.models import Attachment, Event, OutboxMail, Ticket, TicketMessage

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)  # a Thursday, within support hours
SATURDAY = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
FIRST = ("From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
         "Subject: App stuerzt ab\r\nMessage-ID: <first@kunde.example>\r\n\r\n"
         "Die App stürzt ab. Android 14. Telefon: +49 30 1234567\r\n"
         "<script>alert('x')</script>\r\n")
OTHER = ("From: Bob <bob@firma.example>\r\nTo: service@example.com\r\n"
         "Subject: Drucker\r\nMessage-ID: <other@firma.example>\r\n\r\n"
         "Der Drucker druckt nicht.\r\n")
AGENTS = {"members": [{"address": "max@example.com", "name": "Max Agent"},
                      {"address": "lea@example.com", "name": "Lea Lead", "lead": True}]}
LINK = re.compile(r"https?://[^\s\"<>]+/(?:t|escalate)/[A-Za-z0-9_.\-]+")


class Site:
    """A desk with ticket 10001 (and 10002), its web app, and helpers to read the rows."""

    def __init__(self, tmp_path, factory, database_url, clock, **sections) -> None:
        sections.setdefault("agents", AGENTS)
        self.settings = offline_settings(database_url, tmp_path / "blobs", **sections)
        self.desk = build_desk(self.settings, factory, NOW)
        self.factory, self.clock = factory, clock
        self.intake = Intake(factory, self.desk, "INBOX", 3, clock)
        self.intake.process(1, Fetched(1, FIRST.encode(), clock()))
        self.intake.process(1, Fetched(2, OTHER.encode(), clock()))
        self.app = web.make_app(self.desk, factory, self.settings, clock)
        self.client = TestClient(self.app, follow_redirects=False)

    def links(self, number: int = 10001) -> dict[str, str]:
        """The paths of the links in the ticket's acknowledgement: {"t": …, "escalate": …}."""
        ack = [o for o in self.outbox("ack") if f"[#{number}]" in o.raw.decode()][0]
        msg = email.message_from_bytes(ack.raw, policy=policy.default)
        text = msg.get_body(("plain",)).get_content()
        found = {urlsplit(u).path.split("/")[1]: urlsplit(u).path for u in LINK.findall(text)}
        return found

    def outbox(self, kind: str | None = None) -> list[OutboxMail]:
        with db.transaction(self.factory) as s:
            query = select(OutboxMail).order_by(OutboxMail.id)
            return with_bytes(list(s.scalars(query.where(OutboxMail.kind == kind)
                                             if kind else query)), self.desk.store)

    def ticket(self, number: int = 10001) -> Ticket:
        with db.transaction(self.factory) as s:
            return s.scalars(select(Ticket).where(Ticket.number == number)).one()

    def events(self, kind: str) -> list[Event]:
        with db.transaction(self.factory) as s:
            return list(s.scalars(select(Event).where(Event.kind == kind)))

    def counts(self) -> tuple[int, ...]:
        with db.transaction(self.factory) as s:
            return tuple(int(s.scalar(select(func.count()).select_from(m)) or 0)
                         for m in (OutboxMail, Event, TicketMessage, Attachment))

    def hidden(self, path: str) -> dict[str, str]:
        """The hidden fields of the page's form, as the browser would send them."""
        page = self.client.get(path).text
        return dict(re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', page))

    def form_token(self, path: str) -> str:
        page = self.client.get(path).text
        found = re.search(r'name="form" value="([0-9a-f]+)"', page)
        assert found, page
        return found.group(1)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def site(tmp_path, factory, database_url, clock) -> Site:
    return Site(tmp_path, factory, database_url, clock)


def test_ack_carries_both_links_and_the_ticket_page_shows_the_ticket(site):
    # The customer opens the ticket link from the acknowledgement: number, subject, status,
    # deadline, their mail and our acknowledgement in the history; security headers set.
    paths = site.links()
    assert set(paths) == {"t", "escalate"}
    page = site.client.get(paths["t"])
    assert page.status_code == 200
    assert "Ticket #10001" in page.text and "App stuerzt ab" in page.text
    assert "Die App stürzt ab" in page.text and "Deine Nachricht an unseren Support" in page.text
    assert "Reaktion bis" in page.text
    token = paths["t"].rsplit("/", 1)[1]
    assert f'action="{token}"' in page.text  # the form posts back to this very link
    claim = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert set(claim) == {"t", "a", "v", "i"} and "anna" not in json.dumps(claim)
    assert claim["a"] != links.address_tag("", "anna@kunde.example")  # keyed, not a hash
    headers = page.headers
    assert headers["content-security-policy"].startswith("default-src 'none'; style-src 'self'")
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"
    assert "<script" not in page.text.replace("&lt;script", "")  # no script of ours or theirs
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page.text  # mail text escaped
    css = site.client.get("/static/web.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_forged_expired_revoked_and_cross_ticket_links_get_one_page(site, clock):
    # Every link that does not open its ticket gets the same friendly page (404), saying how
    # to get a new link and naming no ticket; nothing is read or changed.
    paths = site.links()
    token = paths["t"].rsplit("/", 1)[1]
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    other = site.ticket(10002)
    cross = links.customer_token(site.desk.secret, "ticket", other.number,
                                 "anna@kunde.example", 0, NOW)  # Anna's address, Bob's ticket
    wrong_key = links.customer_token("not-our-key", "ticket", 10001, "anna@kunde.example", 0,
                                     NOW)
    kind_swapped = f"/escalate/{token}"  # a ticket-page token is no escalation token
    answers = {name: site.client.get(path) for name, path in {
        "forged": f"/t/{forged}", "cross": f"/t/{cross}", "wrong key": f"/t/{wrong_key}",
        "kind": kind_swapped, "garbage": "/t/x", "unknown path": "/admin",
    }.items()}
    clock.now = NOW + timedelta(days=181)
    answers["expired"] = site.client.get(paths["t"])
    clock.now = NOW
    with db.transaction(site.factory) as s:
        s.execute(update(Ticket).where(Ticket.number == 10001).values(link_version=1))
    answers["revoked"] = site.client.get(paths["t"])
    answers["revoked escalation"] = site.client.get(paths["escalate"])
    bodies = {a.text for a in answers.values()}
    assert len(bodies) == 1, {k: a.status_code for k, a in answers.items()}
    assert {a.status_code for a in answers.values()} == {404}
    body = bodies.pop()
    assert "Antworte einfach auf eine beliebige E-Mail" in body and "reply to any email" in body
    assert "10001" not in body and "anna" not in body
    assert answers["revoked"].headers["referrer-policy"] == "no-referrer"
    # A link issued after the revocation works.
    fresh = links.customer_token(site.desk.secret, "ticket", 10001, "anna@kunde.example", 1,
                                 NOW)
    assert site.client.get(f"/t/{fresh}").status_code == 200


def test_links_signed_with_an_old_key_still_work_after_rotation(tmp_path, factory,
                                                                database_url, clock):
    # [security] old_secret_keys: a link signed with the previous key still opens the page;
    # new links are signed with the current key.
    new_key, old_key = "new-key-" + "n" * 32, "old-key-" + "o" * 32
    site = Site(tmp_path, factory, database_url, clock,
                security={"secret_key": new_key, "old_secret_keys": [old_key]})
    old = links.customer_token(old_key, "ticket", 10001, "anna@kunde.example", 0, NOW)
    assert site.client.get(f"/t/{old}").status_code == 200
    assert web.link_holds(links.read_customer_token((new_key,), "ticket", old),
                          site.ticket(), NOW, 180, (new_key,)) is False
    new = site.links()["t"].rsplit("/", 1)[1]
    assert links.read_customer_token((new_key,), "ticket", new) is not None


def test_get_changes_nothing(site):
    # Mail scanners follow links: opening both pages (twice) changes no row, sends nothing.
    paths = site.links()
    before, ticket = site.counts(), site.ticket()
    for path in (paths["t"], paths["escalate"], paths["t"], paths["escalate"]):
        assert site.client.get(path).status_code == 200
    after = site.ticket()
    assert site.counts() == before
    assert (after.escalated_at, after.priority, after.updated_at, after.status) == (
        None, ticket.priority, ticket.updated_at, ticket.status)


def test_escalation_page_explains_billing_and_shows_the_phone_number(site):
    # The confirmation page explains the call-back service, that it is billable when the
    # problem is not ours, and shows the number from the ticket's facts to correct.
    page = site.client.get(site.links()["escalate"]).text
    assert "Call-Back-Service" in page
    assert "kostenpflichtig ist, wenn das vorliegende Problem nicht auf einen Fehler" in page
    assert 'value="+49 30 1234567"' in page


def test_two_concurrent_posts_escalate_once(site):
    # A double click as two concurrent POSTs (two threads): one escalation, one event, one
    # mail to the staff and one to the customer; a replay later changes nothing either.
    path = site.links()["escalate"]
    form = {"form": site.form_token(path), "phone": "+49 171 5550123"}
    assert post_twice_at_once(site, path, form) == [303, 303]
    assert site.client.post(path, data=form).status_code == 303  # the back button
    ticket = site.ticket()
    assert ticket.escalated_at == NOW and ticket.escalation_phone == "+49 171 5550123"
    assert ticket.priority == "urgent" and ticket.facts.phone == "+49 171 5550123"
    assert [e.detail["phone"] for e in site.events("escalated")] == ["+49 171 5550123"]
    staff, customer = site.outbox("escalated_staff"), site.outbox("escalated")
    assert len(staff) == 1 and len(customer) == 1
    mail = email.message_from_bytes(staff[0].raw, policy=policy.default)
    assert mail["Importance"] == "high" and mail["X-Priority"].startswith("1")
    [notice] = [o for o in site.outbox("notify") if o.ticket_id == ticket.id]
    assert mail["In-Reply-To"] == notice.message_id  # in the agents' thread of the ticket
    body = mail.get_body(("plain",)).get_content()
    assert "Zurückrufen:  +49 171 5550123" in body and "Die App stürzt ab" in body
    assert "+49 171 5550123" in mail["Subject"] and "[#10001]" in mail["Subject"]
    assert set(staff[0].recipients) == {"lea@example.com", "max@example.com"}  # lead + agents
    assert customer[0].recipients == ["anna@kunde.example"]
    confirmation = email.message_from_bytes(customer[0].raw, policy=policy.default)
    assert "Call-Back-Service aktiviert" in confirmation["Subject"]
    html = confirmation.get_body(("html",)).get_content()
    assert "<strong>+49 171 5550123</strong>" in html and 'href="http' in html
    done = site.client.get(path).text
    assert "Dein Ticket ist eskaliert" in done and "+49 171 5550123" in done


def test_escalation_needs_the_form_token_and_a_phone_number(site):
    # A POST without the page's form token (a forged cross-site form) or with no usable
    # number escalates nothing and sends nothing.
    path = site.links()["escalate"]
    before = site.counts()
    assert site.client.post(path, data={"phone": "+49 30 1"}).status_code == 400
    bad = site.client.post(path, data={"form": site.form_token(path), "phone": "call me"})
    assert bad.status_code == 400 and "Bitte gib eine Telefonnummer an" in bad.text
    assert site.counts() == before and site.ticket().escalated_at is None


def test_escalation_outside_support_hours_says_when_we_call(site, clock):
    # On a Saturday the page and the customer's mail say when the call-back will happen.
    clock.now = SATURDAY
    path = site.links()["escalate"]
    page = site.client.get(path).text
    assert "gerade nicht besetzt" in page and "Montag, 30. November 2026, 09:00 Uhr" in page
    site.client.post(path, data={"form": site.form_token(path), "phone": "+49 30 1234567"})
    mail = site.outbox("escalated")[0].raw
    text = email.message_from_bytes(mail, policy=policy.default).get_body(
        ("plain",)).get_content()
    assert "Montag, 30. November 2026, 09:00 Uhr" in text


def test_added_information_becomes_a_message_and_reaches_the_agent(site):
    # The form's text and file become a customer message like a mail reply: facts merged,
    # the file stored, the agents notified; the page confirms it.
    path = site.links()["t"]
    notices = len(site.outbox("notify"))
    answer = site.client.post(path, data={"form": site.form_token(path),
                                          "text": "Version 4.2.1, Fehlermeldung: E42"},
                              files={"files": ("log.txt", b"line 1\nline 2\n", "text/plain")})
    assert answer.status_code == 303
    with db.transaction(site.factory) as s:
        message = s.scalars(select(TicketMessage).where(TicketMessage.kind == "customer")
                            .order_by(TicketMessage.id.desc())).first()
        files = s.scalars(select(Attachment).where(
            Attachment.ticket_message_id == message.id)).all()
    assert "E42" in message.body_text and message.author == "anna@kunde.example"
    assert [f.filename for f in files] == ["log.txt"] and files[0].blob_sha256
    assert len(site.outbox("notify")) == notices + 1
    assert [e.detail["how"] for e in site.events("follow_up")] == ["web"]
    page = site.client.get(answer.headers["location"]).text
    assert "Deine Informationen sind bei uns angekommen" in page and "E42" in page
    download = site.client.get(f"{path}/files/{files[0].id}")
    assert download.content == b"line 1\nline 2\n"
    assert download.headers["content-disposition"].startswith("attachment")
    assert download.headers["x-content-type-options"] == "nosniff"


def test_added_information_needs_the_form_token(site):
    # A cross-site POST (no form token from the page) adds nothing.
    before = site.counts()
    answer = site.client.post(site.links()["t"], data={"text": "spam"})
    assert answer.status_code == 400 and site.counts() == before
    # a token that is not even ASCII is refused the same way (no 500, no traceback)
    for link in (site.links()["t"], site.links()["escalate"]):
        answer = site.client.post(link, data={"text": "x", "phone": "0170 1", "form": "ü"})
        assert answer.status_code == 400 and site.counts() == before


def test_page_never_shows_internal_notes(site):
    # An agent's internal note (and its file) never appears on the customer's page.
    with db.transaction(site.factory) as s:
        ticket = s.scalars(select(Ticket).where(Ticket.number == 10001)).one()
        s.add(TicketMessage(ticket_id=ticket.id, direction="in", author="max@example.com",
                            body_text="GEHEIM: Kunde zahlt nicht", new_text="GEHEIM",
                            created_at=NOW, kind="note", internal=True))
    page = site.client.get(site.links()["t"]).text
    assert "GEHEIM" not in page
    assert "Max Agent" not in page  # nor the agents' notification
    assert "Neues Ticket" not in page


def test_upload_over_the_limit_is_refused_with_a_readable_page(tmp_path, factory,
                                                              database_url, clock):
    # A file over [attachments] max_file_mb, or a request body over the mail limit: 413
    # with a page that says what to do; nothing is added.
    site = Site(tmp_path, factory, database_url, clock,
                attachments={"max_file_mb": 0.01, "max_mail_mb": 0.02})
    path = site.links()["t"]
    token, before = site.form_token(path), site.counts()
    too_big = site.client.post(path, data={"form": token, "text": "x"},
                               files={"files": ("big.bin", b"x" * 20_000, "application/zip")})
    assert too_big.status_code == 413 and "höchstens 0.01 MB" in too_big.text
    huge = site.client.post(path, data={"form": token, "text": "x"},
                            files={"files": ("huge.bin", b"x" * 400_000, "application/zip")})
    assert huge.status_code == 413 and "Das war zu groß" in huge.text
    assert site.counts() == before


def test_too_many_requests_get_a_429_page(tmp_path, factory, database_url, clock):
    # Per client address and per link: past the rate, a clear page, no database work.
    site = Site(tmp_path, factory, database_url, clock, http={"rate_per_minute": 5})
    codes = [site.client.get("/t/forged").status_code for _ in range(7)]
    assert codes[:5] == [404] * 5 and codes[5:] == [429, 429]
    assert "Zu viele Anfragen" in site.client.get("/t/forged").text


def test_monitoring_on_this_host_is_never_rate_limited(tmp_path, factory, database_url,
                                                       clock):
    # /healthz polled from this host (a probe every tenth of a second) always answers, and
    # spends no client's budget; through a proxy it is limited as every other path.
    site = Site(tmp_path, factory, database_url, clock, http={"rate_per_minute": 5})
    site.app = web.make_app(site.desk, factory, site.settings, clock,
                            runtime=health.Runtime(started_at=NOW))
    local = TestClient(site.app, follow_redirects=False, client=("127.0.0.1", 40000))
    assert {local.get("/healthz").status_code for _ in range(20)} <= {200, 503}
    assert [local.get("/t/forged").status_code for _ in range(6)] == [404] * 5 + [429]
    proxied = [local.get("/healthz", headers={"X-Forwarded-For": "192.0.2.1"}).status_code
               for _ in range(7)]
    assert proxied[-1] == 429


def test_closed_ticket_page_offers_to_reopen_or_write_again(site, clock):
    # Resolved recently: the form reopens the ticket; closed long ago: write a new mail.
    path = site.links()["t"]
    with db.transaction(site.factory) as s:
        s.execute(update(Ticket).where(Ticket.number == 10001).values(
            status="resolved", resolved_at=NOW))
    assert "Ticket wieder öffnen" in site.client.get(path).text
    clock.now = NOW + timedelta(days=30)
    page = site.client.get(path).text
    assert "Schreib uns einfach eine neue E-Mail" in page and "<form" not in page


def test_client_address_trusts_x_forwarded_for_only_from_configured_proxies():
    # Without trusted proxies the header is ignored; from a trusted proxy the rightmost
    # address that is not a proxy counts.
    proxies = (ipaddress.ip_network("10.0.0.0/8"),)
    assert web.client_address("203.0.113.5", "1.2.3.4", ()) == "203.0.113.5"
    assert web.client_address("203.0.113.5", "1.2.3.4", proxies) == "203.0.113.5"
    assert web.client_address("10.0.0.2", "1.2.3.4, 198.51.100.7, 10.0.0.9",
                              proxies) == "198.51.100.7"


def test_access_log_lines_carry_no_token(site, caplog):
    # The access log names the page, never the token that opens it.
    path = site.links()["t"]
    token = path.rsplit("/", 1)[1]
    with caplog.at_level("INFO", logger="maild.web"):
        site.client.get(path)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("maild.web")]
    assert any("GET /t/… 200" in line for line in lines), lines
    assert not any(token in line for line in lines)


# -- through the real daemon -------------------------------------------------------------

def _http(port: int, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
    """A GET (or a form POST) with urllib against the daemon's listener; no redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return None

    data = urllib.parse.urlencode(form).encode() if form is not None else None
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", data=data, timeout=20) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_daemon_serves_the_links_of_its_acknowledgement(tmp_path, dovecot, mailbox, smtp,
                                                        database_url):
    # The ack captured at SMTP carries both links; the escalation link, opened against the
    # daemon's listener, shows the confirmation page; a POST escalates; the staff mail and
    # the customer's confirmation arrive exactly once, even after a second POST.
    port = free_port()
    config = write_config(
        tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
        password=mailbox.password, smtp_port=smtp.port, database_url=database_url,
        extra=f'[http]\nlisten = "127.0.0.1:{port}"\n\n[agents]\n'
              f'members = [{{ address = "lea@example.com", name = "Lea", lead = true }}]\n')
    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        mailbox.append(FIRST.encode())
        assert len(smtp.wait_for(2)) == 2  # the ack and the new-ticket notice to Lea
        [ack] = [m for m in smtp.mails if m.recipients == ["anna@kunde.example"]]
        text = ack.message.get_body(("plain",)).get_content()
        found = {urlsplit(u).path.split("/")[1]: u for u in LINK.findall(text)}
        assert set(found) == {"t", "escalate"}
        assert all(u.startswith("https://support.example.com/") for u in found.values())
        path = urlsplit(found["escalate"]).path
        wait_for_port(port)
        status, page = _http(port, path)
        assert status == 200 and "Call-Back-Service" in page and "+49 30 1234567" in page
        token = re.search(r'name="form" value="([0-9a-f]+)"', page).group(1)
        form = {"form": token, "phone": "+49 30 7654321"}
        assert _http(port, path, form)[0] == 303
        assert _http(port, path, form)[0] == 303  # the second click
        assert wait_until(lambda: len(smtp.mails) >= 4)
        # Both POSTs were committed before their 303: once the outbox is settled, nothing
        # more will go out, and what did is what counts.
        assert wait_until(lambda: outbox_settled(database_url))
        subjects = sorted(str(m.message["Subject"]) for m in smtp.mails)
        staff = [m for m in smtp.mails if "ESKALIERT" in str(m.message["Subject"])]
        confirm = [m for m in smtp.mails
                   if "Call-Back-Service aktiviert" in str(m.message["Subject"])]
        assert len(staff) == 1 and len(confirm) == 1, subjects
        assert staff[0].recipients == ["lea@example.com"]
        assert staff[0].message["X-Priority"].startswith("1")
        assert "+49 30 7654321" in staff[0].message.get_body(("plain",)).get_content()
        assert confirm[0].recipients == ["anna@kunde.example"]
        assert len(smtp.mails) == 4
        [ticket] = rows(database_url, Ticket, Ticket.number == 10001)
        assert ticket.escalated_at is not None and ticket.priority == "urgent"
        assert "GET /escalate/… 200" in daemon.output()
        assert "/escalate/" + path.rsplit("/", 1)[1] not in daemon.output()
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_taken_listen_address_is_a_start_up_error(tmp_path, dovecot, mailbox, smtp,
                                                  database_url):
    # Another program holds [http] listen: maild says so in one line and exits non-zero.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        config = write_config(
            tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
            password=mailbox.password, smtp_port=smtp.port, database_url=database_url,
            extra=f'[http]\nlisten = "127.0.0.1:{port}"\n')
        daemon = Daemon(config, tmp_path / "maild.log").start()
        assert daemon.process is not None
        code = daemon.process.wait(timeout=30)
    assert code != 0
    errors = [line for line in daemon.output().splitlines() if line.startswith("maild:")
              and not line.startswith("maild: database:")]  # which database: said as well
    assert errors == [f"maild: [http] listen = '127.0.0.1:{port}': cannot listen there: "
                      "Address already in use"], daemon.output()


# -- the command line --------------------------------------------------------------------

def test_callbacks_report_lists_escalations_with_the_billable_flag(site, tmp_path, capsys):
    # After an escalation and the agent's #cause: the month's report (CSV, JSON) lists the
    # ticket, time, phone, cause and whether it is billable; another month lists nothing;
    # `tickets list` flags the ticket.
    path = site.links()["escalate"]
    site.client.post(path, data={"form": site.form_token(path), "phone": "+49 30 1234567"})
    with db.transaction(site.factory) as s:
        s.execute(update(Ticket).where(Ticket.number == 10001).values(cause="customer"))
    config = cli_config(tmp_path / "cli.toml", site.settings.database_url)
    assert cli.main(["--config", str(config), "callbacks", "report", "--month", "2026-11",
                     "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["ticket,company,customer,escalated_at,phone,cause,billable",
                     "10001,,anna@kunde.example,2026-11-26T11:00+01:00,+49 30 1234567,"
                     "customer,yes"]
    assert cli.main(["--config", str(config), "callbacks", "report", "--month", "2026-12",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["--config", str(config), "tickets", "list"]) == 0
    listing = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
               if line.startswith("#")}
    assert "(escalated)" in listing["#10001"] and "(escalated)" not in listing["#10002"]


def test_revoke_links_stops_every_link_sent(site, tmp_path, capsys):
    # `maild tickets revoke-links 10001`: the links in the ack no longer open anything;
    # the next mail's links do.
    paths = site.links()
    config = cli_config(tmp_path / "cli.toml", site.settings.database_url)
    assert cli.main(["--config", str(config), "tickets", "revoke-links", "10001"]) == 0
    assert "no longer works" in capsys.readouterr().out
    assert site.client.get(paths["t"]).status_code == 404
    assert site.client.get(paths["escalate"]).status_code == 404
    assert site.client.get(site.links(10002)["t"]).status_code == 200  # other tickets' work
    assert [e.detail for e in site.events("links_revoked")] == [{"version": 1}]
    assert cli.main(["--config", str(config), "tickets", "revoke-links", "99999"]) == 1


def test_escalation_links_sent_before_this_release_still_work(site):
    # Acks sent before the links were bound carry the old token (the ticket number only):
    # it still opens the escalation page, until the ticket's links are revoked.
    from itsdangerous import URLSafeSerializer
    legacy = URLSafeSerializer(site.desk.secret, salt="maild.escalate").dumps(10001)
    assert site.client.get(f"/escalate/{legacy}").status_code == 200
    assert site.client.get(f"/t/{legacy}").status_code == 404  # never a ticket-page token
    with db.transaction(site.factory) as s:
        web.revoke_links(s, 10001, "test", NOW)
    assert site.client.get(f"/escalate/{legacy}").status_code == 404


def test_a_closed_ticket_cannot_be_escalated(site):
    # A closed ticket's escalation page says to write a new mail; a POST changes nothing.
    path = site.links()["escalate"]
    token = site.form_token(path)
    with db.transaction(site.factory) as s:
        s.execute(update(Ticket).where(Ticket.number == 10001).values(status="closed",
                                                                      closed_at=NOW))
    before = site.counts()
    page = site.client.get(path).text
    assert "Dieses Ticket ist abgeschlossen" in page and "<form" not in page
    site.client.post(path, data={"form": token, "phone": "+49 30 1234567"})
    assert site.counts() == before and site.ticket().escalated_at is None


def test_a_failure_shows_our_page_not_a_traceback(site, caplog):
    # A stored file gone missing from the blob store: the download fails with our page
    # (500, security headers, no traceback or path), the error is in the log.
    path = site.links()["t"]
    site.client.post(path, data={"form": site.form_token(path), "text": "Log anbei"},
                     files={"files": ("log.txt", b"some log\n", "text/plain")})
    with db.transaction(site.factory) as s:
        found = s.scalars(select(Attachment).where(Attachment.filename == "log.txt")).one()
    site.desk.store.delete(found.blob_sha256)
    with caplog.at_level("ERROR", logger="maild.web"):
        answer = site.client.get(f"{path}/files/{found.id}")
    assert answer.status_code == 500 and "Das hat gerade nicht geklappt" in answer.text
    assert "Traceback" not in answer.text and "blobs" not in answer.text
    assert answer.headers["content-security-policy"].startswith("default-src 'none'")
    assert any("web request failed" in r.getMessage() for r in caplog.records)


def test_a_chunked_body_past_the_limit_is_refused_too(tmp_path, factory, database_url, clock):
    # No Content-Length (chunked): the body is counted as it arrives; past the limit the
    # same readable 413 page, nothing added.
    site = Site(tmp_path, factory, database_url, clock,
                attachments={"max_file_mb": 0.01, "max_mail_mb": 0.02})
    path = site.links()["t"]
    before = site.counts()
    chunks = iter([b"--x\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\n"]
                  + [b"y" * 100_000] * 4)
    answer = site.client.post(path, content=chunks,
                              headers={"content-type": "multipart/form-data; boundary=x"})
    assert answer.status_code == 413 and "Das war zu groß" in answer.text
    assert site.counts() == before


def _add(site: Site, path: str, text: str, data: bytes = b"") -> int:
    files = {"files": ("scan.bin", data, "application/octet-stream")} if data else None
    return site.client.post(path, data={**site.hidden(path), "text": text},
                            files=files).status_code


def test_a_ticket_page_takes_in_at_most_its_quota_per_hour_and_in_all(
        tmp_path, factory, database_url, clock):
    # 40 KB an hour, 100 KB in all: the second 30 KB file is refused with a page that
    # asks for mail, nothing of it stored and no one told; an hour later the page takes
    # files again, until the ticket's whole quota is used.
    site = Site(tmp_path, factory, database_url, clock,
                http={"upload_mb_per_hour": 0.04, "upload_mb_per_ticket": 0.1})
    path = site.links()["t"]
    assert _add(site, path, "Scan 1", b"1" * 30_000) == 303
    before = site.counts()
    refused = site.client.post(path, data={**site.hidden(path), "text": "Scan 2"},
                               files={"files": ("scan.bin", b"2" * 30_000, "image/png")})
    assert refused.status_code == 429
    assert "per E-Mail an service@example.com" in refused.text
    assert site.counts() == before
    for hour in (1, 2):
        clock.now = NOW + timedelta(hours=hour, minutes=1)
        assert _add(site, path, f"Scan {hour + 2}", b"3" * 30_000) == 303
    clock.now = NOW + timedelta(hours=3, minutes=2)
    assert _add(site, path, "Scan 5", b"5" * 30_000) == 429  # 120 KB > 100 KB in all
    with db.transaction(site.factory) as s:
        stored = s.scalars(select(Attachment.size).join(TicketMessage).where(
            TicketMessage.kind == "customer", Attachment.filename == "scan.bin")).all()
    assert stored == [30_000] * 3


def test_a_burst_of_additions_makes_one_notice_with_all_of_them(site, clock):
    # Five additions within two minutes: one notice, sent two minutes after the first,
    # carrying all five texts and the file; the next addition after it starts a new one.
    path = site.links()["t"]
    before = {o.id for o in site.outbox("notify")}
    recorded = site.counts()[2]
    for n in range(5):
        clock.now = NOW + timedelta(seconds=20 * n)
        assert _add(site, path, f"Nachtrag {n}", b"PNG%d" % n if n == 2 else b"") == 303
    notices = [o for o in site.outbox("notify") if o.id not in before]
    waiting = [o for o in notices if o.state == "pending"]
    assert [o.state for o in notices].count("suppressed") == 4 and len(waiting) == 1
    [held] = waiting
    assert held.next_attempt_at == NOW + timedelta(seconds=120)
    mail = email.message_from_bytes(held.raw, policy=policy.default)
    text = mail.get_body(("plain",)).get_content()
    assert all(f"Nachtrag {n}" in text for n in range(5)), text
    assert [a.get_filename() for a in mail.iter_attachments()] == ["scan.bin"]
    assert [a.get_content() for a in mail.iter_attachments()] == [b"PNG2"]
    assert site.counts()[2] == recorded + 5 + 1  # on the record: one notice, not five
    clock.now = NOW + timedelta(seconds=121)
    assert _add(site, path, "Nachtrag 5") == 303
    later = [o for o in site.outbox("notify") if o.id not in before and o.state == "pending"]
    assert len(later) == 2 and "Nachtrag 4" not in later[-1].raw.decode()


def test_with_no_hold_every_addition_is_told_at_once(tmp_path, factory, database_url, clock):
    # notify_hold_seconds = 0: one notice per addition, due at once.
    site = Site(tmp_path, factory, database_url, clock, http={"notify_hold_seconds": 0})
    path = site.links()["t"]
    before = len(site.outbox("notify"))
    for n in range(3):
        assert _add(site, path, f"Nachtrag {n}") == 303
    new = site.outbox("notify")[before:]
    assert [(o.state, o.next_attempt_at) for o in new] == [("pending", NOW)] * 3


def test_the_same_form_sent_twice_adds_once(site):
    # A double click (two concurrent POSTs) and a later reload-and-resend of one filled
    # form: one message, one notification.
    path = site.links()["t"]
    fields = {**site.hidden(path), "text": "Nachtrag: passiert auch am PC"}
    assert set(fields) == {"form", "once", "text"}
    notices = len(site.outbox("notify"))
    assert post_twice_at_once(site, path, fields) == [303, 303]
    assert site.client.post(path, data=fields).status_code == 303
    with db.transaction(site.factory) as s:
        added = s.scalars(select(TicketMessage).where(
            TicketMessage.kind == "customer",
            TicketMessage.body_text.contains("Nachtrag"))).all()
    assert len(added) == 1 and len(site.outbox("notify")) == notices + 1


def test_ops_can_override_the_pages_wording(tmp_path, factory, database_url, clock):
    # [paths] templates_dir/web/ overrides a page by name; the others stay ours.
    (tmp_path / "tpl" / "web").mkdir(parents=True)
    (tmp_path / "tpl" / "web" / "no_link.html.j2").write_text(
        "{% extends '_base.html.j2' %}{% block content %}Ruf uns an{% endblock %}")
    site = Site(tmp_path, factory, database_url, clock,
                paths={"blob_dir": str(tmp_path / "blobs"),
                       "templates_dir": str(tmp_path / "tpl")})
    assert "Ruf uns an" in site.client.get("/t/forged").text
    assert site.client.get(site.links()["t"]).status_code == 200


def test_token_buckets_refill_and_stay_within_their_size():
    # A key refills at the rate per minute; past `size` keys the least recently seen goes.
    now = [0.0]
    buckets = web.TokenBuckets(2, clock=lambda: now[0], size=100)
    assert [buckets.allow("a") for _ in range(3)] == [True, True, False]
    now[0] = 30.0  # half a minute: one request back
    assert [buckets.allow("a") for _ in range(2)] == [True, False]
    for n in range(10_000):
        buckets.allow(f"k{n}")
    assert len(buckets.buckets) == 100 and "a" not in buckets.buckets
    assert list(buckets.buckets)[-1] == "k9999"


def test_ipv6_clients_are_limited_by_their_64():
    # Every address of one /64 is one client; IPv4 (also IPv4-mapped) by its address.
    assert web.rate_key("2001:db8:1:2:aaaa::1") == web.rate_key("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert web.rate_key("2001:db8:1:3::1") != web.rate_key("2001:db8:1:2::1")
    assert web.rate_key("::ffff:203.0.113.5") == web.rate_key("203.0.113.5") == "203.0.113.5"
    assert web.rate_key("not-an-address" * 100) == ("not-an-address" * 100)[:64]


def proxied(site: Site) -> TestClient:
    """A client whose requests come from a trusted proxy at 127.0.0.1."""
    return TestClient(site.app, follow_redirects=False, client=("127.0.0.1", 40000))


def test_one_ipv6_network_gets_429_whatever_address_it_uses(tmp_path, factory,
                                                           database_url, clock):
    # Through the proxy, a new address of the same /64 per request: still one budget.
    site = Site(tmp_path, factory, database_url, clock,
                http={"rate_per_minute": 5, "trusted_proxies": ["127.0.0.1"]})
    client = proxied(site)
    codes = [client.get("/t/forged", headers={"X-Forwarded-For": f"2001:db8:7:7:{n:x}::1"})
             .status_code for n in range(7)]
    assert codes == [404] * 5 + [429] * 2
    assert client.get("/t/forged", headers={"X-Forwarded-For": "2001:db8:7:8::1"}
                      ).status_code == 429  # the link's bucket (all forged links) is empty
    assert list(site.app.per_client.buckets) == ["2001:db8:7:7::/64", "2001:db8:7:8::/64"]


def test_links_are_limited_by_ticket_not_by_token_string(tmp_path, factory, database_url,
                                                         clock):
    # Fresh tokens of one ticket, or ever-new forged strings: one bucket each, not one per
    # string, and the limiter keeps short keys, never the token.
    site = Site(tmp_path, factory, database_url, clock,
                http={"rate_per_minute": 5, "trusted_proxies": ["127.0.0.1"]})
    client = proxied(site)
    secret, address = site.app.cfg.secret, "anna@kunde.example"
    tokens = [links.customer_token(secret, "ticket", 10001, address, 0,
                                   NOW - timedelta(seconds=n)) for n in range(7)]
    codes = [client.get(f"/t/{t}", headers={"X-Forwarded-For": f"198.51.100.{n}"})
             .status_code for n, t in enumerate(tokens)]
    assert codes[5:] == [429, 429] and set(codes[:5]) <= {200, 404}
    codes = [client.get(f"/t/forged{n}", headers={"X-Forwarded-For": f"192.0.2.{n}"})
             .status_code for n in range(7)]
    assert codes == [404] * 5 + [429] * 2
    assert set(site.app.per_link.buckets) == {"t:10001", "t:forged"}


def test_over_long_paths_get_414_before_anything_is_kept(site, caplog):
    # A 60 KB "token" is refused at once: no bucket, no log line of its length.
    caplog.set_level("INFO", logger="maild.web")
    long = "/t/" + "A" * 60_000
    answer = site.client.get(long)
    assert answer.status_code == 414 and "A" * 200 not in answer.text
    assert site.client.get("/t/x?" + "q=1&" * 1000).status_code == 414
    assert not site.app.per_client.buckets and not site.app.per_link.buckets
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("maild")]
    assert lines and all(len(line) < 400 for line in lines)


def test_an_english_ticket_gets_english_pages(tmp_path, factory, database_url, clock):
    # The pages speak the ticket's language: English for an English mail.
    site = Site(tmp_path, factory, database_url, clock)
    site.intake.process(1, Fetched(3, (
        b"From: Jane <jane@corp.example>\r\nTo: service@example.com\r\n"
        b"Subject: The order list does not load\r\nMessage-ID: <en@corp.example>\r\n\r\n"
        b"Hello, since this morning the order list does not load any more. Thanks, Jane\r\n"
    ), clock()))
    paths = site.links(10003)
    page = site.client.get(paths["t"]).text
    assert '<html lang="en">' in page and "History" in page and "Add information" in page
    escalate = site.client.get(paths["escalate"]).text
    assert "billable if the problem was not caused by a fault of our systems" in escalate


def _agent_mail(notice_id: str, text: str, filename: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Max Agent <max@example.com>"
    msg["To"] = "service@example.com"
    msg["Subject"] = "Re: [#10001] App stuerzt ab"
    msg["Message-ID"] = f"<{filename}@example.com>"
    msg["In-Reply-To"] = notice_id
    msg.set_content(text)
    msg.add_attachment(b"%PDF-1.4 test", maintype="application", subtype="pdf",
                       filename=filename)
    return msg.as_bytes()


def test_files_an_agent_sent_are_downloads_and_a_notes_files_are_not(site):
    # An agent's answer with a file: the file is on the page with the answer. An internal
    # note's file is neither listed nor downloadable.
    [notice] = [o for o in site.outbox("notify") if o.ticket_id == site.ticket().id]
    site.intake.process(1, Fetched(3, _agent_mail(
        notice.message_id, "Bitte probier diese Anleitung.", "anleitung.pdf"), NOW))
    site.intake.process(1, Fetched(4, _agent_mail(
        notice.message_id, "#note\nIntern: Kunde hat alte Version.", "intern.pdf"), NOW))
    with db.transaction(site.factory) as s:
        files = {a.filename: a.id for a in s.scalars(select(Attachment))}
    assert {"anleitung.pdf", "intern.pdf"} <= set(files)
    path = site.links()["t"]
    page = site.client.get(path).text
    assert "Bitte probier diese Anleitung." in page and "anleitung.pdf" in page
    assert "intern.pdf" not in page and "Kunde hat alte Version" not in page
    assert site.client.get(f"{path}/files/{files['anleitung.pdf']}").content == b"%PDF-1.4 test"
    assert site.client.get(f"{path}/files/{files['intern.pdf']}").status_code == 404


def test_http_settings_are_checked_at_load():
    # A listen value without a port and a proxy that is no address are config errors that
    # name the key; the defaults are loopback port 8025, 180 days, no trusted proxy.
    base = {"imap": {"host": "h", "username": "u"}, "smtp": {"host": "h"},
            "support": {"address": "service@example.com"}}
    with pytest.raises(ConfigError, match=r"\[http\] listen: .*HOST:PORT"):
        config.from_mapping({**base, "http": {"listen": "8025"}}, "m.toml", {})
    with pytest.raises(ConfigError, match=r"\[http\] trusted_proxies: .*not an address"):
        config.from_mapping({**base, "http": {"trusted_proxies": ["proxy"]}}, "m.toml", {})
    http = config.from_mapping(base, "m.toml", {}).http
    assert (http.host, http.port, http.link_days, http.trusted_proxies) == (
        "127.0.0.1", 8025, 180.0, ())


def post_twice_at_once(site, path: str, data: dict[str, str]) -> list[int]:
    """A double click: the same form POSTed by two threads at once; their status codes."""
    results: list[int] = []

    def post() -> None:
        with TestClient(site.app, follow_redirects=False) as client:
            results.append(client.post(path, data=data).status_code)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_a_link_minted_from_a_page_keeps_the_expiry_of_the_link_it_came_from(site, clock):
    # Opening the page a day before the link expires shows links of the same age: a link
    # opened once within its lifetime still expires (every view used to mint fresh ones).
    first = site.links()["t"]
    clock.now = NOW + timedelta(days=179)
    page = site.client.get(first)
    assert page.status_code == 200
    minted = {u for u in re.findall(r'/(?:t|escalate)/[A-Za-z0-9_.\-]+', page.text)}
    assert minted
    clock.now = NOW + timedelta(days=181)
    for link in [first, *minted]:
        assert site.client.get(link).status_code == 404, link
