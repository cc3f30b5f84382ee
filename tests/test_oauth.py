"""OAuth2 logins (issue 21): the token store against the local authority (tests/authority.py),
`maild auth`, and the daemon logging in to a Dovecot whose oauth2 passdb asks the authority
and to an SMTP server that checks the token, on both databases."""

from __future__ import annotations

import email.utils
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from authority import CLIENT_ID, CLIENT_SECRET, Authority
from harness import (
    Daemon,
    Mailbox,
    OAuthSmtpCapture,
    free_port,
    healthz,
    maild,
    rows,
    wait_for_port,
    wait_until,
    write_config,
)

from maild import config, db, oauth
from maild.errors import ConfigError, OAuthRefused, OAuthUnavailable
from maild.imap import ImapMailbox
from maild.models import OAuthToken, OutboxMail, Ticket


def oauth_section(authority: Authority, flow: str = "device", secret: str = CLIENT_SECRET,
                  extra: str = "") -> str:
    return f"""
[oauth2]
provider = "generic"
client_id = "{CLIENT_ID}"
client_secret = "{secret}"
flow = "{flow}"
scopes = ["mail"]
token_url = "{authority.url}/token"
device_authorization_url = "{authority.url}/devicecode"
authorization_url = "{authority.url}/authorize"
timeout = 5
{extra}
"""


def settings_for(authority: Authority, url: str, **kw: str) -> oauth.OAuth2Settings:
    return oauth.OAuth2Settings(
        provider="generic", client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
        token_url=f"{authority.url}/token",
        device_authorization_url=f"{authority.url}/devicecode",
        authorization_url=f"{authority.url}/authorize", timeout=5, **kw)


@pytest.fixture
def upgraded(database_url: str) -> db.SessionFactory:
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    return db.session_factory(engine)


@pytest.fixture
def authority(oauth_authority: Authority) -> Authority:
    authority = oauth_authority
    authority.lifetime, authority.failing, authority.user = 3600, 0, "service@example.test"
    authority.refreshes, authority.reused = 0, []
    return authority


def logged_in(authority: Authority, factory: db.SessionFactory, account: str,
              **kw: object) -> oauth.Tokens:
    tokens = oauth.Tokens(settings_for(authority, ""), factory, account, **kw)  # type: ignore[arg-type]
    granted = authority.grant()
    tokens.log_in(oauth.Grant(granted["access_token"], granted["refresh_token"],
                              granted["expires_in"]))
    return tokens


# -- config ---------------------------------------------------------------------------------

def base(**sections: dict[str, object]) -> dict[str, object]:
    raw: dict[str, object] = {"imap": {"host": "127.0.0.1", "username": "service@x.example",
                                       "auth": "oauth2"},
                              "smtp": {"host": "127.0.0.1", "auth": "oauth2"},
                              "support": {"address": "service@example.com"}}
    raw.update(sections)
    return raw


def test_config_presets_defaults_and_refusals(tmp_path):
    ms = config.from_mapping(base(oauth2={"client_id": "abc"}), "t.toml", {})
    ep = oauth.endpoints(ms.oauth2)
    assert ep.flow == "device"
    assert ep.token_url == "https://login.microsoftonline.com/organizations/oauth2/v2.0/token"
    assert "offline_access" in ep.scopes and any("IMAP.AccessAsUser.All" in s for s in ep.scopes)
    assert ms.smtp.username == "service@x.example"  # the SASL user defaults to IMAP's
    google = config.from_mapping(base(oauth2={"provider": "google", "client_id": "g"}),
                                 "t.toml", {})
    gep = oauth.endpoints(google.oauth2)
    assert gep.flow == "code" and gep.scopes == ("https://mail.google.com/",)
    app = config.from_mapping(base(oauth2={"client_id": "a", "flow": "client_credentials",
                                           "tenant": "contoso.onmicrosoft.com",
                                           "client_secret": "s"}), "t.toml", {})
    assert oauth.endpoints(app.oauth2).scopes == ("https://outlook.office365.com/.default",)
    # the secret from the environment, like every other secret
    env = config.from_mapping(base(oauth2={"client_id": "a"}), "t.toml",
                              {"MAILD_OAUTH2_CLIENT_SECRET": "from-env"})
    assert env.oauth2.client_secret == "from-env"
    for raw, words in [
        (base(), "needs an [oauth2] section"),
        (base(oauth2={"client_id": "a", "token_url": "http://login.example/token"}),
         "must be an https:// address"),
        (base(oauth2={"provider": "google", "client_id": "g", "flow": "device"}),
         'only with flow = "code"'),
        (base(oauth2={"client_id": "a", "flow": "client_credentials", "client_secret": "s"}),
         "needs the tenant id"),
        (base(oauth2={"client_id": "a", "client_secret": "hunter2-secret", "tenant": "x y"}),
         "a tenant id"),
    ]:
        with pytest.raises(ConfigError) as err:
            config.from_mapping(raw, "t.toml", {})
        assert words in str(err.value)
        assert "hunter2" not in str(err.value)


