"""A small OAuth2 authority on a loopback port, for the OAuth2 tests and Dovecot.

It speaks what maild needs of Microsoft's and Google's endpoints: the token endpoint
(refresh with rotation: each refresh token works once; device code; authorization code
with PKCE; client credentials), the device authorization endpoint, an authorization
endpoint that approves at once and redirects, and token introspection (RFC 7662) for
Dovecot's oauth2 passdb. It counts what it was asked, and can revoke every grant.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

CLIENT_ID = "maild-test-client"
CLIENT_SECRET = "test-client-secret-0123456789"


@dataclass
class Authority:
    """Tokens for one user (`user`, the mailbox); `lifetime` seconds per access token."""

    user: str = "service@example.test"
    lifetime: int = 3600
    client_secret: str = ""  # "": a public client (device flow without a secret)
    port: int = 0
    access: dict[str, tuple[str, float]] = field(default_factory=dict)  # token → user, exp
    refresh: dict[str, str] = field(default_factory=dict)  # live refresh token → user
    used: set[str] = field(default_factory=set)  # refresh tokens spent or revoked
    reused: list[str] = field(default_factory=list)  # spent refresh tokens asked again
    refreshes: int = 0
    device_codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    introspections: int = 0
    failing: int = 0  # answer this many token requests with 503 (an outage)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Authority:
        authority = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                path = urlsplit(self.path).path
                status, body = authority.post(path, form, self.headers.get("Authorization"))
                self._answer(status, body)

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                if parts.path != "/authorize":
                    self._answer(404, {"error": "not_found"})
                    return
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                self.send_response(302)
                self.send_header("Location", authority.authorize(query))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # -- what the endpoints do ----------------------------------------------------------

    def post(self, path: str, form: dict[str, str], basic: str | None) -> tuple[int, Any]:
        if path == "/introspect":
            return 200, self.introspect(form.get("token", ""))
        client = form.get("client_id", "")
        secret = form.get("client_secret", "")
        if basic and basic.startswith("Basic "):
            client, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        if client != CLIENT_ID or (self.client_secret and secret != self.client_secret):
            return 401, {"error": "invalid_client",
                         "error_description": "AADSTS7000215: Invalid client secret."}
        if path == "/devicecode":
            return 200, self._device_code()
        if path != "/token":
            return 404, {"error": "not_found"}
        with self.lock:
            if self.failing:
                self.failing -= 1
                return 503, {"error": "temporarily_unavailable"}
        grant = form.get("grant_type", "")
        if grant == "refresh_token":
            return self._refresh(form.get("refresh_token", ""))
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            return self._device_token(form.get("device_code", ""))
        if grant == "authorization_code":
            return self._code_token(form)
        if grant == "client_credentials":
            return 200, self._issue(self.user, with_refresh=False)
        return 400, {"error": "unsupported_grant_type"}

    def _issue(self, user: str, with_refresh: bool = True) -> dict[str, Any]:
        with self.lock:
            access = "at-" + secrets.token_urlsafe(24)
            self.access[access] = (user, time.time() + self.lifetime)
            body: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                    "expires_in": self.lifetime}
            if with_refresh:
                refresh = "rt-" + secrets.token_urlsafe(24)
                self.refresh[refresh] = user
                body["refresh_token"] = refresh
            return body

    def _refresh(self, token: str) -> tuple[int, Any]:
        with self.lock:
            user = self.refresh.pop(token, None)
            if user is None:
                if token in self.used:
                    self.reused.append(token)
                return 400, {"error": "invalid_grant",
                             "error_description": "AADSTS70000: The provided grant is "
                                                  "invalid or has been revoked."}
            self.used.add(token)
            self.refreshes += 1
        return 200, self._issue(user)

    def _device_code(self) -> dict[str, Any]:
        code = secrets.token_urlsafe(16)
        user_code = secrets.token_hex(4).upper()
        with self.lock:
            self.device_codes[code] = {"user_code": user_code, "approved": False,
                                       "expires": time.time() + 120}
        return {"device_code": code, "user_code": user_code,
                "verification_uri": f"{self.url}/device", "expires_in": 120, "interval": 1,
                "message": f"open {self.url}/device and enter {user_code}"}

    def approve(self, user_code: str | None = None) -> bool:
        """Approve the device login with `user_code` (None: every waiting one)."""
        with self.lock:
            found = False
            for entry in self.device_codes.values():
                if user_code is None or entry["user_code"] == user_code:
                    entry["approved"] = found = True
            return found

    def _device_token(self, code: str) -> tuple[int, Any]:
        with self.lock:
            entry = self.device_codes.get(code)
            if entry is None or entry["expires"] < time.time():
                return 400, {"error": "expired_token"}
            if entry.get("denied"):
                return 400, {"error": "access_denied"}
            if not entry["approved"]:
                return 400, {"error": "authorization_pending"}
            del self.device_codes[code]
        return 200, self._issue(self.user)

    def authorize(self, query: dict[str, str]) -> str:
        """Approve at once: where the browser is sent back to."""
        code = secrets.token_urlsafe(16)
        with self.lock:
            self.codes[code] = {"challenge": query.get("code_challenge", ""),
                                "method": query.get("code_challenge_method", ""),
                                "redirect_uri": query.get("redirect_uri", "")}
        return f"{query.get('redirect_uri', '')}?" + urlencode(
            {"code": code, "state": query.get("state", "")})

    def _code_token(self, form: dict[str, str]) -> tuple[int, Any]:
        with self.lock:
            entry = self.codes.pop(form.get("code", ""), None)
        if entry is None or entry["redirect_uri"] != form.get("redirect_uri"):
            return 400, {"error": "invalid_grant"}
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if entry["method"] != "S256" or challenge != entry["challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE failed"}
        return 200, self._issue(self.user)

    def introspect(self, token: str) -> dict[str, Any]:
        with self.lock:
            self.introspections += 1
            found = self.access.get(token)
        if found is None or found[1] < time.time():
            return {"active": False}
        return {"active": True, "username": found[0]}

    def user_of(self, token: str) -> str | None:
        """Whom a live access token belongs to (the SMTP capture checks it so)."""
        found = self.introspect(token)
        return str(found["username"]) if found.get("active") else None

    def revoke(self) -> None:
        """Every grant revoked (a password change, an admin's revocation)."""
        with self.lock:
            self.used.update(self.refresh)
            self.refresh.clear()
            self.access.clear()

    def grant(self) -> dict[str, Any]:
        """A fresh grant, as a login would give (for tests that skip `auth login`)."""
        return self._issue(self.user)

    def live_refresh_tokens(self) -> int:
        with self.lock:
            return len(self.refresh)


def dovecot_passdb(authority: Authority, path: Any) -> Any:
    """The args file of Dovecot's oauth2 passdb, asking `authority` by introspection."""
    path.write_text(f"""introspection_mode = post
introspection_url = {authority.url}/introspect
username_attribute = username
active_attribute = active
active_value = true
""")
    return path
