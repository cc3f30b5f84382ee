"""OAuth2 tokens for the IMAP and SMTP logins: the authority's endpoints, the stored
grant and its refresh, shared by every process through the `oauth_tokens` row.

The HTTP side is authlib's OAuth2 client over requests; authlib's and requests' errors
are translated here into `OAuthUnavailable` (the authority cannot be reached or is busy:
try again) and `OAuthRefused` (the grant or the client was refused: a person must act,
usually `maild auth login`).

One process refreshes at a time: it claims the row with a conditional UPDATE (a lease in
`refreshing_until`, committed at once: no transaction stays open while the authority is
asked), asks the authority, and commits the new tokens (a rotated refresh token with
them) before the new access token is handed to anyone; that commit is a compare-and-swap
on the refresh token it sent, so a login made meanwhile wins. The others wait for the
lease and read what it left. A grant whose commit fails (the database away) is kept in
memory and stored first thing on the next call; the one window left is a crash between
the authority's answer and the commit (with an authority that spends a refresh token on
use, that login is then lost and `maild auth login` is needed).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.requests_client import OAuth2Session
from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from maild import db
from maild.config import OAuth2Settings, OAuthFlow, Settings
from maild.errors import OAuthRefused, OAuthUnavailable, StorageUnavailable
from maild.models import OAuthToken

log = logging.getLogger(__name__)

MS_AUTHORITY = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0"
PRESETS: dict[str, dict[str, Any]] = {
    "microsoft": {
        "token_url": MS_AUTHORITY + "/token",
        "device_authorization_url": MS_AUTHORITY + "/devicecode",
        "authorization_url": MS_AUTHORITY + "/authorize",
        "scopes": ("https://outlook.office.com/IMAP.AccessAsUser.All",
                   "https://outlook.office.com/SMTP.Send", "offline_access"),
        "app_scopes": ("https://outlook.office365.com/.default",),
        "authorize_params": {},
    },
    "google": {
        "token_url": "https://oauth2.googleapis.com/token",
        "device_authorization_url": "",
        "authorization_url": "https://accounts.google.com/o/oauth2/v2/auth",
        "scopes": ("https://mail.google.com/",),
        "app_scopes": ("https://mail.google.com/",),
        # a refresh token on every consent (Google sends one only with both)
        "authorize_params": {"access_type": "offline", "prompt": "consent"},
    },
    "generic": {"token_url": "", "device_authorization_url": "", "authorization_url": "",
                "scopes": (), "app_scopes": (), "authorize_params": {}},
}

# The authority's answers that no retry mends. Of the grant (a person must log in again:
# revoked, expired, MFA or consent asked, scopes changed) and of the client (the
# registration or the config must be fixed). Everything else (5xx, 429,
# temporarily_unavailable, network) is retried.
GRANT_REFUSALS = {"invalid_grant", "interaction_required", "consent_required",
                  "access_denied", "expired_token", "invalid_scope"}
REFUSALS = GRANT_REFUSALS | {"invalid_client", "unauthorized_client",
                             "unsupported_grant_type", "invalid_request"}
# An access token as RFC 6750 allows it (b64token): nothing that could leave the SASL
# string's fields.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]{1,20000}=*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# The longest an answer of the authority is kept in an error text (it may be hostile).
MAX_ERROR = 500
# A login refused with a token fresh from the authority is not refreshed again sooner.
FORCED_REFRESH_GAP = 60.0
# After the authority refused the client (invalid_client …), it is asked again this late.
CLIENT_REFUSED_PAUSE = 60.0


@dataclass(frozen=True, slots=True)
class Endpoints:
    flow: OAuthFlow
    token_url: str
    device_authorization_url: str
    authorization_url: str
    scopes: tuple[str, ...]
    authorize_params: dict[str, str]


def endpoints(s: OAuth2Settings) -> Endpoints:
    """The preset of `s.provider`, with what the config overrides."""
    preset = PRESETS[s.provider]
    flow = s.chosen_flow

    def url(key: str) -> str:
        return str(getattr(s, key) or preset[key]).replace("{tenant}", s.tenant)

    default = preset["app_scopes"] if flow == "client_credentials" else preset["scopes"]
    return Endpoints(flow, url("token_url"), url("device_authorization_url"),
                     url("authorization_url"), tuple(s.scopes or default),
                     dict(preset["authorize_params"]))


def account_of(settings: Settings) -> str:
    """The account whose tokens are used: the SASL user of IMAP, else of SMTP."""
    if settings.imap.auth == "oauth2":
        return settings.imap.username
    return settings.smtp.username


@dataclass(frozen=True, slots=True)
class Grant:
    """What the token endpoint gave: never logged (see `__repr__`)."""

    access_token: str
    refresh_token: str
    expires_in: int

    def __repr__(self) -> str:
        return f"Grant(expires_in={self.expires_in})"


@dataclass(frozen=True, slots=True)
class DeviceCode:
    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int


class Pending(Exception):
    """The device flow's login has not been approved yet (`slow_down`: poll slower)."""

    def __init__(self, slow_down: bool) -> None:
        super().__init__("authorization_pending")
        self.slow_down = slow_down


