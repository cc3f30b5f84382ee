"""The customer's web pages, served inside the daemon: the ticket page (history, adding
information and files) and the call-back service (escalation), reached by signed links.

No login: a link is the customer's proof (signed, bound to the ticket and the address, with
its issue time, revocable per ticket). GET never changes anything (mail scanners follow
links); every change is a POST carrying a form token derived from the link. Database work
runs in a thread with the daemon's session factory, one transaction per request.
"""

from maild.web.access import WebConfig, link_holds
from maild.web.actions import billable, callback_report, revoke_links
from maild.web.app import Site, bind, gate, make_app, serve
from maild.web.conns import Gate, raise_nofile
from maild.web.guard import TokenBuckets, client_address, link_key, loggable_path, rate_key
from maild.web.ops import make_ops_app

__all__ = ["Gate", "Site", "TokenBuckets", "WebConfig", "billable", "bind", "callback_report",
           "client_address", "gate", "link_holds", "link_key", "loggable_path", "make_app",
           "make_ops_app", "raise_nofile", "rate_key", "revoke_links", "serve"]
