"""Tests of stages/fetch_weights.py: real downloads from loopback HTTP mirrors.

Each test runs the stage as DVC does (`python -m stages.fetch_weights` in a project
folder) against servers on 127.0.0.1: one that can break a transfer off, honour or
ignore Range, and logs every request it answers.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import assert_stage_error, md5, run_stage, write_params

WEIGHTS = "models/backbone_notop.h5"
NAME = "weights_notop.h5"
BODY = os.urandom(1 << 20)  # 1 MiB: several of the stage's 64 KiB chunks
BODY_MD5 = hashlib.md5(BODY).hexdigest()


class Mirror(http.server.ThreadingHTTPServer):
    """Serves BODY at /NAME (404 elsewhere). `break_after`: the first response sends its
    headers with the full length, then only that many bytes, and closes the connection.
    `honour_range`: answer `Range: bytes=N-` with 206, else always 200 and the whole file."""

    def __init__(self, break_after: int | None = None, honour_range: bool = True,
                 break_every_time: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), MirrorHandler)
        self.break_after = break_after
        self.break_every_time = break_every_time
        self.honour_range = honour_range
        self.requests: list[tuple[str, str | None, int]] = []  # (path, Range, status)

    def url(self, name: str = NAME) -> str:
        return f"http://127.0.0.1:{self.server_port}/{name}"


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    server: Mirror

    def do_GET(self) -> None:
        mirror = self.server
        requested = self.headers.get("Range")
        first = all(path != f"/{NAME}" for path, _, _ in mirror.requests)
        if self.path != f"/{NAME}":
            mirror.requests.append((self.path, requested, 404))
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", requested or "")
        if match and mirror.honour_range:
            start = int(match.group(1))
        status = 206 if start else 200
        mirror.requests.append((self.path, requested, status))
        self.send_response(status)
        self.send_header("Content-Length", str(len(BODY) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
        self.end_headers()
        body = BODY[start:]
        if mirror.break_after is not None and (first or mirror.break_every_time):
            body = body[:mirror.break_after]
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True  # closing early is what breaks the transfer off

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator:
    servers: list[Mirror] = []

    def start(**options) -> Mirror:
        mirror = Mirror(**options)
        threading.Thread(target=mirror.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(mirror)
        return mirror

    yield start
    for mirror in servers:
        mirror.shutdown()
        mirror.server_close()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/{NAME}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    return project


def fetch(project: Path, urls: list[str], weights_hash: str = f"md5:{BODY_MD5}"):
    write_params(project, weights_urls=urls, weights_hash=weights_hash)
    return run_stage("fetch_weights", project, timeout=60)


def assert_fetched(result: subprocess.CompletedProcess, project: Path) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert (project / WEIGHTS).read_bytes() == BODY
    assert [p.name for p in (project / "models").iterdir()] == ["backbone_notop.h5"], "no .part"


def assert_fails(result: subprocess.CompletedProcess, project: Path, *hints: str) -> str:
    last = assert_stage_error(result, *hints)
    assert not (project / WEIGHTS).exists()
    assert not list(project.glob("models/*")), "no .part file left"
    return last


def test_download(project: Path, serve) -> None:
    mirror = serve()
    result = fetch(project, [mirror.url()])
    assert_fetched(result, project)
    assert mirror.requests == [(f"/{NAME}", None, 200)]
    assert f"md5 {BODY_MD5}" in result.stdout


def test_empty_hash_skips_the_check(project: Path, serve) -> None:
    mirror = serve()
    assert_fetched(fetch(project, [mirror.url()], weights_hash=""), project)


def test_checksum_mismatch(project: Path, serve) -> None:
    (project / "models").mkdir()
    (project / WEIGHTS).write_bytes(BODY)  # an earlier run's file must not survive a failure
    mirror = serve()
    expected = "0" * 32
    result = fetch(project, [mirror.url()], weights_hash=f"md5:{expected}")
    assert_fails(result, project, mirror.url(), BODY_MD5, expected,
                 f"set weights_hash: md5:{BODY_MD5} in params.yaml")


def test_dead_mirrors_then_a_good_one(project: Path, serve) -> None:
    mirror = serve()
    refused, missing = closed_port_url(), mirror.url("no-such-file.h5")
    result = fetch(project, [refused, missing, mirror.url()])
    assert_fetched(result, project)
    assert mirror.requests == [("/no-such-file.h5", None, 404), (f"/{NAME}", None, 200)]
    assert f"{refused} failed" in result.stderr and f"{missing} failed" in result.stderr


def test_all_mirrors_fail(project: Path, serve) -> None:
    mirror = serve()
    refused, missing, local = closed_port_url(), mirror.url("gone.h5"), "nowhere/weights.h5"
    last = assert_fails(fetch(project, [refused, missing, local]), project,
                        "could not fetch the backbone weights from any of weights_urls")
    assert re.search(rf"{re.escape(refused)}: [^;]*Connection refused", last), last
    assert re.search(rf"{re.escape(missing)}: HTTP 404", last), last
    assert re.search(rf"{re.escape(local)}: [^;]*No such file", last), last


def test_unsupported_scheme(project: Path) -> None:
    assert_fails(fetch(project, ["ftp://example.com/weights.h5"]), project,
                 "ftp://example.com/weights.h5: only http://, https:// and file://")


@pytest.mark.parametrize("form", ["relative", "file-url"])
def test_local_path(project: Path, form: str) -> None:
    local = project / "offline" / NAME
    local.parent.mkdir()
    local.write_bytes(BODY)
    source = f"offline/{NAME}" if form == "relative" else f"file://{local}"
    assert_fetched(fetch(project, [source]), project)
    assert local.read_bytes() == BODY, "a local source is copied, never moved"


def test_broken_transfer_is_resumed(project: Path, serve) -> None:
    broken_at = 300_000
    mirror = serve(break_after=broken_at)
    result = fetch(project, [mirror.url()])
    assert_fetched(result, project)
    assert len(mirror.requests) == 2, mirror.requests
    assert mirror.requests[0] == (f"/{NAME}", None, 200)
    _, requested, status = mirror.requests[1]
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", requested or "").group(1))
    # The client keeps what it wrote before the break: at most its last read is lost.
    assert 0 < resumed_at <= broken_at and status == 206


def test_server_ignoring_range_restarts_from_zero(project: Path, serve) -> None:
    mirror = serve(break_after=300_000, honour_range=False)
    result = fetch(project, [mirror.url()])
    assert_fetched(result, project)
    assert len(mirror.requests) == 2, mirror.requests
    _, requested, status = mirror.requests[1]
    assert requested and requested.startswith("bytes=") and status == 200
    assert md5(project / WEIGHTS) == BODY_MD5


def test_transfer_that_always_breaks_gives_up(project: Path, serve) -> None:
    flaky = serve(break_after=0, break_every_time=True)  # headers, then nothing
    assert_fails(fetch(project, [flaky.url()]), project, flaky.url())
    assert 2 <= len(flaky.requests) <= 5, "retried a few times, then moved on"
