"""Expected failures: a `StageError` says in one line what to fix (finetune.core.runner
prints it as the stage's `error:` line, without a traceback)."""

from __future__ import annotations


class StageError(Exception):
    """An expected failure, reported to the user as one line that says what to fix."""
