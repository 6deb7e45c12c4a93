"""The competition's test set: the ids of sample_submission.csv, in its order (the
order Kaggle expects), and their images in test.zip, one each. A data set of class
folders has none.

An id without an image, or an image without an id, is an error: Kaggle would
reject the submission or score it wrongly.
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import PurePosixPath

from finetune.core.errors import StageError
from finetune.core.paths import RAW_DIR, SAMPLE_SUBMISSION, TEST_ZIP
from finetune.dataset.image_files import IMAGE_EXTENSIONS


def has_test_set() -> bool:
    """Whether fetch_data wrote a test set (the competition's data) or not (class folders)."""
    present = {path: path.is_file() for path in (TEST_ZIP, SAMPLE_SUBMISSION)}
    if len(set(present.values())) == 2:
        missing = next(path for path, exists in present.items() if not exists)
        raise StageError(f"{RAW_DIR} has no {missing.name} beside the other test file: "
                         "run `dvc repro -f fetch_data`")
    return all(present.values())


def read_sample_ids() -> list[str]:
    """The ids of sample_submission.csv, in its order: the order Kaggle expects."""
    try:
        with SAMPLE_SUBMISSION.open(newline="") as stream:
            rows = list(csv.reader(stream))
    except FileNotFoundError:
        raise StageError(f"{SAMPLE_SUBMISSION} not found: run `dvc repro fetch_data`") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise StageError(f"{SAMPLE_SUBMISSION} is not a CSV file: {error}") from None
    if not rows or not rows[0] or rows[0][0].strip().lower() != "id":
        raise StageError(f"{SAMPLE_SUBMISSION}: expected a header starting with 'id'")
    ids = [row[0].strip() for row in rows[1:] if row]
    if not ids:
        raise StageError(f"{SAMPLE_SUBMISSION} lists no ids")
    seen: set[str] = set()
    for image_id in ids:
        if image_id in seen:
            raise StageError(f"{SAMPLE_SUBMISSION}: id {image_id} appears twice")
        seen.add(image_id)
    return ids


def image_entries(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's images by id (test/123.jpg -> "123")."""
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        path = PurePosixPath(info.filename)
        # macOS's zip adds __MACOSX/._123.jpg resource forks: not images.
        if info.is_dir() or path.suffix.lower() not in IMAGE_EXTENSIONS or (
                "__MACOSX" in path.parts):
            continue
        if path.stem in entries:
            raise StageError(f"{TEST_ZIP}: two images for id {path.stem}: "
                             f"{entries[path.stem].filename} and {info.filename}")
        entries[path.stem] = info
    return entries


def open_test_archive() -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(TEST_ZIP)
    except FileNotFoundError:
        raise StageError(f"{TEST_ZIP} not found: run `dvc repro fetch_data`") from None
    except zipfile.BadZipFile:
        raise StageError(f"{TEST_ZIP} is not a zip archive (truncated download?): "
                         "run `dvc repro -f fetch_data`") from None


def images_for_ids(archive: zipfile.ZipFile, ids: list[str]) -> list[zipfile.ZipInfo]:
    """The archive's image for each id, in the order of `ids`; checked both ways before
    anything slow, since a submission missing rows, or with rows Kaggle does not know, is
    rejected (or silently scored wrong)."""
    entries = image_entries(archive)
    missing = [image_id for image_id in ids if image_id not in entries]
    if missing:
        raise StageError(f"{len(missing)} id(s) of {SAMPLE_SUBMISSION} have no image in "
                         f"{TEST_ZIP}, first: {missing[0]}; is it the same competition's?")
    extra = sorted(set(entries) - set(ids))
    if extra:
        raise StageError(f"{len(extra)} image(s) of {TEST_ZIP} have no id in "
                         f"{SAMPLE_SUBMISSION}, first: {entries[extra[0]].filename}")
    return [entries[image_id] for image_id in ids]
