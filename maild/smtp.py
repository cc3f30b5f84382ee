"""The SMTP edge: one connection, reused for a lane of mails; aiosmtplib's errors
translated here."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl

import aiosmtplib

from maild.config import SmtpSettings
from maild.errors import OAuthRefused, OAuthUnavailable, SmtpDeferred, SmtpRejected
from maild.oauth import Bearer, Tokens, sasl_oauthbearer, sasl_xoauth2

log = logging.getLogger(__name__)


class SmtpConnection:
    """`async with SmtpConnection(settings) as smtp: await smtp.send(...)`."""

    def __init__(self, settings: SmtpSettings, tokens: Tokens | None = None) -> None:
        self.settings = settings
        self.tokens = tokens  # for auth = "oauth2"
        self._client: aiosmtplib.SMTP | None = None

    async def __aenter__(self) -> SmtpConnection:
        await self.connect()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host, port=s.port, timeout=s.timeout,
            use_tls=s.tls == "ssl", start_tls=s.tls == "starttls",
            tls_context=ssl.create_default_context() if s.tls != "none" else None,
        )
        try:
            await client.connect()
            if s.auth == "oauth2":
                await self._oauth_login(client)
            elif s.auth == "password" and s.username:
                await client.login(s.username, s.password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            await _quietly_close(client)
            raise SmtpDeferred(f"SMTP login as {s.username!r} refused: {exc.message}") from exc
        except (OAuthRefused, OAuthUnavailable) as exc:  # the mail waits for a token
            await _quietly_close(client)
            raise SmtpDeferred(f"SMTP login as {s.username!r}: {exc}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            await _quietly_close(client)
            raise SmtpDeferred(f"SMTP {s.host}:{s.port} unavailable: {_describe(exc)}") from exc
        self._client = client

    async def _oauth_login(self, client: aiosmtplib.SMTP) -> None:
        """AUTH OAUTHBEARER where offered, else XOAUTH2; a refused token is refreshed
        once and tried again."""
        if self.tokens is None:
            raise SmtpDeferred("SMTP: the OAuth2 tokens cannot be read (the database is "
                               "unavailable)")
        tokens = self.tokens
        if client.is_ehlo_or_helo_needed:
            await client.ehlo()
        bearer = await asyncio.to_thread(tokens.bearer)
        try:
            await self._authenticate(client, bearer)
        except aiosmtplib.SMTPAuthenticationError:
            fresh = await asyncio.to_thread(tokens.bearer, bearer.token)
            if fresh.token == bearer.token:
                raise
            log.info("SMTP refused the OAuth2 token; logging in again with a fresh one")
            await self._authenticate(client, fresh)

    async def _authenticate(self, client: aiosmtplib.SMTP, bearer: Bearer) -> None:
        s = self.settings
        if "oauthbearer" in client.server_auth_methods:
            mechanism, answer = b"OAUTHBEARER", sasl_oauthbearer(
                s.username, bearer.token, s.host, s.port)
        else:
            mechanism, answer = b"XOAUTH2", sasl_xoauth2(s.username, bearer.token)
        response = await client.execute_command(b"AUTH", mechanism, base64.b64encode(answer))
        if response.code == 334:  # the error challenge (JSON): answer it to get the 535
            response = await client.execute_command(
                b"AQ==" if mechanism == b"OAUTHBEARER" else b"")
        if response.code != 235:
            raise aiosmtplib.SMTPAuthenticationError(response.code, response.message)

    async def send(self, envelope_from: str, recipients: list[str], raw: bytes) -> str:
        """Send one mail; returns the server's answer, raises SmtpDeferred or SmtpRejected."""
        if self._client is None:
            raise SmtpDeferred("not connected")
        try:
            options = [] if all(a.isascii() for a in (envelope_from, *recipients)) else [
                "SMTPUTF8"]  # internationalised addresses (RFC 6531)
            refused, answer = await self._client.sendmail(
                envelope_from, recipients, raw, mail_options=options)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            await self._reset()
            codes = [r.code for r in exc.recipients]
            text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            if all(code >= 500 for code in codes):
                raise SmtpRejected(text) from exc
            raise SmtpDeferred(text) from exc
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset()
            text = f"{exc.code} {exc.message}"
            if exc.code >= 500:
                raise SmtpRejected(text) from exc
            raise SmtpDeferred(text) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            raise SmtpDeferred(_describe(exc)) from exc
        except (ValueError, UnicodeError) as exc:  # aiosmtplib refuses an address or header
            await self._reset()
            raise SmtpRejected(f"not sendable: {exc}") from exc
        if refused:
            log.warning("some recipients refused: %s", refused)
        return answer

    async def _reset(self) -> None:
        """RSET after a failed transaction so the next mail starts clean; else reconnect."""
        if self._client is None:
            return
        try:
            await self._client.rset()
        except (aiosmtplib.SMTPException, OSError):
            await self.close()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def close(self) -> None:
        if self._client is not None:
            await _quietly_close(self._client)
            self._client = None


async def _quietly_close(client: aiosmtplib.SMTP) -> None:
    try:
        if client.is_connected:
            await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        client.close()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
