"""Real servers for tests, the demo and the benchmark: a private Dovecot, an SMTP capture,
fresh databases, and a way to run `maild run` as a subprocess."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import grp
import json
import os
import pwd
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from imapclient import IMAPClient

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("MAILD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, greeting: bytes = b"") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if not greeting or s.recv(200).startswith(greeting):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on 127.0.0.1:{port} within {timeout}s")


class ServerUnavailable(RuntimeError):
    """A server the tests need could not be started here."""


@dataclass
class Dovecot:
    """A private Dovecot on a free loopback port, with users made on demand."""

    base: Path
    port: int = 0
    pool: list[tuple[str, str]] = field(default_factory=list)
    # The args file of an oauth2 passdb (tests/authority.py): XOAUTH2 and OAUTHBEARER
    # logins are then checked by token introspection.
    oauth2: Path | None = None
    # What it advertises after login instead of its own list (e.g. "IMAP4rev1 LITERAL+
    # SASL-IR ID ENABLE": a server without MOVE, UIDPLUS, IDLE, CONDSTORE).
    capabilities: str = ""

    @property
    def passwd(self) -> Path:
        return self.base / "passwd"

    def start(self) -> Dovecot:
        binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        if not Path(binary).exists():
            raise ServerUnavailable("dovecot is not installed (apt-get install dovecot-imapd)")
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "mail").mkdir(exist_ok=True)
        if not self.pool:  # users are made up front: passwd-file reloads go by mtime
            self.pool = [(f"u{n}x{secrets.token_hex(3)}", secrets.token_hex(8))
                         for n in range(500)]
            self.passwd.write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in self.pool))
        os.chmod(self.passwd, 0o640)
        os.chmod(self.base, 0o755)
        self.port = self.port or free_port()
        conf = self.base / "dovecot.conf"
        conf.write_text(self._config(self._users()))
        # Dovecot's master daemonises; its children would hold captured pipes open, so
        # what it says on the way up goes to a file.
        errors = self.base / "dovecot.stderr"
        with errors.open("wb") as fh:
            code = subprocess.run([binary, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=fh).returncode
        if code:
            raise ServerUnavailable(f"dovecot did not start: {errors.read_text().strip()}")
        try:
            wait_for_port(self.port, 15, b"* OK")
        except RuntimeError as exc:
            log = (self.base / "dovecot.log")
            raise ServerUnavailable(f"{exc}\n{log.read_text() if log.exists() else ''}") from exc
        return self

    def _users(self) -> dict[str, str]:
        """Who owns the mail and runs Dovecot's processes: as root, the unprivileged system
        users (mail as `nobody`); otherwise everything runs as the current user."""
        if os.geteuid() != 0:
            me, group = pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
            return {"uid": str(os.geteuid()), "gid": str(os.getegid()), "login": me,
                    "internal": me, "group": group, "chroot": ""}
        nobody = pwd.getpwnam("nobody")
        os.chown(self.base / "mail", nobody.pw_uid, nobody.pw_gid)
        with contextlib.suppress(KeyError):
            os.chown(self.passwd, 0, grp.getgrnam("dovecot").gr_gid)
        return {"uid": str(nobody.pw_uid), "gid": str(nobody.pw_gid), "login": "dovenull",
                "internal": "dovecot", "group": "dovecot", "chroot": "login"}

    def _config(self, users: dict[str, str]) -> str:
        b = self.base
        return f"""
