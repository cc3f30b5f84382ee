"""What the desk does about its own logins: the lead is told once per outage when the
OAuth2 grant is refused (mail then waits in the INBOX and the outbox, nothing is lost)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session

from maild import answers
from maild.config import Settings
from maild.desk import Desk
from maild.mail import contexts
from maild.mail.render import render_mail
from maild.models import OAuthToken
from maild.vocab import OutboxKind

log = logging.getLogger(__name__)


def lead_notice(desk: Desk, settings: Settings) -> Callable[[Session, OAuthToken], None] | None:
    """The hook that mails the lead when the grant is refused; None when sending needs
    the same grant (that mail could not leave before the next `maild auth login`)."""
    if settings.smtp.auth == "oauth2":
        return None

    def tell(session: Session, row: OAuthToken) -> None:
        to = desk.agents.roster.lead_to(session, settings.sla.lead_address)
        if not to:
            log.warning("no lead to tell that the OAuth2 login of %s was refused "
                        "([sla] lead_address, or an agent with lead = true)", row.account)
            return
        now = row.last_error_at or row.logged_in_at
        context = contexts.LoginLost(account=row.account, error=row.last_error, since=now,
                                     timezone=desk.timezone, language=desk.agents.language)
        rendered = render_mail(desk.templates, "login_lost", context, sender=desk.sender,
                               to=", ".join(to), now=now, auto_submitted="auto-generated")
        answers.enqueue(session, desk, rendered, to, None, OutboxKind.LOGIN_LOST, now,
                        automatic=True, internal=True)
        log.info("told %s that the OAuth2 login of %s was refused", ", ".join(to), row.account)

    return tell
