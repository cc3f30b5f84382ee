"""The web listener under a flood of connections: half-sent requests held open by one
client, or by many, never take the descriptors intake and sending need.

Against the running daemon (Dovecot, SMTP capture), under the open-files limit a unit
without LimitNOFILE= has (1,024, and no way to raise it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import selectors
import socket
import threading
import time

import pytest
from harness import Daemon, free_port, healthz, http_get, wait_for_port, write_config
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from maild import web
from maild.web import conns

MAIL = (b"From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
        b"Subject: Drucker\r\nMessage-ID: <flood@kunde.example>\r\n\r\n"
        b"Der Drucker druckt nicht.\r\n")
HALF = b"GET /t/x HTTP/1.1\r\nHost: support.example.com\r\nX-Slow: "


class Flood:
    """`count` connections from `sources` (loopback addresses), each sending half a
    request; a connection the server closes is opened again at once, until stopped."""

    def __init__(self, port: int, count: int, sources: list[str]) -> None:
        self.port, self.count, self.sources = port, count, sources
        self.stop = threading.Event()
        self.opened = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def _open(self, n: int) -> socket.socket | None:
        sock = socket.socket()
        try:
            sock.bind((self.sources[n % len(self.sources)], 0))
            sock.settimeout(2)
            sock.connect(("127.0.0.1", self.port))
            sock.sendall(HALF)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return None
        self.opened += 1
        return sock

    def _run(self) -> None:
        socks: dict[int, socket.socket | None] = {}
        with selectors.DefaultSelector() as watch:  # epoll: no limit at fd 1,024
            try:
                while not self.stop.is_set():
                    for n in range(self.count):
                        if socks.get(n) is None and not self.stop.is_set():
                            socks[n] = self._open(n)
                            if socks[n] is not None:
                                watch.register(socks[n], selectors.EVENT_READ, n)
                    for key, _ in watch.select(0.2):
                        sock, n = key.fileobj, key.data
                        try:
                            gone = sock.recv(4096) == b""
                        except OSError:
                            gone = True
                        if gone:
                            watch.unregister(sock)
                            sock.close()
                            socks[n] = None
                    time.sleep(0.05)  # reopen what the server closed, 20 rounds a second
            finally:
                for s in socks.values():
                    if s is not None:
                        s.close()


def test_the_gate_holds_total_and_per_client_and_logs_once_per_episode(caplog):
    # 3 at once in all, 2 per client (an IPv6 /64 is one), none per client for a trusted
    # proxy; refusals log one line when they start and one when they are over.
    now = [0.0]
    gate = web.Gate(3, 2, 10, 60, (ipaddress.ip_network("10.0.0.1/32"),),
                    clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="maild.web.conns")
    assert [gate.admit("2001:db8::1"), gate.admit("2001:db8::2"),
            gate.admit("2001:db8::3")] == [True, True, False]
    assert gate.admit("10.0.0.1") and not gate.admit("192.0.2.1")  # full
    for _ in range(1000):
        gate.admit("192.0.2.1")
    gate.release("10.0.0.1")
    now[0] = 11.0
    assert gate.admit("10.0.0.1") and gate.count == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "overloaded" in lines[0]
    assert lines[1] == "web listener overload over: 1002 connections refused"


def test_the_listener_stays_out_of_the_reserve():
    # However many connections are configured, the open-files limit minus the reserve.
    assert conns.listener_cap(512, 1024) == 512
    assert conns.listener_cap(5000, 1024) == 1024 - conns.RESERVE
    assert conns.listener_cap(5000, 100) == 1


def _ok(_request):
    return PlainTextResponse("ok")


def test_half_sent_headers_and_slow_bodies_are_cut_off():
    # Headers unfinished after header_timeout, a body unfinished after body_timeout:
    # the connection is closed; a whole request is answered.
    gate = web.Gate(10, 10, 1.0, 2.0)
    app = Starlette(routes=[Route("/", _ok, methods=["GET", "POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def run() -> None:
        loop.run_until_complete(web.serve(app, sock, stop, gate))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for_port(port)

        def closed_after(data: bytes) -> float:
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
                client.sendall(data)
                try:
                    while client.recv(4096):
                        pass
                except ConnectionResetError:
                    pass
            return time.monotonic() - started

        assert 0.9 < closed_after(b"GET / HTTP/1.1\r\nHost: x\r\n") < 5
        assert 1.9 < closed_after(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100"
                                  b"\r\n\r\n0123456789") < 6
        assert http_get(port, "/")[:1] == (200,)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(20)


@pytest.fixture
def enough_descriptors():
    """This process holds the flood's sockets: its soft open-files limit up to the hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 and (hard == resource.RLIM_INFINITY or hard > soft):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 2500:
        pytest.fail("the flood needs 2,500 open files; raise the hard limit (ulimit -Hn)")
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def flooded_daemon(tmp_path, dovecot, mailbox, smtp, database_url, http: str):
    port = free_port()
    config = write_config(
        tmp_path / "maild.toml", imap_port=dovecot.port, user=mailbox.user,
        password=mailbox.password, smtp_port=smtp.port, database_url=database_url,
        extra=f'[http]\nlisten = "127.0.0.1:{port}"\n{http}\n')
    daemon = Daemon(config, tmp_path / "maild.log").start(nofile=1024)
    wait_for_port(port, 60)
    return daemon, port


