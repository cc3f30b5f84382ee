"""`make bench`: throughput, latency and memory of `maild run` against a real Dovecot, on
an empty and on a full database, and the SLA sweep over a desk with history.

    python bench/bench.py [--mails 2000] [--prefill 100000] [--open 20000]
                          [--only sqlite,postgresql,agents,100k,sweep] [--skip ...]

Scenarios (default: all, in this order; the results go to .bench/results.json):

  sqlite      SQLite, empty database, no agents
  postgresql  the same on PostgreSQL (a fresh database on --pg, dropped after)
  agents      SQLite with agents and a team address: every ticket also notifies the team
  100k        SQLite (--scale-db postgresql: PostgreSQL) with --prefill tickets already in
              the database (--open of them open), compared with `sqlite`
  sweep       one `Sweeper.run()` over that database's open tickets, first and second run

Each throughput scenario: the same N generated mails (about 20 % with a 50–500 KB
attachment, German and English, some HTML-only, 10 % replies) are copied into the INBOX;
the bound is raw imapclient fetch (BODY.PEEK[], batches of 100) + stdlib parse
(`policy.default`, body and attachments) of that INBOX; then `maild run` until the INBOX
is empty and every acknowledgement (and with agents every notification) has reached the
SMTP capture; then single mails appended to the idle daemon, append → acknowledgement
(p50, p99); the peak RSS (VmHWM) of the daemon and of its parse worker. Answer limits are
lifted so every new ticket is answered.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import io
import json
import os
import pstats
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import scale  # noqa: E402
from harness import (  # noqa: E402
    PG_ADMIN_URL,
    Daemon,
    Dovecot,
    Mailbox,
    SmtpCapture,
    maild,
    wait_until,
    write_config,
)
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from maild import config as maild_config  # noqa: E402
from maild import db, sla  # noqa: E402

SCENARIOS = ("sqlite", "postgresql", "agents", "100k", "sweep")
SOURCE = "BenchSource"  # the generated mails, copied into the INBOX for each scenario
TEAM = "team@example.com"
# Every new ticket answered: no per-address or global answer limit gets in the way.
LIMITS = """
[limits]
answers_per_address_per_hour = 1000000
answers_per_hour = 0
"""
AGENTS = f"""
[agents]
members = [{{ address = "anna@example.com", name = "Anna Schmidt" }},
           {{ address = "lead@example.com", name = "Lea Lead", lead = true }}]
