"""Load the TOML config into validated, frozen settings; secrets from env or files.

Every key but the contract's (imap/smtp/database/support basics) has a default, so a
short file runs everything. Secrets (passwords, the database URL, the signing key) may
instead come from, in this order of precedence:

1. an environment variable ``MAILD_<SECTION>_<KEY>`` (e.g. ``MAILD_IMAP_PASSWORD``);
2. a file named by ``<key>_file`` in the TOML (e.g. ``password_file = "/run/secrets/imap"``);
3. a systemd credential: ``$CREDENTIALS_DIRECTORY/<section>_<key>`` (``imap_password``);
4. the TOML value itself.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from datetime import date, time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url

from maild.errors import ConfigError
from maild.mail.facts import FACTS
from maild.vocab import REOPEN_DAYS

TlsMode = Literal["none", "starttls", "ssl"]

SECRET_KEYS = {
    ("imap", "password"),
    ("smtp", "password"),
    ("database", "url"),
    ("security", "secret_key"),
    ("oauth2", "client_secret"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImapSettings(_Section):
    host: str
    port: int = Field(default=993, ge=1, le=65535)
    username: str
    password: str = ""
    tls: TlsMode = "ssl"
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    quarantine_folder: str = "Quarantine"
    process_existing: bool = True
    poll_interval: float = Field(default=60.0, gt=0)
    idle_renew: float = Field(default=300.0, gt=0)
    batch_size: int = Field(default=50, ge=1, le=1000)
    timeout: float = Field(default=30.0, gt=0)
    max_fetch_mb: float = Field(default=50.0, gt=0)
    fetch_batch_mb: float = Field(default=100.0, gt=0)
    idle: bool = True
    # "oauth2": log in with a token from [oauth2] (SASL OAUTHBEARER or XOAUTH2), the
    # SASL user being `username`; "password": LOGIN with `password`.
    auth: Literal["password", "oauth2"] = "password"

    @model_validator(mode="after")
    def _cleartext_only_to_loopback(self) -> ImapSettings:
        _tls_needs_loopback(self.tls, self.host)
        return self

    @field_validator("folder", "processed_folder", "quarantine_folder")
    @classmethod
    def _not_gmails_own(cls, value: str) -> str:
        _not_a_gmail_folder(value)
        return value

    @property
    def mailbox_id(self) -> str:
        """Names this watched folder in the database: several accounts may have an INBOX."""
        return f"{self.username}@{self.host}/{self.folder}"


class SmtpSettings(_Section):
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    username: str = ""
    password: str = ""
    tls: TlsMode = "starttls"
    timeout: float = Field(default=30.0, gt=0)
    # "password": AUTH with `password` when `username` is set (else none); "oauth2": a
    # token from [oauth2] for `username` (default: [imap] username); "none": never AUTH.
    auth: Literal["password", "oauth2", "none"] = "password"

    @model_validator(mode="after")
    def _cleartext_only_to_loopback(self) -> SmtpSettings:
        _tls_needs_loopback(self.tls, self.host)
        return self


OAuthFlow = Literal["device", "code", "client_credentials"]


class OAuth2Settings(_Section):
    """Where the tokens for `auth = "oauth2"` come from (docs/oauth2.md)."""

    provider: Literal["microsoft", "google", "generic"] = "microsoft"
    client_id: str = ""
    client_secret: str = ""
    tenant: str = "organizations"  # Microsoft: a tenant id or domain, or organizations
    flow: OAuthFlow | None = None  # None: the provider's (device; code for Google)
    scopes: tuple[str, ...] = ()  # (): the provider's for IMAP + SMTP
    token_url: str = ""
    device_authorization_url: str = ""
    authorization_url: str = ""
    redirect_port: int = Field(default=0, ge=0, le=65535)  # code flow; 0: a free port
    timeout: float = Field(default=30.0, gt=0, le=300)
    # Refresh this long before the access token expires (at most a quarter of its life).
    refresh_ahead: float = Field(default=300.0, ge=0)

    @field_validator("token_url", "device_authorization_url", "authorization_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value:
            return value
        if any(c in value for c in "\\@") or any(not c.isprintable() or c.isspace()
                                                  for c in value):
            raise ValueError("an address without @, \\, spaces or control characters")
        parts = urlsplit(value)
        if parts.scheme == "https" and parts.hostname:
            return value
        if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
            return value
        raise ValueError("must be an https:// address (http:// only to a loopback host)")

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,100}", value):
            raise ValueError("a tenant id (GUID), a domain, organizations or common")
        return value

    @property
    def chosen_flow(self) -> OAuthFlow:
        if self.flow is not None:
            return self.flow
        return "code" if self.provider == "google" else "device"

    @model_validator(mode="after")
    def _complete(self) -> OAuth2Settings:
        if self.provider == "generic" and not self.token_url:
            raise ValueError('provider = "generic" needs token_url')
        if self.provider == "google" and self.chosen_flow != "code":
            raise ValueError('Google allows the mail scope only with flow = "code"')
        if (self.provider == "microsoft" and self.chosen_flow == "client_credentials"
                and self.tenant in ("organizations", "common", "consumers")):
            raise ValueError('flow = "client_credentials" needs the tenant id or domain '
                             'in tenant')
        if self.chosen_flow == "client_credentials" and not self.client_secret:
            raise ValueError('flow = "client_credentials" needs client_secret')
        return self


class DatabaseSettings(_Section):
    url: str = ""


class SupportSettings(_Section):
    address: str
    name: str = "Support"
    public_url: str = "http://127.0.0.1:8025"
    default_language: Literal["de", "en"] = "de"

    @field_validator("address")
    @classmethod
    def _is_address(cls, value: str) -> str:
        return _address(value)


class CalendarSettings(_Section):
    timezone: str = "Europe/Berlin"
    country: str = "DE"
    subdivision: str = ""
    weekdays: tuple[int, ...] = (1, 2, 3, 4, 5)
    open: time = time(9, 0)
    close: time = time(16, 0)
    first_response_hours: float = Field(default=8.0, gt=0)
    # Per priority and per customer tier; the smallest that applies wins.
    first_response_by_priority: dict[Literal["urgent", "high", "normal", "low"],
                                     float] = {}
    first_response_by_tier: dict[str, float] = {}
    weekday_hours: dict[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], str] = {}
    closed_days: tuple[date, ...] = ()
    half_days: dict[date, time] = {}

    @property
    def weekday_hours_parsed(self) -> dict[int, tuple[time, time]]:
        return {_DAYS.index(day) + 1: _span(value) for day, value in self.weekday_hours.items()}

    @field_validator("weekday_hours")
    @classmethod
    def _spans(cls, value: dict[str, str]) -> dict[str, str]:
        for day, span in value.items():
            try:
                opens, closes = _span(span)
            except ValueError:
                raise ValueError(f"{day}: expected \"HH:MM-HH:MM\", got {span!r}") from None
            if closes <= opens:
                raise ValueError(f"{day}: closes before it opens: {span!r}")
        return value

    @field_validator("first_response_by_priority", "first_response_by_tier")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for key, hours in value.items():
            if hours <= 0:
                raise ValueError(f"{key}: hours must be more than 0")
        return value

    @model_validator(mode="after")
    def _open_hours(self) -> CalendarSettings:
        """Opening before closing, half days within the day, an open hour in the week:
        a calendar without one would fail every deadline (and so every mail)."""
        if self.close <= self.open:
            raise ValueError(f"open ({self.open:%H:%M}) must be before close "
                             f"({self.close:%H:%M})")
        hours = self.weekday_hours_parsed
        for day, closes in self.half_days.items():
            opens = hours.get(day.isoweekday(), (self.open, self.close))[0]
            if closes <= opens:
                raise ValueError(f"half_days {day}: closes at {closes:%H:%M}, before the "
                                 f"day opens ({opens:%H:%M}); for a closed day use "
                                 "closed_days")
        if not any(hours.get(d, (self.open, self.close))[0]
                   < hours.get(d, (self.open, self.close))[1] for d in self.weekdays):
            raise ValueError("no open hour in the week: check weekdays and weekday_hours")
        return self

    @model_validator(mode="after")
    def _known_holidays(self) -> CalendarSettings:
        if self.country:
            import holidays
            try:
                holidays.country_holidays(self.country, subdiv=self.subdivision or None)
            except NotImplementedError as exc:
                raise ValueError(f"country/subdivision: {exc}") from None
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("weekdays")
    @classmethod
    def _iso_weekdays(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(d < 1 or d > 7 for d in value):
            raise ValueError("weekdays are ISO numbers 1 (Monday) to 7 (Sunday)")
        return tuple(sorted(set(value)))


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _span(value: str) -> tuple[time, time]:
    opens, _, closes = value.partition("-")
    return time.fromisoformat(opens.strip()), time.fromisoformat(closes.strip())


class FactsSettings(_Section):
    required: tuple[str, ...] = (
        "contact_name", "company", "occurred", "device", "software_version", "error_message",
        "reproducible",
    )
    patterns: dict[str, tuple[str, ...]] = {}

    @field_validator("required")
    @classmethod
    def _known_required(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [v for v in value if v not in FACTS]
        if unknown:
            raise ValueError(f"unknown facts {unknown}; known: {', '.join(FACTS)}")
        return value

    @field_validator("patterns")
    @classmethod
    def _compilable(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for fact, patterns in value.items():
            if fact not in FACTS:
                raise ValueError(f"unknown fact {fact!r}; known: {', '.join(FACTS)}")
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"{fact}: bad regular expression {pattern!r}: {exc}") from exc
        return value


class TriageSettings(_Section):
    urgent_keywords: tuple[str, ...] = (
        "Ausfall", "ausgefallen", "Totalausfall", "nicht erreichbar", "geht nicht mehr",
        "funktioniert nicht mehr", "alle Benutzer", "alle Nutzer", "alle Mitarbeiter",
        "niemand kann", "keiner kann", "down", "outage", "all users", "nobody can",
        "not reachable", "unreachable",
    )
    tier_priority: dict[str, Literal["urgent", "high", "normal", "low"]] = {}


class ThreadingSettings(_Section):
    reopen_days: float = Field(default=REOPEN_DAYS, ge=0)
    stranger_tag: Literal["new_ticket", "attach"] = "new_ticket"
    plus_addressing: bool = False


class AgentEntry(_Section):
    address: str
    name: str = ""
    lead: bool = False

    @field_validator("address")
    @classmethod
    def _is_address(cls, value: str) -> str:
        return _address(value)


class AgentsSettings(_Section):
    """Who works tickets by mail, where notifications go and what proves an agent's mail."""

    members: tuple[AgentEntry, ...] = ()
    team_address: str = ""
    language: Literal["de", "en"] = "de"
    require_proof: bool = True
    trusted_authserv_ids: tuple[str, ...] = ()
    relay_to_participants: bool = True
    quote_customer: bool = True
    notify_attachments_max_mb: float = Field(default=10.0, ge=0)
    trusted_hosts: tuple[str, ...] = ()
    token_days: int = Field(default=30, ge=1)
    max_relay_recipients: int = Field(default=10, ge=1)

    @field_validator("team_address")
    @classmethod
    def _team(cls, value: str) -> str:
        return _address(value) if value else ""

    @field_validator("trusted_authserv_ids", "trusted_hosts")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.strip().lower() for v in value if v.strip())


