"""Stage submit: predict Kaggle's test images and write data/submission.csv.

The images are read straight out of data/raw/test.zip (no extracted copy): a
generator yields each entry's bytes, tf.data decodes them in parallel and the
model predicts batch by batch. Rows follow sample_submission.csv's order, one per
id, with P(dog) clipped to [clip, 1 - clip]: log loss punishes a confident
mistake without bound. An id without an image, or an image without an id, is an
error (Kaggle would reject or misread the file); an image that cannot be decoded
still needs its row, so it gets 0.5 (the prior) and a warning.
"""

from __future__ import annotations

import csv
import sys
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

from stages.dataset import IMAGE_EXTENSIONS
from stages.errors import StageError, run
from stages.files import atomic_output
from stages.params import load_params
from stages.paths import MODEL_FILE, SAMPLE_SUBMISSION, SUBMISSION_FILE, TEST_ZIP
from stages.progress import Progress

UNREADABLE_PROBABILITY = 0.5  # no information: the row costs log(2), never more
MAX_WARNINGS = 20  # unreadable images named one by one; a damaged archive would flood stderr
# Errors zipfile raises for one damaged entry (bad CRC, truncated or odd compression).
ENTRY_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError)


# --- the stage --------------------------------------------------------------

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


def predict_archive(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo],
                    params: dict[str, Any]) -> tuple[Any, dict[int, str]]:
    """P(dog) per entry of `infos` (NaN where unreadable), and why each unreadable one is."""
    import numpy as np
    import tensorflow as tf

    from stages.images import decode_error, decode_image
    from stages.network import dog_probability, load_model, model_image_size

    model = load_model(MODEL_FILE)
    size, trained_size = params["image_size"], model_image_size(model, MODEL_FILE)
    if trained_size != size:
        raise StageError(f"{MODEL_FILE} takes {trained_size} px images but image_size is "
                         f"{size}: run `dvc repro train`")

    # The generator cannot raise without ending the dataset: it notes the entries
    # zipfile cannot read here and yields empty bytes, which fail to decode.
    read_failures: dict[int, str] = {}

    def entries() -> Iterator[tuple[int, bytes]]:
        for index, info in enumerate(infos):
            try:
                yield index, archive.read(info)
            except ENTRY_ERRORS as error:
                read_failures[index] = f"cannot read it from the archive: {error}"
                yield index, b""

    dataset = tf.data.Dataset.from_generator(entries, output_signature=(
        tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.string)))
    dataset = dataset.map(
        lambda index, data: (index, tf.cast(decode_image(data, size), tf.float32)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    # A corrupt image must not end the run: drop it here and find it by its missing
    # index afterwards (the index travels with each image).
    dataset = dataset.ignore_errors().batch(params["batch_size"]).prefetch(tf.data.AUTOTUNE)

    total = len(infos)
    probability = np.full(total, np.nan)
    decoded = np.zeros(total, dtype=bool)
    progress = Progress("submit: predicting test images", total)
    for indices, images in dataset:
        probability[indices.numpy()] = dog_probability(model, images)
        decoded[indices.numpy()] = True
        # In order, so everything up to the last index has been seen (unreadable ones too).
        progress.update(int(indices[-1]) + 1 - progress.done)
    if progress.done < total:  # the last images were unreadable
        progress.update(total - progress.done)
    if np.isnan(probability[decoded]).any():
        raise StageError(f"{MODEL_FILE} predicts NaN (did training diverge?): "
                         "check metrics/train and retrain")
    unreadable = {}
    for index in map(int, np.flatnonzero(~decoded)):
        unreadable[index] = (read_failures.get(index) or decode_error(archive.read(infos[index]))
                             or "cannot be decoded")
    return probability, unreadable


def main() -> None:
    params = load_params()
    clip: float = params["clip"]
    ids = read_sample_ids()
    try:
        archive = zipfile.ZipFile(TEST_ZIP)
    except FileNotFoundError:
        raise StageError(f"{TEST_ZIP} not found: run `dvc repro fetch_data`") from None
    except zipfile.BadZipFile:
        raise StageError(f"{TEST_ZIP} is not a zip archive (truncated download?): "
                         "run `dvc repro -f fetch_data`") from None

    with archive:
        entries = image_entries(archive)
        # Both directions, before the slow part: a submission missing rows or with
        # rows Kaggle does not know is rejected (or silently scored wrong).
        missing = [image_id for image_id in ids if image_id not in entries]
        if missing:
            raise StageError(f"{len(missing)} id(s) of {SAMPLE_SUBMISSION} have no image in "
                             f"{TEST_ZIP}, first: {missing[0]}; is it the same competition's?")
        extra = sorted(set(entries) - set(ids))
        if extra:
            raise StageError(f"{len(extra)} image(s) of {TEST_ZIP} have no id in "
                             f"{SAMPLE_SUBMISSION}, first: {entries[extra[0]].filename}")
        infos = [entries[image_id] for image_id in ids]
        probability, unreadable = predict_archive(archive, infos, params)

    import numpy as np

    if len(unreadable) == len(ids):
        raise StageError(f"none of the {len(ids)} images of {TEST_ZIP} could be decoded")
    for index, reason in list(unreadable.items())[:MAX_WARNINGS]:
        print(f"submit: warning: {infos[index].filename} is unreadable ({reason}); "
              f"writing {UNREADABLE_PROBABILITY} for id {ids[index]}", file=sys.stderr)
    if len(unreadable) > MAX_WARNINGS:
        print(f"submit: warning: and {len(unreadable) - MAX_WARNINGS} more unreadable images",
              file=sys.stderr)
    probability[list(unreadable)] = UNREADABLE_PROBABILITY
    probability = np.clip(probability, clip, 1 - clip)

    with atomic_output(SUBMISSION_FILE) as temporary, temporary.open("w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["id", "label"])
        # repr: the shortest exact form, so rounding never undoes the clipping.
        rows = zip(ids, probability, strict=True)
        writer.writerows((image_id, repr(float(p))) for image_id, p in rows)
    print(f"submit: wrote {SUBMISSION_FILE}: {len(ids):,} rows, "
          f"{len(unreadable)} unreadable image(s) at {UNREADABLE_PROBABILITY}",
          file=sys.stderr)


if __name__ == "__main__":
    run(main)
