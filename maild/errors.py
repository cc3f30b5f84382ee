"""The exception tree of maild; third-party exceptions are translated at the adapters.

    MaildError
    ├── ConfigError            the config file is missing, unreadable or invalid
    ├── Temporary              the world is unavailable; retry later, never quarantine
    │   ├── StorageUnavailable     the database or the blob store cannot be used now
    │   ├── ImapUnavailable        the IMAP server cannot be reached or dropped us
    │   ├── SmtpDeferred           the SMTP server is unreachable or answered 4xx
    │   └── OAuthUnavailable       the OAuth2 authority cannot be reached or is busy
    └── Permanent              retrying will not help
        ├── ImapRejected           the IMAP server refused us (login, TLS, folder)
        │   └── ImapLoginRefused       our user name or password was refused
        ├── SmtpRejected           the SMTP server answered 5xx for this mail
        └── OAuthRefused           the OAuth2 grant or client was refused: log in again
"""


class MaildError(Exception):
    """Base of every error maild raises on purpose."""


class ConfigError(MaildError):
    """The configuration cannot be used; the message names file, key and problem."""


class SchemaMismatch(MaildError):
    """The database is not at the schema this maild needs; the message says what to run."""


class Temporary(MaildError):
    """A failure of the environment, not of the mail: try again later."""


class StorageUnavailable(Temporary):
    """The database or the blob store is unavailable."""


class ImapUnavailable(Temporary):
    """The IMAP server cannot be reached, or the connection broke."""


class SmtpDeferred(Temporary):
    """The SMTP server cannot be reached or deferred the mail (4xx)."""


class OAuthUnavailable(Temporary):
    """The OAuth2 authority cannot be reached, or answered 5xx or 429."""


class Permanent(MaildError):
    """A failure that repeats on every retry."""


class ImapRejected(Permanent):
    """The IMAP server refused us: wrong password, no TLS, missing folder."""


class ImapLoginRefused(ImapRejected):
    """The IMAP server refused our login (a wrong password does not mend itself in a
    second, and servers delay or ban addresses that keep failing: retried slowly)."""


class SmtpRejected(Permanent):
    """The SMTP server rejected the mail (5xx)."""


class OAuthRefused(Permanent):
    """The OAuth2 authority refused the grant (`invalid_grant`: revoked, expired, password
    changed) or the client; nothing mends it but `maild auth login` or the registration."""

    def __init__(self, message: str, error: str = "") -> None:
        super().__init__(message)
        self.error = error
