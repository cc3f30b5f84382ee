"""Progress of long work: a line on a terminal, nothing in a pipe."""

from __future__ import annotations

import io

from maild.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_sees_the_count_and_the_line_ends():
    out = Terminal()
    with Progress("copying stored files", 3, out) as progress:
        for _ in range(3):
            progress.step()
    shown = out.getvalue()
    assert shown.startswith("\rcopying stored files 1/3") and shown.endswith(" 3/3\n")


def test_a_pipe_sees_nothing():
    out = io.StringIO()  # not a terminal: a script reads the command's output
    with Progress("copying stored files", 3, out) as progress:
        progress.step(3)
    assert out.getvalue() == ""