instance_name = maild-test-{b.name}-{os.getpid()}
base_dir = {b}/run
state_dir = {b}/state
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login{" xoauth2 oauthbearer" if self.oauth2 else ""}
log_path = {b}/dovecot.log
info_log_path = {b}/dovecot.log
mail_location = maildir:{b}/mail/%u
first_valid_uid = 1
first_valid_gid = 1
default_login_user = {users["login"]}
default_internal_user = {users["internal"]}
default_internal_group = {users["group"]}
service imap-login {{
  chroot = {users["chroot"]}
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.passwd}
}}
{self._oauth2_passdb()}userdb {{
  driver = static
  args = uid={users["uid"]} gid={users["gid"]} home={b}/mail/%u
}}
protocol imap {{
  mail_max_userip_connections = 100
  rawlog_dir = {b}/rawlog/%u
{f"  imap_capability = {self.capabilities}" if self.capabilities else ""}
}}
"""

    def _oauth2_passdb(self) -> str:
        if self.oauth2 is None:
            return ""
        return f"""passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {self.oauth2}
}}
"""

    def add_user(self) -> tuple[str, str]:
        """A user of its own (with an empty mailbox) for one test."""
        return self.pool.pop()

    def record(self, user: str) -> Path:
        """From now on, what `user`'s IMAP connections say both ways goes to files in the
        folder returned (Dovecot's rawlog: `*.in` the client's commands, `*.out` the
        server's answers; it writes them only where the folder exists)."""
        folder = self.base / "rawlog" / user
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for path in (folder.parent, folder):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
        return folder

    def stop(self) -> None:
        pid_file = self.base / "run" / "master.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().strip())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        time.sleep(0.2)
        self.start()


@dataclass
class Mailbox:
    """Client-side access to one Dovecot user, for putting mail in and looking at folders."""

    port: int
    user: str
    password: str

    def client(self) -> IMAPClient:
        c = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=10)
        c._imap.debug = 0
        c.login(self.user, self.password)
        return c

    def append(self, raw: bytes | EmailMessage, folder: str = "INBOX") -> None:
        data = raw.as_bytes() if isinstance(raw, EmailMessage) else raw
        with self.client() as c:
            c.append(folder, data)

    def append_many(self, raws: list[bytes], folder: str = "INBOX") -> None:
        c = self.client()
        try:
            for data in raws:
                c.append(folder, data)
        finally:
            c.logout()

    def count(self, folder: str) -> int:
        c = self.client()
        try:
            if not c.folder_exists(folder):
                return 0
            return int(c.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])
        finally:
            c.logout()

    def messages(self, folder: str) -> list[bytes]:
        c = self.client()
        try:
            if not c.folder_exists(folder):
                return []
            c.select_folder(folder, readonly=True)
            uids = c.search(["ALL"])
            data = c.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
            return [data[u][b"BODY[]"] for u in sorted(data)]
        finally:
            c.logout()


@dataclass
class Captured:
    envelope_from: str
    recipients: list[str]
    raw: bytes
    peer: Any = None  # the sending side's (address, port): which connection brought it

    @property
    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class SmtpCapture:
    """An aiosmtpd server that keeps every mail it is given; it can refuse on demand."""

    port: int = 0
    mails: list[Captured] = field(default_factory=list)
    reply: str | None = None  # e.g. "451 4.3.0 try later" to defer everything
    utf8: bool = True  # False: refuse internationalised recipients like an old server
    delay: float = 0.0  # seconds each answer to RCPT and DATA waits, like a distant server
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Any = None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if not self.utf8 and not address.isascii():
            return "553 5.6.7 internationalised address not supported"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.reply:
            return self.reply
        with self.lock:
            self.mails.append(Captured(envelope.mail_from, list(envelope.rcpt_tos),
                                       bytes(envelope.original_content or envelope.content),
                                       session.peer))
        return "250 2.0.0 OK queued"

    def start(self) -> SmtpCapture:
        """Serve on `port` (a free one the first time). On a loaded machine aiosmtpd's
        start can time out, or the port can be held for a moment by another socket: try
        again for up to a minute rather than leave a test without its server."""
        self.port = self.port or free_port()
        deadline = time.monotonic() + 60.0
        while True:
            controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                    enable_SMTPUTF8=True, ready_timeout=30.0,
                                    **self.options())
            try:
                controller.start()
            except Exception:
                with contextlib.suppress(Exception):
                    controller.stop(no_assert=True)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
                continue
            self.controller = controller
            return self

    def options(self) -> dict[str, Any]:
        return {}

    def stop(self) -> None:
        if self.controller is not None:
            controller, self.controller = self.controller, None
            controller.stop()

    def serving(self) -> bool:
        """The server answers a connection with its greeting."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                return sock.recv(3) == b"220"
        except OSError:
            return False

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Captured]:
        """The mails captured once there are at least `count`; an AssertionError that lists
        what did come (To, Subject) when they do not within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.mails) >= count:
                    return list(self.mails)
            time.sleep(0.05)
        with self.lock:
            if len(self.mails) >= count:
                return list(self.mails)
            raise AssertionError(f"expected {count} mails at the SMTP capture within "
                                 f"{timeout:g}s, got {len(self.mails)}:{self.seen()}")

    def seen(self) -> str:
        """The mails captured so far, one line each (To, Subject), for failure messages."""
        return "".join(f"\n  To: {', '.join(m.recipients)}  Subject: {m.message['Subject']}"
                       for m in self.mails) or " none"

    def by_message_id(self) -> dict[str, list[Captured]]:
        found: dict[str, list[Captured]] = {}
        with self.lock:
            for mail in self.mails:
                found.setdefault(str(mail.message["Message-ID"]), []).append(mail)
        return found