def describe(exc: BaseException, sent: tuple[str, ...] = ()) -> str:
    """The authority's word in one capped line, without control characters and without
    anything we sent it (an authority may echo the request: the refresh token, the
    client secret)."""
    if isinstance(exc, AuthlibBaseError):
        text = f"{exc.error}: {exc.description}" if exc.description else str(exc.error)
    else:
        text = str(exc) or type(exc).__name__
    for secret in sent:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= MAX_ERROR else text[:MAX_ERROR - 1] + "…"


class Authority:
    """The authority's endpoints, through authlib; one instance per config."""

    def __init__(self, settings: OAuth2Settings) -> None:
        self.settings = settings
        self.endpoints = endpoints(settings)

    @property
    def request_cap(self) -> float:
        """The longest one request may take: connecting and reading (`timeout` each) and
        a margin (requests bounds each read, not the whole answer)."""
        return 4 * self.settings.timeout

    def _session(self, **kwargs: Any) -> OAuth2Session:
        s = self.settings
        method = "client_secret_post" if s.client_secret else "none"
        return OAuth2Session(s.client_id, s.client_secret or None,
                             token_endpoint_auth_method=method,
                             scope=" ".join(self.endpoints.scopes), **kwargs)

    def _call(self, what: str, call: Callable[[], Any], sent: tuple[str, ...] = ()) -> Any:
        sent = (*sent, self.settings.client_secret)
        try:
            return call()
        except AuthlibBaseError as exc:
            if exc.error in REFUSALS:
                raise OAuthRefused(f"{what} refused by the authority "
                                   f"({describe(exc, sent)})", error=str(exc.error)) from exc
            raise OAuthUnavailable(f"{what}: the authority answered "
                                   f"{describe(exc, sent)}") from exc
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if 400 <= status < 500 and status not in (408, 429):
                raise OAuthRefused(f"{what} refused by the authority (HTTP {status})",
                                   error=f"http_{status}") from exc
            raise OAuthUnavailable(f"{what}: the authority answered HTTP {status}") from exc
        except (requests.RequestException, ValueError, OSError) as exc:
            raise OAuthUnavailable(f"{what}: the authority cannot be reached: "
                                   f"{describe(exc, sent)}") from exc

    def _grant(self, token: Any, refresh_token: str = "") -> Grant:
        access = str(token.get("access_token") or "")
        if not access:
            raise OAuthUnavailable("the authority's answer holds no access_token")
        if not _TOKEN.fullmatch(access):
            raise OAuthUnavailable("the authority's access token holds characters a bearer "
                                   "token may not (RFC 6750)")
        try:
            expires_in = int(token.get("expires_in") or 3600)
        except (TypeError, ValueError):
            expires_in = 3600
        return Grant(access, str(token.get("refresh_token") or refresh_token),
                     max(1, min(expires_in, 86400 * 30)))

    def refresh(self, refresh_token: str) -> Grant:
        session = self._session()
        token = self._call("token refresh", lambda: session.refresh_token(
            self.endpoints.token_url, refresh_token=refresh_token,
            timeout=self.settings.timeout), sent=(refresh_token,))
        return self._grant(token, refresh_token)

    def client_credentials(self) -> Grant:
        session = self._session()
        token = self._call("client credentials", lambda: session.fetch_token(
            self.endpoints.token_url, grant_type="client_credentials",
            timeout=self.settings.timeout))
        return self._grant(token)

    def device_code(self) -> DeviceCode:
        """Step 1 of the device flow (RFC 8628): the code a person enters."""
        url = self.endpoints.device_authorization_url
        if not url:
            raise OAuthRefused(f"provider {self.settings.provider!r} has no device flow: "
                               'set [oauth2] flow = "code" or device_authorization_url')

        def ask() -> Any:
            data = {"client_id": self.settings.client_id,
                    "scope": " ".join(self.endpoints.scopes)}
            if self.settings.client_secret:
                data["client_secret"] = self.settings.client_secret
            answer = requests.post(url, data=data, timeout=self.settings.timeout)
            body = answer.json() if answer.headers.get("content-type", "").startswith(
                "application/json") else {}
            if "error" in body:
                raise AuthlibBaseError(body["error"], body.get("error_description"))
            answer.raise_for_status()
            return body

        body = self._call("device authorization", ask)
        try:
            return DeviceCode(
                str(body["device_code"]), str(body["user_code"]),
                str(body.get("verification_uri") or body.get("verification_url") or ""),
                str(body.get("verification_uri_complete") or ""),
                int(body.get("expires_in") or 900), max(1, int(body.get("interval") or 5)))
        except (KeyError, TypeError, ValueError) as exc:
            raise OAuthUnavailable(f"device authorization: unusable answer: {exc}") from exc

    def poll_device(self, code: DeviceCode) -> Grant:
        """Step 2: the tokens once the person approved; `Pending` until then."""
        session = self._session()

        def fetch() -> Any:
            try:
                return session.fetch_token(
                    self.endpoints.token_url,
                    grant_type="urn:ietf:params:oauth:grant-type:device_code",
                    device_code=code.device_code, timeout=self.settings.timeout)
            except AuthlibBaseError as exc:
                if exc.error in ("authorization_pending", "slow_down"):
                    raise Pending(exc.error == "slow_down") from exc
                raise

        token = self._call("device login", fetch, sent=(code.device_code,))
        return self._grant(token)

    def authorization(self, redirect_uri: str) -> tuple[str, str, str]:
        """The code flow's address for the browser (PKCE S256): (url, state, verifier)."""
        url = self.endpoints.authorization_url
        if not url:
            raise OAuthRefused(f"provider {self.settings.provider!r} has no authorization "
                               "address: set [oauth2] authorization_url")
        verifier = secrets.token_urlsafe(64)
        session = self._session(redirect_uri=redirect_uri,
                                code_challenge_method="S256")
        address, state = session.create_authorization_url(
            url, code_verifier=verifier, **self.endpoints.authorize_params)
        return str(address), str(state), verifier

    def exchange(self, code: str, redirect_uri: str, verifier: str) -> Grant:
        """The code flow's last step: the code the browser brought back → tokens (PKCE:
        only with the verifier of the address we printed)."""
        session = self._session(redirect_uri=redirect_uri)
        token = self._call("code login", lambda: session.fetch_token(
            self.endpoints.token_url, grant_type="authorization_code", code=code,
            redirect_uri=redirect_uri, code_verifier=verifier,
            timeout=self.settings.timeout), sent=(code, verifier))
        return self._grant(token)