def _address(value: str) -> str:
    value = value.strip()
    if "@" not in value or value.startswith("@") or value.endswith("@") or " " in value:
        raise ValueError(f"not an email address: {value!r}")
    return value.lower()


class SlaSettings(_Section):
    """The scheduler's sweeps over deadlines: warnings, breaches, reminders, the digest."""

    sweep_seconds: float = Field(default=60.0, gt=0)
    warn_at: tuple[float, ...] = (0.75,)
    lead_address: str = ""
    remind_after_days: int = Field(default=3, ge=0)
    auto_close_after_days: int = Field(default=10, ge=0)
    digest: bool = True
    digest_time: time = time(9, 0)

    @field_validator("warn_at")
    @classmethod
    def _shares(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < v < 1 for v in value):
            raise ValueError("shares of the promise between 0 and 1, e.g. [0.75]")
        return tuple(sorted(set(value)))

    @field_validator("lead_address")
    @classmethod
    def _lead(cls, value: str) -> str:
        return _address(value) if value else ""

    @model_validator(mode="after")
    def _close_after_reminder(self) -> SlaSettings:
        if (self.remind_after_days and self.auto_close_after_days
                and self.auto_close_after_days <= self.remind_after_days):
            raise ValueError("auto_close_after_days must be more than remind_after_days "
                             "(or 0 = off)")
        return self