@dataclass
class OAuthSmtpCapture(SmtpCapture):
    """An SMTP capture that takes only AUTH XOAUTH2 with a live token of `authority`
    for its user, and mail only after it."""

    authority: Any = None
    logins: list[str] = field(default_factory=list)  # the users logged in, in order
    refused: int = 0  # logins refused

    def options(self) -> dict[str, Any]:
        return {"auth_require_tls": False, "auth_exclude_mechanism": ["LOGIN", "PLAIN"]}

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> Any:  # noqa: N802
        from aiosmtpd.smtp import AuthResult

        try:
            fields = base64.b64decode(args[1]).decode().split("\x01")
            user = fields[0].removeprefix("user=")
            token = next(f for f in fields if f.startswith("auth=Bearer ")).split(" ", 1)[1]
        except (IndexError, ValueError, StopIteration):
            return AuthResult(success=False, handled=False)
        if self.authority is None or self.authority.user_of(token) != user:
            with self.lock:
                self.refused += 1
            return AuthResult(success=False, handled=False)
        with self.lock:
            self.logins.append(user)
        return AuthResult(success=True, auth_data=user)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"


def write_config(path: Path, *, imap_port: int, user: str, password: str, smtp_port: int,
                 database_url: str, extra: str = "", imap_extra: str = "",
                 outbox_extra: str = "", smtp_extra: str = "") -> Path:
    # The web listener on a port of its own, unless the test configures [http] itself.
    http = "" if "[http]" in extra else f'[http]\nlisten = "127.0.0.1:{free_port()}"\n'
    # No daily digest unless the test configures [sla]: the daemons run on the real clock,
    # and after 09:00 on a weekday in Berlin the first sweep would mail one (an extra mail
    # that tests counting mails would see only when run in business hours).
    sla = "" if "[sla]" in extra else "[sla]\ndigest = false\n"
    path.write_text(f"""
[imap]
host = "127.0.0.1"
port = {imap_port}
username = "{user}"
password = "{password}"
tls = "none"
idle_renew = 30
timeout = 10
{imap_extra}

[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
timeout = 10
{smtp_extra}

[database]
url = "{database_url}"

[support]
address = "service@example.com"
name = "Example Support"
public_url = "https://support.example.com"

[paths]
state_dir = "{path.parent}"

[outbox]
initial_backoff = 0.5
max_backoff = 2
lease_seconds = 5
{outbox_extra}
{http}
{sla}
[intake]
retry_backoff = 0.5
retry_backoff_max = 2
{extra}
""")
    path.chmod(0o600)  # it holds the mailbox's password (as installed: 0640 root:maild)
    return path


def maild(*args: str, config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "maild", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=timeout)