def _me() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{threading.get_ident() % 100000}"


@dataclass(frozen=True, slots=True)
class Bearer:
    """An access token and when it expires (UTC)."""

    token: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"Bearer(expires_at={self.expires_at.isoformat()})"


def refused_text(row: OAuthToken) -> str:
    """The one line `maild status`, /healthz and the logs say of a refused grant."""
    return (f"OAuth2 login for {row.account} refused by the authority "
            f"({row.last_error or 'no grant'}): run `maild auth login`")


class Tokens:
    """The tokens of one account, kept in the database and refreshed ahead of expiry."""

    def __init__(self, settings: OAuth2Settings, factory: db.SessionFactory, account: str,
                 clock: Callable[[], datetime] | None = None,
                 authority: Authority | None = None,
                 on_refused: Callable[[Session, OAuthToken], None] | None = None,
                 count: Callable[[str, str], None] | None = None) -> None:
        self.settings = settings
        self.factory = factory
        self.account = account
        self.clock = clock or (lambda: datetime.now(UTC))
        self.authority = authority or Authority(settings)
        self.on_refused = on_refused
        self.count = count or (lambda name, label: None)
        self._lock = threading.Lock()  # one refresher per process
        self._retry_at = 0.0  # monotonic: after a temporary failure, not before this
        self._failures = 0
        self._last_failure = ""
        self._forced_at = -FORCED_REFRESH_GAP
        self._lease = ""  # the id of the refresh lease this process holds
        # A grant the authority gave whose commit failed (the database was away): kept
        # until it is stored, as (the refresh token it replaces, the grant). A rotated
        # refresh token is never thrown away while this process lives.
        self._unsaved: tuple[str, Grant] | None = None

    @property
    def flow(self) -> OAuthFlow:
        return self.authority.endpoints.flow

    @property
    def lease_seconds(self) -> float:
        """How long a refresh lease holds: well beyond one request's cap."""
        return max(60.0, 2 * self.authority.request_cap + 10)

    def row(self) -> OAuthToken | None:
        with db.read_only(self.factory) as session:
            row = session.get(OAuthToken, self.account)
            if row is not None:
                session.expunge(row)
            return row

    def bearer(self, refused: str = "", fresh: bool = False) -> Bearer:
        """A valid access token. `refused`: the server refused this one, so it is
        refreshed even if it has not expired (once a minute at most); `fresh`: refreshed
        now in any case (`maild check` proves the client's registration so)."""
        with self._lock:
            if self._unsaved is not None:
                self._save_unsaved()
            deadline = time.monotonic() + self.lease_seconds + 5
            while True:
                row = self.row()
                now = self.clock()
                if row is None and self.flow == "client_credentials":
                    self._app_login()  # app-only: no person to ask, nothing to wait for
                    continue
                if row is None or (not row.refresh_token and row.flow != "client_credentials"):
                    raise OAuthRefused(f"no OAuth2 login stored for {self.account}: "
                                       "run `maild auth login`", error="no_login")
                if row.client_id and row.client_id != self.settings.client_id:
                    raise OAuthRefused(
                        f"the stored OAuth2 login of {self.account} was made with client "
                        f"{row.client_id}, [oauth2] client_id is {self.settings.client_id}: "
                        "run `maild auth login` (or restore the client id)", error="client")
                if row.invalid:
                    if row.lead_told_at is None:
                        self._tell()
                    raise OAuthRefused(refused_text(row), error=row.last_error)
                current = _valid(row, now)
                forced = fresh or bool(refused) and row.access_token == refused and (
                    time.monotonic() - self._forced_at >= FORCED_REFRESH_GAP)
                if current is not None and not forced and not _due(row, now, self.settings):
                    return current
                if time.monotonic() < self._retry_at and not fresh:
                    if current is not None:  # still good: use it while the authority rests
                        return current
                    raise OAuthUnavailable(f"OAuth2 token refresh for {self.account} "
                                           f"failing: {self._last_failure or row.last_error}")
                if self._claim(row, now):
                    break
                if time.monotonic() > deadline:  # another process holds it, stuck
                    if current is not None:
                        return current
                    raise OAuthUnavailable(f"OAuth2 token for {self.account}: another "
                                           "process is refreshing it and has not finished")
                time.sleep(0.2)
            if forced:
                self._forced_at = time.monotonic()
            try:
                return self._refresh(row)
            except OAuthUnavailable:
                if current is not None and not forced:
                    return current  # the authority is away: the stored token still works
                raise

    def _claim(self, row: OAuthToken, now: datetime) -> bool:
        """Take the refresh lease if nobody holds it and nobody refreshed since `row`."""
        lease = f"{_me()}:{secrets.token_hex(6)}"
        until = now + timedelta(seconds=self.lease_seconds)
        with db.transaction(self.factory) as session:
            done = session.execute(
                update(OAuthToken)
                .where(OAuthToken.account == self.account,
                       OAuthToken.access_token == row.access_token,
                       OAuthToken.refresh_token == row.refresh_token,
                       OAuthToken.invalid.is_(False),
                       or_(OAuthToken.refreshing_until.is_(None),
                           OAuthToken.refreshing_until < now))
                .values(refreshing_until=until, refreshing_by=lease))
            claimed = bool(getattr(done, "rowcount", 0))
        self._lease = lease if claimed else ""
        return claimed

    def _refresh(self, row: OAuthToken) -> Bearer:
        sent = row.refresh_token
        try:
            if row.flow == "client_credentials":
                grant = self.authority.client_credentials()
            else:
                grant = self.authority.refresh(sent)
        except OAuthUnavailable as exc:
            self._failed(exc)
            raise
        except OAuthRefused as exc:
            if exc.error not in GRANT_REFUSALS:  # the client, not the grant: the config
                self._failed(exc, CLIENT_REFUSED_PAUSE)
                raise OAuthRefused(
                    f"OAuth2 client {self.settings.client_id!r} refused by the authority "
                    f"({_authority_words(exc)}): check [oauth2] client_id, client_secret, "
                    "tenant and scopes", error=exc.error) from exc
            if not self._refused(exc, sent):  # meanwhile refreshed or logged in again
                raise OAuthUnavailable(f"OAuth2 token for {self.account}: refreshed "
                                       "elsewhere meanwhile; trying again") from exc
            raise OAuthRefused(refused_text(self._must_row()), error=exc.error) from exc
        self._unsaved = (sent, grant)
        return self._save_unsaved()

    def _save_unsaved(self) -> Bearer:
        """Commit the grant the authority gave (a rotated refresh token with it) before
        anyone uses its access token; kept in memory while the database is away."""
        assert self._unsaved is not None
        sent, grant = self._unsaved
        now = self.clock()
        for attempt in range(5):
            try:
                with db.transaction(self.factory) as session:
                    mine = session.get(OAuthToken, self.account, with_for_update=True)
                    if mine is None or mine.refresh_token != sent:
                        # logged out, or logged in anew meanwhile: theirs is newer
                        self._unsaved = None
                        raise OAuthUnavailable(f"OAuth2 token for {self.account}: the "
                                               "login changed meanwhile; using the new one")
                    if grant.refresh_token:
                        mine.refresh_token = grant.refresh_token
                        if grant.refresh_token != sent:
                            mine.refresh_token_at = now
                    mine.access_token = grant.access_token
                    mine.access_expires_at = now + timedelta(seconds=grant.expires_in)
                    mine.access_lifetime = grant.expires_in
                    mine.refreshed_at, mine.refreshes = now, mine.refreshes + 1
                    mine.invalid = False  # a racing refresh of the spent token said so
                    if mine.refreshing_by == self._lease:
                        mine.refreshing_until, mine.refreshing_by = None, ""
                    expires = mine.access_expires_at
                break
            except StorageUnavailable:
                if attempt == 4:
                    raise
                time.sleep(0.5 * 2 ** attempt)
        # committed: only now is the new access token used
        self._unsaved = None
        self._failures, self._retry_at, self._last_failure = 0, 0.0, ""
        self.count("oauth_refreshes", "ok")
        log.info("OAuth2 access token for %s refreshed; valid until %s", self.account,
                 expires.isoformat(timespec="seconds"))
        return Bearer(grant.access_token, expires)

    def _app_login(self) -> None:
        """The first token of the client-credentials flow, under the same backoff as a
        refresh (a refused client is not asked again at once)."""
        if time.monotonic() < self._retry_at:
            raise OAuthUnavailable(f"OAuth2 client credentials for {self.account} failing: "
                                   f"{self._last_failure}")
        try:
            self.log_in(None)
        except OAuthRefused as exc:
            self._failed(exc, CLIENT_REFUSED_PAUSE)
            raise
        except OAuthUnavailable as exc:
            self._failed(exc)
            raise

    def _must_row(self) -> OAuthToken:
        row = self.row()
        if row is None:
            raise OAuthRefused(f"no OAuth2 login stored for {self.account}: "
                               "run `maild auth login`", error="no_login")
        return row

    def _failed(self, exc: OAuthUnavailable | OAuthRefused, pause: float = 0.0) -> None:
        self._failures += 1
        self._retry_at = time.monotonic() + max(pause, min(60.0, 2.0 ** (self._failures - 1)))
        self._last_failure = str(exc)[:MAX_ERROR * 2]
        self.count("oauth_refreshes", "failed" if pause == 0 else "refused")
        now = self.clock()
        with db.transaction(self.factory) as session:
            row = session.get(OAuthToken, self.account, with_for_update=True)
            if row is not None:
                if self._lease and row.refreshing_by == self._lease:
                    row.refreshing_until, row.refreshing_by = None, ""
                row.last_error, row.last_error_at = self._last_failure, now
        if self._failures == 1:
            log.warning("OAuth2 token refresh for %s failed, retrying with backoff: %s",
                        self.account, exc)

    def _refused(self, exc: OAuthRefused, sent: str) -> bool:
        """Mark the grant refused, if the refresh token refused is still the stored one
        (else another process refreshed, or someone logged in, meanwhile: False)."""
        now = self.clock()
        with db.transaction(self.factory) as session:
            row = session.get(OAuthToken, self.account, with_for_update=True)
            if row is None or row.refresh_token != sent or row.invalid:
                return row is not None and row.invalid
            if self._lease and row.refreshing_by == self._lease:
                row.refreshing_until, row.refreshing_by = None, ""
            row.invalid, row.access_token, row.access_expires_at = True, "", None
            row.last_error, row.last_error_at = _authority_words(exc), now
            text = refused_text(row)
        self.count("oauth_refreshes", "refused")
        log.error("%s", text)
        self._tell()
        return True

    def _tell(self) -> None:
        """Tell the lead of a refused grant, once per outage (whichever process first)."""
        if self.on_refused is None:
            return
        with db.transaction(self.factory) as session:
            row = session.get(OAuthToken, self.account, with_for_update=True)
            if row is None or not row.invalid or row.lead_told_at is not None:
                return
            self.on_refused(session, row)
            row.lead_told_at = self.clock()

    def log_in(self, grant: Grant | None) -> None:
        """Store what `maild auth login` got (client credentials: fetched here)."""
        if grant is None:
            grant = self.authority.client_credentials()
        self.store(grant, self.flow, self.settings.provider, self.settings.client_id)

    def store(self, grant: Grant, flow: OAuthFlow, provider: str, client_id: str) -> None:
        """What `maild auth login` got: replaces every token and clears the outage."""
        now = self.clock()
        with db.transaction(self.factory) as session:
            row = session.get(OAuthToken, self.account, with_for_update=True)
            if row is None:
                row = OAuthToken(account=self.account, refreshes=0)
                session.add(row)
            row.provider, row.flow, row.client_id = provider, flow, client_id
            row.refresh_token = grant.refresh_token
            row.refresh_token_at = now if grant.refresh_token else None
            row.access_token = grant.access_token
            row.access_expires_at = now + timedelta(seconds=grant.expires_in)
            row.access_lifetime = grant.expires_in
            row.logged_in_at, row.refreshed_at = now, now
            row.invalid, row.lead_told_at = False, None
            row.refreshing_until, row.refreshing_by = None, ""
            if row.last_error_at is None:
                row.last_error = ""
        self._failures, self._retry_at, self._last_failure = 0, 0.0, ""
        self._unsaved = None

    def forget(self) -> bool:
        with db.transaction(self.factory) as session:
            row = session.get(OAuthToken, self.account, with_for_update=True)
            if row is None:
                return False
            session.delete(row)
            return True


