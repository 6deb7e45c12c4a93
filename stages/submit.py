"""Stage submit: predict the competition's test images and write
data/submission/submission.csv, in sample_submission.csv's format.

The features stage has run the frozen part of the network on every test image, one row
per id of sample_submission.csv, in its order; this stage runs the layers above it on
those rows (finetune.evaluation.submission). Probabilities are clipped to
[clip, 1 - clip]: log loss punishes a confident mistake without bound. An image that
cannot be decoded still needs its row, so it gets the prior 1 / classes (0.5) and a
warning. A data set of class folders has no test set: the stage then writes an empty
data/submission/ and says so, so the rest of the DAG runs as usual. With `tta: flip`,
each row is the mean of the model's probabilities for the image and for its mirror
image (data/mirrored_features), clipped.
"""

from __future__ import annotations

import sys

import numpy as np

from finetune.core.atomic import remove
from finetune.core.params import load_params
from finetune.core.paths import SUBMISSION_DIR, SUBMISSION_FILE
from finetune.core.runner import run_main
from finetune.core.runtime import configure
from finetune.evaluation.submission import (
    columns_of,
    predict_test_set,
    warn_unreadable,
    write_submission,
)
from finetune.features.store import read_index, read_mirrored_index


def main() -> None:
    params = load_params()
    index = read_index(params)
    mirrored = read_mirrored_index(params, index) is not None  # tta: flip
    remove(SUBMISSION_DIR)
    SUBMISSION_DIR.mkdir(parents=True)
    ids, unreadable, classes = index["test_ids"], index["test_unreadable"], index["classes"]
    if not ids:
        print(f"submit: the data set has no test set (data_source is a folder of classes): "
              f"nothing to submit; {SUBMISSION_DIR} left empty", file=sys.stderr)
        return
    header, column_classes = columns_of(classes)
    configure(params)
    probability = predict_test_set(params, len(ids), classes, mirrored)
    prior = 1 / len(classes)  # no information: the row costs log(classes), never more
    warn_unreadable(unreadable, prior)
    probability[[ids.index(image_id) for image_id in unreadable]] = prior
    probability = np.clip(probability, params["clip"], 1 - params["clip"])
    write_submission(header, ids, probability[:, column_classes])
    print(f"submit: wrote {SUBMISSION_FILE}: {len(ids):,} rows, "
          f"{len(unreadable)} unreadable image(s) at {prior:g}"
          + (", each image averaged with its mirror image (tta: flip)" if mirrored else ""),
          file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
