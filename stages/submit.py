"""Stage submit: predict the competition's test images and write
data/submission/submission.csv, in sample_submission.csv's format.

The features stage has run the frozen part of the network on every test image,
one row per id of sample_submission.csv, in its order (and checked that each id
has exactly one image); this stage runs the layers above it on those rows.

The columns are sample_submission.csv's: `id,label` (this competition's: label =
P(second class), P(dog)) for two classes, or `id` and one column per class name,
in any order, for more. Probabilities are clipped to [clip, 1 - clip]: log loss
punishes a confident mistake without bound. An image that cannot be decoded still
needs its row, so it gets the prior 1 / classes (0.5) and a warning.

A data set of class folders has no test set: the stage then writes an empty
data/submission/ and says so, so the rest of the DAG runs as usual.
"""

from __future__ import annotations

import csv
import sys
from typing import Any

import numpy as np

from stages.activations import FeatureFile, predict_rows, read_index
from stages.compute import configure
from stages.errors import StageError, run
from stages.files import atomic_output, remove
from stages.params import load_params
from stages.paths import (
    MODEL_FILE,
    SAMPLE_SUBMISSION,
    SUBMISSION_DIR,
    SUBMISSION_FILE,
    TEST_FEATURES,
)

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


def predict_test_set(params: dict[str, Any], count: int) -> np.ndarray:
    """A probability per class for each row of the test features: the model above its
    frozen part."""
    from stages.network import class_probabilities, load_model, trained_part

    features = FeatureFile(TEST_FEATURES)
    if len(features) != count:
        raise StageError(f"{TEST_FEATURES} has {len(features)} rows for {count} test ids: "
                         "run `dvc repro -f features`")
    model = trained_part(load_model(MODEL_FILE))
    probability = class_probabilities(predict_rows(model, features, np.arange(count),
                                                   params["batch_size"], "submit: test images"))
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


def main() -> None:
    params = load_params()
    index = read_index(params)
    remove(SUBMISSION_DIR)
    SUBMISSION_DIR.mkdir(parents=True)
    ids, unreadable, classes = index["test_ids"], index["test_unreadable"], index["classes"]
    if not ids:
        print(f"submit: the data set has no test set (data_source is a folder of classes): "
              f"nothing to submit; {SUBMISSION_DIR} left empty", file=sys.stderr)
        return
    header, column_classes = columns_of(classes)
    configure(params)
    probability = predict_test_set(params, len(ids))
    prior = 1 / len(classes)  # no information: the row costs log(classes), never more
    warn_unreadable(unreadable, prior)
    probability[[ids.index(image_id) for image_id in unreadable]] = prior
    probability = np.clip(probability, params["clip"], 1 - params["clip"])
    write_submission(header, ids, probability[:, column_classes])
    print(f"submit: wrote {SUBMISSION_FILE}: {len(ids):,} rows, "
          f"{len(unreadable)} unreadable image(s) at {prior:g}", file=sys.stderr)


if __name__ == "__main__":
    run(main)