# -- the token store ------------------------------------------------------------------------

def test_tokens_refresh_ahead_rotate_and_use_each_refresh_token_once(authority, upgraded):
    authority.lifetime = 8  # due at once: a quarter of 8 s is 2 s … so refresh after ~6 s
    tokens = logged_in(authority, upgraded, "service@example.test")
    first = tokens.bearer()
    assert authority.user_of(first.token) == "service@example.test"
    assert tokens.bearer().token == first.token  # not due yet: no request
    assert authority.refreshes == 0
    seen = {first.token}
    for _ in range(3):
        assert wait_until(lambda: tokens.bearer().token not in seen, timeout=12)
        seen.add(tokens.bearer().token)
    assert authority.refreshes == 3 and authority.reused == []
    row = tokens.row()
    assert row.refreshes == 3 and row.refresh_token in authority.refresh  # the live one
    assert row.access_token == tokens.bearer().token and not row.invalid


def test_a_refused_token_is_refreshed_once_even_before_expiry(authority, upgraded):
    tokens = logged_in(authority, upgraded, "service@example.test")
    first = tokens.bearer()
    fresh = tokens.bearer(refused=first.token)
    assert fresh.token != first.token and authority.refreshes == 1
    # refused again at once: no second refresh within the minute (no hammering)
    assert tokens.bearer(refused=fresh.token).token == fresh.token
    assert authority.refreshes == 1


def test_two_processes_refresh_once_not_twice(authority, upgraded, database_url):
    # Two maild processes (each its own engine and Tokens) find the token due at once.
    logged_in(authority, upgraded, "service@example.test")
    with db.transaction(upgraded) as session:  # make it due
        row = session.get(OAuthToken, "service@example.test")
        row.access_expires_at = datetime.now(UTC)
    script = f"""
import sys, time
from datetime import datetime
sys.path.insert(0, {str(Path(__file__).parent)!r})
from maild import db, oauth
start = float(sys.argv[1])
engine = db.make_engine({database_url!r})
s = oauth.OAuth2Settings(provider="generic", client_id={CLIENT_ID!r},
    client_secret={CLIENT_SECRET!r}, token_url={authority.url + "/token"!r}, timeout=5)
tokens = oauth.Tokens(s, db.session_factory(engine), "service@example.test")
time.sleep(max(0, start - time.time()))
print(tokens.bearer().token)
"""
    start = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-c", script, start], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert authority.refreshes == 1, outs
    assert outs[0][0] == outs[1][0]  # both use the one new token
    assert authority.reused == []


def test_outage_keeps_the_valid_token_and_backs_off(authority, upgraded):
    tokens = logged_in(authority, upgraded, "service@example.test")
    current = tokens.bearer()
    authority.failing = 100
    # refused by the server: a refresh is tried, fails (503), the still valid token is used
    with pytest.raises(OAuthUnavailable):
        tokens.bearer(refused=current.token)
    asked = 100 - authority.failing
    assert asked == 1
    assert tokens.bearer().token == current.token  # not due: no request during the backoff
    assert 100 - authority.failing == 1
    assert "503" in tokens.row().last_error and not tokens.row().invalid
    authority.failing = 0


