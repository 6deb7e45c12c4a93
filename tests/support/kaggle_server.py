"""A loopback stand-in for the Kaggle API, close enough for the real `kaggle` client.

What `KaggleApi().authenticate()` + `competition_download_files()` (kaggle 2.2.5,
kagglesdk) do with legacy credentials, and what this server answers:

1. POST /api/v1/competitions.CompetitionApiService/DownloadDataFiles with the JSON
   body {"competitionName": ...} and HTTP Basic auth (username:key). The service
   answers 401 (bad credentials), 404 (unknown competition), 403 (rules not
   accepted), each with a JSON body {"code": ..., "message": ...}, or a 302
   redirect to a signed storage URL ending in "<competition>.zip".
2. GET on that URL (another host, so the client drops the Authorization header,
   as it does for Google Cloud Storage). Storage sends Content-Length,
   Accept-Ranges, ETag and Last-Modified, and honours `Range: bytes=N-` (206) with
   `If-Range`; the client uses them to retry a broken transfer in-process and to
   resume a partial file on its next run (after a `.kaggle-partial` marker).

`authenticate()` itself makes no request with a username and key: it only checks
that they are set. With `KAGGLE_API_ENVIRONMENT=LOCALHOST` the client calls
http://localhost (port 80); `env()` sets HTTP_PROXY to this server, so those calls
(and the storage host's) arrive here as absolute-URI proxy requests on any port.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import sys
import threading
import zipfile
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

COMPETITION = "dogs-vs-cats-redux-kernels-edition"
FAKE_KEY = "f4k3-k4ggl3-k3y-0123456789abcdef"  # distinctive, so tests can check it never leaks
DOWNLOAD_ALL = "/api/v1/competitions.CompetitionApiService/DownloadDataFiles"
STORAGE_HOST = "storage.localhost"  # stands in for storage.googleapis.com
STORAGE_PREFIX = "/kaggle-competitions-data/"
SIGNATURE = "fake-signature"  # the signed URL's token; storage answers 403 without it
CHUNK = 64 * 1024
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip entry timestamps: byte-identical archives per build


def build_competition_bundle(
    sample_dir: Path,
    dest: Path,
    per_class: int | None = None,
    test_images: int | None = None,
    competition: str = COMPETITION,
) -> Path:
    """Write dest/<competition>.zip laid out like Kaggle's download, from a folder in the
    layout of Kaggle's unpacked data (train/, test/, sample_submission.csv), such as the
    drawn sample the tests make (conftest's `sample_dir`, `make_sample`).

    It holds train.zip (train/cat.N.jpg, train/dog.N.jpg: the first `per_class` of
    each class), test.zip (test/N.jpg: the first `test_images`) and
    sample_submission.csv with the rows of those test ids. None takes all photos.
    """
    sample_dir, dest = Path(sample_dir), Path(dest)

    def number(path: Path) -> int:  # cat.12.jpg -> 12, 7.jpg -> 7
        return int(path.stem.rsplit(".", 1)[-1])

    train: list[Path] = []
    for label in ("cat", "dog"):
        train += sorted((sample_dir / "train").glob(f"{label}.*.jpg"), key=number)[:per_class]
    test = sorted((sample_dir / "test").glob("*.jpg"), key=number)[:test_images]
    if not train or not test:
        raise FileNotFoundError(f"no train/ or test/ photos in {sample_dir}")

    test_ids = {str(number(path)) for path in test}
    with (sample_dir / "sample_submission.csv").open(newline="") as stream:
        rows = list(csv.reader(stream))
    submission = io.StringIO()
    csv.writer(submission, lineterminator="\n").writerows(
        [rows[0]] + [row for row in rows[1:] if row and row[0] in test_ids]
    )

    dest.mkdir(parents=True, exist_ok=True)
    bundle = dest / f"{competition}.zip"
    with zipfile.ZipFile(bundle, "w") as outer:
        for name, folder, photos in (("train.zip", "train", train), ("test.zip", "test", test)):
            archive = io.BytesIO()
            with zipfile.ZipFile(archive, "w") as inner:  # JPEGs: stored, not deflated
                for photo in photos:
                    inner.writestr(
                        zipfile.ZipInfo(f"{folder}/{photo.name}", FIXED_TIME), photo.read_bytes()
                    )
            outer.writestr(zipfile.ZipInfo(name, FIXED_TIME), archive.getvalue())
        info = zipfile.ZipInfo("sample_submission.csv", FIXED_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        outer.writestr(info, submission.getvalue())
    return bundle


class KaggleServer:
    """Serve one competition bundle the way the Kaggle API does; use as a context manager.

    `requests` logs (method, path, status) of every request, in order.
    `break_after_bytes`: the first file transfer drops the connection after that
    many bytes (the client retries with a Range request).
    `hang_after_bytes`: every file transfer stalls after that many bytes until the
    server stops; `hung` is set once one did (for killing a client mid-download).
    """

    def __init__(
        self,
        bundle: Path,
        competition: str = COMPETITION,
        username: str = "tester",
        key: str = FAKE_KEY,
        rules_accepted: bool = True,
        break_after_bytes: int | None = None,
        hang_after_bytes: int | None = None,
    ) -> None:
        self.bundle = Path(bundle)
        self.competition = competition
        self.username = username
        self.key = key
        self.rules_accepted = rules_accepted
        self.break_after_bytes = break_after_bytes
        self.hang_after_bytes = hang_after_bytes
        self.requests: list[tuple[str, str, int]] = []
        self.hung = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._transfers = 0
        self.size = self.bundle.stat().st_size
        # Like Cloud Storage: a quoted MD5 ETag and an HTTP-date Last-Modified.
        self.etag = f'"{hashlib.md5(self.bundle.read_bytes()).hexdigest()}"'
        self.last_modified = formatdate(self.bundle.stat().st_mtime, usegmt=True)
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.kaggle = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> KaggleServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging transfers
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> KaggleServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def env(self, username: str | None = None, key: str | None = None) -> dict[str, str]:
        """Environment that points the kaggle client at this server with these credentials."""
        return {
            **proxy_env(self.port),
            "KAGGLE_USERNAME": self.username if username is None else username,
            "KAGGLE_KEY": self.key if key is None else key,
        }

    def _log(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    def _next_transfer(self) -> int:
        with self._lock:
            self._transfers += 1
            return self._transfers


def proxy_env(port: int) -> dict[str, str]:
    """Route the kaggle client's http://localhost calls through 127.0.0.1:<port>.

    Both spellings are set because requests reads either, and NO_PROXY replaces any
    inherited value (one naming "localhost" would bypass the proxy).
    """
    proxy = f"http://127.0.0.1:{port}"
    return {
        "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
        "HTTP_PROXY": proxy,
        "http_proxy": proxy,
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled transfer must not keep the test process alive

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients drop connections on purpose (a download abandoned for a resume,
        # a killed process): not worth a traceback in the test output.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with Content-Length, like the real service

    @property
    def kaggle(self) -> KaggleServer:
        return self.server.kaggle  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean; `KaggleServer.requests` has the log

    def _target(self) -> tuple[str, str, dict[str, list[str]]]:
        """(host, path, query) of an absolute proxy request or a plain relative one."""
        url = urlsplit(self.path)
        host = url.hostname or self.headers.get("Host", "").split(":")[0]
        return host, url.path, parse_qs(url.query)

    def do_POST(self) -> None:
        path = self._target()[1]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path != DOWNLOAD_ALL:
            return self._json(404, path, "Not found")
        if not self._authorized():
            return self._json(401, path, "Unauthenticated")
        try:
            competition = json.loads(body or b"{}").get("competitionName")
        except (ValueError, AttributeError):
            return self._json(400, path, "Invalid request body")
        if competition != self.kaggle.competition:
            return self._json(404, path, f"Competition '{competition}' not found")
        if not self.kaggle.rules_accepted:
            return self._json(
                403, path, "You must accept this competition's rules before downloading files"
            )
        location = (
            f"http://{STORAGE_HOST}{STORAGE_PREFIX}{competition}.zip"
            f"?Expires=4102444800&Signature={SIGNATURE}"
        )
        self.kaggle._log("POST", path, 302)
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        host, path, query = self._target()
        kaggle = self.kaggle
        if host != STORAGE_HOST or path != f"{STORAGE_PREFIX}{kaggle.competition}.zip":
            return self._json(404, path, "Not found")
        if query.get("Signature") != [SIGNATURE]:
            return self._json(403, path, "Invalid signature")

        start, end = 0, kaggle.size - 1
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        # If-Range: serve the range only if the client's copy is of this very object.
        partial = match is not None and if_range in (None, kaggle.etag, kaggle.last_modified)
        if partial:
            start = int(match.group(1))
            end = min(int(match.group(2) or end), end)
            if start > end:
                kaggle._log("GET", path, 416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{kaggle.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        status = 206 if partial else 200
        length = end - start + 1
        kaggle._log("GET", path, status)
        self.send_response(status)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", kaggle.etag)
        self.send_header("Last-Modified", kaggle.last_modified)
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{kaggle.size}")
        self.end_headers()

        transfer = kaggle._next_transfer()
        limit = length
        if kaggle.break_after_bytes is not None and transfer == 1:
            limit = min(limit, kaggle.break_after_bytes)
        if kaggle.hang_after_bytes is not None:
            limit = min(limit, kaggle.hang_after_bytes)
        with kaggle.bundle.open("rb") as stream:
            stream.seek(start)
            sent = 0
            while sent < limit:
                data = stream.read(min(CHUNK, limit - sent))
                self.wfile.write(data)
                sent += len(data)
        self.wfile.flush()
        if limit < length:
            if kaggle.hang_after_bytes is not None:
                kaggle.hung.set()
                kaggle._stopping.wait()
            self.close_connection = True  # the client sees a short body: a broken transfer

    def _authorized(self) -> bool:
        expected = f"{self.kaggle.username}:{self.kaggle.key}".encode()
        header = self.headers.get("Authorization", "")
        return header == "Basic " + base64.b64encode(expected).decode()

    def _json(self, code: int, path: str, message: str) -> None:
        """An error the way the service sends it: JSON with "code" and "message"."""
        self.kaggle._log(self.command, path, code)
        body = json.dumps({"code": code, "message": message}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
