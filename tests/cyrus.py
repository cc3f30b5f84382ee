"""A private Cyrus IMAP for tests: an IMAP server that is not Dovecot.

Debian's Cyrus 3.6, unpacked by scripts/ensure-cyrus (its package would remove Dovecot),
runs from two generated files (imapd.conf, cyrus.conf) in a temp dir on a free loopback
port; users and their passwords live in a sasldb of its own. It offers MOVE, UIDPLUS,
IDLE (with its idled) and the alternate namespace (folders beside INBOX, "/" between).
Set apart from Cyrus's defaults: `munge8bit: no` (by default Cyrus turns every 8-bit byte
in a header of a stored mail into "X": a raw UTF-8 subject "lädt" becomes "lXXdt").
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import ServerUnavailable, free_port, wait_for_port

LIBS = "usr/lib/x86_64-linux-gnu"


def cyrus_root() -> Path | None:
    """Where Cyrus's binaries are: ensure-cyrus's copy, else an installed cyrus-imapd."""
    for root in (Path(os.environ.get("MAILD_CYRUS_ROOT", "/opt/maild-test/cyrus")), Path("/")):
        if all((root / b).exists() for b in ("usr/lib/cyrus/bin/master",
                                              "usr/lib/cyrus/bin/imapd",
                                              "usr/sbin/saslpasswd2")):
            return root
    return None


@dataclass
class Cyrus:
    """A private Cyrus IMAP on a free loopback port, with users made on demand."""

    base: Path
    port: int = 0
    capabilities: str = ""  # its own (see `Dovecot.capabilities`)
    root: Path | None = field(default_factory=cyrus_root)

    def start(self) -> Cyrus:
        if self.root is None:
            raise ServerUnavailable("Cyrus IMAP is missing (run scripts/ensure-cyrus as root)")
        for sub in ("conf", "conf/socket", "spool", "run"):  # conf/socket: idled's
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        user, group = self._owner()
        (self.base / "imapd.conf").write_text(self._imapd_conf(user, group))
        (self.base / "cyrus.conf").write_text(self._cyrus_conf())
        self._chown(self.base)
        log = self.base / "master.log"
        code = subprocess.run(
            [self._bin("master"), "-C", self.base / "imapd.conf", "-M", self.base / "cyrus.conf",
             "-p", self.base / "run" / "master.pid", "-d", "-L", log],
            env=self._env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT).returncode
        if code:
            raise ServerUnavailable(f"Cyrus's master did not start ({code}): {self._said()}")
        try:
            wait_for_port(self.port, 15, b"* OK")
        except RuntimeError as exc:
            raise ServerUnavailable(f"{exc}\n{self._said()}") from exc
        return self

    def _imapd_conf(self, user: str, group: str) -> str:
        b = self.base
        return f"""configdirectory: {b}/conf
defaultpartition: default
partition-default: {b}/spool
cyrus_user: {user}
cyrus_group: {group}
syslog_prefix: maild-test-cyrus-{b.name}
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {b}/sasldb2
sasl_mech_list: PLAIN LOGIN
allowplaintext: yes
autocreate_quota: 0
maxlogins_per_user: 0
munge8bit: no
"""

    def _cyrus_conf(self) -> str:
        conf = self.base / "imapd.conf"
        return f"""START {{
}}
SERVICES {{
  imap cmd="{self._bin("imapd")} -C {conf}" listen="127.0.0.1:{self.port}" prefork=0
}}
EVENTS {{
}}
DAEMON {{
  idled cmd="{self._bin("idled")} -C {conf}"
}}
"""

    def _owner(self) -> tuple[str, str]:
        """Who Cyrus runs as: `nobody` when started as root, else the current user."""
        uid = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()
        entry = pwd.getpwuid(uid)
        return entry.pw_name, grp.getgrgid(entry.pw_gid).gr_name

    def _chown(self, top: Path) -> None:
        if os.geteuid() != 0:
            return
        nobody = pwd.getpwnam("nobody")
        for path in (top, *top.rglob("*")):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)

    def _bin(self, name: str) -> str:
        assert self.root is not None
        return str(self.root / "usr/lib/cyrus/bin" / name)

    def _env(self) -> dict[str, str]:
        assert self.root is not None
        return {**os.environ, "LD_LIBRARY_PATH": str(self.root / LIBS)}

    def _said(self) -> str:
        log = self.base / "master.log"
        return log.read_text(errors="replace").strip() if log.exists() else ""

    def add_user(self) -> tuple[str, str]:
        """A user of its own (its INBOX is made at the first login) for one test."""
        assert self.root is not None
        user, password = f"c{secrets.token_hex(4)}", secrets.token_hex(8)
        subprocess.run([str(self.root / "usr/sbin/saslpasswd2"), "-f", str(self.base / "sasldb2"),
                        "-p", "-c", user], input=password.encode(), env=self._env(),
                       check=True, capture_output=True)
        self._chown(self.base / "sasldb2")
        return user, password

    def stop(self) -> None:
        pid_file = self.base / "run" / "master.pid"
        if not pid_file.exists():
            return
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
        pid_file.unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        time.sleep(0.2)
        self.start()
