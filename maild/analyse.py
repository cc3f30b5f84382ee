"""The pure part of handling a mail (parse, classify, plan its files, read a bounce) and the
writing of its blobs, in parse worker processes beside the daemon.

Each mail is one task with a time budget, and each worker runs under a memory limit
(RLIMIT_AS): a mail that takes too long, exhausts the memory or kills its worker is
reported `over_budget` (the intake quarantines it), the worker is replaced, and the mails
behind it go on. The workers start with the daemon and end with it, even after SIGKILL.
The daemon gets back hashes, sizes and text, not the decoded files: the worker writes the
blobs (not yet synced; the intake syncs them before its commit). `workers = 0` analyses
in the daemon's own process, without budget (tests, debugging).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import multiprocessing
import os
import re
import resource
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from maild import blobs, logs
from maild.errors import Temporary
from maild.mail import body, dsn, facts, files, language
from maild.mail.classify import Verdict, classify
from maild.mail.extracted import Extracted
from maild.mail.parse import InboundMail, parse

log = logging.getLogger(__name__)

MEMORY = "parsing exceeded the memory limit"
DIED = "the parse worker died"
MEMORY_EXIT = 86  # a worker's exit status after a MemoryError
START_SECONDS = 60.0  # for a new worker to be ready (imports), not counted against a mail
_SEPARATOR = re.compile(rb"\r?\n\r?\n")
_MSGID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Rules:
    """What the analysis needs to know of us (picklable)."""

    support_address: str
    domain: str
    spam_rule: tuple[str, re.Pattern[str]] | None
    limits: files.Limits
    keep_bytes: int = 0  # stored files up to this size keep their bytes (agent notices)
    fact_patterns: Mapping[str, Sequence[str]] | None = None
    default_language: str = "en"


@dataclass(frozen=True, slots=True)
class Budget:
    seconds: float = 10.0  # per mail
    memory_mb: int = 1024  # per worker (address space)

    def timeout(self) -> str:
        return f"parsing took longer than {self.seconds:g} s"


DEFAULT_BUDGET = Budget()


@dataclass(frozen=True, slots=True)
class Analysis:
    parsed: InboundMail | None
    verdict: Verdict | None
    planned: list[files.Planned] | None
    report: dsn.Report | None
    extracted: Extracted | None = None
    error: str = ""  # "Type: message" when the mail's content broke the analysis
    trace: str = ""  # the traceback, for the log
    over_budget: str = ""  # why the mail was stopped (time, memory, a dead worker, crashes)
    key: str = ""  # its dedupe key, and its raw blob, when written where it was analysed
    raw_sha: str = ""
    written: tuple[str, ...] = ()  # blobs written but not yet synced
    unavailable: str = ""  # the blob store failed in the worker (a Temporary, not the mail's)


AnalyseFn = Callable[[bytes, Rules], Analysis]


def stopped(reason: str) -> Analysis:
    """The analysis of a mail that was stopped (or not started) for `reason`."""
    return Analysis(None, None, None, None, over_budget=reason)


def dedupe_key(raw: bytes) -> str:
    """Same Message-ID and same body → same key, whatever trace headers were added."""
    found = _SEPARATOR.search(raw)
    head, body_at = (raw[:found.start()], found.end()) if found else (raw, len(raw))
    mid = _MSGID.search(head)
    if mid is None:
        return hashlib.sha256(b"raw\0" + raw).hexdigest()
    digest = hashlib.sha256(b"mid\0" + mid.group(1).strip() + b"\0")
    digest.update(memoryview(raw)[body_at:])  # no copy of a big body
    return digest.hexdigest()


def analyse(raw: bytes, rules: Rules) -> Analysis:
    """The default analysis. Never raises but MemoryError: a failure is returned as
    `error` (counted against the mail)."""
    try:
        parsed = parse(raw)
        verdict = classify(parsed, rules.support_address, rules.spam_rule)
        planned = files.plan(parsed.attachments, rules.limits)
        report = dsn.read(raw, rules.domain) if verdict.kind == "bounce" else None
        extracted = extract(parsed, rules) if verdict.kind != "bounce" else None
    except MemoryError:
        raise
    except Exception as exc:  # a parser bug on this mail's content
        return _failure(exc)
    return Analysis(parsed, verdict, planned, report, extracted)


def extract(mail: InboundMail, rules: Rules) -> Extracted:
    """The text-heavy work on a mail's text that the ticket code needs (regular
    expressions and a reply parser over text of any size)."""
    text = mail.text
    new_text = body.latest_reply(text)
    plain = "\r" not in text and body.REPLY_ABOVE not in text.lower()
    return Extracted(
        facts=facts.extract(text, facts.Sender(mail.from_addr, mail.from_name),
                            rules.fact_patterns),
        new_text=new_text,
        new_content=facts.new_content(text),
        language=language.guess(f"{mail.subject}\n{text}", rules.default_language),
        agent_text=new_text if plain else body.agent_words(text),  # the same without a marker
    )


def _failure(exc: Exception) -> Analysis:
    return Analysis(None, None, None, None, error=f"{type(exc).__name__}: {exc}"[:1900],
                    trace=traceback.format_exc())


def handle(raw: bytes, rules: Rules, store: blobs.BlobStore, fn: AnalyseFn) -> Analysis:
    """Analyse one mail with `fn` and write its blobs (raw mail, kept files) unsynced; the
    result holds their hashes, and the bytes of small kept files only."""
    key = dedupe_key(raw)
    written = [store.put(raw, sync=False)]
    try:
        result = fn(raw, rules)
    except MemoryError:
        raise
    except Exception as exc:  # an injected analysis may raise
        result = _failure(exc)
    planned = None
    if result.planned is not None:
        planned = []
        for f in result.planned:
            if f.store:
                written.append(store.put(f.data, sync=False))
            keep = f.store and f.size <= rules.keep_bytes
            planned.append(f if keep or not f.data else replace(f, data=b""))
    parsed = result.parsed
    if parsed is not None and parsed.attachments:
        parsed = replace(parsed, attachments=tuple(replace(a, data=b"")
                                                   for a in parsed.attachments))
    return replace(result, parsed=parsed, planned=planned, key=key, raw_sha=written[0],
                   written=tuple(written))


def _watch_parent(parent: int) -> None:
    """In a worker: end when the daemon is gone (killed with SIGKILL, it cannot say so)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _limit_memory(megabytes: int) -> None:
    limit = megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError) as exc:
        log.warning("parse worker: memory limit not set: %s", exc)