def test_invalid_grant_stops_asking_tells_the_lead_once_and_a_login_resumes(
        authority, upgraded):
    told: list[str] = []
    tokens = logged_in(authority, upgraded, "service@example.test",
                       on_refused=lambda session, row: told.append(row.last_error))
    current = tokens.bearer()
    authority.revoke()
    with pytest.raises(OAuthRefused) as err:
        tokens.bearer(refused=current.token)
    text = str(err.value)
    assert "invalid_grant" in text and "run `maild auth login`" in text
    assert told == ["invalid_grant: AADSTS70000: The provided grant is invalid or has been "
                    "revoked."]
    asked = authority.refreshes
    for _ in range(3):  # no request to the authority while the grant is refused
        with pytest.raises(OAuthRefused):
            tokens.bearer()
    assert authority.refreshes == asked and len(told) == 1
    row = tokens.row()
    assert row.invalid and row.access_token == "" and row.refresh_token  # kept, unused
    granted = authority.grant()
    tokens.log_in(oauth.Grant(granted["access_token"], granted["refresh_token"], 3600))
    assert tokens.bearer().token == granted["access_token"]
    assert not tokens.row().invalid


# -- IMAP and SMTP logins -----------------------------------------------------------------

def test_imap_logs_in_with_oauthbearer_and_a_revoked_token_is_refused(
        authority, oauth_dovecot, upgraded):
    user, _ = oauth_dovecot.add_user()
    authority.user = user
    tokens = logged_in(authority, upgraded, user)
    imap = config.ImapSettings(host="127.0.0.1", port=oauth_dovecot.port, username=user,
                               tls="none", auth="oauth2")
    box = ImapMailbox(imap, tokens)
    box.connect()
    assert box.mechanism == "OAUTHBEARER" and box.token_expires_at is not None
    box.close()
    authority.revoke()
    box = ImapMailbox(imap, tokens)
    with pytest.raises(OAuthRefused):
        box.connect()
    box.close()


def test_a_token_the_servers_refuse_is_refreshed_once_and_the_login_retried(
        authority, oauth_dovecot, upgraded):
    # The stored access token has not expired, but the servers no longer take it (revoked
    # early, say): IMAP and SMTP each refresh once and log in with the new one.
    import asyncio

    from maild.smtp import SmtpConnection

    user, _ = oauth_dovecot.add_user()
    authority.user = user
    tokens = logged_in(authority, upgraded, user)
    stale = tokens.bearer().token
    with authority.lock:
        authority.access.clear()  # access tokens die, the refresh token lives
    imap = config.ImapSettings(host="127.0.0.1", port=oauth_dovecot.port, username=user,
                               tls="none", auth="oauth2")
    box = ImapMailbox(imap, tokens)
    box.connect()
    box.close()
    assert authority.refreshes == 1 and tokens.bearer().token != stale
    smtp = OAuthSmtpCapture(authority=authority).start()
    try:
        with authority.lock:
            authority.access.clear()
        settings = config.SmtpSettings(host="127.0.0.1", port=smtp.port, tls="none",
                                       auth="oauth2", username=user)
        tokens._forced_at = -1e9  # the minute since IMAP's forced refresh has "passed"

        async def send() -> None:
            async with SmtpConnection(settings, tokens) as conn:
                await conn.send("service@example.com", ["kunde@kunde.example"],
                                customer(1).as_bytes())

        asyncio.run(send())
        assert len(smtp.mails) == 1 and smtp.refused == 1 and smtp.logins == [user]
        assert authority.refreshes == 2 and authority.reused == []
    finally:
        smtp.stop()


# -- `maild auth` and `maild check` -----------------------------------------------------------

@pytest.fixture
def oauth_config(tmp_path, authority, oauth_dovecot, database_url, upgraded):
    user, _ = oauth_dovecot.add_user()
    authority.user = user
    smtp = OAuthSmtpCapture(authority=authority).start()
    web = free_port()
    path = write_config(
        tmp_path / "maild.toml", imap_port=oauth_dovecot.port, user=user, password="",
        smtp_port=smtp.port, database_url=database_url, imap_extra='auth = "oauth2"',
        smtp_extra='auth = "oauth2"',
        extra=f'[http]\nlisten = "127.0.0.1:{web}"\n[health]\nmailbox_failing_seconds = 0\n'
              + oauth_section(authority))
    yield path, user, smtp, web
    smtp.stop()


def device_login(path: Path, authority: Authority) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen([sys.executable, "-m", "maild", "--config", str(path), "auth",
                             "login"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        found = re.search(r"enter the code (\w+)", line)
        if found:
            assert authority.approve(found.group(1))
            break
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines) + out, err)


