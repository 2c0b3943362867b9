"""A bound on a whole benchmark that still cleans up: when it runs out (SIGALRM), or someone stops the benchmark
(SIGTERM), SystemExit is raised, so its `with` blocks and `finally` stop what it started (test nodes, a Ray head,
servers). The signals' default action ends the process on the spot and leaves all of that running."""

from __future__ import annotations

import signal


def bound(seconds: int) -> None:
    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(f"benchmark stopped by {signal.Signals(signum).name} (its bound is {seconds} s)")

    signal.signal(signal.SIGALRM, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.alarm(seconds)
