"""Stage fetch_weights: download the backbone's pretrained weights and verify them.

Mirrors in `weights_urls` are tried in order; an entry that is not an http(s)
URL is a local file, for offline use. The file reaches models/backbone_notop.h5
only once it is complete and its checksum matches `weights_hash`.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import requests
from tqdm import tqdm

from stages.common import (
    WEIGHTS_FILE,
    StageError,
    atomic_output,
    file_digest,
    load_params,
    parse_hash,
    remove,
    run,
)

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60  # per connection attempt and per read, not for the whole file
RETRIES = 3  # per mirror, for transfers that break off


def download(url: str, destination: Path) -> None:
    """Stream `url` into `destination`, resuming with a Range request if the transfer breaks."""
    attempt = 0
    while True:
        done = destination.stat().st_size if destination.exists() else 0
        headers = {"Range": f"bytes={done}-"} if done else {}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as response:
                if response.status_code == 416 and done:  # we already have every byte
                    return
                response.raise_for_status()
                if done and response.status_code != 206:  # the server ignored Range: restart
                    done = 0
                total = done + int(response.headers.get("Content-Length", 0)) or None
                with (
                    destination.open("ab" if done else "wb") as stream,
                    tqdm(
                        total=total,
                        initial=done,
                        unit="B",
                        unit_scale=True,
                        desc=Path(url).name,
                        file=sys.stderr,
                        mininterval=0.5 if sys.stderr.isatty() else 30,  # keep CI logs short
                    ) as progress,
                ):
                    for chunk in response.iter_content(CHUNK_BYTES):
                        stream.write(chunk)
                        progress.update(len(chunk))
                if total is not None and destination.stat().st_size < total:
                    raise requests.ConnectionError("connection closed before the end of the file")
                return
        except (requests.ConnectionError, requests.Timeout) as error:
            received = destination.stat().st_size if destination.exists() else 0
            attempt += 1
            if received <= done or attempt > RETRIES:
                raise  # refused, silent or stuck: the caller moves on to the next mirror
            print(f"fetch_weights: transfer broke off ({error.__class__.__name__}), "
                  f"retry {attempt}/{RETRIES}", file=sys.stderr)
            time.sleep(min(2**attempt, 10))


def fetch(source: str, destination: Path) -> None:
    """Copy a local file or download a URL to `destination`."""
    if source.startswith(("http://", "https://")):
        download(source, destination)
    else:
        shutil.copyfile(Path(source.removeprefix("file://")).expanduser(), destination)


def fetch_verified(source: str, destination: Path, algorithm: str, expected: str) -> str:
    """Fetch `source` to `destination` and return its digest; raise StageError on a mismatch."""
    fetch(source, destination)
    actual = file_digest(destination, algorithm)
    if expected and actual != expected:
        raise StageError(
            f"{algorithm} is {actual}, expected {expected} (if you trust this file, "
            f"set weights_hash: {algorithm}:{actual} in params.yaml)"
        )
    return actual


def main() -> None:
    params = load_params()
    expected_hash: str = params["weights_hash"]
    algorithm, expected = parse_hash(expected_hash) if expected_hash else ("sha256", "")

    remove(WEIGHTS_FILE)  # a stale file must not pass for this run's download
    failures = []
    for source in map(str, params["weights_urls"]):
        print(f"fetch_weights: fetching {source}")
        try:
            # A failure inside the block deletes the partial file: nothing reaches
            # WEIGHTS_FILE unless it is complete and verified.
            with atomic_output(WEIGHTS_FILE) as partial:
                actual = fetch_verified(source, partial, algorithm, expected)
                size = partial.stat().st_size
        except (OSError, requests.RequestException, StageError) as error:
            reason = str(error).splitlines()[0] if str(error) else repr(error)
            print(f"fetch_weights: {source} failed: {reason}", file=sys.stderr)
            failures.append(f"{source}: {reason}")
            continue
        print(f"fetch_weights: wrote {WEIGHTS_FILE} ({size:,} bytes, {algorithm} {actual})")
        return
    raise StageError("could not fetch the backbone weights from any of weights_urls: "
                     + "; ".join(failures))


if __name__ == "__main__":
    run(main)
