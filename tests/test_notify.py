"""maild under systemd: READY, STATUS, WATCHDOG, RELOADING and STOPPING on a notify socket
the test binds, the watchdog silenced by a stuck event loop, no socket for the workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Daemon, wait_until

from maild.sdnotify import Notifier, keep_alive

DATA = Path(__file__).parent / "data"


class NotifySocket:
    """A datagram socket standing in for systemd's: keeps every message it is sent."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: a socket path must stay under 108 bytes.
        self.folder = Path(tempfile.mkdtemp(prefix="maild-notify-"))
        self.path = self.folder / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.received: list[str] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            with self.lock:
                self.received.append(data.decode())

    def messages(self) -> list[str]:
        with self.lock:
            return list(self.received)

    def lines(self) -> list[str]:
        return [line for m in self.messages() for line in m.splitlines()]

    def first(self, line: str, after: int = 0) -> int | None:
        """The index of the first message from `after` on that has `line` in it."""
        for i, m in enumerate(self.messages()[after:], after):
            if line in m.splitlines():
                return i
        return None

    def wait_for(self, line: str, after: int = 0, timeout: float = 30.0) -> int:
        assert wait_until(lambda: self.first(line, after) is not None, timeout), (
            f"no {line!r} among {self.messages()[after:]}")
        found = self.first(line, after)
        assert found is not None
        return found

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """systemd's environment for the daemon started next: the socket and a 2 s watchdog."""
    server = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", str(server.path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield server
    server.close()


@pytest.fixture
def daemon(config: Path, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(config, tmp_path / "maild.log")
    yield d
    d.kill()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def test_daemon_tells_systemd_ready_backlog_watchdog_reload_and_stopping(
        daemon, notify, mailbox, smtp):
    # Ops see in `systemctl status` that maild is up and what waits: one mail unusable, one
    # answer the SMTP server keeps deferring; systemd's watchdog hears from it all along.
    smtp.reply = "451 4.3.0 try again later"
    mailbox.append(b"one single line\r\n")
    mailbox.append((DATA / "customer_de.eml").read_bytes())
    daemon.start()
    ready = notify.wait_for("READY=1")
    assert notify.first("STATUS=starting") == 0  # said before anything else
    notify.wait_for("STATUS=inbox 0, outbox 1, quarantine 1")
    assert wait_until(lambda: notify.lines().count("WATCHDOG=1") >= 3, 30), notify.messages()
    # The parse workers were started with neither the socket nor the watchdog.
    assert daemon.process is not None
    workers = children(daemon.process.pid)
    assert workers, "no parse worker found"
    for pid in workers:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_"))]
    # `systemctl reload`: RELOADING=1 (with the monotonic time systemd 253 wants), READY=1.
    daemon.process.send_signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING=1", after=ready + 1)
    assert any(line.startswith("MONOTONIC_USEC=")
               for line in notify.messages()[reloading].splitlines())
    notify.wait_for("READY=1", after=reloading + 1)
    # `systemctl stop`: STOPPING=1 first, then a clean exit.
    before = len(notify.messages())
    assert daemon.stop() == 0
    assert notify.first("STOPPING=1", before) is not None


def test_ready_comes_while_the_mailbox_refuses_us(notify, tmp_path, dovecot, smtp,
                                                  database_url):
    # A wrong IMAP password must not make systemd kill maild at its start timeout: READY=1
    # comes once the mailbox was tried, and the daemon keeps running (and retrying).
    from harness import write_config
    config = write_config(tmp_path / "maild.toml", imap_port=dovecot.port, user="nobody-here",
                          password="wrong", smtp_port=smtp.port, database_url=database_url)
    d = Daemon(config, tmp_path / "maild.log").start()
    try:
        notify.wait_for("READY=1")
        assert d.process is not None and d.process.poll() is None
        assert "retrying with backoff" in d.output()
        assert d.stop() == 0
    finally:
        d.kill()


def test_status_line_says_smtp_is_failing(notify, tmp_path, dovecot, mailbox, database_url):
    # Nothing listens on the SMTP port: the answer to a customer waits, and `systemctl
    # status` says why (the outbox's failure is seen by the one Runtime STATUS= reads).
    from harness import free_port, write_config
    config = write_config(tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
                          password=mailbox.password, smtp_port=free_port(),
                          database_url=database_url)
    mailbox.append((DATA / "customer_de.eml").read_bytes())
    d = Daemon(config, tmp_path / "maild.log").start()
    try:
        assert wait_until(lambda: any(line.startswith("STATUS=") and "SMTP failing:" in line
                                      for line in notify.lines()), 40), notify.messages()
        assert d.stop() == 0
    finally:
        d.kill()


def receive_all(sock: socket.socket) -> list[bytes]:
    found = []
    while True:
        try:
            found.append(sock.recv(4096))
        except BlockingIOError:
            return found


def test_a_stuck_event_loop_sends_no_watchdog_pings(tmp_path):
    # The pings come from the event loop itself: while a callback blocks it, none is sent
    # (so systemd restarts a hung daemon), and they resume when it runs again.
    folder = Path(tempfile.mkdtemp(prefix="maild-notify-"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(folder / "notify"))
    listener.setblocking(False)
    notifier = Notifier(str(folder / "notify"), watchdog_usec=100_000)  # a ping per 50 ms
    seen: dict[str, list[bytes]] = {}

    async def main() -> None:
        pinger = asyncio.create_task(keep_alive(notifier))
        await asyncio.sleep(0.5)
        seen["running"] = receive_all(listener)
        asyncio.get_running_loop().call_soon(time.sleep, 1.0)  # a callback that hangs
        await asyncio.sleep(0)  # the hanging callback runs here
        seen["stuck"] = receive_all(listener)
        await asyncio.sleep(0.5)
        seen["again"] = receive_all(listener)
        pinger.cancel()

    try:
        asyncio.run(main())
    finally:
        notifier.close()
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)
    assert len(seen["running"]) >= 3 and set(seen["running"]) == {b"WATCHDOG=1"}
    assert len(seen["stuck"]) <= 1  # at most the one due as the loop woke up
    assert len(seen["again"]) >= 3


def test_abstract_socket_and_the_watchdog_of_another_process():
    # An address starting with "@" is an abstract socket; a WATCHDOG_PID that is not ours
    # means the watchdog is not ours to ping; the variables leave the environment.
    name = f"maild-test-{secrets.token_hex(6)}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.settimeout(5)
    env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "30000000",
           "WATCHDOG_PID": str(os.getpid() + 1), "OTHER": "kept"}
    notifier = Notifier.from_environ(env)
    try:
        notifier.ready("inbox 0, outbox 0, quarantine 0")
        assert listener.recv(4096) == b"READY=1\nSTATUS=inbox 0, outbox 0, quarantine 0"
        assert notifier.watchdog_interval is None
        assert env == {"OTHER": "kept"}
        ours = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "30000000",
                                      "WATCHDOG_PID": str(os.getpid())})
        assert ours.watchdog_interval == 15.0
        ours.close()
    finally:
        notifier.close()
        listener.close()


def test_without_systemd_nothing_is_sent():
    # Run by hand (no NOTIFY_SOCKET): every call is a no-op, no watchdog.
    notifier = Notifier.from_environ({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("x")
    notifier.status("y")
    notifier.stopping()