class Daemon:
    """`maild run` as a subprocess, its stderr kept in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.process: subprocess.Popen[bytes] | None = None
        self.watched = 0

    def start(self, nofile: int | None = None) -> Daemon:
        """Start it; with `nofile`, under that open-files limit (soft and hard, as a unit
        without LimitNOFILE= and no way to raise it)."""
        self.watched = self.output().count("watching")  # (the log is kept across starts)
        fh = self.log.open("ab")

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.process = subprocess.Popen(
            [sys.executable, "-m", "maild", "--config", str(self.config), "run"],
            stdout=fh, stderr=fh, preexec_fn=limit if nofile is not None else None)
        fh.close()
        return self

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        if self.process is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=20)
        finally:
            self.process = None

    def stop(self) -> int | None:
        return self.kill(signal.SIGTERM)

    def watching(self, timeout: float = 60) -> bool:
        """Wait until this start is watching its folder (its signal handlers are set: a
        SIGTERM before, while it still imports, ends it by the signal)."""
        return wait_until(lambda: self.output().count("watching") > self.watched,
                          timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class TcpProxy:
    """A loopback TCP forwarder that a test can cut (all links dropped, new ones refused)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.up = True
        self.links: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:  # a cut may have come while connecting: it drops this link too
                if not self.up:
                    client.close()
                    upstream.close()
                    continue
                self.links += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            self.up = False
            links, self.links = self.links, []
        for s in links:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


