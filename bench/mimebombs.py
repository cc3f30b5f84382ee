"""MIME bombs of issue 22, generated: many attachment parts, many text parts, deep nesting.

Used by tests/test_mime_bombs.py and bench/fuzz.py; `python bench/mimebombs.py` prints how
long the parse worker's analysis of each takes in this process.
"""

from __future__ import annotations

import base64

HEAD = ("From: Anna Berger <anna@kunde.example>\r\nTo: service@example.com\r\n"
        "Subject: {subject}\r\nMessage-ID: <{mid}@kunde.example>\r\nMIME-Version: 1.0\r\n")


def attachments(n: int = 50_000, mid: str = "bomb-files") -> bytes:
    """A ~5.4 MB mail of `n` tiny attachment parts after one text part."""
    data = base64.b64encode(b"%PDF-1.4 x\n").decode()
    parts = ["--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
             "Hallo, anbei die Belege.\r\n"]
    parts += [f"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
              f'Content-Disposition: attachment; filename="b{i}.pdf"\r\n\r\n{data}\r\n'
              for i in range(n)]
    return (HEAD.format(subject="Belege", mid=mid)
            + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            + "".join(parts) + "--b--\r\n").encode()


def texts(n: int = 200_000, mid: str = "bomb-texts") -> bytes:
    """`n` short text parts."""
    parts = [f"--t\r\nContent-Type: text/plain\r\n\r\nZeile {i}\r\n" for i in range(n)]
    return (HEAD.format(subject="Viele Teile", mid=mid)
            + 'Content-Type: multipart/mixed; boundary="t"\r\n\r\n'
            + "".join(parts) + "--t--\r\n").encode()


def nested(depth: int = 3_000, mid: str = "bomb-nested") -> bytes:
    """`depth` multiparts nested in each other around one text part."""
    opening = "".join(f'--n{i}\r\nContent-Type: multipart/mixed; boundary="n{i + 1}"\r\n\r\n'
                      for i in range(depth))
    closing = "".join(f"--n{i}--\r\n" for i in reversed(range(depth + 1)))
    return (HEAD.format(subject="Verschachtelt", mid=mid)
            + 'Content-Type: multipart/mixed; boundary="n0"\r\n\r\n' + opening
            + f"--n{depth}\r\nContent-Type: text/plain\r\n\r\nHallo tief drinnen\r\n"
            + closing).encode()


def forwarded(depth: int = 3_000, mid: str = "bomb-forwarded") -> bytes:
    """`depth` attached mails (message/rfc822) nested in each other, no boundary at all."""
    return (HEAD.format(subject="Weitergeleitet", mid=mid)
            + "Content-Type: message/rfc822\r\n\r\nFrom: b@kunde.example\r\n" * depth
            + "\r\nHallo ganz innen\r\n").encode()


SHAPES = {"attachments": attachments, "texts": texts, "nested": nested,
          "forwarded": forwarded}

if __name__ == "__main__":
    import sys
    import time
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent))
    from maild.analyse import Rules, analyse
    from maild.mail.files import Limits

    rules = Rules("service@example.com", "example.com", None, Limits(10_000_000, 25_000_000))
    for name, make in SHAPES.items():
        raw = make()
        began = time.perf_counter()
        result = analyse(raw, rules)
        took = time.perf_counter() - began
        print(f"{name:12} {len(raw) / 1e6:5.1f} MB  {took:6.3f} s  "
              f"error={result.error[:60]!r} parts_left_out="
              f"{result.parsed.parts_left_out if result.parsed else '-'}")
