"""/metrics: Prometheus' text format, every name maild_, counted by the daemon's parts and
read from the database at scrape time; and `[http] metrics_listen`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from harness import (
    Clock,
    Daemon,
    SmtpCapture,
    customer_mail,
    free_port,
    http_get,
    maild,
    offline_settings,
    wait_for_port,
    wait_until,
    write_config,
)
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from maild import blobs, config, health, metrics, web
from maild.config import OutboxSettings, SmtpSettings
from maild.daemon import build_desk
from maild.errors import ConfigError
from maild.outbox import Outbox

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) → value (the parser must take it)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, kind, text = http_get(port, "/metrics")
    assert status == 200 and kind.startswith("text/plain"), (status, text)
    return samples(text)


def test_metrics_count_a_processed_mail(tmp_path, dovecot, mailbox, smtp, database_url):
    # One customer's mail through the daemon: fetched 1, processed 1 as "normal", its
    # acknowledgement sent 1, one new ticket open; every name starts with maild_.
    port = free_port()
    config = write_config(
        tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
        password=mailbox.password, smtp_port=smtp.port, database_url=database_url,
        extra=f'[http]\nlisten = "127.0.0.1:{port}"\nrate_per_minute = 6000\n')
    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        wait_for_port(port, 30)
        mailbox.append(customer_mail(1))
        smtp.wait_for(1)
        assert wait_until(lambda: scrape(port).get(("maild_outbox_sent_total", ())) == 1,
                          interval=0.5), daemon.output()
        found = scrape(port)
        assert all(name.startswith("maild_") for name, _ in found)
        assert found[("maild_mails_fetched_total", ())] == 1
        assert found[("maild_mails_processed_total", (("kind", "normal"),))] == 1
        assert found[("maild_mails_quarantined_total", ())] == 0
        assert found[("maild_mails_automatic_unanswered_total", ())] == 0
        assert found[("maild_outbox_failed_total", ())] == 0
        assert found[("maild_processing_seconds_count", ())] == 1
        assert found[("maild_outbox_depth", ())] == 0
        assert found[("maild_tickets_open", (("status", "new"),))] == 1
        assert found[("maild_tickets_breached", ())] == 0
        assert found[("maild_database_up", ())] == 1
        assert found[("maild_mailbox_up", ())] == 1
        assert found[("maild_last_fetch_timestamp_seconds", ())] > NOW.timestamp()
        assert found[("maild_build_info", (("version", "0.1.0"),))] == 1
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_metrics_listen_serves_health_and_metrics_apart_from_the_pages(
        tmp_path, dovecot, mailbox, smtp, database_url):
    # With metrics_listen, /healthz and /metrics answer there and no longer on the public
    # listener (which a reverse proxy exposes); the pages stay where they were.
    public, private = free_port(), free_port()
    config = write_config(
        tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
        password=mailbox.password, smtp_port=smtp.port, database_url=database_url,
        extra=f'[http]\nlisten = "127.0.0.1:{public}"\n'
              f'metrics_listen = "127.0.0.1:{private}"\n')
    daemon = Daemon(config, tmp_path / "maild.log").start()
    try:
        wait_for_port(public, 30)
        wait_for_port(private, 30)
        assert http_get(private, "/healthz")[0] in (200, 503)
        assert ("maild_build_info", (("version", "0.1.0"),)) in scrape(private)
        for path in ("/healthz", "/metrics"):
            status, kind, _ = http_get(public, path)
            assert status == 404 and kind.startswith("text/html"), path
        assert http_get(public, "/static/web.css")[0] == 200
        assert http_get(private, "/static/web.css")[0] == 404
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_metrics_listen_works_without_the_pages(tmp_path, dovecot, mailbox, smtp):
    # [http] enabled = false: no pages, but monitoring still has its address.
    private = free_port()
    config = write_config(
        tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
        password=mailbox.password, smtp_port=smtp.port,
        database_url=f"sqlite:///{tmp_path / 'maild.db'}",
        extra=f'[http]\nenabled = false\nmetrics_listen = "127.0.0.1:{private}"\n')
    daemon = Daemon(config, tmp_path / "maild.log")
    assert maild("db", "upgrade", config=config).returncode == 0
    daemon.start()
    try:
        wait_for_port(private, 30)
        assert wait_until(lambda: http_get(private, "/healthz")[0] == 200, interval=0.5), \
            daemon.output()
        assert ("maild_database_up", ()) in scrape(private)
        assert "web pages on" not in daemon.output()
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_each_app_has_its_own_registry(tmp_path, factory, database_url):
    # Two apps in one process (as in tests, or a daemon and a standby) keep their counts
    # apart, and nothing lands in prometheus_client's global registry.
    settings = offline_settings(database_url, tmp_path / "blobs")
    desk = build_desk(settings, factory, NOW)
    one, two = health.Runtime(started_at=NOW), health.Runtime(started_at=NOW)
    one.count("mails_fetched", n=3)
    one.count("mails_processed", "normal", 2)
    one.observe(0.3)
    clients = [TestClient(web.make_app(desk, factory, settings, Clock(NOW), runtime=r),
                          client=("127.0.0.1", 50000)) for r in (one, two)]
    first, second = (samples(c.get("/metrics").text) for c in clients)
    assert first[("maild_mails_fetched_total", ())] == 3
    assert first[("maild_mails_processed_total", (("kind", "normal"),))] == 2
    assert first[("maild_processing_seconds_bucket", (("le", "0.5"),))] == 1
    assert first[("maild_processing_seconds_bucket", (("le", "0.25"),))] == 0
    assert second[("maild_mails_fetched_total", ())] == 0
    assert ("maild_mails_processed_total", (("kind", "normal"),)) not in second
    assert not [n for n in REGISTRY._names_to_collectors if n.startswith("maild_")]
    # Every counter the code may name is declared (a typo would count into nowhere).
    assert {name for name, _ in one.counts} <= set(metrics.COUNTERS)


def test_the_idle_outbox_probes_smtp_at_most_every_probe_seconds(factory, tmp_path):
    # Nothing to send: the outbox still connects now and then, so a broken SMTP server
    # shows in /healthz before a mail waits for it, and a mended one shows as mended.
    clock = Clock(NOW)
    capture = SmtpCapture().start()
    runtime = health.Runtime(started_at=NOW)
    smtp = SmtpSettings(host="127.0.0.1", port=capture.port, tls="none", timeout=5)
    store = blobs.FolderStore(tmp_path / "blobs")
    outbox = Outbox(factory, OutboxSettings(), smtp, clock, store, runtime=runtime,
                    probe_seconds=60)
    try:
        asyncio.run(outbox.deliver_due())  # just started: the first look comes 5 s later
        assert runtime.smtp_ok_at is None
        first = clock.now = NOW + timedelta(seconds=5)
        asyncio.run(outbox.deliver_due())
        assert runtime.smtp_ok_at == first and runtime.smtp_error == ""
        capture.stop()
        clock.now = first + timedelta(seconds=30)
        asyncio.run(outbox.deliver_due())  # too soon for another look
        assert runtime.smtp_error == ""
        clock.now = first + timedelta(seconds=61)
        asyncio.run(outbox.deliver_due())
        assert runtime.smtp_error_since == first + timedelta(seconds=61)
        assert "unavailable" in runtime.smtp_error
        capture.start()
        clock.now = first + timedelta(seconds=122)
        asyncio.run(outbox.deliver_due())
        assert runtime.smtp_error == "" and runtime.smtp_ok_at == clock.now
    finally:
        capture.stop()


def test_no_probe_when_switched_off(factory, tmp_path):
    clock = Clock(NOW)
    runtime = health.Runtime(started_at=NOW)
    smtp = SmtpSettings(host="127.0.0.1", port=free_port(), tls="none", timeout=5)
    store = blobs.FolderStore(tmp_path / "blobs")
    asyncio.run(Outbox(factory, OutboxSettings(), smtp, clock, store,
                       runtime=runtime).deliver_due())
    assert runtime.smtp_ok_at is None and runtime.smtp_error == ""



def test_metrics_listen_must_be_an_address_of_its_own():
    # The same address twice would have the kernel share connections between the pages
    # and monitoring (SO_REUSEPORT): refused at load, as is an address without a port.
    base = {"imap": {"host": "127.0.0.1", "username": "u"}, "smtp": {"host": "127.0.0.1"},
            "support": {"address": "service@example.com"}}
    with pytest.raises(ConfigError, match=r"\[http\]: .*metrics_listen must differ"):
        config.from_mapping({**base, "http": {"listen": "127.0.0.1:8025",
                                              "metrics_listen": "127.0.0.1:8025"}}, "m", {})
    with pytest.raises(ConfigError, match=r"\[http\] metrics_listen: .*HOST:PORT"):
        config.from_mapping({**base, "http": {"metrics_listen": "9025"}}, "m", {})
    assert config.from_mapping({**base, "http": {"metrics_listen": "127.0.0.1:9025"}}, "m",
                               {}).http.metrics_listen == "127.0.0.1:9025"


# What makes /healthz answer 503 (health.assess) → the metric an alert rule watches.
UNHEALTHY = {
    "database unreachable": "maild_database_up",
    "schema not this maild's": "maild_database_schema_current",
    "mailbox failing": "maild_mailbox_up",
    "SMTP failing": "maild_smtp_up",
    "oldest unsent mail too old": "maild_outbox_oldest_pending_seconds",
    "OAuth2 grant refused": "maild_oauth_login_refused",
}


def test_the_example_alert_rules_cover_every_unhealthy_condition_with_real_metrics(
        tmp_path, factory, database_url):
    import re
    from pathlib import Path

    import yaml
    rules = yaml.safe_load((Path(__file__).resolve().parent.parent / "docs" /
                            "prometheus-alerts.yml").read_text())
    [group] = rules["groups"]
    exprs = {rule["alert"]: rule["expr"] for rule in group["rules"]}
    assert all(rule.get("annotations", {}).get("summary") for rule in group["rules"])
    watched = {name for expr in exprs.values() for name in re.findall(r"maild_\w+", expr)}
    for condition, metric in UNHEALTHY.items():
        assert metric in watched, condition
    settings = offline_settings(database_url, tmp_path / "blobs")
    desk = build_desk(settings, factory, NOW)
    client = TestClient(web.make_app(desk, factory, settings, Clock(NOW),
                                     runtime=health.Runtime(started_at=NOW)),
                        client=("127.0.0.1", 50000))
    exposed = {family.name for family in text_string_to_metric_families(
        client.get("/metrics").text)}
    exposed |= {f"{name}_total" for name in exposed}  # counters are named without it
    assert watched <= exposed, watched - exposed  # no rule watches a name that is not there


def test_an_old_schema_shows_in_the_metrics(tmp_path, factory, database_url):
    from alembic import command

    from maild import db
    settings = offline_settings(database_url, tmp_path / "blobs")
    desk = build_desk(settings, factory, NOW)
    client = TestClient(web.make_app(desk, factory, settings, Clock(NOW),
                                     runtime=health.Runtime(started_at=NOW)),
                        client=("127.0.0.1", 50000))
    assert samples(client.get("/metrics").text)[("maild_database_schema_current", ())] == 1
    engine = db.make_engine(database_url)
    try:
        command.downgrade(db._alembic_config(engine), "0013")
    finally:
        engine.dispose()
    found = samples(client.get("/metrics").text)
    assert found[("maild_database_schema_current", ())] == 0
    assert found[("maild_database_up", ())] == 1
