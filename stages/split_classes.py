"""Stage split_classes: extract train.zip into one folder per class.

Kaggle's train.zip is flat (train/cat.0.jpg, train/dog.0.jpg, ...); the data
loader wants data/train/cat/ and data/train/dog/. Entries are extracted straight
into place (no second copy of the images), each one decoded once with
TensorFlow's own decoder so that an unreadable image is skipped here, and
listed in metrics/data.json, instead of crashing training later.
"""

from __future__ import annotations

import json
import re
import stat
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath

from stages.common import (
    CLASS_NAMES,
    DATA_REPORT,
    TRAIN_DIR,
    TRAIN_ZIP,
    StageError,
    atomic_output,
    load_params,
    run,
)

# The class is the file name's prefix: cat.123.jpg -> cat.
IMAGE_NAME = re.compile(rf"^({'|'.join(CLASS_NAMES)})\.[^/]*\.(jpe?g|png)$", re.IGNORECASE)
# JPEGs barely compress: an archive that claims to expand more than this is not photos.
MAX_EXPANSION = 50
BATCH = 256  # entries in flight at once, to bound memory


def safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The archive's files, refusing any entry that could land outside the target folder."""
    members = []
    for info in archive.infolist():
        path = PurePosixPath(info.filename.replace("\\", "/"))
        is_link = stat.S_ISLNK(info.external_attr >> 16)
        if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", info.filename):
            raise StageError(f"{TRAIN_ZIP}: entry '{info.filename}' would be written outside "
                             f"{TRAIN_DIR}; refusing this archive, fetch it again")
        if is_link:
            raise StageError(f"{TRAIN_ZIP}: entry '{info.filename}' is a symbolic link; "
                             "refusing this archive, fetch it again")
        if not info.is_dir():
            members.append(info)
    return members


def is_readable_image(data: bytes) -> str:
    """"" if TensorFlow decodes `data` as an image, else the reason it cannot."""
    import tensorflow as tf  # imported here: the archive checks above need none of it

    if not data:
        return "empty file"
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        return error.message.splitlines()[0] if error.message else "cannot be decoded"
    return ""


def main() -> None:
    params = load_params()
    max_unreadable: float = params["max_unreadable_fraction"]

    try:
        archive = zipfile.ZipFile(TRAIN_ZIP)
    except FileNotFoundError:
        raise StageError(f"{TRAIN_ZIP} not found: run `dvc repro fetch_data` first") from None
    except zipfile.BadZipFile:
        raise StageError(f"{TRAIN_ZIP} is not a zip archive (truncated download?): "
                         "run `dvc repro -f fetch_data`") from None

    with archive:
        members = safe_members(archive)
        expanded = sum(info.file_size for info in members)
        if expanded > MAX_EXPANSION * max(TRAIN_ZIP.stat().st_size, 1 << 20):
            raise StageError(f"{TRAIN_ZIP} claims to expand to {expanded:,} bytes, over "
                             f"{MAX_EXPANSION}x its size: not an archive of photos")
        images = [(info, IMAGE_NAME.match(PurePosixPath(info.filename).name)) for info in members]
        images = [(info, match.group(1).lower()) for info, match in images if match]
        if not images:
            raise StageError(f"{TRAIN_ZIP} holds no cat.*.jpg or dog.*.jpg files: "
                             "is it Kaggle's train.zip?")

        counts = dict.fromkeys(CLASS_NAMES, 0)
        unreadable: dict[str, str] = {}
        with atomic_output(TRAIN_DIR) as staging, ThreadPoolExecutor() as pool:
            for label in CLASS_NAMES:
                (staging / label).mkdir(parents=True)

            def extract(info: zipfile.ZipInfo, label: str, data: bytes) -> tuple[str, str, str]:
                name = PurePosixPath(info.filename).name
                reason = is_readable_image(data)
                if not reason:
                    (staging / label / name).write_bytes(data)
                return name, label, reason

            # Decoding releases the GIL, so threads check several images at once.
            for start in range(0, len(images), BATCH):
                batch = [(info, label, archive.read(info))
                         for info, label in images[start:start + BATCH]]
                for name, label, reason in pool.map(lambda item: extract(*item), batch):
                    if reason:
                        unreadable[name] = reason
                    else:
                        counts[label] += 1

            empty = [name for name, count in counts.items() if count == 0]
            if empty:
                raise StageError(f"{TRAIN_ZIP}: no readable '{empty[0]}' images; "
                                 "a class with no images cannot be learned")
            fraction = len(unreadable) / len(images)
            if fraction > max_unreadable:
                raise StageError(f"{TRAIN_ZIP}: {len(unreadable)} of {len(images)} images "
                                 f"({fraction:.1%}) are unreadable, over max_unreadable_fraction "
                                 f"{max_unreadable}; fetch the data again")

    report = {"images": counts, "unreadable": len(unreadable),
              "unreadable_files": dict(sorted(unreadable.items()))}
    DATA_REPORT.parent.mkdir(parents=True, exist_ok=True)
    DATA_REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"split_classes: {counts} images in {TRAIN_DIR}, "
          f"{len(unreadable)} unreadable skipped (listed in {DATA_REPORT})", file=sys.stderr)


if __name__ == "__main__":
    run(main)
