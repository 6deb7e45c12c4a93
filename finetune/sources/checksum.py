"""A fetched file against the checksum params.yaml gives for it: `weights_hash` for the
weights, `data_source_hash` for a data set downloaded from a URL ("algorithm:hex", split
by finetune.core.params.parse_hash)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from finetune.core.errors import StageError


def check_digest(path: Path, algorithm: str, expected: str, key: str) -> str:
    """The `algorithm` digest of `path`; where `expected` is set and differs, a StageError
    naming both and the value of `key` that would accept the file. The message says the
    file was deleted: the caller deletes it, so that a rerun fetches it again."""
    with path.open("rb") as stream:
        actual = hashlib.file_digest(stream, algorithm).hexdigest()
    if expected and actual != expected:
        raise StageError(
            f"{algorithm} is {actual}, expected {expected}; deleted it (if you trust this file, "
            f"set {key}: {algorithm}:{actual} in params.yaml)"
        )
    return actual
