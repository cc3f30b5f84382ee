"""/metrics: the daemon's counters and the database's counts in Prometheus' text format.

Counters live in the daemon's `health.Runtime` (its parts count as things happen); gauges
are read from the database at each scrape. Every name starts with `maild_`. One registry
per daemon (never prometheus_client's global one), so several apps in a process keep
their numbers apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from maild import __version__, db, health
from maild.errors import MaildError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# name (without maild_ and _total) → (help, label name or ""). Runtime.count() takes these.
COUNTERS: dict[str, tuple[str, str]] = {
    "mails_fetched": ("Mails fetched from the watched IMAP folder.", ""),
    "mails_processed": ("Mails processed (recorded, answered or not), by kind.", "kind"),
    "mails_quarantined": ("Mails moved to the quarantine folder.", ""),
    "mails_retried": ("Mails whose processing failed and will be tried again.", ""),
    "mails_automatic_unanswered": (
        "Automatic mails (auto-replies, bounces, copies of our own) recorded, not answered.",
        ""),
    "outbox_sent": ("Outgoing mails the SMTP server accepted.", ""),
    "outbox_failed": ("Outgoing mails given up (5xx, or deferred too long).", ""),
    "outbox_retries": ("Sending attempts deferred (4xx, or no connection) and retried.", ""),
    "sla_warnings": ("Warnings that a first-response promise is about to be missed.", ""),
    "sla_breaches": ("First-response promises missed.", ""),
    "mailbox_failures": ("Failed attempts to connect to or work with the mailbox.", ""),
    "smtp_failures": ("Failed connections to the SMTP server (sending or probing).", ""),
    "oauth_refreshes": ("OAuth2 access-token refreshes by this process, by outcome (ok; "
                        "failed: the authority unreachable or busy; refused: the grant "
                        "refused, `maild auth login` needed).", "outcome"),
}


class MaildCollector(Collector):
    """Collects at scrape time: the Runtime's counters, then the database's counts."""

    def __init__(self, runtime: health.Runtime, factory: db.SessionFactory,
                 clock: Callable[[], datetime]) -> None:
        self.runtime, self.factory, self.clock = runtime, factory, clock

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily("maild_build", "The running maild.", value={
            "version": __version__})
        yield from self._counters()
        yield from self._runtime_gauges()
        yield from self._database_gauges()

    def _counters(self) -> Iterator[Metric]:
        counts, latency = self.runtime.snapshot()
        for name, (text, label) in COUNTERS.items():
            family = CounterMetricFamily(f"maild_{name}", text,
                                         labels=[label] if label else None)
            for (counted, value), n in sorted(counts.items()):
                if counted == name:
                    family.add_metric([value] if label else [], n)
            if not label and (name, "") not in counts:
                family.add_metric([], 0)
            yield family
        cumulative, buckets = 0, []
        for bound, n in zip([*map(str, health.LATENCY_BUCKETS), "+Inf"], latency.buckets,
                            strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "maild_processing_seconds", "Seconds from fetching a mail to committing its "
            "outcome.", buckets=buckets, sum_value=latency.total)

    def _runtime_gauges(self) -> Iterator[Metric]:
        r = self.runtime
        yield _gauge("maild_start_time_seconds", "When this daemon started (Unix time).",
                     r.started_at.timestamp())
        yield _gauge("maild_last_fetch_timestamp_seconds", "The last complete look at the "
                     "watched folder (Unix time; 0: none yet).",
                     r.last_fetch_at.timestamp() if r.last_fetch_at else 0)
        yield _gauge("maild_mailbox_up", "1 while the mailbox works, 0 while it fails.",
                     0 if r.mailbox_error or r.last_fetch_at is None else 1)
        yield _gauge("maild_smtp_up", "1 while the SMTP server takes us, 0 while it fails.",
                     0 if r.smtp_error or r.smtp_ok_at is None else 1)
        yield _gauge("maild_inbox_waiting", "Mails in the watched folder, not yet processed.",
                     r.inbox_waiting)

    def _database_gauges(self) -> Iterator[Metric]:
        try:
            found = health.tally(self.factory)
        except MaildError:
            yield _gauge("maild_database_up", "1 while the database answers.", 0)
            return
        yield _gauge("maild_database_up", "1 while the database answers.", 1)
        yield _gauge("maild_database_schema_current", "1 while the database's schema is the "
                     "one this maild needs (0: run `maild db upgrade`; nothing is counted).",
                     1 if found.schema == health.schema_head() else 0)
        refused = GaugeMetricFamily(
            "maild_oauth_login_refused", "1 while the provider refuses the stored OAuth2 "
            "grant (mail waits until `maild auth login`).", labels=["account"])
        for login in found.logins:
            refused.add_metric([login.account], 1 if login.refused else 0)
        yield refused
        oldest = found.backlog.oldest_pending
        yield _gauge("maild_outbox_depth", "Outgoing mails waiting to be sent.",
                     found.backlog.outbox)
        yield _gauge("maild_outbox_oldest_pending_seconds", "Age of the oldest outgoing mail "
                     "waiting (0: none).",
                     max(0.0, (self.clock() - oldest).total_seconds()) if oldest else 0)
        yield _gauge("maild_outbox_undeliverable", "Outgoing mails given up, in the database.",
                     found.outbox_failed)
        yield _gauge("maild_quarantine_mails", "Mails in quarantine.", found.backlog.quarantine)
        yield _gauge("maild_mails_retrying", "Mails that failed to process and are tried "
                     "again.", found.retrying)
        yield _gauge("maild_mails_crashed", "Mails that ended a parse worker.", found.crashed)
        tickets = GaugeMetricFamily("maild_tickets_open", "Open tickets by status.",
                                    labels=["status"])
        for status, n in sorted(found.tickets.items()):
            tickets.add_metric([status], n)
        yield tickets
        yield _gauge("maild_tickets_breached", "Open tickets past their first-response "
                     "promise.", found.breached)
        expiry = GaugeMetricFamily(
            "maild_oauth_token_expiry_seconds", "Seconds until the stored OAuth2 access token "
            "expires (0: expired, refused or none; it is refreshed ahead of expiry).",
            labels=["account"])
        for login in found.logins:
            left = (login.expires_at - self.clock()).total_seconds() if (
                login.expires_at is not None and not login.refused) else 0.0
            expiry.add_metric([login.account], max(0.0, left))
        yield expiry


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def registry(runtime: health.Runtime, factory: db.SessionFactory,
             clock: Callable[[], datetime]) -> CollectorRegistry:
    """A registry of this daemon's own (not the global default one)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(MaildCollector(runtime, factory, clock))
    return found


def exposition(found: CollectorRegistry) -> bytes:
    """The text format (blocking: the database is read; run it in a thread)."""
    return generate_latest(found)