class AccountsSettings(_Section):
    unknown_sender: Literal["accept", "domain", "reject"] = "accept"


class AttachmentSettings(_Section):
    max_file_mb: float = Field(default=25.0, gt=0)
    max_mail_mb: float = Field(default=50.0, gt=0)
    max_count: int = Field(default=100, ge=1)
    logo_max_kb: float = Field(default=32.0, ge=0)


class LimitsSettings(_Section):
    answers_per_address_per_hour: int = Field(default=5, ge=0)
    answers_per_hour: int = Field(default=5000, ge=0)
    # The share of answers_per_hour kept for known accounts and follow-ups of open
    # tickets: a flood of unknown senders spends only the rest.
    answers_reserved_share: float = Field(default=0.2, ge=0, le=0.9)
    subject_max_chars: int = Field(default=200, ge=20)
    notify_text_max_kb: float = Field(default=20.0, gt=0)


class SpamSettings(_Section):
    """The upstream filter's verdict: X-Spam-Flag/X-Spam-Status always count; a header of
    your own filter may be named with a regular expression its value must match."""

    header: str = ""
    pattern: str = ""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"bad regular expression {value!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _both(self) -> SpamSettings:
        if bool(self.header) != bool(self.pattern):
            raise ValueError("header and pattern go together (both set, or neither)")
        return self