def _serve(conn: Connection, rules: Rules, store: blobs.BlobStore, fn: AnalyseFn,
           memory_mb: int, parent: int, logging_setup: logs.Setup | None = None) -> None:
    """A worker's life: one mail in, its analysis out, until the daemon closes the pipe."""
    if logging_setup is not None:  # its lines as the daemon's: one line each, no secret
        logs.setup(logging_setup.level, logging_setup.fmt, logging_setup.secrets)
    # The daemon's signals are its own: a worker ends when its pipe closes or the daemon is
    # gone, never under a mail because the whole group got SIGTERM or Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _watch_parent(parent)
    _limit_memory(memory_mb)
    conn.send(None)  # ready
    try:
        while True:
            try:
                raw = conn.recv_bytes()
            except (EOFError, OSError):
                return
            result = _handle_here(raw, rules, store, fn)
            del raw
            conn.send(result)
    except MemoryError:
        os._exit(MEMORY_EXIT)  # the daemon reads the status; a new worker starts clean


def _handle_here(raw: bytes, rules: Rules, store: blobs.BlobStore,
                 fn: AnalyseFn) -> Analysis:
    """`handle` in a worker, failures turned into values: the blob store down is no verdict
    on the mail; a bug counts against the mail, as a parser bug does."""
    try:
        # A fresh store per mail: what it wrote unsynced is reported, the daemon syncs.
        return handle(raw, rules, copy.deepcopy(store), fn)
    except Temporary as exc:
        return Analysis(None, None, None, None, unavailable=str(exc))
    except MemoryError:
        raise
    except Exception as exc:
        return _failure(exc)


def _in_process(raw: bytes, rules: Rules, store: blobs.BlobStore, fn: AnalyseFn) -> Analysis:
    """`handle` in the daemon's own process (no time budget; memory errors still end only
    the mail)."""
    try:
        return handle(raw, rules, store, fn)
    except MemoryError:
        return stopped(MEMORY)


class _Worker:
    """One parse worker process and the daemon's end of its pipe."""

    def __init__(self, args: tuple[Any, ...]) -> None:
        # spawn: forking a process that runs threads (IMAP, SMTP, scheduler) is unsafe.
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, *args), name="maild-parse",
                                   daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.stopping = threading.Lock()  # close() and the dispatch thread may both stop it

    def wait_ready(self) -> None:
        """Wait for the worker's imports (not counted against a mail's budget)."""
        if self.ready:
            return
        try:
            if not self.conn.poll(START_SECONDS):
                raise OSError(f"no word from the parse worker in {START_SECONDS:g} s")
            self.conn.recv()
        except EOFError as exc:
            raise OSError(f"the parse worker ended at start (status "
                          f"{self.stop()})") from exc
        self.ready = True

    def stop(self) -> int | None:
        """End the worker (a stuck one too: it holds no state worth a goodbye); its exit
        status. Killed before its pipe is closed, so a wait on the pipe ends at once."""
        with self.stopping:
            if not self.conn.closed:
                self.process.kill()
                self.process.join(5)
                self.conn.close()
        return self.process.exitcode