@pytest.mark.slow
@pytest.mark.usefixtures("enough_descriptors")
def test_one_client_with_1100_half_open_connections_cannot_stop_the_desk(
        tmp_path, dovecot, mailbox, smtp, database_url):
    # 1,100 half-sent requests from one address for 60 s: the mail sent meanwhile is
    # answered within seconds, /healthz and the pages answer others, one log line.
    daemon, port = flooded_daemon(tmp_path, dovecot, mailbox, smtp, database_url, "")
    try:
        with Flood(port, 1100, ["127.0.0.2"]) as flood:
            time.sleep(5)
            sent = time.monotonic()
            mailbox.append(MAIL)
            assert len(smtp.wait_for(1, timeout=30)) == 1, daemon.output()[-3000:]
            answered = time.monotonic() - sent
            while time.monotonic() - sent < 55:
                status, body = healthz(port)
                assert status == 200 and body["status"] == "ok", body
                assert http_get(port, "/t/forged")[0] == 404
                time.sleep(5)
            assert flood.opened > 1100  # the server closed and the flood came back
        output = daemon.output()
        assert answered < 15, answered
        assert len(output.encode()) < 1_000_000, len(output)
        assert output.count("web listener overloaded") == 1
        assert "out of system resource" not in output and "Too many open files" not in output
        assert daemon.stop() == 0
    finally:
        daemon.kill()


@pytest.mark.slow
@pytest.mark.usefixtures("enough_descriptors")
def test_a_flood_from_many_addresses_leaves_intake_and_sending_their_descriptors(
        tmp_path, dovecot, mailbox, smtp, database_url):
    # 1,500 half-sent requests from 60 addresses: the listener is full (pages wait), but
    # no descriptor runs out, the mail is answered and the log stays small.
    # (300 at once: on a slow machine the flood's one thread opens well past that within
    # header_timeout, so the listener is full for certain.)
    daemon, port = flooded_daemon(tmp_path, dovecot, mailbox, smtp, database_url,
                                  "max_connections = 300\nmax_connections_per_client = 100")
    try:
        with Flood(port, 1500, [f"127.0.0.{n}" for n in range(2, 62)]) as flood:
            time.sleep(5)
            sent = time.monotonic()
            mailbox.append(MAIL)
            assert len(smtp.wait_for(1, timeout=30)) == 1, daemon.output()[-3000:]
            answered = time.monotonic() - sent
            time.sleep(20)
        output = daemon.output()
        assert answered < 15, answered
        assert len(output.encode()) < 1_000_000, len(output)
        assert "out of system resource" not in output and "Too many open files" not in output
        assert "web listener overloaded" in output, (flood.opened, output[-3000:])
        assert healthz(port)[0] == 200  # the flood is over: the listener serves again
        assert daemon.stop() == 0
    finally:
        daemon.kill()
