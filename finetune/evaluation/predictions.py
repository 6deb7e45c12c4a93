"""Every validation image's prediction: the model's outputs on their cached activations
(of the images, or of their mirror images), and one CSV row each: what the scores were
computed from, for a person to read (which photos, which mistakes) and a test to recompute.

Columns: `path` (the image's name, <class>/<path in its class folder>: data/train.json
gives its entry in data/raw/train.zip), `label` and `predicted` (class names), then the
probability of each class, `P(<class>)`, written in full (Python's shortest repr of the
float), so that they read back exactly.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from finetune.core.atomic import atomic_output
from finetune.core.errors import StageError
from finetune.core.paths import MIRRORED_TRAIN_FEATURES, MODEL_FILE, TRAIN_FEATURES
from finetune.evaluation.calibration import cross_fitted
from finetune.features.store import FeatureFile, predict_rows
from finetune.model.calibration import CrossFit
from finetune.model.probabilities import class_probabilities, mirror_average


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


class Scored(NamedTuple):
    """What evaluate scores: a probability per class and image; for a calibrated model, the
    cross-fit they come from and the seconds it took (None otherwise)."""

    probabilities: np.ndarray
    cross_fit: CrossFit | None = None
    cross_fit_seconds: float | None = None


def validation_probabilities(part: Any, rows: np.ndarray, labels: np.ndarray,
                             params: dict[str, Any], calibrated: bool, mirrored: bool
                             ) -> Scored:
    """The validation images' class probabilities as evaluate scores them, from `part` (the
    model above its frozen part; a calibrated model's up to its logits) on those `rows` of
    the features: cross-fitted where `calibrated` (finetune.evaluation.calibration), each
    averaged with its mirror image's where `mirrored` (`tta: flip`)."""
    outputs = validation_outputs(part, TRAIN_FEATURES, rows, params, "validation images")
    flipped = validation_outputs(part, MIRRORED_TRAIN_FEATURES, rows, params,
                                 "mirrored validation images") if mirrored else None
    if calibrated:
        started = time.perf_counter()
        fit = cross_fitted(outputs, labels, params["seed"], flipped)
        return Scored(fit.probabilities, fit, time.perf_counter() - started)
    if flipped is None:
        return Scored(class_probabilities(outputs))
    return Scored(mirror_average(class_probabilities(outputs), class_probabilities(flipped)))


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