team_address = "{TEAM}"
"""


DE = ["Hallo Support-Team,", "seit heute Morgen funktioniert die Auftragsliste nicht mehr.",
      "Es erscheint die Fehlermeldung 'Verbindung fehlgeschlagen'.",
      "Gerät: iPhone 14, iOS 18.1, App-Version 4.2.1, WLAN.", "Kundennummer: 10{n:04d}",
      "Viele Grüße", "Kunde {n}"]
EN = ["Hello support,", "since this morning the order list does not load.",
      "The error message says 'connection failed'.",
      "Device: Windows 11 PC, Chrome 131, office network.", "Customer number: 20{n:04d}",
      "Best regards", "Customer {n}"]


def generate(n: int, rng: random.Random, previous: list[str]) -> tuple[bytes, str]:
    german = rng.random() < 0.6
    lines = [line.format(n=n) for line in (DE if german else EN)]
    mid = f"<bench.{n}.{rng.getrandbits(40):x}@kunde{n % 50}.example>"
    subject = ("Fehler in der App" if german else "Error in the app") + f" {n}"
    headers = [f"From: Kunde {n} <kunde{n}@firma{n % 50}.example>", "To: service@example.com",
               f"Message-ID: {mid}", "Date: Thu, 26 Nov 2026 10:00:00 +0100",
               "MIME-Version: 1.0"]
    if previous and rng.random() < 0.10:
        parent = rng.choice(previous)
        headers += [f"In-Reply-To: {parent}", f"References: {parent}"]
        subject = ("AW: " if german else "Re: ") + subject
    headers.append(f"Subject: {subject}")
    text = "\r\n".join(lines) + "\r\n"
    html_only = rng.random() < 0.10
    if html_only:
        body_part = ("Content-Type: text/html; charset=utf-8\r\n\r\n<html><body>"
                     + "".join(f"<p>{line}</p>" for line in lines) + "</body></html>\r\n")
    else:
        body_part = f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}"
    if rng.random() < 0.20:
        size = rng.randint(50_000, 500_000)
        data = base64.encodebytes(rng.randbytes(size)).decode().replace("\n", "\r\n")
        raw = "\r\n".join(headers) + (
            '\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n' + body_part
            + '\r\n--B\r\nContent-Type: application/pdf; name="report.pdf"\r\n'
            'Content-Disposition: attachment; filename="report.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n" + data + "--B--\r\n")
    else:
        raw = "\r\n".join(headers) + "\r\n" + body_part
    return raw.encode("utf-8"), mid


def fill(box: Mailbox, count: int, seed: int, folder: str) -> tuple[int, int]:
    """Append `count` generated mails to `folder`; (bytes, how many are replies)."""
    rng = random.Random(seed)
    previous: list[str] = []
    total = replies = 0
    client = box.client()
    try:
        if not client.folder_exists(folder):
            client.create_folder(folder)
        for n in range(count):
            raw, mid = generate(n, rng, previous)
            previous.append(mid)
            client.append(folder, raw)
            total += len(raw)
            replies += b"\r\nIn-Reply-To: " in raw.split(b"\r\n\r\n", 1)[0]
    finally:
        client.logout()
    return total, replies


def stage(box: Mailbox) -> None:
    """An INBOX holding exactly the generated mails (server-side copy), no other folders."""
    client = box.client()
    try:
        for folder in ("Processed", "Quarantine"):
            if client.folder_exists(folder):
                client.delete_folder(folder)
        client.select_folder("INBOX")
        uids = client.search(["ALL"])
        if uids:
            client.delete_messages(uids)
            client.expunge()
        client.select_folder(SOURCE, readonly=True)
        client.copy(client.search(["ALL"]), "INBOX")
    finally:
        client.logout()


def bound(box: Mailbox) -> tuple[float, float, int]:
    """Seconds for raw fetch and for stdlib parse (+ body + attachments) of the whole INBOX."""
    client = box.client()
    client._imap.debug = 0
    client.select_folder("INBOX", readonly=True)
    uids = client.search(["ALL"])
    started = time.perf_counter()
    raws: list[bytes] = []
    for i in range(0, len(uids), 100):
        data = client.fetch(uids[i:i + 100], ["BODY.PEEK[]"])
        raws.extend(item[b"BODY[]"] for item in data.values())
    fetched = time.perf_counter()
    for raw in raws:
        msg = message_from_bytes(raw, policy=policy.default)
        _ = (msg["From"], msg["Subject"], msg["Message-ID"])
        body = msg.get_body(preferencelist=("plain", "html"))
        if body is not None:
            body.get_content()
        for part in msg.iter_attachments():
            part.get_content()
    parsed = time.perf_counter()
    client.logout()
    return fetched - started, parsed - fetched, len(raws)


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> dict[int, float]:
    """CPU seconds of `pid` and of each of its children, by pid."""
    return {p: cpu_seconds(p) for p in (pid, *children(pid))}


def machine_cpu() -> tuple[float, float]:
    """Busy and idle CPU seconds of the whole machine so far, all cores (/proc/stat)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK"), idle / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


