"""SIGHUP: the config file and the templates read again; what only a restart can change is
named in the log, an invalid config or template is refused and the running one kept, and
no SIGHUP ever ends the daemon."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ROOT, Daemon, maild, outbox_settled, rows, wait_until
from test_notify import NotifySocket

from maild.models import InboundMessage

DATA = Path(__file__).parent / "data"
MARK = "Unser Wartungsfenster ist sonntags von 6 bis 8 Uhr."


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    server = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", str(server.path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    yield server
    server.close()


@pytest.fixture
def templates(config: Path, tmp_path: Path) -> Path:
    """An ops folder of templates (`[paths] templates_dir`) holding the German ack's text."""
    folder = tmp_path / "tpl"
    folder.mkdir()
    shutil.copy(ROOT / "templates" / "ack.de.txt.j2", folder)
    config.write_text(config.read_text().replace(
        "[paths]\n", f'[paths]\ntemplates_dir = "{folder}"\n', 1))
    return folder


@pytest.fixture
def daemon(config: Path, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(config, tmp_path / "maild.log")
    yield d
    d.kill()


def customer(n: int) -> bytes:
    return (f"From: Kundin {n} <kundin{n}@firma.example>\r\nTo: service@example.com\r\n"
            f"Subject: Drucker {n} streikt\r\nMessage-ID: <r{n}@firma.example>\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Hallo, der Drucker {n} druckt nicht mehr. Viele Grüße\r\n").encode()


def ack_text(mail) -> str:
    return mail.message.get_body(preferencelist=("plain",)).get_content()


def reload(daemon: Daemon, notify: NotifySocket) -> None:
    """SIGHUP, then wait for the READY=1 that ends the reload."""
    before = len(notify.messages())
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING=1", before)
    notify.wait_for("READY=1", reloading + 1)


def test_changed_template_changes_the_next_acknowledgement(
        daemon, notify, templates, mailbox, smtp):
    # Ops edit the acknowledgement: nothing changes until `systemctl reload`, then the next
    # customer gets the new text, without a restart.
    daemon.start()
    notify.wait_for("READY=1")
    mailbox.append(customer(1))
    [first] = smtp.wait_for(1)
    assert "Ticketnummer #10001" in ack_text(first) and MARK not in ack_text(first)
    ack = templates / "ack.de.txt.j2"
    ack.write_text(ack.read_text().replace("aufgenommen.\n", f"aufgenommen.\n\n{MARK}\n", 1))
    mailbox.append(customer(2))
    second = smtp.wait_for(2)[1]
    assert MARK not in ack_text(second)  # on disk, not yet in effect
    reload(daemon, notify)
    mailbox.append(customer(3))
    third = smtp.wait_for(3)[2]
    assert MARK in ack_text(third) and "Ticketnummer #10003" in ack_text(third)
    assert "reloaded" in daemon.output()
    assert daemon.stop() == 0


def test_invalid_config_or_template_is_refused_and_the_old_one_kept(
        daemon, notify, templates, config, mailbox, smtp):
    # A typo in the config, a bad value, a broken template: each reload is logged with the
    # problem (never a password) and refused; mail goes on with the running config.
    daemon.start()
    notify.wait_for("READY=1")
    good = config.read_text()
    config.write_text(good + '\n[smtp]\npassword = "s3cret-in-the-file"\n')  # TOML error
    reload(daemon, notify)
    config.write_text(good.replace("[support]\n", '[calendar]\ntimezone = "Mars/Olympus"\n'
                                   "[support]\n", 1).replace(
        'password = "', 'password = "s3cret-', 1))
    reload(daemon, notify)
    config.write_text(good)
    ack = templates / "ack.de.txt.j2"
    text = ack.read_text()
    ack.write_text(text + "{% if %}\n")  # a syntax error
    reload(daemon, notify)
    ack.write_text(text + '{% include "_gruss.de.j2" %}\n')  # a file that is not there
    reload(daemon, notify)
    log = daemon.output()
    assert "not valid TOML" in log and "unknown time zone 'Mars/Olympus'" in log
    assert "ack.de.txt.j2, line" in log
    assert "includes _gruss.de.j2, which does not exist" in log
    assert log.count("the running config is kept") == 4
    assert "Traceback" not in log
    assert "s3cret" not in log
    mailbox.append(customer(1))
    [mail] = smtp.wait_for(1)
    assert "Ticketnummer #10001" in ack_text(mail)
    assert daemon.process is not None and daemon.process.poll() is None


def test_what_needs_a_restart_is_named_and_the_rest_applies(
        daemon, notify, config, mailbox, smtp):
    # A new IMAP host or listen address cannot take effect in a running daemon: the log
    # names each (not its value), the mailbox is still watched, the new support name is used.
    daemon.start()
    notify.wait_for("READY=1")
    text = config.read_text()
    text = text.replace('host = "127.0.0.1"\nport', 'host = "localhost"\nport', 1)
    text = text.replace('listen = "127.0.0.1:', 'listen = "127.0.0.2:', 1)
    config.write_text(text.replace('name = "Example Support"', 'name = "Druckerhilfe"'))
    reload(daemon, notify)
    log = daemon.output()
    [line] = [x for x in log.splitlines() if "[imap] host changed" in x]
    assert line.endswith("[imap] host changed: takes effect after a restart")  # no value
    assert "[http] listen changed: takes effect after a restart" in log
    mailbox.append(customer(1))
    [mail] = smtp.wait_for(1)
    assert mail.message["From"].addresses[0].display_name == "Druckerhilfe"


def test_sighup_at_startup_and_many_in_a_row_never_end_the_daemon(
        daemon, notify, mailbox, smtp):
    # A SIGHUP while maild is still starting is done once it is ready (no early READY=1);
    # a burst of them is answered, and mail is still answered after all of them.
    daemon.start()
    notify.wait_for("STATUS=starting")
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    ready = notify.wait_for("READY=1")
    assert notify.first("RELOADING=1") is None or notify.first("RELOADING=1") > ready
    notify.wait_for("RELOADING=1", ready + 1)
    for _ in range(5):
        daemon.process.send_signal(signal.SIGHUP)
        time.sleep(0.05)
    assert wait_until(lambda: daemon.output().count("reloaded") >= 2)
    mailbox.append(customer(1))
    smtp.wait_for(1)
    assert daemon.process.poll() is None
    assert daemon.stop() == 0


def test_new_spam_rule_reaches_the_parse_workers(daemon, notify, config, mailbox, smtp,
                                                 database_url):
    # The upstream filter's header is configured while maild runs: after the reload the
    # parse workers (separate processes) classify by it, so the flagged mail gets no answer.
    daemon.start()
    notify.wait_for("READY=1")
    flagged = customer(1).replace(b"Subject:", b"X-Filter-Verdict: junk\r\nSubject:")
    mailbox.append(flagged)
    smtp.wait_for(1)
    config.write_text(config.read_text() + '\n[spam]\nheader = "X-Filter-Verdict"\n'
                      'pattern = "^junk$"\n')
    reload(daemon, notify)
    mailbox.append(flagged.replace(b"<r1@", b"<r2@"))
    mailbox.append(customer(3))
    assert wait_until(lambda: mailbox.count("Processed") == 3)
    assert wait_until(lambda: outbox_settled(database_url))
    assert sorted(m.recipients[0] for m in smtp.mails) == ["kundin1@firma.example",
                                                          "kundin3@firma.example"]
    spam = rows(database_url, InboundMessage, InboundMessage.kind == "spam")
    assert [m.message_id for m in spam] == ["<r2@firma.example>"]


def test_a_broken_template_stops_the_start_as_a_config_error(config, templates, tmp_path):
    # At start as at a reload every template is compiled: a broken one is a configuration
    # error (exit 2, which the unit does not restart on), named with file and line.
    (templates / "ack.de.txt.j2").write_text("Hallo {{ name \n")
    done = maild("run", config=config)
    assert done.returncode == 2
    assert "ack.de.txt.j2, line 1" in done.stderr


def test_a_template_reading_a_name_its_mails_lack_stops_the_start(config, templates):
    # An override written for an older maild (or with a typo) would fail on each mail it
    # renders; it is refused at start instead, with the names the template may use.
    (templates / "ack.de.txt.j2").write_text("Hallo {{ name }}, Ticket {{ nummer }}\n")
    done = maild("run", config=config)
    assert done.returncode == 2
    assert "template ack.de.txt.j2 uses nummer, which its mails do not have" in done.stderr
    assert "escalation_url" in done.stderr  # what it may use


def test_an_include_of_a_missing_file_stops_the_start_as_a_config_error(config, templates):
    # It compiles on its own; only the mail that renders it would fail (with a traceback):
    # the start refuses it, naming the file, the line and what is missing.
    (templates / "ack.de.txt.j2").write_text('Hallo\n\n{% include "_gruss.de.j2" %}\n')
    done = maild("run", config=config)
    assert done.returncode == 2
    assert ("ack.de.txt.j2, line 3: includes _gruss.de.j2, which does not exist"
            in done.stderr)
    assert "Traceback" not in done.stderr


def test_check_compiles_every_template_and_names_each_problem_in_a_line(config, templates):
    # What would stop `maild run` stops `maild check` first: a syntax error, an include of
    # a missing file and a name the mail lacks, one line each, exit 2 (a config error).
    (templates / "ack.de.txt.j2").write_text("Hallo {{ name \n")
    (templates / "reject.de.txt.j2").write_text('{% include "_fehlt.j2" %}\n')
    (templates / "relay.de.txt.j2").write_text("{{ nummer }}\n")
    done = maild("check", config=config)
    assert done.returncode == 2, done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAIL  template")]
    assert len(failed) == 3, done.stdout
    assert any("ack.de.txt.j2, line 1" in line for line in failed)
    assert any("includes _fehlt.j2, which does not exist" in line for line in failed)
    assert any("relay.de.txt.j2 uses nummer" in line for line in failed)
    assert "Traceback" not in done.stderr


def test_check_passes_good_templates_and_refuses_a_templates_dir_that_is_not_there(
        config, templates, tmp_path):
    done = maild("check", config=config)
    assert f"ok    templates: compiled, {templates} first" in done.stdout
    config.write_text(config.read_text().replace(str(templates), str(tmp_path / "tlp")))
    for command in ("check", "run"):
        done = maild(command, config=config)
        assert done.returncode == 2
        assert f"[paths] templates_dir {tmp_path / 'tlp'}: no such folder" in (
            done.stdout + done.stderr)


def test_restart_only_keys_are_named_and_kept_as_they_run(tmp_path):
    # The new file moves the database, the blobs and the IMAP password and changes the
    # calendar: the names of the first three are reported (never a value), their running
    # values kept; the calendar is taken.
    from harness import offline_settings

    from maild import reload as reloading
    old = offline_settings("sqlite:///old.db", tmp_path / "old-blobs",
                           imap={"host": "127.0.0.1", "username": "u", "password": "pw1"})
    new = offline_settings("sqlite:///new.db", tmp_path / "new-blobs",
                           imap={"host": "127.0.0.1", "username": "u", "password": "pw2"},
                           calendar={"timezone": "Europe/Vienna"})
    assert reloading.restart_only(old, new) == [
        "[imap] password", "[database] url", "[paths] blob_dir"]
    kept = reloading.effective(old, new)
    assert (kept.imap.password, kept.database_url, kept.blob_dir) == (
        "pw1", "sqlite:///old.db", tmp_path / "old-blobs")
    assert kept.calendar.timezone == "Europe/Vienna"
