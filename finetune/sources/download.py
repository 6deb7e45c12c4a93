"""Streaming a URL to a file over HTTP, resuming with Range requests where the transfer
breaks off, and describing a failure in a few words."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import requests
from tqdm import tqdm

from finetune.core.errors import StageError

# Small enough that a transfer breaking off keeps nearly all it received: the HTTP
# client drops the bytes of the read that fails.
CHUNK_BYTES = 1 << 16
TIMEOUT_S = 60  # per connection attempt and per read, not for the whole file
RETRIES = 3  # per mirror, in a row without progress, for transfers that break off
RETRY_DELAY_S = 0.5  # times the failures in a row: resume at once after progress, then back off
# Errors of a transfer that broke off or stalled; anything else is the mirror's answer.
BROKEN = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)")


def size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def content_range(response: requests.Response) -> tuple[int | None, int | None]:
    """(first byte, total size) of a 206 or 416 response's Content-Range, None where unknown."""
    match = CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def download(url: str, destination: Path, stage: str) -> None:
    """Stream `url` into `destination`, resuming with a Range request if the transfer breaks
    (and from what `destination` already holds: a killed run's partial file). `stage` names
    the stage in the lines it prints."""
    reached = False  # has the server answered at all?
    failures = 0  # attempts in a row that added no byte
    while True:
        done = size_of(destination)
        # identity: Range offsets count the bytes as stored, not as gzip would send them.
        headers = {"Accept-Encoding": "identity"}
        if done:
            headers["Range"] = f"bytes={done}-"
        try:
            with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as response:
                reached = True
                start, total = content_range(response)
                if response.status_code == 416 and done:
                    if total == done:  # we already have every byte
                        return
                    destination.unlink()  # the file changed under us: start again
                    continue
                response.raise_for_status()
                if response.status_code == 206 and start != done:
                    raise StageError(f"asked for bytes {done}- and got "
                                     f"'{response.headers.get('Content-Range')}'")
                if response.status_code != 206:
                    done = 0  # the server ignored Range: restart from the first byte
                if total is None or response.status_code != 206:
                    length = content_length(response)
                    total = None if length is None else done + length
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
                if total is not None and size_of(destination) != total:
                    raise requests.ConnectionError(
                        f"got {size_of(destination):,} of {total:,} bytes")
                return
        except BROKEN as error:
            if not reached:
                raise  # refused or silent from the start: the caller moves on to the next mirror
            failures = 0 if size_of(destination) > done else failures + 1
            if failures > RETRIES:
                raise
            print(f"{stage}: transfer broke off ({error.__class__.__name__}), "
                  f"resuming at byte {size_of(destination):,}", file=sys.stderr)
            time.sleep(RETRY_DELAY_S * failures)


def describe(error: Exception) -> str:
    """A short reason: requests' own text nests the whole connection pool's repr."""
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code} {error.response.reason}"
    text = " ".join(str(error).split())
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if isinstance(error, requests.ConnectionError) and errno:
        return errno.group(0).strip()
    return text or error.__class__.__name__
