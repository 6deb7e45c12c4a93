"""When a stage process started, reached each step and exited, for the benchmark: written
only where the environment variable FINETUNE_TIMINGS names a file (scripts/bench.py sets
it), one JSON line per mark, appended. Without it `mark` does nothing, so a stage's
outputs and messages are the same either way.

Marks are wall-clock times (time.time), comparable across processes: with them the
benchmark tells DVC's own time from its stages' (everything outside the stage processes'
lifetimes) and splits train's start-up into its steps. The first mark, "start", is when
the kernel started the process (Linux's /proc/self/stat), before Python itself loaded.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ENV = "FINETUNE_TIMINGS"
START = "start"  # the process's start, before the interpreter (the first mark of each)
EXIT = "exit"  # the last


def process_start() -> float | None:
    """When the kernel started this process, as a time.time() value (to 1/CLK_TCK s), or
    None where /proc cannot say (not Linux)."""
    try:
        # Field 22, in clock ticks since boot; fields counted after the command's closing
        # parenthesis, since the command itself may hold spaces.
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def mark(event: str, at: float | None = None) -> None:
    """Append `event`'s time (now, or `at`) for this process's stage, if FINETUNE_TIMINGS
    names a file."""
    path = os.environ.get(ENV)
    if not path:
        return
    record = {"stage": Path(sys.argv[0]).stem, "pid": os.getpid(), "event": event,
              "time": time.time() if at is None else at}
    # One short write in append mode: lines of processes writing at once stay whole.
    with Path(path).open("a") as stream:
        stream.write(json.dumps(record) + "\n")


def mark_start() -> None:
    """The process's start, as the kernel recorded it (nothing where it cannot say)."""
    started = process_start()
    if started is not None:
        mark(START, started)
