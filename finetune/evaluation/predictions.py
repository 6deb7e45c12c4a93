"""Every validation image's prediction: the model's outputs on their cached activations
(of the images, or of their mirror images), and one CSV row each: what the scores were
computed from, for a person to read (which photos, which mistakes) and a test to recompute.

Columns: `path` (under data/train), `label` and `predicted` (class names), then the
probability of each class, `P(<class>)`, written in full (Python's shortest repr of the
float), so that they read back exactly.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from finetune.core.atomic import atomic_output
from finetune.core.errors import StageError
from finetune.core.paths import MODEL_FILE
from finetune.features.store import FeatureFile, predict_rows


def validation_outputs(part: Any, features: Path, rows: np.ndarray, params: dict[str, Any],
                       what: str) -> np.ndarray:
    """The model part's outputs for those rows of `features`; NaN refused (scores of NaN
    would be cached as metrics)."""
    outputs = predict_rows(part, FeatureFile(features), rows, params["batch_size"],
                           f"evaluate: {what}")
    if not np.isfinite(outputs).all():
        bad = int((~np.isfinite(outputs)).any(axis=-1).sum())
        raise StageError(f"{MODEL_FILE} predicts NaN for {bad} of {len(outputs)} "
                         f"{what} (did training diverge?): check metrics/train and retrain")
    return outputs


def write_predictions(destination: Path, paths: list[str], labels: np.ndarray,
                      probabilities: np.ndarray, classes: list[str]) -> None:
    """One row per image, in the order scored."""
    with atomic_output(destination) as temporary, temporary.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "predicted", *(f"P({name})" for name in classes)])
        for path, label, row in zip(paths, labels, probabilities, strict=True):
            writer.writerow([path, classes[label], classes[int(np.argmax(row))],
                             *(repr(float(value)) for value in row)])


def read_predictions(source: Path) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """(paths, label names, probabilities, class names) of a file write_predictions wrote."""
    with source.open(newline="") as stream:
        rows = list(csv.reader(stream))
    classes = [column[len("P("):-1] for column in rows[0][3:]]
    probabilities = np.array([[float(value) for value in row[3:]] for row in rows[1:]],
                             dtype=np.float64).reshape(-1, len(classes))
    return [row[0] for row in rows[1:]], [row[1] for row in rows[1:]], probabilities, classes
