"""Progress of long command-line work on a terminal: "copying stored files 1200/5000".

One line on stderr, rewritten at most every half second and ended when the work is
done; nothing at all when stderr is not a terminal (a script, a timer, the journal), so
output that is read stays what it was. The work calls `step()`; it knows nothing of
terminals.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

INTERVAL = 0.5  # seconds between two updates of the line


class Progress:
    def __init__(self, what: str, total: int | None = None, stream: TextIO | None = None,
                 *, shown: bool | None = None) -> None:
        self.what, self.total, self.done = what, total, 0
        self.stream = stream or sys.stderr
        self.shown = self.stream.isatty() if shown is None else shown
        self._last = 0.0
        self._written = False

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.shown and time.monotonic() - self._last >= INTERVAL:
            self._write()

    def finish(self) -> None:
        """End the line (when one was written)."""
        if self._written:
            self._write()
            self.stream.write("\n")
            self.stream.flush()

    def _write(self) -> None:
        self._last = time.monotonic()
        of = f"/{self.total}" if self.total is not None else ""
        self.stream.write(f"\r{self.what} {self.done}{of}")
        self.stream.flush()
        self._written = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.finish()


QUIET = Progress("", shown=False)  # for callers that show nothing
