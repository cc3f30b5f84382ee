"""The intake's write alone, in this process: what `Intake.process_batch` costs per mail
once the analysis is done (no IMAP, no SMTP, no parse workers).

    python bench/write.py [--mails 1000] [--batch 50] [--db sqlite|postgresql] [--profile N]

The mails are `bench.py`'s generated ones (same seed: 10 % replies to earlier ones). They
are analysed first (untimed), then written in batches of `--batch`, as the daemon does;
the figures are the write's wall time and this process's CPU time per mail (the disk
makes the wall time vary: compare CPU). `--profile N` prints cProfile's N most
expensive functions (cumulative) of the timed part.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import scale  # noqa: E402
from harness import PG_ADMIN_URL, write_config  # noqa: E402
from sqlalchemy import event  # noqa: E402

from bench import LIMITS, database, generate  # noqa: E402
from maild import config as maild_config  # noqa: E402
from maild import db  # noqa: E402
from maild.daemon import build_desk  # noqa: E402
from maild.intake import Intake  # noqa: E402
from maild.mail.fetched import Fetched  # noqa: E402

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)  # a Thursday, support open


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg", default=PG_ADMIN_URL)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    parser.add_argument("--prefill", type=int, default=0, metavar="N",
                        help="N tickets (a fifth open) in the database first")
    parser.add_argument("--slowest", type=int, default=0, metavar="N",
                        help="print the N statements that took longest in all (SQL text)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    previous: list[str] = []
    raws = []
    for n in range(args.mails):
        raw, mid = generate(n, rng, previous)
        raws.append(raw)
        previous.append(mid)
    with tempfile.TemporaryDirectory() as tmp, \
            database(args.db, Path(tmp) / "db", args.pg) as url:
        path = write_config(Path(tmp) / "maild.toml", imap_port=1, user="u", password="p",
                            smtp_port=1, database_url=url, extra=LIMITS)
        settings = maild_config.load(path)
        engine = db.make_engine(settings.database.url)
        db.upgrade(engine)
        if args.prefill:
            scale.prefill(engine, settings, args.prefill, args.prefill // 5, NOW,
                          progress=lambda _: None)
        factory = db.session_factory(engine)
        intake = Intake(factory, build_desk(settings, factory, NOW), "INBOX", 3, lambda: NOW)
        try:
            batches = []
            for start in range(0, len(raws), args.batch):
                mails = [Fetched(start + i + 1, raw, NOW)
                         for i, raw in enumerate(raws[start:start + args.batch])]
                batches.append((mails, intake.analyse(1, mails)))
            for _, future in batches:
                future.result()

            def write() -> int:
                done = 0
                for mails, future in batches:
                    done += sum(o.action == "processed"
                                for o in intake.process_batch(1, mails, future))
                return done

            statements = [0]
            spent: dict[str, list[float]] = {}

            @event.listens_for(engine, "before_cursor_execute")
            def count(conn: Any, *_: object) -> None:
                statements[0] += 1
                conn.info["maild.bench.began"] = time.perf_counter()

            @event.listens_for(engine, "after_cursor_execute")
            def timed(conn: Any, _cursor: object, sql: str, *_: object) -> None:
                took = time.perf_counter() - conn.info.pop("maild.bench.began", 0.0)
                spent.setdefault(" ".join(sql.split())[:160], []).append(took)

            began, cpu_began = time.perf_counter(), time.process_time()
            if args.profile:
                profile = cProfile.Profile()
                done = profile.runcall(write)
            else:
                done = write()
            took = time.perf_counter() - began
            cpu = time.process_time() - cpu_began
        finally:
            intake.close()
            engine.dispose()
    print(f"{args.db}: {args.mails} mails in batches of {args.batch}, {done} processed: "
          f"{took:.2f} s, {took / args.mails * 1000:.2f} ms/mail "
          f"(CPU {cpu / args.mails * 1000:.2f} ms/mail in this process), "
          f"{statements[0] / args.mails:.2f} statements/mail")
    for sql, times in sorted(spent.items(), key=lambda kv: -sum(kv[1]))[:args.slowest]:
        print(f"{sum(times) * 1000:8.1f} ms {len(times):5d}×  {sql}")
    if args.profile:
        out = io.StringIO()
        order = os.environ.get("SORT", "cumulative")
        pstats.Stats(profile, stream=out).sort_stats(order).print_stats(args.profile)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
