"""Running a command's `main`: a `StageError` becomes one `error:` line on stderr and a
non-zero exit, so DVC stops the pipeline there and caches nothing of the failed stage."""

from __future__ import annotations

import sys
from collections.abc import Callable

from finetune.core import timings
from finetune.core.errors import StageError


def run_main(main: Callable[[], None], error_status: int = 1) -> None:
    """Run `main`, turning a `StageError` into a one-line message and `error_status` (a
    command may keep 1 for something else, as predict does). The benchmark's marks (start,
    main: the imports done, exit) are written only where it asks (finetune.core.timings)."""
    timings.mark_start()
    timings.mark("main")
    try:
        main()
    except StageError as error:
        # One line, whatever the message holds: callers and CI read stderr's last line.
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(error_status)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        timings.mark(timings.EXIT)