class IntakeSettings(_Section):
    max_attempts: int = Field(default=3, ge=1)
    parse_workers: int = Field(default=1, ge=0, le=64)
    parse_timeout: float = Field(default=10.0, gt=0)
    parse_memory_mb: int = Field(default=1024, ge=100)
    max_crashes: int = Field(default=3, ge=1)
    retry_backoff: float = Field(default=5.0, gt=0)
    retry_backoff_max: float = Field(default=300.0, gt=0)


class OutboxSettings(_Section):
    initial_backoff: float = Field(default=30.0, gt=0)
    max_backoff: float = Field(default=3600.0, gt=0)
    give_up_after_hours: float = Field(default=72.0, gt=0)
    batch_size: int = Field(default=50, ge=1)
    # SMTP connections sending at once (the mails about one ticket keep their order).
    connections: int = Field(default=3, ge=1, le=20)
    lease_seconds: float = Field(default=60.0, gt=0)
    verp: bool = False
    # The bytes of mails sent (or failed) this many days ago are dropped; the rows stay.
    keep_sent_days: float = Field(default=30.0, gt=0)


class SecuritySettings(_Section):
    secret_key: str = ""
    # Keys used before a rotation: links signed with them still work; nothing new is.
    old_secret_keys: tuple[str, ...] = ()
    agent_key_version: int = Field(default=1, ge=1)

    @field_validator("secret_key")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        if value and len(value.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"too short: a signing key needs at least {MIN_SECRET_BYTES} bytes (make "
                "one with `python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`), "
                "or leave it unset and maild generates one and keeps it in the database")
        return value


