"""The data set from a local copy, as data/raw: train.zip (plus the competition's test.zip
and sample_submission.csv, where there is a test set).

`data_source` is one of:
  - a copy of the competition's data: the bundle zip, a folder holding its three
    files, or a folder in the unpacked layout (train/, test/, sample_submission.csv);
  - any labelled image set: a folder with one sub-folder of images per class (the
    layout keras.utils.image_dataset_from_directory reads), or a zip of one. It has
    no test set: train.zip alone, which split_classes reads the same way.
"""

from __future__ import annotations

import shutil
import zipfile
import zlib
from pathlib import Path
from typing import IO

from finetune.core.atomic import atomic_output
from finetune.core.errors import StageError
from finetune.core.paths import SAMPLE_SUBMISSION, TEST_ZIP, TRAIN_ZIP
from finetune.dataset.image_files import IMAGE_EXTENSIONS

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


def copy_zip(source: Path) -> None:
    """A zip to data/raw: the competition's bundle (its three files), or a zip of class
    folders (copied as it is: split_classes checks and reads it). A downloaded zip
    (finetune.sources.web) comes this way too, so it gets the same checks."""
    if not zipfile.is_zipfile(source):
        raise StageError(f"data_source {source} is not a zip file: {EXPECTED}")
    if is_bundle(source):
        extract_bundle(source)
    else:
        with source.open("rb") as stream:
            write(TRAIN_ZIP, stream, str(source))


def copy_local(source: Path) -> None:
    # Checked first: "copying the data from" a path that is not there misleads.
    if not source.exists():
        raise StageError(f"data_source {source} does not exist: {EXPECTED}")
    print(f"fetch_data: copying the data from {source}", flush=True)
    if source.is_file():
        copy_zip(source)
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
    else:  # neither a file nor a folder: a socket, a device
        raise StageError(f"data_source {source} is neither a file nor a folder: {EXPECTED}")
