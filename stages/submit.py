"""Stage submit: predict Kaggle's test images and write data/submission.csv.

The features stage has run the frozen part of the network on every test image,
one row per id of sample_submission.csv, in its order (and checked that each id
has exactly one image); this stage runs the layers above it on those rows. P(dog)
is clipped to [clip, 1 - clip]: log loss punishes a confident mistake without
bound. An image that cannot be decoded still needs its row, so it gets 0.5 (the
prior) and a warning.
"""

from __future__ import annotations

import csv
import sys
from typing import Any

import numpy as np

from stages.activations import FeatureFile, predict_rows, read_index
from stages.errors import StageError, run
from stages.files import atomic_output
from stages.params import load_params
from stages.paths import MODEL_FILE, SUBMISSION_FILE, TEST_FEATURES

UNREADABLE_PROBABILITY = 0.5  # no information: the row costs log(2), never more
MAX_WARNINGS = 20  # unreadable images named one by one; a damaged archive would flood stderr


def predict_test_set(params: dict[str, Any], count: int) -> np.ndarray:
    """P(dog) for each row of the test features: the model above its frozen part."""
    from stages.network import load_model, trained_part

    features = FeatureFile(TEST_FEATURES)
    if len(features) != count:
        raise StageError(f"{TEST_FEATURES} has {len(features)} rows for {count} test ids: "
                         "run `dvc repro -f features`")
    model = trained_part(load_model(MODEL_FILE))
    probability = predict_rows(model, features, np.arange(count), params["batch_size"],
                               "submit: test images")
    if np.isnan(probability).any():
        raise StageError(f"{MODEL_FILE} predicts NaN (did training diverge?): "
                         "check metrics/train and retrain")
    return probability


def warn_unreadable(unreadable: dict[str, dict[str, str]]) -> None:
    for image_id, failure in list(unreadable.items())[:MAX_WARNINGS]:
        print(f"submit: warning: {failure['file']} is unreadable ({failure['reason']}); "
              f"writing {UNREADABLE_PROBABILITY} for id {image_id}", file=sys.stderr)
    if len(unreadable) > MAX_WARNINGS:
        print(f"submit: warning: and {len(unreadable) - MAX_WARNINGS} more unreadable images",
              file=sys.stderr)


def write_submission(ids: list[str], probability: np.ndarray) -> None:
    with atomic_output(SUBMISSION_FILE) as temporary, temporary.open("w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["id", "label"])
        # repr: the shortest exact form, so rounding never undoes the clipping.
        rows = zip(ids, probability, strict=True)
        writer.writerows((image_id, repr(float(p))) for image_id, p in rows)


def main() -> None:
    params = load_params()
    index = read_index(params)
    ids, unreadable = index["test_ids"], index["test_unreadable"]
    probability = predict_test_set(params, len(ids))
    warn_unreadable(unreadable)
    probability[[ids.index(image_id) for image_id in unreadable]] = UNREADABLE_PROBABILITY
    probability = np.clip(probability, params["clip"], 1 - params["clip"])
    write_submission(ids, probability)
    print(f"submit: wrote {SUBMISSION_FILE}: {len(ids):,} rows, "
          f"{len(unreadable)} unreadable image(s) at {UNREADABLE_PROBABILITY}",
          file=sys.stderr)


if __name__ == "__main__":
    run(main)