MIN_SECRET_BYTES = 32


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: the only hosts a cleartext connection may go to."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# Gmail's own folders: "[Gmail]/All Mail", "[Gmail]/Spam", "[Gmail]/Trash", ... ("[Google
# Mail]/..." in accounts opened in Germany or the UK). Moving mail to one of them archives,
# junks or deletes it; watching one (All Mail) would take in every mail of the account.
GMAIL_OWN = ("[gmail]", "[google mail]")


def _not_a_gmail_folder(folder: str) -> None:
    top = folder.split("/", 1)[0].strip().lower()
    if top in GMAIL_OWN:
        raise ValueError(
            "a folder of Gmail's own ([Gmail]/..., [Google Mail]/...): maild never watches "
            "or moves mail there; use INBOX or a label of your own, e.g. \"Processed\"")


def _tls_needs_loopback(tls: str, host: str) -> None:
    if tls == "none" and not is_loopback(host):
        raise ValueError(
            f'tls = "none" would send the password in clear to {host}: allowed for a '
            'loopback host only (127.0.0.1, ::1, localhost); use "ssl" or "starttls"')


class PathSettings(_Section):
    state_dir: str = ""
    blob_dir: str = ""
    templates_dir: str = ""


class HttpSettings(_Section):
    """The ticket pages and the escalation link, behind a TLS-terminating reverse proxy."""

    listen: str = "127.0.0.1:8025"
    enabled: bool = True
    link_days: float = Field(default=180.0, gt=0)
    # Proxies whose X-Forwarded-For is believed (addresses or networks); none by default.
    trusted_proxies: tuple[str, ...] = ()
    # Requests per minute per client address and per link (token bucket).
    rate_per_minute: int = Field(default=60, ge=1)
    # What a ticket's page may take in (its form's text and files, in MB): in any hour,
    # and in all. Past them the page asks for mail instead; nothing is stored.
    upload_mb_per_hour: float = Field(default=100.0, gt=0)
    upload_mb_per_ticket: float = Field(default=500.0, gt=0)
    # Additions on a page notify agents once per burst: the notice waits this long and
    # takes in every addition meanwhile (0: one notice per addition, at once).
    notify_hold_seconds: float = Field(default=120.0, ge=0, le=3600)
    # Connections at once on each listener, in all (never more than the open-files limit
    # minus a reserve for mail and the database) and per client (IPv6: per /64; not for
    # trusted_proxies); past them a connection is closed when it is accepted.
    max_connections: int = Field(default=512, ge=1)
    max_connections_per_client: int = Field(default=32, ge=1)
    # Seconds a request's headers, then its whole body, may take to arrive.
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=60.0, gt=0)
    # /healthz and /metrics on an address of their own (then not on `listen`); "" = beside
    # the pages on `listen`. Served even when enabled = false.
    metrics_listen: str = ""

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _host_port(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "metrics_listen" and not value:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, e.g. 127.0.0.1:8025, got {value!r}")
        return value

    @model_validator(mode="after")
    def _apart(self) -> HttpSettings:
        if self.metrics_listen and self.metrics_listen == self.listen:
            raise ValueError("metrics_listen must differ from listen (or be empty: "
                             "/healthz and /metrics then go on listen)")
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"not an address or network: {item!r}") from None
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class HealthSettings(_Section):
    """When /healthz answers 503 and `maild status` exits 1, and how SMTP is watched."""

    # The mailbox may fail this long (reconnecting) before maild counts as unhealthy.
    mailbox_failing_seconds: float = Field(default=30.0, ge=0)
    smtp_failing_seconds: float = Field(default=60.0, ge=0)
    # The oldest mail waiting in the outbox may be this old.
    outbox_oldest_minutes: float = Field(default=60.0, gt=0)
    # With nothing to send, the outbox connects to the SMTP server this often (at most
    # once a minute), so a broken server shows before a mail waits for it; 0 = never.
    smtp_probe_seconds: float = Field(default=60.0, ge=0)

    @field_validator("smtp_probe_seconds")
    @classmethod
    def _not_too_often(cls, value: float) -> float:
        if 0 < value < 60:
            raise ValueError("at most once a minute: 60 or more (or 0 = off)")
        return value


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # text: `LEVEL logger: message key=value…`; json: one JSON object per line.
    format: Literal["text", "json"] = "text"


