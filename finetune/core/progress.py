"""Progress of a long step on stderr, in whole lines, so it reads the same in a
terminal, a CI log and `dvc queue logs` (a progress bar's carriage returns do not)."""

from __future__ import annotations

import sys
import time

EVERY_S = 5.0  # at most one line per this many seconds, besides the last


class Progress:
    """`update(n)` after each chunk of work; prints "what: done/total (rate/s)" lines."""

    def __init__(self, what: str, total: int, unit: str = "images", every_s: float = EVERY_S
                 ) -> None:
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.done >= self.total or now - self.last >= self.every_s:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            print(f"{self.what}: {self.done:,}/{self.total:,} {self.unit} "
                  f"({self.done / max(self.total, 1):.0%}, {rate:,.0f} {self.unit}/s)",
                  file=sys.stderr, flush=True)