def test_auth_login_device_flow_status_and_logout(oauth_config, authority, database_url):
    path, user, _, _ = oauth_config
    result = device_login(path, authority)
    assert result.returncode == 0, result
    assert f"open {authority.url}/device" in result.stdout and "logged in" in result.stdout
    [row] = rows(database_url, OAuthToken)
    assert row.account == user and row.flow == "device" and row.refresh_token
    status = maild("auth", "status", "--json", config=path)
    assert status.returncode == 0, status
    body = json.loads(status.stdout)
    assert body["account"] == user and body["flow"] == "device" and body["refresh_token"]
    assert body["access_token_expires_in"] > 3000 and body["last_error"] == ""
    for shown in (status.stdout, result.stdout, result.stderr,
                  maild("auth", "status", config=path).stdout):
        assert row.refresh_token not in shown and row.access_token not in shown
    check = maild("check", config=path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert re.search(r"ok +oauth2: .*token refreshed", check.stdout)
    assert re.search(r"ok +imap: ", check.stdout) and re.search(r"ok +smtp: ", check.stdout)
    out = maild("auth", "logout", config=path)
    assert out.returncode == 0 and rows(database_url, OAuthToken) == []
    after = maild("auth", "status", config=path)
    assert after.returncode == 1 and "run `maild auth login`" in after.stdout


def test_check_names_a_wrong_client_secret_in_one_line(oauth_config, authority, tmp_path):
    path, _, _, _ = oauth_config
    assert device_login(path, authority).returncode == 0
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(path.read_text().replace(CLIENT_SECRET, "not-the-secret"))
    check = maild("check", config=wrong)
    assert check.returncode == 1
    [line] = [x for x in check.stdout.splitlines() if x.startswith("FAIL  oauth2")]
    assert "invalid_client" in line and "AADSTS7000215" in line and "client_secret" in line
    assert "not-the-secret" not in check.stdout + check.stderr
    # the grant itself was not spoiled by a wrong config
    assert maild("auth", "status", config=path).returncode == 0


@pytest.mark.parametrize("paste", [False, True], ids=["redirect", "pasted"])
def test_auth_login_code_flow_with_pkce(tmp_path, authority, oauth_dovecot, upgraded,
                                        database_url, paste):
    path = write_config(
        tmp_path / "maild.toml", imap_port=oauth_dovecot.port, user="u@example.test",
        password="", smtp_port=free_port(), database_url=database_url,
        imap_extra='auth = "oauth2"', extra=oauth_section(authority, flow="code"))
    args = ["auth", "login", *(["--no-listen"] if paste else [])]
    proc = subprocess.Popen([sys.executable, "-m", "maild", "--config", str(path), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    for line in proc.stdout:
        if line.startswith("  http"):
            url = line.strip()
            break
    assert "code_challenge_method=S256" in url and "code_challenge=" in url
    if paste:  # the browser ends on a page that does not load: its address is pasted
        request = urllib.request.Request(url)
        opener = urllib.request.build_opener(NoRedirect)
        answer = opener.open(request)
        proc.stdin.write(answer.headers["Location"] + "\n")
        proc.stdin.flush()
    else:  # the browser follows the redirect to the loopback port maild listens on
        with urllib.request.urlopen(url, timeout=10) as page:
            assert b"you may close this window" in page.read()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    [row] = rows(database_url, OAuthToken)
    assert row.flow == "code" and row.refresh_token


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kw: object) -> None:
        return None

    def http_error_302(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def]
        return fp


# -- the daemon -------------------------------------------------------------------------------

def customer(n: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Kunde {n} <kunde{n}@kunde.example>"
    msg["To"] = "service@example.com"
    msg["Subject"] = f"Frage {n}"
    msg["Message-ID"] = f"<oauth-{n}-{time.time_ns()}@kunde.example>"
    msg["Date"] = email.utils.formatdate()
    msg.set_content(f"Hallo, Frage Nummer {n}.\n")
    return msg


@pytest.mark.slow
def test_mail_flows_over_three_token_lifetimes_without_a_failed_login(
        oauth_config, authority, database_url, tmp_path, oauth_dovecot):
    path, user, smtp, _ = oauth_config
    authority.lifetime = 20
    assert device_login(path, authority).returncode == 0
    daemon = Daemon(path, tmp_path / "maild.log").start()
    box = Mailbox(oauth_dovecot.port, user, "")
    box.client = lambda: _oauth_client(oauth_dovecot.port, user, authority)  # type: ignore[method-assign]
    try:
        assert daemon.watching(60), daemon.output()
        sent = 0
        started = time.monotonic()
        while time.monotonic() - started < 65:  # more than three lifetimes of 20 s
            box.append(customer(sent))
            sent += 1
            smtp.wait_for(sent, timeout=30)
            time.sleep(4)
        assert len(smtp.mails) == sent and sent >= 8
        assert wait_until(lambda: box.count("INBOX") == 0, timeout=30)
        assert box.count("Processed") == sent
        assert len(rows(database_url, Ticket)) == sent
        [row] = rows(database_url, OAuthToken)
        assert row.refreshes >= 3, row.refreshes
        assert authority.reused == [] and smtp.refused == 0  # every refresh token once
        log = daemon.output()
        assert "refused" not in log and "AUTHENTICATIONFAILED" not in log, log
        assert "before the OAuth2 token expires" in log  # IDLE renewed with a fresh token
    finally:
        daemon.stop()


def _oauth_client(port: int, user: str, authority: Authority):  # type: ignore[no-untyped-def]
    from imapclient import IMAPClient
    client = IMAPClient("127.0.0.1", port=port, ssl=False, timeout=10)
    client.oauth2_login(user, authority.grant()["access_token"])
    return client


@pytest.mark.slow
def test_revoked_grant_turns_healthz_503_loses_nothing_and_a_new_login_resumes(
        tmp_path, authority, oauth_dovecot, database_url, upgraded, smtp):
    # IMAP by OAuth2, SMTP without login (so the lead can be told); the grant is revoked.
    user, _ = oauth_dovecot.add_user()
    authority.user = user
    web = free_port()
    path = write_config(
        tmp_path / "maild.toml", imap_port=oauth_dovecot.port, user=user, password="",
        smtp_port=smtp.port, database_url=database_url, imap_extra='auth = "oauth2"',
        extra=f'[http]\nlisten = "127.0.0.1:{web}"\n[health]\nmailbox_failing_seconds = 0\n'
              '[sla]\ndigest = false\nlead_address = "lead@example.com"\n'
              + oauth_section(authority))
    authority.lifetime = 12
    assert device_login(path, authority).returncode == 0
    box = Mailbox(oauth_dovecot.port, user, "")
    box.client = lambda: _oauth_client(oauth_dovecot.port, user, authority)  # type: ignore[method-assign]
    daemon = Daemon(path, tmp_path / "maild.log").start()
    try:
        wait_for_port(web, 30)
        box.append(customer(1))
        smtp.wait_for(1, timeout=30)
        assert healthz(web)[0] == 200
        authority.revoke()
        revoked = time.monotonic()
        assert wait_until(lambda: healthz(web)[0] == 503, timeout=60), daemon.output()
        assert time.monotonic() - revoked < 60
        status, body = healthz(web)
        assert any("refused by the authority" in p and "maild auth login" in p
                   for p in body["problems"]), body
        box.append(customer(2))  # waits in the INBOX, nothing lost
        [_, lead] = smtp.wait_for(2, timeout=30)
        assert lead.recipients == ["lead@example.com"]
        assert user in lead.message["Subject"]
        assert "maild auth login" in lead.message.get_body(("plain",)).get_content()
        status = maild("status", config=path)
        assert status.returncode == 1
        assert re.search(r"problem +OAuth2 login for .* refused by the authority "
                         r"\(invalid_grant.*\): run `maild auth login`", status.stdout), (
            status.stdout)
        time.sleep(3)
        assert box.count("INBOX") == 1 and len(smtp.mails) == 2  # the lead once only
        assert device_login(path, authority).returncode == 0  # no restart
        smtp.wait_for(3, timeout=30)
        assert wait_until(lambda: box.count("INBOX") == 0, timeout=30)
        assert wait_until(lambda: healthz(web)[0] == 200, timeout=30), healthz(web)
        assert len(smtp.mails) == 3
        assert [m.kind for m in rows(database_url, OutboxMail)].count("login_lost") == 1
    finally:
        daemon.stop()


def test_metrics_show_the_token_expiry_and_the_refreshes(authority, upgraded):
    from prometheus_client.parser import text_string_to_metric_families

    from maild import health, metrics

    runtime = health.Runtime(started_at=datetime.now(UTC))
    tokens = logged_in(authority, upgraded, "service@example.test", count=runtime.count)
    tokens.bearer(fresh=True)
    text = metrics.exposition(metrics.registry(runtime, upgraded,
                                               lambda: datetime.now(UTC))).decode()
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(text) for s in family.samples}
    expiry = found[("maild_oauth_token_expiry_seconds",
                    (("account", "service@example.test"),))]
    assert 3500 < expiry <= 3600
    assert found[("maild_oauth_refreshes_total", (("outcome", "ok"),))] == 1
    authority.revoke()
    with pytest.raises(OAuthRefused):
        tokens.bearer(fresh=True)
    text = metrics.exposition(metrics.registry(runtime, upgraded,
                                               lambda: datetime.now(UTC))).decode()
    assert 'maild_oauth_token_expiry_seconds{account="service@example.test"} 0.0' in text
    assert 'maild_oauth_refreshes_total{outcome="refused"} 1.0' in text


def test_every_oauth2_key_is_documented_in_auth_help_and_the_readme():
    shown = subprocess.run([sys.executable, "-m", "maild", "auth", "--help"],
                           capture_output=True, text=True, check=True).stdout
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    part = readme[readme.index("**Microsoft 365 and Google Workspace (OAuth2).**"):]
    part = part[:part.index("\n\n")]
    for key in config.OAuth2Settings.model_fields:
        assert key in shown, key
        assert re.search(rf"`{key}[` ]", part), key
    assert '[imap] auth = "oauth2"' in shown and '[smtp] auth = "oauth2"' in shown


# -- what the review found (a slow refresh, an echoing authority, the loopback listener) -----

def test_a_racing_refresh_of_the_spent_token_spoils_no_grant(authority, upgraded):
    # Process A refreshes (rt0 → rt1) but commits late; meanwhile B, its lease expired,
    # sends the spent rt0 and gets invalid_grant. The grant must survive with rt1.
    a = logged_in(authority, upgraded, "service@example.test")
    b = oauth.Tokens(settings_for(authority, ""), upgraded, "service@example.test")
    rt0 = a.row().refresh_token
    grant = a.authority.refresh(rt0)  # A's answer, not yet committed
    with pytest.raises(OAuthRefused):
        b.bearer(fresh=True)  # B: rt0 is spent: invalid_grant, the row marked refused
    a._unsaved = (rt0, grant)
    assert a.bearer().token == grant.access_token  # A's commit heals it
    row = a.row()
    assert not row.invalid and row.refresh_token == grant.refresh_token
    assert b.bearer().token == grant.access_token


def test_a_grant_is_kept_while_the_database_is_away_and_stored_first(authority, upgraded,
                                                                     monkeypatch):
    tokens = logged_in(authority, upgraded, "service@example.test")
    rt0 = tokens.row().refresh_token
    real = db.transaction
    calls = {"n": 0}

    def flaky(factory):  # every write fails for a while
        calls["n"] += 1
        raise oauth.StorageUnavailable("database is away")

    monkeypatch.setattr(oauth.time, "sleep", lambda s: None)
    grant = tokens.authority.refresh(rt0)
    tokens._unsaved = (rt0, grant)
    monkeypatch.setattr(oauth.db, "transaction", flaky)
    with pytest.raises(oauth.StorageUnavailable):
        tokens._save_unsaved()
    assert tokens._unsaved is not None  # kept, not thrown away
    monkeypatch.setattr(oauth.db, "transaction", real)
    assert tokens.bearer().token == grant.access_token
    assert tokens.row().refresh_token == grant.refresh_token and authority.reused == []


def test_an_echoing_authority_shows_no_secret(authority, upgraded):
    tokens = logged_in(authority, upgraded, "service@example.test")
    rt0 = tokens.row().refresh_token

    def echo(path, form, basic):
        return 400, {"error": "invalid_grant",
                     "error_description": f"bad {form.get('refresh_token')} for "
                                          f"{form.get('client_secret')}\x1b[2J"}

    original = authority.post
    authority.post = echo  # type: ignore[method-assign]
    try:
        with pytest.raises(OAuthRefused) as err:
            tokens.bearer(fresh=True)
    finally:
        authority.post = original  # type: ignore[method-assign]
    for text in (str(err.value), tokens.row().last_error):
        assert rt0 not in text and CLIENT_SECRET not in text and "\x1b" not in text
        assert "***" in text


def test_an_authority_outage_keeps_the_imap_login_with_the_stored_token(authority, upgraded):
    tokens = logged_in(authority, upgraded, "service@example.test")
    with db.transaction(upgraded) as session:  # due for refresh, still valid for minutes
        row = session.get(OAuthToken, "service@example.test")
        row.access_lifetime = 600
        row.access_expires_at = datetime.now(UTC) + oauth.timedelta(seconds=100)
    stored = tokens.row().access_token
    authority.failing = 100
    assert tokens.bearer().token == stored  # the refresh failed, the valid token serves
    assert tokens.bearer().token == stored
    assert 100 - authority.failing == 1  # and the authority was asked once (backoff)
    authority.failing = 0


def test_client_credentials_refused_is_not_asked_again_at_once(authority, upgraded):
    s = settings_for(authority, "", flow="client_credentials")
    tokens = oauth.Tokens(s.model_copy(update={"client_secret": "wrong-secret-xx"}),
                          upgraded, "service@example.test")
    asked = []
    original = authority.post
    authority.post = lambda *a: (asked.append(1), original(*a))[1]  # type: ignore[method-assign]
    try:
        for _ in range(5):
            with pytest.raises((OAuthRefused, OAuthUnavailable)):
                tokens.bearer()
    finally:
        authority.post = original  # type: ignore[method-assign]
    assert len(asked) == 1


@pytest.mark.parametrize("url", [
    "http://192.0.2.2:8080\\@localhost/token", "http://evil.example@127.0.0.1/token",
    "http://127.0.0.1.evil.example/token", "http://localhost.evil/token",
    "https://login.example/to ken", "http://[::ffff:127.0.0.1]/token"])
def test_token_urls_that_only_look_loopback_are_refused(url):
    with pytest.raises(ConfigError):
        config.from_mapping(base(oauth2={"client_id": "a", "provider": "generic",
                                         "token_url": url}), "t.toml", {})


def test_the_code_flow_listener_takes_only_its_own_state_and_no_fragment(
        tmp_path, authority, upgraded, database_url):
    import io
    import socket as socket_

    from maild import auth

    tokens = oauth.Tokens(settings_for(authority, "", flow="code"), upgraded, "u@example.test")
    out = io.StringIO()
    answers = io.StringIO()
    done: dict[str, int] = {}
    thread = threading.Thread(target=lambda: done.setdefault(
        "rc", auth.login(tokens, out, answers, listen=True)))
    thread.start()
    assert wait_until(lambda: "  http" in out.getvalue(), timeout=10)
    url = next(x.strip() for x in out.getvalue().splitlines() if x.startswith("  http"))
    redirect = re.search(r"redirect_uri=([^&]+)", url).group(1)
    port = int(urllib.parse.unquote(redirect).rsplit(":", 1)[1].strip("/"))
    idle = socket_.create_connection(("127.0.0.1", port))  # a silent connection
    stranger = urllib.request.urlopen  # another local process ends nothing:
    with pytest.raises(urllib.error.HTTPError) as err:
        stranger(f"http://127.0.0.1:{port}/?error=access_denied&state=not-ours", timeout=5)
    assert err.value.code == 404
    with urllib.request.urlopen(url, timeout=10) as page:  # the real browser's way
        assert b"you may close this window" in page.read()
    thread.join(30)
    idle.close()
    assert done.get("rc") == 0, out.getvalue()
    assert tokens.row().flow == "code"


def test_a_pasted_address_with_a_fragment_or_another_host_is_refused(authority, upgraded):
    import io

    from maild import auth

    tokens = oauth.Tokens(settings_for(authority, "", flow="code"), upgraded, "u@example.test")
    for pasted in ("http://127.0.0.1/?code=x&state={state}#access_token=AT&refresh_token=RT",
                   "http://evil.example/?code=x&state={state}"):
        out = io.StringIO()

        class Answers(io.StringIO):
            def __init__(self, out: io.StringIO, pasted: str) -> None:
                super().__init__()
                self.out, self.pasted = out, pasted

            def readline(self, *args: object) -> str:
                state = re.search(r"state=([^&\s]+)", self.out.getvalue()).group(1)
                return self.pasted.format(state=state) + "\n"

        assert auth.login(tokens, out, Answers(out, pasted), listen=False) == 1
        assert "not the address the browser ended on" in out.getvalue()
    assert tokens.row() is None  # nothing stored, the authority never asked