class Flight:
    """Which mails are in the parse worker right now, kept in a small file beside the
    state (written before a mail goes in, rewritten when it comes out). After the process
    died, only the mails named there were being parsed: an attempt mark of any other mail
    of the batch is no crash of its."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.now: set[tuple[int, int]] = set()
        self.landed = False  # a mail came out and the file does not say so yet
        self._fd: int | None = None
        self._longest = 0
        self._lock = threading.Lock()
        self._closed = False
        self.before: set[tuple[int, int]] | None = self._read()

    def _read(self) -> set[tuple[int, int]] | None:
        """What was in flight when the last process ended (None: not recorded)."""
        if self.path is None:
            return None
        try:
            return {(int(a), int(b)) for a, b in json.loads(self.path.read_text())}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, TypeError):
            return None

    def take_off(self, key: tuple[int, int] | None) -> None:
        if key is not None:
            self.now.add(key)
            self._write()

    def land(self, key: tuple[int, int] | None, *, more: bool = False) -> None:
        """`key` came out. `more`: another mail goes in at once, and its `take_off`
        writes both changes in one go (one file write per mail, not two)."""
        if key is not None and key in self.now:
            self.now.discard(key)
            self.landed = True
        if self.landed and not more:
            self._write()

    def _write(self) -> None:
        """One `pwrite` at the start of the file, padded with spaces (JSON whitespace) to
        the longest record written: a process killed at any point leaves a whole record
        (the file is for crashes of the process, so it is not synced)."""
        self.landed = False
        if self.path is None:
            return
        record = json.dumps(sorted(self.now)).encode()
        with self._lock:  # (close() comes from another thread)
            try:
                fd = self._fd
                if fd is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
                    # Padded to what is there: no moment with an empty or torn file.
                    self._longest = max(self._longest, os.fstat(fd).st_size)
                os.pwrite(fd, record.ljust(self._longest), 0)
                self._longest = max(self._longest, len(record))
                if self._closed:  # (a landing after close(): written, and closed again)
                    os.close(fd)
                else:
                    self._fd = fd
            except OSError as exc:  # the count of crashes is lost, never a mail
                log.debug("in-flight record not written: %s", exc)

    def close(self) -> None:
        """Close the file (a later change is still written, opening it again)."""
        with self._lock:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class Analyser:
    """Runs the analysis of mails, one mail per task, in `workers` processes (0: in the
    daemon's own process), batch after batch in the order submitted."""

    def __init__(self, rules: Rules, workers: int, store: blobs.BlobStore,
                 budget: Budget = DEFAULT_BUDGET, fn: AnalyseFn = analyse,
                 flight: Flight | None = None) -> None:
        self.flight = flight or Flight(None)
        self.keys: list[tuple[int, int] | None] = []
        self.rules = rules
        self.workers = workers
        self.store = store
        self.budget = budget
        self.fn = fn
        self.pool: list[_Worker] = []
        self.dispatch: ThreadPoolExecutor | None = None
        self.closing = False
        self.lock = threading.Lock()

    def start(self) -> None:
        """Start the workers now, so the first mail finds them warm."""
        with self.lock:
            if not self.workers or self.dispatch is not None or self.closing:
                return
            try:
                self.pool = [self._spawn() for _ in range(self.workers)]
            except OSError as exc:
                log.warning("parse workers not started (%s); analysing in-process", exc)
                for worker in self.pool:
                    worker.stop()
                self.pool = []
                return
            self.dispatch = ThreadPoolExecutor(1, thread_name_prefix="analyse")

    def use(self, rules: Rules) -> None:
        """New rules (a reload): the mails analysed from now on follow them; the running
        workers are replaced between two batches (the dispatch thread runs one at a time)."""
        with self.lock:
            if rules == self.rules:
                return
            self.rules = rules
            if self.dispatch is not None:
                with contextlib.suppress(RuntimeError):  # closed meanwhile
                    self.dispatch.submit(self._renew)

    def _renew(self) -> None:
        for slot in range(len(self.pool)):
            self._replace(slot)

    def _spawn(self) -> _Worker:
        return _Worker((self.rules, self.store, self.fn, self.budget.memory_mb, os.getpid(),
                        logs.inherited()))

    def submit(self, work: Sequence[bytes | Analysis],
               keys: Sequence[tuple[int, int]] | None = None) -> Future[list[Analysis]]:
        """Start analysing the raw mails of `work` (an Analysis given is the result already);
        the result keeps the order. `keys` name the mails for the in-flight record."""
        items = list(work)
        named: list[tuple[int, int] | None] = list(keys) if keys else [None] * len(items)
        if self.workers:
            self.start()
            if self.dispatch is not None:
                try:
                    return self.dispatch.submit(self._run, items, named)
                except RuntimeError:  # closed meanwhile
                    pass
        done: Future[list[Analysis]] = Future()
        done.set_result([w if isinstance(w, Analysis) else self._here(w, key)
                         for w, key in zip(items, named, strict=True)])
        return done

    def _here(self, raw: bytes, key: tuple[int, int] | None) -> Analysis:
        self.flight.take_off(key)
        result = _in_process(raw, self.rules, self.store, self.fn)
        self.flight.land(key)
        return result

    def _run(self, work: list[bytes | Analysis],
             keys: list[tuple[int, int] | None]) -> list[Analysis]:
        self.keys = keys
        try:
            results = self._run_all(work)
        except (OSError, ValueError):
            if not self.closing:
                raise
            results = []
        if self.closing:  # workers stopped under a mail are no verdict on it
            raise Temporary("analysis stopped: maild is shutting down")
        return results

    def _run_all(self, work: list[bytes | Analysis]) -> list[Analysis]:
        results: list[Analysis | None] = [w if isinstance(w, Analysis) else None for w in work]
        todo = deque(i for i, r in enumerate(results) if r is None)
        busy: dict[int, tuple[int, float]] = {}  # slot → (mail, deadline)
        while (todo or busy) and not self.closing:
            for slot in range(len(self.pool)):
                if todo and slot not in busy:
                    i = todo.popleft()
                    done = self._send(slot, work[i], self.keys[i])
                    if done is not None:
                        results[i] = done
                    else:
                        busy[slot] = (i, time.monotonic() + self.budget.seconds)
            if busy:
                self._collect(busy, results)
            for i, key in enumerate(self.keys):
                if results[i] is not None:
                    self.flight.land(key, more=bool(todo))
        self.flight.land(None)  # (what came out last is written now)
        return [r if r is not None else stopped(DIED) for r in results]

    def _send(self, slot: int, raw: bytes | Analysis,
              key: tuple[int, int] | None) -> Analysis | None:
        """Hand a mail to the worker in `slot`; an analysis when it died taking it."""
        assert isinstance(raw, bytes)
        worker = self.pool[slot]
        if not worker.ready:  # it may take a while: what came out is written first
            self.flight.land(None)
        try:
            worker.wait_ready()
        except OSError as exc:  # cannot start a worker: not this mail's fault
            if self.closing:  # stopped by close() while starting: _run says Temporary
                return stopped(DIED)
            log.warning("parse worker unavailable (%s); analysing in-process", exc)
            self._replace(slot)
            return self._here(raw, key)
        self.flight.take_off(key)  # the worker is ready: from now on the mail is in it
        try:
            worker.conn.send_bytes(raw)
        except OSError:
            return self._lost(slot)
        return None

    def _collect(self, busy: dict[int, tuple[int, float]],
                 results: list[Analysis | None]) -> None:
        """Wait for the first result or the first deadline; replace stopped workers."""
        conns: dict[object, int] = {self.pool[slot].conn: slot for slot in busy}
        first = min(deadline for _, deadline in busy.values())
        ready = wait([self.pool[slot].conn for slot in busy],
                     timeout=max(0.0, first - time.monotonic()))
        for conn in ready:
            slot = conns[conn]
            i, _ = busy.pop(slot)
            try:
                results[i] = self.pool[slot].conn.recv()
            except (EOFError, OSError):
                results[i] = self._lost(slot)
        now = time.monotonic()
        for slot, (i, deadline) in list(busy.items()):
            if deadline <= now:
                del busy[slot]
                log.warning("parse worker stopped after %g s; starting a new one",
                            self.budget.seconds)
                self._replace(slot)
                results[i] = stopped(self.budget.timeout())

    def _lost(self, slot: int) -> Analysis:
        """The worker in `slot` died on its mail: why, and a new worker."""
        status = self._replace(slot)
        reason = MEMORY if status == MEMORY_EXIT else DIED
        log.warning("parse worker ended (status %s): %s; starting a new one", status, reason)
        return stopped(reason)

    def _replace(self, slot: int) -> int | None:
        status = self.pool[slot].stop()
        if not self.closing:
            self.pool[slot] = self._spawn()
        return status

    def result(self, future: Future[list[Analysis]]) -> list[Analysis]:
        return future.result()

    def close(self) -> None:
        with self.lock:
            self.closing = True
            dispatch, self.dispatch = self.dispatch, None
            pool = list(self.pool)
        if dispatch is not None:
            dispatch.shutdown(wait=False, cancel_futures=True)
        for worker in pool:
            worker.stop()
        self.flight.close()
