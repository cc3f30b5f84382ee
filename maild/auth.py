"""`maild auth login | status | logout`: the one interactive step of an OAuth2 login,
made for a server without a browser.

- device flow (RFC 8628): prints the address and the code to enter there (on any device),
  polls until approved, denied or expired;
- code flow with PKCE (RFC 7636): prints the address to open; the browser comes back to
  a loopback port maild listens on for that moment, or the operator pastes the address
  the browser ended on (a server reached over SSH: that page does not load, its address
  is all we need);
- client credentials (app-only): fetches a token, proving the registration works.

The tokens go to the database (`oauth_tokens`); none is ever printed.
"""

from __future__ import annotations

import argparse
import http.server
import json
import select
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from maild import db, oauth, views
from maild.config import OAuth2Settings, Settings
from maild.errors import ConfigError, OAuthRefused, OAuthUnavailable
from maild.models import OAuthToken

CONFIG_HELP = """configuration:
  [imap] auth = "oauth2"        log in to IMAP with a token ([imap] username: the SASL user,
                                for a shared mailbox its address)
  [smtp] auth = "oauth2"        likewise for SMTP ([smtp] username, default [imap]'s);
                                "password" (default) or "none" otherwise
  [oauth2]
  provider = "microsoft"        "microsoft" | "google" | "generic"
  client_id = "…"               the app registration's client id (required)
  client_secret = ""            a secret (client_secret_file, MAILD_OAUTH2_CLIENT_SECRET,
                                systemd credential oauth2_client_secret); none for a public
                                client
  tenant = "organizations"      Microsoft: tenant id or domain (client_credentials needs it)
  flow = "device"               "device" | "code" | "client_credentials" (default: device;
                                code for Google)
  scopes = []                   default: the provider's for IMAP + SMTP
  token_url, device_authorization_url, authorization_url
                                for "generic" or to override a preset (https, or http to
                                loopback only)
  redirect_port = 0             code flow: the loopback port to listen on (0: a free one)
  timeout = 30.0                seconds per request to the authority
  refresh_ahead = 300.0         refresh this long before expiry (at most 1/4 of the lifetime)
"""
LOGIN_WAIT = 600.0  # the code flow waits this long for the browser or a pasted address


