"""An IMAP proxy on loopback that answers some commands itself, the way Exchange Online and
Gmail answer when they throttle or fail: a tagged NO or BAD instead of the server's answer,
or a BYE and a closed connection. Everything else passes untouched between the client and
a real server (Exchange cannot run here; its answers can)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from dataclasses import dataclass

LITERAL = re.compile(rb"\{(\d+)\+?\}\r?\n$")


@dataclass
class Answer:
    """`reply` instead of the server's answer to the next `times` commands that begin with
    `command` (e.g. "LOGIN", "SELECT", "UID STORE"): "NO …" or "BAD …" tagged, or "BYE …"
    untagged, after which the connection is closed."""

    command: str
    reply: str
    times: int = 1


class FaultyImap:
    """A proxy to the IMAP server at 127.0.0.1:`target_port`; `answers` can be added at
    any time; `commands` lists the names of the commands it saw, `answered` those it
    answered itself."""

    def __init__(self, target_port: int, *answers: Answer) -> None:
        self.target = ("127.0.0.1", target_port)
        self.answers = list(answers)
        self.commands: list[str] = []
        self.answered: list[str] = []
        self.lock = threading.Lock()
        self.links: list[tuple[socket.socket, socket.socket, threading.Lock]] = []
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def add(self, answer: Answer) -> None:
        with self.lock:
            self.answers.append(answer)

    def bye(self, text: str = "Connection closed. 14") -> None:
        """An untagged BYE to every open connection, out of the blue, and close them."""
        with self.lock:
            links, self.links = self.links, []
        for client, upstream, writing in links:
            with writing, contextlib.suppress(OSError):
                client.sendall(f"* BYE {text}\r\n".encode())
            _close(client, upstream)

    def close(self) -> None:
        self.listener.close()
        self.bye()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            writing = threading.Lock()
            with self.lock:
                self.links.append((client, upstream, writing))
            threading.Thread(target=self._down, args=(upstream, client, writing),
                             daemon=True).start()
            threading.Thread(target=self._up, args=(client, upstream, writing),
                             daemon=True).start()

    def _down(self, upstream: socket.socket, client: socket.socket,
              writing: threading.Lock) -> None:
        """The server's bytes to the client, as they come."""
        try:
            while data := upstream.recv(65536):
                with writing:
                    client.sendall(data)
        except OSError:
            pass
        _close(client, upstream)

    def _up(self, client: socket.socket, upstream: socket.socket,
            writing: threading.Lock) -> None:
        """The client's commands to the server, line by line (literals passed whole),
        unless an answer takes them."""
        reader = client.makefile("rb")
        try:
            while line := reader.readline():
                reply = self._reply_for(line)
                if reply is None:
                    upstream.sendall(line)
                    if literal := LITERAL.search(line):
                        upstream.sendall(reader.read(int(literal.group(1))))
                    continue
                tag = line.split(b" ", 1)[0].decode()
                with writing:
                    if reply.startswith("BYE"):
                        client.sendall(f"* {reply}\r\n".encode())
                        break
                    client.sendall(f"{tag} {reply}\r\n".encode())
        except OSError:
            pass
        _close(client, upstream)

    def _reply_for(self, line: bytes) -> str | None:
        words = line.decode("utf-8", "replace").split()[1:]
        command = " ".join(words).upper()
        with self.lock:
            if words:
                self.commands.append(" ".join(words[:2] if words[0] == "UID" else words[:1]))
            for answer in self.answers:
                if answer.times > 0 and command.startswith(answer.command.upper()):
                    answer.times -= 1
                    self.answered.append(f"{answer.command} → {answer.reply}")
                    return answer.reply
        return None


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