class Settings(_Section):
    imap: ImapSettings
    smtp: SmtpSettings
    support: SupportSettings
    database: DatabaseSettings = DatabaseSettings()
    calendar: CalendarSettings = CalendarSettings()
    accounts: AccountsSettings = AccountsSettings()
    agents: AgentsSettings = AgentsSettings()
    sla: SlaSettings = SlaSettings()
    threading: ThreadingSettings = ThreadingSettings()
    attachments: AttachmentSettings = AttachmentSettings()
    facts: FactsSettings = FactsSettings()
    triage: TriageSettings = TriageSettings()
    limits: LimitsSettings = LimitsSettings()
    spam: SpamSettings = SpamSettings()
    intake: IntakeSettings = IntakeSettings()
    outbox: OutboxSettings = OutboxSettings()
    security: SecuritySettings = SecuritySettings()
    paths: PathSettings = PathSettings()
    http: HttpSettings = HttpSettings()
    health: HealthSettings = HealthSettings()
    log: LogSettings = LogSettings()
    oauth2: OAuth2Settings | None = None
    source: str = ""

    @model_validator(mode="before")
    @classmethod
    def _smtp_user_for_oauth2(cls, data: Any) -> Any:
        """With [smtp] auth = "oauth2" and no username, the SASL user is [imap]'s."""
        if isinstance(data, dict):
            smtp, imap = data.get("smtp"), data.get("imap")
            if (isinstance(smtp, dict) and isinstance(imap, dict)
                    and smtp.get("auth") == "oauth2" and not smtp.get("username")):
                data = {**data, "smtp": {**smtp, "username": imap.get("username", "")}}
        return data

    @model_validator(mode="after")
    def _oauth2_configured(self) -> Settings:
        for name, section in (("imap", self.imap), ("smtp", self.smtp)):
            if section.auth == "oauth2" and any(
                    not c.isprintable() or c.isspace() or c == "," for c in section.username):
                raise ValueError(f"[{name}] username: no spaces, commas or control "
                                 "characters (it goes into the SASL string)")
        users = [name for name, auth in (("imap", self.imap.auth), ("smtp", self.smtp.auth))
                 if auth == "oauth2"]
        if users and self.oauth2 is None:
            raise ValueError(f'[{users[0]}] auth = "oauth2" needs an [oauth2] section '
                             "(provider, client_id: see docs/oauth2.md)")
        if users and self.oauth2 is not None and not self.oauth2.client_id:
            raise ValueError("[oauth2] client_id: missing (required for auth = \"oauth2\")")
        return self

    @model_validator(mode="after")
    def _agents_are_not_us(self) -> Settings:
        ours = self.support.address
        for i, member in enumerate(self.agents.members):
            if member.address == ours:
                raise ValueError(f"[agents] members.{i}: the support address {ours} cannot "
                                 "be an agent (mail to it would loop)")
        if self.agents.team_address == ours:
            raise ValueError(f"[agents] team_address: must not be the support address {ours}")
        return self

    @property
    def state_dir(self) -> Path:
        """`[paths] state_dir`, else systemd's $STATE_DIRECTORY, else a fixed default
        (never the working directory: every command must find the same database)."""
        if self.paths.state_dir:
            return Path(self.paths.state_dir).expanduser().resolve()
        return default_state_dir(os.environ, os.geteuid())

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.state_dir / 'maild.db'}"

    @property
    def blob_dir(self) -> Path:
        if self.paths.blob_dir:
            return Path(self.paths.blob_dir)
        url = self.database_url
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            return Path(url.removeprefix("sqlite:///")).parent / "blobs"
        return self.state_dir / "blobs"


def default_state_dir(environ: Mapping[str, str], euid: int) -> Path:
    """Where state lives without `[paths] state_dir`: systemd's $STATE_DIRECTORY (first
    entry), /var/lib/maild for root, else $XDG_STATE_HOME/maild or ~/.local/state/maild."""
    given = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if given:
        return Path(given)
    if euid == 0:
        return Path("/var/lib/maild")
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "maild"
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "maild"