def add_parser(sub: Any) -> None:
    ap = sub.add_parser(
        "auth", help="OAuth2 logins for IMAP and SMTP (Microsoft 365, Google, …)",
        description="Log in once with `maild auth login`; maild keeps the tokens fresh. "
                    "See docs/oauth2.md for the provider's side.",
        epilog=CONFIG_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    asub = ap.add_subparsers(dest="auth_command", required=True)
    al = asub.add_parser(
        "login", help="sign in (device flow: a code to enter; code flow: an address to "
                      "open; client credentials: nothing to do) and store the tokens")
    al.add_argument("--no-listen", action="store_true",
                    help="code flow: do not listen for the browser's redirect; only take "
                         "the pasted address")
    st = asub.add_parser("status", help="account, flow, token expiry, last refresh, the "
                                        "last error (never a token)")
    st.add_argument("--json", action="store_true")
    asub.add_parser("logout", help="forget the stored tokens (revoke the grant at the "
                                   "provider too)")


def cmd_auth(settings: Settings, args: argparse.Namespace) -> int:
    if settings.oauth2 is None or "oauth2" not in (settings.imap.auth, settings.smtp.auth):
        raise ConfigError(f'{settings.source}: no login uses OAuth2: set [imap] auth = '
                          '"oauth2" (or [smtp]) and an [oauth2] section (docs/oauth2.md)')
    engine = db.open_existing(settings.database_url)
    try:
        factory = db.session_factory(engine)
        tokens = oauth.Tokens(settings.oauth2, factory, oauth.account_of(settings))
        if args.auth_command == "login":
            return login(tokens, sys.stdout, sys.stdin, listen=not args.no_listen)
        if args.auth_command == "status":
            return status(tokens, args.json, ZoneInfo(settings.calendar.timezone))
        if tokens.forget():
            print(f"forgot the OAuth2 tokens of {tokens.account}; the grant itself stays "
                  "valid at the provider until revoked there")
        else:
            print(f"no OAuth2 tokens stored for {tokens.account}")
        return 0
    finally:
        engine.dispose()


def login(tokens: oauth.Tokens, out: IO[str], answers: IO[str], listen: bool = True,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Run the configured flow to its end; 0 when the tokens are stored."""
    s = tokens.settings
    flow = tokens.flow
    say = _printer(out)
    say(f"OAuth2 login for {tokens.account} ({s.provider}, {flow} flow, "
        f"client {s.client_id})")
    grant: oauth.Grant | None
    try:
        if flow == "client_credentials":
            grant = tokens.authority.client_credentials()
        elif flow == "device":
            grant = _device(tokens.authority, say, sleep)
        else:
            grant = _code(tokens.authority, s, say, answers, listen)
    except (OAuthRefused, OAuthUnavailable) as exc:
        say(f"login failed: {_printable(str(exc), 1000)}")
        return 1
    if grant is None:
        return 1
    tokens.log_in(grant)
    until = datetime.now(UTC).timestamp() + grant.expires_in
    say(f"logged in: tokens stored in the database; access token valid until "
        f"{datetime.fromtimestamp(until, UTC).isoformat(timespec='seconds')}, refreshed "
        "ahead of expiry by maild")
    if flow != "client_credentials" and not grant.refresh_token:
        say("warning: the authority sent no refresh token (is offline_access among the "
            "scopes? Google: access_type=offline): the login lasts only until then")
        return 1
    return 0


def _printer(out: IO[str]) -> Callable[[str], None]:
    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()
    return say


def _device(authority: oauth.Authority, say: Callable[[str], None],
            sleep: Callable[[float], None]) -> oauth.Grant | None:
    code = authority.device_code()
    say(f"On any device, open {_printable(code.verification_uri)} and enter the code "
        f"{_printable(code.user_code, 40)}")
    if code.verification_uri_complete:
        say(f"(or open {_printable(code.verification_uri_complete)})")
    say(f"waiting for the approval (the code expires in {code.expires_in // 60} min) ...")
    interval, deadline = code.interval, time.monotonic() + code.expires_in
    unreachable = False
    while time.monotonic() < deadline:
        sleep(interval)
        try:
            return authority.poll_device(code)
        except oauth.Pending as pending:
            if pending.slow_down:
                interval += 5  # RFC 8628 3.5
        except OAuthUnavailable as exc:  # keep polling: the code is still good
            if not unreachable:
                say(f"still waiting ({_printable(str(exc))})")
                unreachable = True
    say("the code expired before it was approved: run `maild auth login` again")
    return None


class _Redirect(http.server.BaseHTTPRequestHandler):
    """Takes the browser's redirect on the loopback port: the one request that carries
    this login's state (with a code or an error); anything else gets 404, and a silent
    connection is dropped after a few seconds."""

    got: list[str]
    arrived: threading.Event
    state: str
    timeout = 5.0

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        query = parse_qs(urlsplit(self.path).query)
        if query.get("state", [""])[0] != self.state or self.arrived.is_set() or (
                "code" not in query and "error" not in query):
            self.send_error(404)
            return
        self.got.append(f"http://{self.headers.get('Host', '127.0.0.1')}{self.path}")
        body = (b"<!doctype html><meta charset=utf-8><title>maild</title>"
                b"<p>maild: done, you may close this window.</p>")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.arrived.set()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the address holds the code: never printed


def _code(authority: oauth.Authority, s: OAuth2Settings, say: Callable[[str], None],
          answers: IO[str], listen: bool) -> oauth.Grant | None:
    got: list[str] = []
    arrived = threading.Event()
    server = None
    port = s.redirect_port
    if listen:
        try:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Redirect)
        except OSError as exc:
            say(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}): paste the address")
        else:
            server.daemon_threads = True
            port = server.server_address[1]
    host = "localhost" if s.provider == "microsoft" else "127.0.0.1"
    redirect_uri = f"http://{host}:{port}/" if port else f"http://{host}/"
    url, state, verifier = authority.authorization(redirect_uri)
    if server is not None:
        server.RequestHandlerClass = type("Redirect", (_Redirect,), {
            "got": got, "arrived": arrived, "state": state})
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        say("Open this address in a browser and sign in:")
        say(f"  {url}")
        say("The browser then comes back to this machine and the login ends here. On "
            "another machine (over SSH) the last page does not load: copy its address "
            f"(it starts with {redirect_uri}) and paste it here:")
        pasted = _wait(answers, arrived, LOGIN_WAIT)
        address = got[0] if got else pasted
    finally:
        if server is not None:  # bounded: a silent connection times out in 5 s
            server.shutdown()
            server.server_close()
    if not address:
        say("no answer within 10 minutes: run `maild auth login` again")
        return None
    parts = urlsplit(address.strip())
    mine = urlsplit(redirect_uri)
    if parts.fragment or (parts.scheme, parts.hostname, parts.port) != (
            mine.scheme, mine.hostname, mine.port):
        say(f"that is not the address the browser ended on (it starts with {redirect_uri} "
            "and holds no #): run `maild auth login` again")
        return None
    query = parse_qs(parts.query)
    if query.get("state", [""])[0] != state:
        say("that address belongs to another login attempt (state differs): run "
            "`maild auth login` again")
        return None
    if "error" in query:
        say(f"login refused: {_printable(query['error'][0])}: "
            f"{_printable(query.get('error_description', [''])[0])}")
        return None
    if "code" not in query:
        say("that address holds no code=…: paste the whole address the browser ended on")
        return None
    return authority.exchange(query["code"][0], redirect_uri, verifier)


def _printable(text: str, limit: int = 300) -> str:
    """`text` without control characters (a terminal must not take orders from it)."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _wait(answers: IO[str], arrived: threading.Event, seconds: float) -> str:
    """A pasted line, or "" once the redirect arrived or time ran out."""
    deadline = time.monotonic() + seconds
    readable = True
    while time.monotonic() < deadline and not arrived.is_set():
        if not readable:
            arrived.wait(0.5)
            continue
        try:
            ready, _, _ = select.select([answers], [], [], 0.5)
        except (ValueError, OSError, TypeError):  # no selectable input (e.g. a test's)
            ready = [answers]
        if ready:
            line = answers.readline()
            if line.strip():
                return line.strip()
            if not line:  # end of input: only the redirect can end it now
                readable = False
    return ""


def status(tokens: oauth.Tokens, as_json: bool, zone: tzinfo) -> int:
    row = tokens.row()
    now = datetime.now(UTC)
    body = views.in_zone(_status_body(tokens, row, now), zone)  # times as everywhere
    if as_json:
        print(json.dumps(body, indent=2))
    else:
        print(_status_text(body))
    return 0 if body["ok"] else 1


def _iso(when: datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when is not None else None


def _status_body(tokens: oauth.Tokens, row: OAuthToken | None, now: datetime) -> dict[str, Any]:
    s = tokens.settings
    body: dict[str, Any] = {"account": tokens.account, "provider": s.provider,
                            "flow": tokens.flow, "client_id": s.client_id,
                            "logged_in": row is not None}
    if row is None:
        return {**body, "ok": False,
                "problem": f"no OAuth2 login stored for {tokens.account}: run `maild auth "
                           "login`"}
    expires = row.access_expires_at
    age = (now - row.refresh_token_at).days if row.refresh_token_at else None
    body.update(
        ok=not row.invalid, problem=oauth.refused_text(row) if row.invalid else "",
        stored_flow=row.flow, logged_in_at=_iso(row.logged_in_at),
        access_token_expires_at=_iso(expires),
        access_token_expires_in=round((expires - now).total_seconds()) if expires else None,
        last_refresh_at=_iso(row.refreshed_at), refreshes=row.refreshes,
        refresh_token=bool(row.refresh_token), refresh_token_age_days=age,
        last_error=row.last_error, last_error_at=_iso(row.last_error_at))
    return body


def _status_text(b: dict[str, Any]) -> str:
    lines = [f"account        {b['account']} ({b['provider']}, {b['flow']} flow, "
             f"client {b['client_id']})"]
    if not b["logged_in"]:
        return "\n".join([*lines, f"problem        {b['problem']}"])
    left = b["access_token_expires_in"]
    lines += [
        f"logged in      {b['logged_in_at']}",
        f"access token   expires {b['access_token_expires_at'] or '-'}"
        + (f" (in {left} s)" if left is not None and left > 0 else " (expired)"
           if left is not None else ""),
        f"last refresh   {b['last_refresh_at'] or '-'} ({b['refreshes']} refreshes)",
        "refresh token  " + (f"stored, {b['refresh_token_age_days']} days old"
                             if b["refresh_token"] else "none"),
        f"last error     {b['last_error'] or '-'}"
        + (f" at {b['last_error_at']}" if b["last_error_at"] else "")]
    if b["problem"]:
        lines.append(f"problem        {b['problem']}")
    return "\n".join(lines)
