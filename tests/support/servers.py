"""Loopback servers: an HTTP file server, a mirror of one file that can break a transfer
off and honour Range or not (the weights' mirrors, a data set's URL), and a port nothing
listens on."""

from __future__ import annotations

import contextlib
import functools
import http.server
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Self


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on loopback while in the block; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Mirror(http.server.ThreadingHTTPServer):
    """Serves `body` at /`name` (404 elsewhere) on loopback while in a `with` block, and logs
    each request it answers in `requests`: (path, Range header, status). `break_after`: the
    first response for /`name` (every one, with `break_every_time`) sends its headers with
    the full length, then only that many bytes, and closes the connection. `honour_range`:
    answer `Range: bytes=N-` with 206, else always 200 and the whole file."""

    def __init__(self, body: bytes, name: str, break_after: int | None = None,
                 honour_range: bool = True, break_every_time: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _MirrorHandler)
        self.body, self.name = body, name
        self.break_after = break_after
        self.break_every_time = break_every_time
        self.honour_range = honour_range
        self.requests: list[tuple[str, str | None, int]] = []  # (path, Range, status)

    def url(self, name: str | None = None) -> str:
        return f"http://127.0.0.1:{self.server_port}/{self.name if name is None else name}"

    def __enter__(self) -> Self:
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
        self.server_close()


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    server: Mirror

    def do_GET(self) -> None:
        mirror = self.server
        requested = self.headers.get("Range")
        first = all(path != f"/{mirror.name}" for path, _, _ in mirror.requests)
        if self.path != f"/{mirror.name}":
            mirror.requests.append((self.path, requested, 404))
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", requested or "")
        if match and mirror.honour_range:
            start = int(match.group(1))
        size = len(mirror.body)
        if start >= size > 0:  # all of it is there already: what real servers answer
            mirror.requests.append((self.path, requested, 416))
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status = 206 if start else 200
        mirror.requests.append((self.path, requested, status))
        self.send_response(status)
        self.send_header("Content-Length", str(size - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        body = mirror.body[start:]
        if mirror.break_after is not None and (first or mirror.break_every_time):
            body = body[:mirror.break_after]
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True  # closing early is what breaks the transfer off

    def log_message(self, *args: object) -> None:
        pass