def customer_mail(n: int, size: int = 0) -> bytes:
    """A plausible customer mail number `n`; `size` pads the body."""
    body = f"Hallo, bei Auftrag {n} erscheint ein Fehler. Bitte um Rückmeldung.\r\n"
    body += ("x" * 76 + "\r\n") * (size // 78)
    return (f"From: Kunde {n} <kunde{n}@firma{n % 7}.example>\r\nTo: service@example.com\r\n"
            f"Subject: Fehler bei Auftrag {n}\r\n"
            f"Message-ID: <m{n}.{secrets.token_hex(4)}@firma.example>\r\n"
            f"Date: Thu, 26 Nov 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + body).encode()


def dsn_report(original_id: str, recipient: str = "anna@kunde.example", status: str = "5.1.1",
               to: str = "service@example.com", with_id: bool = True) -> str:
    """A Postfix-style RFC 3464 report that our mail `original_id` to `recipient` failed
    (`status` 5.x.x) or is delayed (4.x.x), sent to `to` (our address, or the mail's VERP
    address); `with_id=False`: the returned headers leave out the Message-ID."""
    action = "failed" if status.startswith("5") else "delayed"
    headers = f"Message-ID: {original_id}\r\n" if with_id else ""
    return (
        f"From: MAILER-DAEMON@mx.kunde.example (Mail Delivery System)\r\nTo: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\n"
        "Message-ID: <bounce.1@mx.kunde.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you ...\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.kunde.example\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: user unknown\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        "From: Support <service@example.com>\r\n"
        f"To: {recipient}\r\n{headers}Subject: [#10001] Dein Support-Ticket\r\n\r\n--B--\r\n")


def offline_settings(url: str, blob_dir: Path, **sections: Any) -> Any:
    """Settings for tests that need no servers (IMAP/SMTP are never reached)."""
    from maild.config import Settings
    return Settings.model_validate({
        "imap": {"host": "127.0.0.1", "username": "u"}, "smtp": {"host": "127.0.0.1"},
        "support": {"address": "service@example.com", "name": "Example Support"},
        "database": {"url": url}, "paths": {"blob_dir": str(blob_dir)}, **sections,
    })


def cli_config(path: Path, url: str, blob_dir: Path | None = None) -> Path:
    """A config file for running CLI commands against a test database."""
    blobs = f'[paths]\nblob_dir = "{blob_dir}"\n' if blob_dir else ""
    path.write_text(f'[imap]\nhost = "127.0.0.1"\nusername = "u"\n[smtp]\nhost = "127.0.0.1"\n'
                    f'[support]\naddress = "service@example.com"\n'
                    f'[database]\nurl = "{url}"\n{blobs}')
    return path


def rows(url: str, model: Any, *where: Any) -> Any:
    """Rows of `model` in the database at `url`, oldest first (a connection of its own)."""
    from sqlalchemy import select

    from maild import db
    engine = db.make_engine(url)
    try:
        with db.transaction(db.session_factory(engine)) as s:
            order = getattr(model, "id", None) or next(iter(model.__table__.primary_key))
            return s.scalars(select(model).where(*where).order_by(order)).all()
    finally:
        engine.dispose()


def outbox_settled(url: str) -> bool:
    """Every mail in the outbox at `url` is sent or failed: once the mails in hand are
    processed (their answers are queued in the same transaction), no more will go out, so a
    test may then assert what did not arrive."""
    from maild.models import OutboxMail
    return not rows(url, OutboxMail, OutboxMail.state.not_in(("sent", "failed")))


class Clock:
    """An injected clock that tests move by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Feeder:
    """Feeds mails to an in-process intake, numbering UIDs, and reads what it queued."""

    def __init__(self, intake: Any, factory: Any) -> None:
        self.intake, self.factory, self.uid = intake, factory, 0

    def feed(self, raw: str) -> Any:
        from maild.mail.fetched import Fetched
        self.uid += 1
        return self.intake.process(1, Fetched(self.uid, raw.encode(), self.intake.clock()))

    def outbox(self, kind: str | None = None) -> list[Any]:
        from sqlalchemy import select

        from maild import db
        from maild.models import OutboxMail
        with db.transaction(self.factory) as s:
            query = select(OutboxMail).order_by(OutboxMail.id)
            if kind:
                query = query.where(OutboxMail.kind == kind)
            return with_bytes(list(s.scalars(query)), self.intake.desk.store)

    def ticket(self, number: int = 10001) -> Any:
        from sqlalchemy import select

        from maild import db
        from maild.models import Ticket
        with db.transaction(self.factory) as s:
            return s.scalars(select(Ticket).where(Ticket.number == number)).one()

    def events(self, number: int = 10001) -> list[Any]:
        from sqlalchemy import select

        from maild import db
        from maild.models import Event, Ticket
        with db.transaction(self.factory) as s:
            t = s.scalars(select(Ticket).where(Ticket.number == number)).one()
            return list(s.scalars(select(Event).where(Event.ticket_id == t.id)
                                  .order_by(Event.id)))


def raw_of(out: Any, store: Any) -> bytes:
    """An outbox row's mail bytes: in the blob store (since 0013), or in the row before."""
    return bytes(out.raw) if out.raw is not None else bytes(store.get(out.raw_sha256))


def with_bytes(rows: list[Any], store: Any) -> list[Any]:
    """Outbox rows with each mail's bytes in `.raw` wherever they are stored, so a test
    reads every mail the same way (set as loaded: never written back to the database)."""
    from sqlalchemy.orm.attributes import set_committed_value
    for out in rows:
        if out.raw is None and out.raw_sha256:
            set_committed_value(out, "raw", store.get(out.raw_sha256))
    return rows


def message(out: Any) -> EmailMessage:
    """An outbox row's mail, parsed."""
    msg = message_from_bytes(out.raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(out: Any) -> str:
    """The plain text of an outbox row's mail, with Unix line ends."""
    body = message(out).get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content()).replace("\r\n", "\n")


def http_get(port: int, path: str) -> tuple[int, str, str]:
    """A GET against a local listener: (status, content type, body), errors included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as answer:
            return answer.status, answer.headers.get("Content-Type", ""), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    """/healthz of a daemon: (status, JSON body); (0, {}) while nothing listens."""
    try:
        status, _, body = http_get(port, "/healthz")
    except OSError:
        return 0, {}
    return status, json.loads(body)