DEFAULT_CONFIG = "/etc/maild/maild.toml"  # where the README installs it


def load(path: str | os.PathLike[str] | None, environ: dict[str, str] | None = None,
         default: str = DEFAULT_CONFIG) -> Settings:
    """Read, merge secrets into and validate the config at `path` (--config), else
    $MAILD_CONFIG, else `default` when it exists."""
    env = dict(os.environ if environ is None else environ)
    name = str(path or env.get("MAILD_CONFIG") or "")
    if not name and Path(default).is_file():
        name = default
    if not name:
        raise ConfigError(f"no config file: pass --config PATH, set MAILD_CONFIG or "
                          f"create {default}")
    try:
        with open(name, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{name}: file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: not valid TOML: {exc}") from exc
    return from_mapping(raw, name, env)


def exposure(name: str) -> str:
    """A warning when the config file `name` holds a secret (a password, key, client
    secret or a database URL with a password) and every user of the machine may read
    it; "" else (or when it cannot be read again). Group-readable is what the README
    installs (0640 root:maild) and is fine."""
    try:
        with open(name, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not mode & stat.S_IROTH:
                return ""
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return ""
    held = []
    for section, key in sorted(SECRET_KEYS):
        table = raw.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        if not isinstance(value, str) or not value:
            continue
        if key == "url":
            try:
                if not make_url(value).password:
                    continue
            except Exception:  # a malformed URL may still hold one
                pass
        held.append(f"[{section}] {key}")
    if not held:
        return ""
    return (f"{name} holds {', '.join(held)} and every user may read it (mode "
            f"{stat.S_IMODE(mode):04o}): chmod o-r {name}, or move the secrets to "
            "*_file, MAILD_* variables or systemd credentials")


def from_mapping(raw: dict[str, Any], name: str, env: dict[str, str]) -> Settings:
    """Validate an already parsed TOML mapping; `name` is used in messages."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    _merge_secrets(data, name, env)
    data["source"] = name
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(name, err) for err in exc.errors())) from exc


def _merge_secrets(data: dict[str, Any], name: str, env: dict[str, str]) -> None:
    creds = env.get("CREDENTIALS_DIRECTORY")
    for section, key in sorted(SECRET_KEYS):
        table = data.get(section)
        if table is not None and not isinstance(table, dict):
            continue
        table = dict(table or {})
        value = _secret_value(table, section, key, name, env, creds)
        table.pop(f"{key}_file", None)
        if value is not None:
            table[key] = value
        if table or section in data:
            data[section] = table


def _secret_value(
    table: dict[str, Any], section: str, key: str, name: str,
    env: dict[str, str], creds: str | None,
) -> str | None:
    from_env = env.get(f"MAILD_{section.upper()}_{key.upper()}")
    if from_env:
        return from_env
    file_name = table.get(f"{key}_file")
    if file_name:
        return _read_secret(Path(str(file_name)), f"{name}: [{section}] {key}_file")
    if creds and (Path(creds) / f"{section}_{key}").is_file():
        return _read_secret(Path(creds) / f"{section}_{key}", f"credential {section}_{key}")
    return None


def _read_secret(path: Path, where: str) -> str:
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from exc


def _describe(name: str, err: Any) -> str:
    loc = [str(p) for p in err["loc"]]
    where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else f"[{loc[0]}]" if loc else ""
    if err["type"] == "extra_forbidden":
        return f"{name}: {where}: unknown key"
    if err["type"] == "missing":
        return f"{name}: {where}: missing (required)"
    got = err.get("input")
    secret = tuple(loc[:2]) in SECRET_KEYS or any(
        word in part for part in loc for word in ("password", "secret"))
    shown = "" if isinstance(got, dict | list) or secret else f" (got {_short(got)})"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{name}: {where}: {message}{shown}"


def _short(value: Any) -> str:
    """A rejected value for a message: repr, capped (a value may be long or hostile)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."
