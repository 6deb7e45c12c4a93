"""Stage fetch_data: the data set's images to data/raw, as train.zip (plus the
competition's test.zip and sample_submission.csv, where there is a test set).

With `data_source: ""` the competition's bundle is downloaded with the official
kaggle client. Otherwise `data_source` is a local path, one of:
  - a copy of the competition's data: the bundle zip, a folder holding its three
    files, or a folder in the unpacked layout (train/, test/, sample_submission.csv);
  - any labelled image set: a folder with one sub-folder of images per class (the
    layout keras.utils.image_dataset_from_directory reads), or a zip of one. It has
    no test set: train.zip alone, which split_classes reads the same way.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import zipfile
import zlib
from pathlib import Path
from typing import IO, TYPE_CHECKING

import requests

from stages.errors import StageError, run
from stages.files import IMAGE_EXTENSIONS, atomic_output, remove
from stages.params import load_params
from stages.paths import (
    DOWNLOAD_DIR,
    RAW_DIR,
    SAMPLE_SUBMISSION,
    TEST_ZIP,
    TRAIN_ZIP,
    project_path,
)

if TYPE_CHECKING:
    from kaggle.api.kaggle_api_extended import KaggleApi

OUTPUTS = (TRAIN_ZIP, TEST_ZIP, SAMPLE_SUBMISSION)
NAMES = tuple(path.name for path in OUTPUTS)  # what the competition bundle holds
CHUNK_BYTES = 1 << 20
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip entry timestamps, so rebuilt archives hash the same
EXPECTED = (
    "expected a folder with one sub-folder of images per class, a zip of one, or the "
    "competition's data (its zip, or a folder with train.zip, test.zip and "
    "sample_submission.csv, or with train/, test/ and sample_submission.csv)"
)


def write(dest: Path, source: IO[bytes], origin: str) -> None:
    """Stream `source` into `dest` atomically, checking that a .zip really is one."""
    with atomic_output(dest) as temporary:
        with temporary.open("wb") as target:
            shutil.copyfileobj(source, target, CHUNK_BYTES)
        report(temporary, dest, origin)


def report(temporary: Path, dest: Path, origin: str) -> None:
    if dest.suffix != ".zip":
        with temporary.open("rb") as stream:
            rows = sum(1 for _ in stream) - 1  # minus the header
        print(f"fetch_data: wrote {dest} ({rows} rows)", flush=True)
        return
    try:
        with zipfile.ZipFile(temporary) as archive:
            entries = len(archive.namelist())
    except zipfile.BadZipFile:
        raise StageError(f"{dest.name} from {origin} is not a zip file") from None
    print(f"fetch_data: wrote {dest} ({entries} entries)", flush=True)


def extract_bundle(bundle: Path) -> None:
    """Copy train.zip, test.zip and sample_submission.csv out of the competition's zip."""
    try:
        with zipfile.ZipFile(bundle) as archive:
            for name in NAMES:
                if name not in archive.namelist():
                    raise StageError(f"{bundle} has no {name}: {EXPECTED}")
            for name, dest in zip(NAMES, OUTPUTS, strict=True):
                with archive.open(name) as source:
                    write(dest, source, str(bundle))
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise StageError(f"{bundle} is not a valid zip file ({error})") from None


def store_zip(files: list[Path], base: Path, dest: Path, origin: Path) -> None:
    """Write `files` (from `origin`) to the zip `dest`, named relative to `base`, with
    fixed timestamps (a rebuilt archive is byte-identical) and stored, not deflated:
    photos do not compress, and this keeps it fast."""
    with atomic_output(dest) as temporary:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED) as archive:
            for path in files:
                info = zipfile.ZipInfo(path.relative_to(base).as_posix(), FIXED_TIME)
                with path.open("rb") as source, archive.open(info, "w") as target:
                    shutil.copyfileobj(source, target, CHUNK_BYTES)
        report(temporary, dest, str(origin))


def zip_folder(folder: Path, dest: Path) -> None:
    """Build Kaggle's train.zip/test.zip (entries "<folder>/<name>.jpg") from unpacked photos."""
    photos = sorted(folder.glob("*.jpg"))
    if not photos:
        raise StageError(f"{folder} holds no .jpg photos")
    store_zip(photos, folder.parent, dest, origin=folder)


def zip_classes(folder: Path, dest: Path) -> None:
    """Zip a folder of class folders, entries relative to it ("daisy/1.jpg"): the same
    archive as a zip of the folder, for split_classes to read one way."""
    files = sorted(path for path in folder.rglob("*") if path.is_file()
                   and path.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise StageError(f"data_source {folder} holds no {'/'.join(sorted(IMAGE_EXTENSIONS))} "
                         f"images: {EXPECTED}")
    store_zip(files, folder, dest, origin=folder)


def is_bundle(source: Path) -> bool:
    """Whether a zip is the competition's bundle (else: a zip of class folders)."""
    try:
        with zipfile.ZipFile(source) as archive:
            return set(NAMES) <= set(archive.namelist())
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise StageError(f"{source} is not a valid zip file ({error})") from None


def copy_local(source: Path) -> None:
    print(f"fetch_data: copying the data from {source}", flush=True)
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise StageError(f"data_source {source} is not a zip file: {EXPECTED}")
        if is_bundle(source):
            extract_bundle(source)
        else:  # a zip of class folders: split_classes checks and reads it
            with source.open("rb") as stream:
                write(TRAIN_ZIP, stream, str(source))
    elif all((source / name).is_file() for name in NAMES):
        for name, dest in zip(NAMES, OUTPUTS, strict=True):
            with (source / name).open("rb") as stream:
                write(dest, stream, str(source))
    elif (
        (source / "train").is_dir()
        and (source / "test").is_dir()
        and (source / SAMPLE_SUBMISSION.name).is_file()
    ):
        zip_folder(source / "train", TRAIN_ZIP)
        zip_folder(source / "test", TEST_ZIP)
        with (source / SAMPLE_SUBMISSION.name).open("rb") as stream:
            write(SAMPLE_SUBMISSION, stream, str(source))
    elif source.is_dir():
        zip_classes(source, TRAIN_ZIP)
    else:
        raise StageError(f"data_source {source} does not exist: {EXPECTED}")


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


def main() -> None:
    params = load_params()
    competition: str = params["competition"]
    source: str = params["data_source"]
    # Outputs of an earlier run would otherwise be cached by DVC as this run's.
    remove(RAW_DIR)
    api = None if source else kaggle_api(competition)  # no credentials: fail in a second
    # A backbone, size or layer name that cannot work fails now, not after the download
    # (imported here: it loads TensorFlow, which a missing credential need not wait for).
    from stages.network import check_architecture

    check_architecture(params)
    try:
        if source:
            copy_local(project_path(source))  # a queued run's copy too
            return
        bundle = download(api, competition)
        try:
            extract_bundle(bundle)
        except StageError as error:
            remove(bundle)  # corrupt or incomplete: the next run must download it afresh
            raise StageError(f"{error} (deleted it: run the stage again)") from None
        remove(bundle)  # extracted: a second copy of the data is of no use
    except BaseException:
        remove(RAW_DIR)  # every output, or none
        raise


if __name__ == "__main__":
    run(main)
