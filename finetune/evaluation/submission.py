"""The competition's submission: sample_submission.csv's columns, a clipped probability
per test id, the prior for an unreadable image.

The columns are sample_submission.csv's: `id,label` (this competition's: label =
P(second class), P(dog)) for two classes, or `id` and one column per class name, in any
order, for more.
"""

from __future__ import annotations

import csv
import sys
from typing import Any

import numpy as np

from finetune.core.atomic import atomic_output
from finetune.core.errors import StageError
from finetune.core.paths import (
    MIRRORED_TEST_FEATURES,
    MODEL_FILE,
    SAMPLE_SUBMISSION,
    SUBMISSION_FILE,
    TEST_FEATURES,
)
from finetune.features.store import FeatureFile, predict_rows
from finetune.model.probabilities import class_probabilities, mirror_average

MAX_WARNINGS = 20  # unreadable images named one by one; a damaged archive would flood stderr


def columns_of(classes: list[str]) -> tuple[list[str], list[int]]:
    """sample_submission.csv's header, and the class each column after `id` is the
    probability of."""
    with SAMPLE_SUBMISSION.open(newline="") as stream:
        header = [name.strip() for name in next(csv.reader(stream))]
    if header[1:] == ["label"] and len(classes) == 2:
        return header, [1]  # P(second class): P(dog)
    if sorted(header[1:]) == sorted(classes):
        return header, [classes.index(name) for name in header[1:]]
    raise StageError(f"{SAMPLE_SUBMISSION} has columns {', '.join(header[1:])}; expected "
                     f"'label' for two classes or one column per class ({', '.join(classes)})")


def predict_test_set(params: dict[str, Any], count: int, classes: list[str],
                     mirrored: bool = False) -> np.ndarray:
    """A probability per class (`classes`, the features') for each row of the test
    features: the model above its frozen part. With `mirrored` (`tta: flip`), averaged
    with its prediction for the same row of the mirror images' features."""
    from finetune.model.assembly import trained_part
    from finetune.model.saved import check_model_classes, load_model

    files = [(TEST_FEATURES, "features", "test images")]
    if mirrored:
        files.append((MIRRORED_TEST_FEATURES, "mirrored_features", "mirrored test images"))
    features = [FeatureFile(path) for path, _, _ in files]
    for rows, (path, stage, _) in zip(features, files, strict=True):
        if len(rows) != count:
            raise StageError(f"{path} has {len(rows)} rows for {count} test ids: "
                             f"run `dvc repro -f {stage}`")
    model = load_model(MODEL_FILE)
    check_model_classes(model, MODEL_FILE, classes)
    model = trained_part(model)
    plain, *flipped = [class_probabilities(predict_rows(model, rows, np.arange(count),
                                                        params["batch_size"], f"submit: {what}"))
                       for rows, (_, _, what) in zip(features, files, strict=True)]
    probability = mirror_average(plain, flipped[0]) if flipped else plain
    if np.isnan(probability).any():
        raise StageError(f"{MODEL_FILE} predicts NaN (did training diverge?): "
                         "check metrics/train and retrain")
    return probability


def warn_unreadable(unreadable: dict[str, dict[str, str]], prior: float) -> None:
    for image_id, failure in list(unreadable.items())[:MAX_WARNINGS]:
        print(f"submit: warning: {failure['file']} is unreadable ({failure['reason']}); "
              f"writing {prior:g} for id {image_id}", file=sys.stderr)
    if len(unreadable) > MAX_WARNINGS:
        print(f"submit: warning: and {len(unreadable) - MAX_WARNINGS} more unreadable images",
              file=sys.stderr)


def write_submission(header: list[str], ids: list[str], columns: np.ndarray) -> None:
    with atomic_output(SUBMISSION_FILE) as temporary, temporary.open("w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        # repr: the shortest exact form, so rounding never undoes the clipping.
        rows = zip(ids, columns, strict=True)
        writer.writerows([image_id, *(repr(float(p)) for p in row)] for image_id, row in rows)