@dataclass
class Result:
    """One throughput scenario; rates in mails/s, latencies in ms, memory in MB."""

    scenario: str
    database: str
    mails: int
    mailbox_mb: float
    bound: float
    fetch: float
    parse: float
    rate: float
    ratio: float
    seconds: float
    p50_ms: float
    p99_ms: float
    rss_mb: float
    worker_rss_mb: float
    cpu_daemon_s: float  # CPU time used during the timed run, by the daemon's process
    cpu_workers_s: float  # and by its children (the parse worker)
    acknowledgements: int
    notifications: int
    left_in_inbox: int
    timed_out: bool
    vs_empty_percent: float | None = None  # rate against the empty database's, same run
    ratio_vs_empty_percent: float | None = None  # the same for the ratio (less load-bound)
    prefill: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.dovecot = Dovecot(work / "dovecot").start()
        self.smtp = SmtpCapture(delay=args.smtp_delay_ms / 1000).start()
        user, password = self.dovecot.add_user()
        self.box = Mailbox(self.dovecot.port, user, password)
        self.size = self.replies = 0

    def close(self) -> None:
        self.smtp.stop()
        self.dovecot.stop()

    def fill(self) -> None:
        print(f"generating {self.args.mails} mails ...", flush=True)
        self.size, self.replies = fill(self.box, self.args.mails, self.args.seed, SOURCE)
        print(f"mailbox: {self.args.mails} mails, {self.size / 1e6:.0f} MB "
              f"({self.replies} replies to earlier ones)", flush=True)

    def config(self, name: str, url: str, extra: str = "") -> Path:
        folder = self.work / name
        folder.mkdir(exist_ok=True)
        return write_config(folder / "maild.toml", imap_port=self.dovecot.port,
                            user=self.box.user, password=self.box.password,
                            smtp_port=self.smtp.port, database_url=url,
                            extra=LIMITS + extra, outbox_extra=(
                                f"connections = {self.args.connections}"
                                if self.args.connections else ""))

    def throughput(self, name: str, config: Path, database: str, agents: bool) -> Result:
        """Inbox → acknowledgements (and notifications) at the capture, then latency."""
        args = self.args
        stage(self.box)
        fetch_s, parse_s, n = bound(self.box)
        rate_bound = n / (fetch_s + parse_s)
        print(f"[{name}] bound: raw fetch {n / fetch_s:,.0f} mails/s, stdlib parse "
              f"{n / parse_s:,.0f} mails/s, fetch + parse {rate_bound:,.0f} mails/s", flush=True)
        with self.smtp.lock:
            self.smtp.mails.clear()
        acks = args.mails - self.replies  # a reply joins its ticket: no acknowledgement
        notes = args.mails if agents else 0  # new ticket and follow-up: the team is told
        daemon = Profiled(config, config.parent / "maild.log") if args.profile_daemon \
            else Daemon(config, config.parent / "maild.log")
        daemon.start()
        assert daemon.process is not None
        try:
            if not wait_until(lambda: "watching" in daemon.output(), timeout=60, interval=0.01):
                raise RuntimeError(f"[{name}] the daemon did not start:\n{daemon.output()}")
            started, cpu_before = time.perf_counter(), cpu_of(daemon.process.pid)
            busy_before, idle_before = machine_cpu()
            bench_before = time.process_time()
            done = wait_until(lambda: len(self.smtp.mails) >= acks + notes
                              or daemon.process.poll() is not None, timeout=3600, interval=0.02)
            if daemon.process.poll() is not None:
                raise RuntimeError(f"[{name}] the daemon ended:\n{daemon.output()[-3000:]}")
            elapsed = time.perf_counter() - started
            cpu_after = cpu_of(daemon.process.pid)
            busy_after, idle_after = machine_cpu()
            cpu_bench = time.process_time() - bench_before
            cpu = {p: t - cpu_before.get(p, 0.0) for p, t in cpu_after.items()}
            cpu_daemon = cpu.pop(daemon.process.pid, 0.0)
            cpu_workers = sum(cpu.values())
            left = self.box.count("INBOX")
            got_acks, got_notes = self.counted()
            rate = args.mails / elapsed
            print(f"[{name}] maild: {args.mails} mails in {elapsed:.1f} s = {rate:,.0f} mails/s "
                  f"({rate / rate_bound:.2f} × the bound), acknowledgements {got_acks}"
                  + (f", notifications {got_notes}" if agents else "")
                  + f", left in INBOX {left}" + ("" if done else "  (TIMED OUT)"), flush=True)
            busy, idle = busy_after - busy_before, idle_after - idle_before
            print(f"[{name}] CPU during those {elapsed:.1f} s: daemon {cpu_daemon:.1f} s, "
                  f"parse worker {cpu_workers:.1f} s; the machine: busy {busy:.1f} s, idle "
                  f"{idle:.1f} s ({os.cpu_count()} cores; of the busy time the bench's SMTP "
                  f"capture {cpu_bench:.1f} s, the rest Dovecot, the database and the "
                  "system)", flush=True)
            latencies = self.latency(2 if agents else 1)
            p50 = statistics.median(latencies) * 1000 if latencies else 0.0
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 \
                if latencies else 0.0
            rss = peak_rss_mb(daemon.process.pid)
            worker = max((peak_rss_mb(c) for c in children(daemon.process.pid)), default=0.0)
            what = "acknowledgement + notification" if agents else "acknowledgement"
            print(f"[{name}] latency arrival → {what} ({len(latencies)} single mails, "
                  f"IDLE): p50 {p50:.0f} ms, p99 {p99:.0f} ms; peak RSS daemon {rss:.0f} MB, "
                  f"parse worker {worker:.0f} MB", flush=True)
        finally:
            daemon.stop()
            if args.profile_daemon:
                show_profile(config.parent / "maild.prof", args.profile_daemon)
        return Result(name, database, args.mails, round(self.size / 1e6, 1), round(rate_bound, 1),
                      round(n / fetch_s, 1), round(n / parse_s, 1), round(rate, 1),
                      round(rate / rate_bound, 3), round(elapsed, 2), round(p50), round(p99),
                      round(rss), round(worker), round(cpu_daemon, 1), round(cpu_workers, 1),
                      got_acks, got_notes, left, not done)

    def counted(self) -> tuple[int, int]:
        with self.smtp.lock:
            mails = list(self.smtp.mails)
        notes = sum(1 for m in mails if m.recipients == [TEAM])
        return len(mails) - notes, notes

    def latency(self, per_mail: int) -> list[float]:
        latencies = []
        rng = random.Random(self.args.seed + 1)
        for i in range(self.args.latency_mails):
            raw, _ = generate(100_000 + i, rng, [])
            expected = len(self.smtp.mails) + per_mail
            t0 = time.perf_counter()
            self.box.append(raw)
            if wait_until(lambda e=expected: len(self.smtp.mails) >= e, timeout=30,
                          interval=0.002):
                latencies.append(time.perf_counter() - t0)
            time.sleep(0.1)
        return sorted(latencies)


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one scenario, dropped after."""
    name = f"maild_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_problem(admin_url: str) -> str:
    """Why the PostgreSQL server cannot be used ("" when it can)."""
    try:
        engine = create_engine(admin_url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:
        return str(exc).splitlines()[0][:200]
    return ""


@contextlib.contextmanager
def database(kind: str, folder: Path, admin_url: str) -> Iterator[str]:
    if kind == "postgresql":
        with postgres_database(admin_url) as url:
            yield url
    else:
        folder.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{folder / 'maild.db'}"


def upgrade(config: Path) -> None:
    done = maild("db", "upgrade", config=config, timeout=300)
    if done.returncode:
        raise RuntimeError(f"maild db upgrade failed:\n{done.stderr}")


def profiled(top: int) -> Any:
    def run(fn: Any) -> Any:
        profile = cProfile.Profile()
        result = profile.runcall(fn)
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(top)
        print(out.getvalue())
        return result
    return run


def scale_run(bench: Bench, wanted: set[str], results: dict[str, Any]) -> None:
    """The database with history: prefill, sweep (first, steady), then throughput."""
    args = bench.args
    with database(args.scale_db, bench.work / "100k", args.pg) as url:
        config = bench.config("100k", url)
        upgrade(config)
        settings = maild_config.load(config)
        moment = scale.sweep_moment(sla.calendar_from(settings.calendar), datetime.now(UTC))
        # As the desk stood when its daemon last swept, a minute before the timed sweep.
        as_of = moment - timedelta(seconds=settings.sla.sweep_seconds)
        print(f"[100k] prefilling {args.prefill:,} tickets ({args.open:,} open) "
              f"on {args.scale_db} ...", flush=True)
        engine = db.make_engine(url)
        try:
            filled = scale.prefill(engine, settings, args.prefill, args.open, as_of, args.seed)
        finally:
            engine.dispose()
        print(f"[100k] prefilled in {filled.seconds:.1f} s: {filled.statuses}, rows "
              f"{filled.rows}, last ticket number {filled.last_number}", flush=True)
        results["prefill"] = asdict(filled)
        if "sweep" in wanted:
            # The sweep as a desk with agents runs it: warnings, breaches, the digest mailed.
            # (The tests' config turns the digest off unless [sla] is given: given here.)
            sweep_config = bench.config("100k-sweep", url, AGENTS + "[sla]\ndigest = true\n")
            sweep_settings = maild_config.load(sweep_config)
            times = scale.time_sweep(sweep_settings, moment,
                                     profiled(args.profile_top) if args.profile_top else None)
            first, second = times.first_counts, times.second_counts
            print(f"[sweep] {filled.open:,} open tickets at {moment:%Y-%m-%d %H:%M} UTC: "
                  f"first run {times.first:.2f} s ({first.breaches} breaches, "
                  f"{first.warnings} warnings, {first.reminders} reminders, "
                  f"{first.digests} digests), second run {times.second:.2f} s", flush=True)
            results["sweep"] = {
                "database": args.scale_db, "tickets": filled.tickets, "open": filled.open,
                "at": moment.isoformat(), "first_s": round(times.first, 3),
                "second_s": round(times.second, 3),
                "first_counts": {k: v for k, v in asdict(first).items() if k != "errors"},
                "second_counts": {k: v for k, v in asdict(second).items() if k != "errors"},
                "errors": first.errors + second.errors}
        if "100k" in wanted:
            result = bench.throughput("100k", config, args.scale_db, agents=False)
            result.prefill = {"tickets": filled.tickets, "open": filled.open}
            empty = results["scenarios"].get(args.scale_db)
            if empty is not None:
                result.vs_empty_percent = round((result.rate / empty["rate"] - 1) * 100, 1)
                result.ratio_vs_empty_percent = round(
                    (result.ratio / empty["ratio"] - 1) * 100, 1)
            results["scenarios"]["100k"] = asdict(result)


def summary(results: dict[str, Any]) -> str:
    rows = [("scenario", "database", "mails/s", "bound", "ratio", "p50 ms", "p99 ms", "RSS MB",
             "vs empty: mails/s", "ratio")]
    for name, r in results["scenarios"].items():
        vs, vs_ratio = r.get("vs_empty_percent"), r.get("ratio_vs_empty_percent")
        rows.append((name, r["database"], f"{r['rate']:,.0f}", f"{r['bound']:,.0f}",
                     f"{r['ratio']:.2f}", f"{r['p50_ms']:,.0f}", f"{r['p99_ms']:,.0f}",
                     f"{r['rss_mb']:,.0f} (+{r['worker_rss_mb']:,.0f})",
                     "" if vs is None else f"{vs:+.1f} %",
                     "" if vs_ratio is None else f"{vs_ratio:+.1f} %"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    sweep = results.get("sweep")
    if sweep:
        lines.append(f"sweep over {sweep['open']:,} open of {sweep['tickets']:,} tickets "
                     f"({sweep['database']}): first run {sweep['first_s']:.2f} s, "
                     f"second run {sweep['second_s']:.2f} s")
    lines.append("(mails/s: end to end; bound: fetch + parse of the same INBOX; ratio = "
                 "mails/s / bound; RSS: daemon (+ parse worker); vs empty: the 100k run "
                 "against the empty database's)")
    return "\n".join(lines)


class Profiled(Daemon):
    """`maild run` under bench/profiled.py (yappi), its stats saved beside the config."""

    def start(self) -> Profiled:
        fh = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "profiled.py"), "--config", str(self.config),
             "run"], stdout=fh, stderr=fh,
            env={**os.environ, "MAILD_PROFILE_OUT": str(self.config.parent / "maild.prof")})
        fh.close()
        return self


def show_profile(path: Path, top: int) -> None:
    if not path.exists():
        print(f"no profile at {path} (is yappi installed?)")
        return
    stats = pstats.Stats(str(path))
    for key in ("cumulative", "tottime"):
        print(f"--- daemon profile by {key} (CPU time, every thread) ---", flush=True)
        stats.sort_stats(key).print_stats(top)
    sys.stdout.flush()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mails", type=int, default=2000)
    p.add_argument("--latency-mails", type=int, default=40)
    p.add_argument("--prefill", type=int, default=100_000, help="tickets in the `100k` database")
    p.add_argument("--open", type=int, default=20_000, help="of them open (new, in_progress, "
                   "waiting)")
    p.add_argument("--only", default="", help=f"comma-separated scenarios of {SCENARIOS}")
    p.add_argument("--skip", default="", help="comma-separated scenarios to leave out")
    p.add_argument("--scale-db", choices=("sqlite", "postgresql"), default="sqlite",
                   help="the database of the `100k` and `sweep` scenarios")
    p.add_argument("--pg", default=os.environ.get("MAILD_BENCH_PG", PG_ADMIN_URL),
                   help="PostgreSQL server (any database on it; the bench creates its own)")
    p.add_argument("--profile-top", type=int, default=0,
                   help="profile the first sweep, print this many functions (cumulative)")
    p.add_argument("--profile-daemon", type=int, default=0, metavar="N",
                   help="run the daemon under yappi (CPU time, every thread; `pip install "
                        "yappi`) and print its N most expensive functions, cumulative and own")
    p.add_argument("--results", default=str(ROOT / ".bench" / "results.json"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--connections", type=int, default=0,
                   help="[outbox] connections of the daemon (0: maild's default)")
    p.add_argument("--smtp-delay-ms", type=float, default=0.0,
                   help="the SMTP capture answers RCPT and DATA this late (a distant server)")
    args = p.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()} or set(SCENARIOS)
    wanted = only - {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = wanted - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")

    if wanted & {"postgresql"} or (wanted & {"100k", "sweep"} and args.scale_db == "postgresql"):
        problem = postgres_problem(args.pg)
        if problem and args.scale_db == "postgresql" and wanted & {"100k", "sweep"}:
            p.error(f"--scale-db postgresql: {problem}")
        if problem:
            print(f"PostgreSQL at {args.pg} unavailable ({problem}): skipping `postgresql`")
            wanted.discard("postgresql")
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "cores": os.cpu_count(),
        "load_before": os.getloadavg()[0],
        "command": " ".join(["bench/bench.py", *sys.argv[1:]]),
        "mails": args.mails, "scenarios": {}}
    work = Path(tempfile.mkdtemp(prefix="maild-bench-"))
    work.chmod(0o755)
    bench = Bench(args, work)
    try:
        if wanted & {"sqlite", "postgresql", "agents", "100k"}:
            bench.fill()
        for name, kind, extra in (("sqlite", "sqlite", ""), ("postgresql", "postgresql", ""),
                                  ("agents", "sqlite", AGENTS)):
            if name in wanted:
                with database(kind, work / name, args.pg) as url:
                    config = bench.config(name, url, extra)
                    upgrade(config)
                    results["scenarios"][name] = asdict(
                        bench.throughput(name, config, kind, agents=bool(extra)))
        if wanted & {"100k", "sweep"}:
            scale_run(bench, wanted, results)
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    results["load_after"] = os.getloadavg()[0]
    print()
    print(summary(results))
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwritten to {out}")
    failed = [n for n, r in results["scenarios"].items() if r["timed_out"]]
    return 1 if failed or (results.get("sweep") or {}).get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
