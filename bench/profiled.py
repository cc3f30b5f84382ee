"""`maild` under yappi, for `make bench` with `--profile-daemon`: every thread of the daemon
(intake, outbox, event loop) measured in CPU time; the stats are saved at exit as a pstats
file that `bench.py` prints. The parse worker is not profiled. yappi is not a dependency
of maild: `pip install yappi`."""

from __future__ import annotations

import os
import sys


def profiled() -> int:
    import yappi

    from maild.cli import main

    yappi.set_clock_type("cpu")
    yappi.start()
    try:
        return main(sys.argv[1:])
    finally:
        yappi.stop()
        yappi.get_func_stats().save(os.environ["MAILD_PROFILE_OUT"], type="pstat")


if __name__ == "__main__":  # the parse worker (spawned) imports this file again
    raise SystemExit(profiled())
