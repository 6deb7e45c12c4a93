"""The backbone's pretrained weights: mirrors in `weights_urls` are tried in order (an
entry that is not an http(s) URL is a local file, for offline use), and the file reaches
models/backbone_notop.h5 only once it is complete and its checksum matches `weights_hash`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import requests

from finetune.core.atomic import atomic_output, remove
from finetune.core.errors import StageError
from finetune.core.params import URL_SCHEME
from finetune.core.paths import WEIGHTS_FILE, project_path
from finetune.sources.checksum import check_digest
from finetune.sources.download import describe, download


def fetch(source: str, destination: Path) -> None:
    """Copy a local file or download a URL to `destination`."""
    if source.startswith(("http://", "https://")):
        download(source, destination, stage="fetch_weights")
    elif URL_SCHEME.match(source) and not source.startswith("file://"):
        raise StageError("only http://, https:// and file:// URLs or local paths are supported")
    else:
        shutil.copyfile(project_path(source.removeprefix("file://")), destination)


def fetch_verified(source: str, destination: Path, algorithm: str, expected: str) -> str:
    """Fetch `source` to `destination` and return its digest; raise StageError on a mismatch."""
    fetch(source, destination)
    return check_digest(destination, algorithm, expected, "weights_hash")


def fetch_first(sources: list[str], algorithm: str, expected: str) -> None:
    """Write the first of `sources` that can be fetched and verified to WEIGHTS_FILE."""
    remove(WEIGHTS_FILE)  # a stale file must not pass for this run's download
    failures = []
    for source in sources:
        print(f"fetch_weights: fetching {source}")
        try:
            # A failure inside the block deletes the partial file: nothing reaches
            # WEIGHTS_FILE unless it is complete and verified.
            with atomic_output(WEIGHTS_FILE) as partial:
                actual = fetch_verified(source, partial, algorithm, expected)
                size = partial.stat().st_size
        except (OSError, requests.RequestException, StageError) as error:
            reason = describe(error)
            print(f"fetch_weights: {source} failed: {reason}", file=sys.stderr)
            failures.append(f"{source}: {reason}")
            continue
        print(f"fetch_weights: wrote {WEIGHTS_FILE} ({size:,} bytes, {algorithm} {actual})")
        return
    raise StageError("could not fetch the backbone weights from any of weights_urls: "
                     + "; ".join(failures))
