"""The competition's files from Kaggle, with the official kaggle client: credentials
checked before anything slow, its failures mapped to one line that says what to do."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from finetune.core.atomic import remove
from finetune.core.errors import StageError
from finetune.core.paths import DOWNLOAD_DIR
from finetune.sources.local import extract_bundle

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi


def state(path: Path) -> tuple[int, int] | None:
    """(size, mtime) of a file, to tell whether the client wrote to it."""
    return (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None


def rules_url(competition: str) -> str:
    return f"https://www.kaggle.com/competitions/{competition}/rules"


def kaggle_api(competition: str) -> KaggleApi:
    """The kaggle client, authenticated: fails at once, before anything slow, without
    credentials. (It only checks they are set; Kaggle checks them at the download.)"""
    try:
        # Importing kaggle already authenticates, and without credentials both the
        # import and authenticate() print a page of help (then exit): keep it out.
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except SystemExit:
        raise StageError(
            "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY or put kaggle.json in "
            f"~/.kaggle/ (from https://www.kaggle.com/settings), and accept the rules at "
            f"{rules_url(competition)}"
        ) from None
    return api


def download(api: KaggleApi, competition: str) -> Path:
    """Download the competition's bundle with the kaggle client; map its failures to one line."""
    rules = rules_url(competition)
    bundle = DOWNLOAD_DIR / f"{competition}.zip"  # the client names it after the competition
    print(f"fetch_data: downloading {competition} from Kaggle", flush=True)
    DOWNLOAD_DIR.mkdir(parents=True, exist_ok=True)
    before = state(bundle)
    try:
        # The client's progress bar helps on a terminal and floods a log.
        api.competition_download_files(
            competition, path=str(DOWNLOAD_DIR), quiet=not sys.stderr.isatty()
        )
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else None
        messages = {
            401: "Kaggle rejected the credentials (HTTP 401): check KAGGLE_USERNAME and "
            "KAGGLE_KEY or ~/.kaggle/kaggle.json (a new token is at https://www.kaggle.com/settings)",
            403: f"Kaggle refused the download (HTTP 403): accept the competition rules at {rules}",
            404: f"Kaggle has no competition '{competition}' (HTTP 404): "
            "check 'competition' in params.yaml",
        }
        other = f"Kaggle answered HTTP {status} for {competition}: try again later"
        raise StageError(messages.get(status, other)) from None
    except (requests.ConnectionError, requests.Timeout, ValueError) as error:
        # The client retries a broken transfer 5 times, then raises its last error,
        # or ValueError if the file came out short; the partial file stays for a resume.
        if state(bundle) != before:
            raise StageError(
                "the download from Kaggle broke off: run the stage again to resume it"
            ) from None
        if isinstance(error, ValueError):
            raise
        raise StageError(
            "cannot reach the Kaggle API: check the network connection and proxy settings, "
            "or set data_source in params.yaml to a local copy"
        ) from None
    if not bundle.is_file():
        raise StageError(f"Kaggle served no {bundle.name} for {competition}")
    return bundle


def fetch_competition(api: KaggleApi, competition: str) -> None:
    """Download the competition's bundle and extract its three files into data/raw; the
    bundle is deleted once extracted, or if it is corrupt (the next run downloads it
    afresh)."""
    bundle = download(api, competition)
    try:
        extract_bundle(bundle)
    except StageError as error:
        remove(bundle)  # corrupt or incomplete: the next run must download it afresh
        raise StageError(f"{error} (deleted it: run the stage again)") from None
    remove(bundle)  # extracted: a second copy of the data is of no use
