"""Expected failures, reported as one line that says what to fix.

Every expected failure is a `StageError`; `run` prints its message as one
`error:` line instead of a traceback and exits non-zero, so DVC stops the
pipeline there and caches nothing of the failed stage.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class StageError(Exception):
    """An expected failure, reported to the user as one line that says what to fix."""


def run(main: Callable[[], None], error_status: int = 1) -> None:
    """Run a stage's `main`, turning a `StageError` into a one-line message and
    `error_status` (a command may keep 1 for something else, as predict does)."""
    try:
        main()
    except StageError as error:
        # One line, whatever the message holds: callers and CI read stderr's last line.
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(error_status)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
