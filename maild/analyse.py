"""The pure part of handling a mail (parse, classify, plan its files, read a bounce), in a
small pool of worker processes for batches: parsing is the CPU-heavy step and the daemon's
own process is busy with the database. Single mails (the latency path) and small batches
are analysed in-process; a broken pool falls back to in-process work.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import threading
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from maild.mail import dsn, files
from maild.mail.classify import Verdict, classify
from maild.mail.parse import InboundMail, parse

log = logging.getLogger(__name__)

MIN_POOLED = 4  # smaller batches are analysed in the daemon's own process


@dataclass(frozen=True, slots=True)
class Rules:
    """What the analysis needs to know of us (picklable)."""

    support_address: str
    domain: str
    spam_rule: tuple[str, re.Pattern[str]] | None
    limits: files.Limits


@dataclass(frozen=True, slots=True)
class Analysis:
    parsed: InboundMail | None
    verdict: Verdict | None
    planned: list[files.Planned] | None
    report: dsn.Report | None
    error: str = ""  # "Type: message" when the mail's content broke the analysis
    trace: str = ""  # the traceback, for the log


def analyse(raw: bytes, rules: Rules) -> Analysis:
    """Never raises: a failure is returned as `error` (counted against the mail)."""
    try:
        parsed = parse(raw)
        verdict = classify(parsed, rules.support_address, rules.spam_rule)
        planned = files.plan(parsed.attachments, rules.limits)
        report = dsn.read(raw, rules.domain) if verdict.kind == "bounce" else None
    except Exception as exc:  # a parser bug on this mail's content
        return Analysis(None, None, None, None, f"{type(exc).__name__}: {exc}"[:1900],
                        traceback.format_exc())
    return Analysis(parsed, verdict, planned, report)


def _watch_parent(parent: int) -> None:
    """In a worker: end when the daemon is gone (killed with SIGKILL, it cannot say so)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _analyse_all(raws: list[bytes], rules: Rules) -> list[Analysis]:
    return [analyse(raw, rules) for raw in raws]


class Analyser:
    """Runs `analyse` for batches, in `workers` processes (0: in-process)."""

    def __init__(self, rules: Rules, workers: int) -> None:
        self.rules = rules
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def submit(self, raws: Sequence[bytes]) -> Future[list[Analysis]]:
        """Start analysing `raws`; the result keeps their order."""
        if self.workers and len(raws) >= MIN_POOLED:
            try:
                return self._pool().submit(_analyse_all, list(raws), self.rules)
            except (BrokenProcessPool, RuntimeError, OSError) as exc:
                log.warning("analysis pool unavailable, analysing in-process: %s", exc)
                self.close()
        done: Future[list[Analysis]] = Future()
        done.set_result(_analyse_all(list(raws), self.rules))
        return done

    def result(self, future: Future[list[Analysis]], raws: Sequence[bytes]) -> list[Analysis]:
        try:
            return future.result()
        except BrokenProcessPool as exc:  # a worker died (killed, out of memory)
            log.warning("analysis worker died (%s); analysing the batch in-process", exc)
            self.close()
            return _analyse_all(list(raws), self.rules)

    def _pool(self) -> ProcessPoolExecutor:
        if self.pool is None:
            # spawn: forking a process that runs threads (IMAP, SMTP, scheduler) is unsafe.
            self.pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_watch_parent, initargs=(os.getpid(),))
        return self.pool

    def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
