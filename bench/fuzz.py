"""A fuzz run for time and memory (issue 22): N seeded hostile mails through the parse worker.

    .venv/bin/python bench/fuzz.py [--mails 10000] [--seed 22] [--budget 10] [--slowest 10]

Each mail goes alone through `maild.analyse.Analyser` with one warm parse worker under the
daemon's default budget (10 s, 1024 MB address space), as the intake sends it, and the
wall time from hand-over to result is taken per mail. The shapes (seeded, so a run can be
repeated): nesting (multiparts and attached mails, up to 5,000 deep), part counts (up to
200,000), header sizes and counts, encodings (broken base64, long quoted-printable lines,
unknown transfer encodings), charsets (real, legacy, unknown, mislabelled), deep HTML, and
random bytes. Prints the slowest mails, the time percentiles, the worker's peak memory
(VmHWM, VmPeak) and how many were stopped over the budget; exits 1 if any was, or if any
took longer than `--limit` seconds (default 1).
"""

from __future__ import annotations

import argparse
import base64
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

import mimebombs  # noqa: E402

from maild import blobs  # noqa: E402
from maild.analyse import Analyser, Budget, Rules  # noqa: E402
from maild.mail.files import Limits  # noqa: E402

CHARSETS = ["utf-8", "iso-8859-1", "windows-1252", "iso-2022-jp", "shift_jis", "euc-kr",
            "gb2312", "koi8-r", "utf-7", "utf-16", "x-unknown", "us-ascii", "", "utf-8\x00"]
ENCODINGS = ["7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "binary", "bogus", ""]
WORDS = ["Hallo", "Auftrag", "Fehler", "Rechnung", "Bitte", "=?", "?=", "<", ">", "@", "\\",
         "\"", "=", ";", "--", "\t", "日本語", "ü", "\x00", "\u202e", "%", "\r", "\n"]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _head(rng: random.Random, n: int, extra: str = "") -> str:
    sender = rng.choice([
        f"Kunde {n} <kunde{n}@firma.example>", f"Kunde {n} kunde{n}@firma.example",
        "=?ISO-2022-JP?B?GyRCOzNFRBsoQg==?=", "<>", "\"" * 500, f"kunde{n}@firma.example" * 50])
    subject = _text(rng, rng.choice([3, 30, 3000]))
    return (f"From: {sender}\r\nTo: service@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <fuzz{n}.{rng.getrandbits(32)}@firma.example>\r\n{extra}")


def _part(rng: random.Random, size: int) -> str:
    cte = rng.choice(ENCODINGS)
    charset = rng.choice(CHARSETS)
    kind = rng.choice(["text/plain", "text/html", "application/pdf", "application/ms-tnef",
                       "message/rfc822", "image/png", "multipart/mixed", ""])
    body = _text(rng, size)
    if cte == "base64" and rng.random() < 0.7:
        body = base64.b64encode(body.encode("utf-8", "replace")).decode()[:-rng.randint(0, 3)]
    name = rng.choice(["", f'; filename="{_text(rng, 5)}.pdf"', "; filename*=utf-8''%FF%FE"])
    return (f"Content-Type: {kind}; charset=\"{charset}\"{name}\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n\r\n{body}\r\n")


def nesting(rng: random.Random, n: int) -> bytes:
    depth = rng.choice([5, 25, 300, 1500, 5000])
    if rng.random() < 0.5:
        return mimebombs.nested(depth, mid=f"fuzz{n}")
    return mimebombs.forwarded(depth, mid=f"fuzz{n}")


def part_counts(rng: random.Random, n: int) -> bytes:
    count = rng.choice([10, 999, 1001, 5000, 50_000, 200_000])
    if count > 5000 and rng.random() < 0.5:
        maker: Callable[..., bytes] = rng.choice([mimebombs.texts, mimebombs.attachments])
        return maker(count, mid=f"fuzz{n}")
    b = f"b{rng.getrandbits(16)}"
    parts = "".join(f"--{b}\r\n{_part(rng, rng.randint(1, 20))}" for _ in range(min(count, 5000)))
    close = rng.choice([f"--{b}--\r\n", ""])
    return (_head(rng, n, f'Content-Type: multipart/{rng.choice(["mixed", "alternative"])}; '
                          f'boundary="{b}"\r\n\r\n') + parts + close).encode("utf-8", "replace")


def header_sizes(rng: random.Random, n: int) -> bytes:
    how = rng.choice(["long", "many", "words", "refs", "folded"])
    if how == "long":
        extra = f"X-Long: {'a' * rng.choice([10_000, 1_000_000])}\r\n"
    elif how == "many":
        extra = "".join(f"X-H{i}: {i}\r\n" for i in range(rng.choice([1000, 50_000])))
    elif how == "words":
        extra = "Subject: " + " ".join(["=?utf-8?q?=C3=BC?="] * rng.choice([1000, 50_000])) + "\r\n"
    elif how == "refs":
        extra = "References: " + " ".join(f"<r{i}@x>" for i in range(100_000)) + "\r\n"
    else:
        extra = "To: " + ",\r\n ".join(f"a{i}@x.example" for i in range(20_000)) + "\r\n"
    return (_head(rng, n, extra) + "\r\nHallo\r\n").encode("utf-8", "replace")


def encodings(rng: random.Random, n: int) -> bytes:
    b = "enc"
    parts = "".join(f"--{b}\r\n{_part(rng, rng.choice([10, 1000, 50_000]))}"
                    for _ in range(rng.randint(1, 8)))
    if rng.random() < 0.3:  # one quoted-printable line of a megabyte
        parts += (f"--{b}\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: "
                  f"quoted-printable\r\n\r\n{'=C3=BC' * 200_000}\r\n")
    return (_head(rng, n, f'Content-Type: multipart/mixed; boundary="{b}"\r\n\r\n')
            + parts + f"--{b}--\r\n").encode("utf-8", "surrogateescape")


def charsets(rng: random.Random, n: int) -> bytes:
    charset = rng.choice(CHARSETS)
    body = bytes(rng.getrandbits(8) for _ in range(rng.choice([100, 10_000])))
    encoded = f"=?{charset or 'x'}?B?{base64.b64encode(body[:60]).decode()}?="
    return (_head(rng, n, f"Reply-To: {encoded} <r{n}@firma.example>\r\n"
                          f"Content-Type: text/plain; charset={charset}\r\n\r\n").encode()
            + body)


def html(rng: random.Random, n: int) -> bytes:
    depth = rng.choice([100, 10_000, 100_000])
    markup = "<div>" * depth + "Hallo" + "</div>" * rng.choice([0, depth])
    return (_head(rng, n, "Content-Type: text/html; charset=utf-8\r\n\r\n") + markup).encode()


def garbage(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 100, 100_000])))