def _authority_words(exc: OAuthRefused) -> str:
    """`invalid_grant: AADSTS70008: …` out of "token refresh refused by the authority (…)"."""
    text = str(exc)
    start, end = text.find("("), text.rfind(")")
    return text[start + 1:end] if 0 <= start < end else text


def _valid(row: OAuthToken, now: datetime) -> Bearer | None:
    """The stored access token while it is valid a little longer (10 s, or a tenth of a
    short lifetime): time enough for a login."""
    least = min(10.0, (row.access_lifetime or 3600) / 10)
    if row.access_token and row.access_expires_at is not None and (
            row.access_expires_at - now).total_seconds() > least:
        return Bearer(row.access_token, row.access_expires_at)
    return None


def _due(row: OAuthToken, now: datetime, settings: OAuth2Settings) -> bool:
    """Time to refresh: within `refresh_ahead` (a quarter of the lifetime at most) of
    expiry."""
    if row.access_expires_at is None:
        return True
    ahead = min(settings.refresh_ahead, (row.access_lifetime or 3600) / 4)
    return (row.access_expires_at - now).total_seconds() <= ahead


def margin(lifetime: int, settings: OAuth2Settings) -> float:
    """Seconds before expiry at which a token is refreshed (and IMAP reconnects)."""
    return min(settings.refresh_ahead, (lifetime or 3600) / 4)


def sasl_xoauth2(user: str, token: str) -> bytes:
    """The XOAUTH2 initial response (Google's and Microsoft's SASL mechanism)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def sasl_oauthbearer(user: str, token: str, host: str, port: int) -> bytes:
    """The OAUTHBEARER initial response (RFC 7628)."""
    safe = user.replace("=", "=3D").replace(",", "=2C")
    return f"n,a={safe},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()