SHAPES = [nesting, part_counts, header_sizes, encodings, charsets, html, garbage]


def generate(seed: int, n: int) -> bytes:
    """Mail `n` of the run `seed`; one in five as a bounce (the bounce reader parses too)."""
    rng = random.Random(seed * 1_000_003 + n)
    raw = rng.choice(SHAPES)(rng, n)
    if rng.random() < 0.2 and raw.startswith(b"From: "):
        raw = b"From: Mail Delivery System <MAILER-DAEMON@mx.example>\r\nX-Was-" + raw
        raw = raw.replace(b"\r\nSubject: ", b"\r\nSubject: Undelivered Mail ", 1)
    return raw


def _status(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmPeak"):
            found[key] = int(value.split()[0]) // 1024
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mails", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--limit", type=float, default=1.0)
    parser.add_argument("--slowest", type=int, default=10)
    args = parser.parse_args()
    rules = Rules("service@example.com", "example.com", None, Limits(10_000_000, 25_000_000))
    times: list[tuple[float, int, str, int, str]] = []
    stopped: list[tuple[int, str]] = []
    peaks: dict[int, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        analyser = Analyser(rules, 1, blobs.FolderStore(Path(tmp)), Budget(args.budget, 1024))
        analyser.start()
        try:
            for n in range(args.mails):
                raw = generate(args.seed, n)
                shape = SHAPES[random.Random(args.seed * 1_000_003 + n).randrange(len(SHAPES))]
                pid = analyser.pool[0].process.pid
                began = time.perf_counter()
                result = analyser.result(analyser.submit([raw]))[0]
                took = time.perf_counter() - began
                if pid is not None and analyser.pool[0].process.pid == pid:
                    peaks[pid] = _status(pid)
                times.append((took, n, shape.__name__, len(raw), result.error[:60]))
                if result.over_budget:
                    stopped.append((n, result.over_budget))
                if (n + 1) % 1000 == 0:
                    print(f"{n + 1} mails, slowest so far {max(times)[0]:.3f} s", flush=True)
        finally:
            analyser.close()
    return _report(args, times, stopped, peaks)


def _report(args: argparse.Namespace, times: list[tuple[float, int, str, int, str]],
            stopped: list[tuple[int, str]], peaks: dict[int, dict[str, int]]) -> int:
    ordered = sorted(times, reverse=True)
    print(f"\n{len(times)} mails, seed {args.seed}, {sum(t[3] for t in times) / 1e6:.0f} MB")
    print(f"slowest {args.slowest}:")
    for took, n, shape, size, error in ordered[:args.slowest]:
        print(f"  {took:7.3f} s  mail {n:5}  {shape:13} {size / 1e6:6.2f} MB  {error}")
    walls = sorted(t[0] for t in times)
    for q in (0.5, 0.99, 0.999):
        print(f"p{q * 100:g}: {walls[min(len(walls) - 1, int(q * len(walls)))] * 1000:.1f} ms")
    print(f"total {sum(walls):.1f} s in the worker")
    print(f"worker peak memory: VmHWM {max(p.get('VmHWM', 0) for p in peaks.values())} MB, "
          f"VmPeak {max(p.get('VmPeak', 0) for p in peaks.values())} MB "
          f"({len(peaks)} worker process(es))")
    print(f"over the budget: {len(stopped)} {stopped[:10]}")
    slow = [t for t in times if t[0] > args.limit]
    print(f"over {args.limit:g} s: {len(slow)}")
    return 1 if stopped or slow else 0


if __name__ == "__main__":
    sys.exit(main())
