"""How well the validation probabilities are calibrated, and a calibrated model scored
honestly.

- The reliability diagram's bins: the images grouped by the probability of the class
  predicted (their confidence) in BINS equal bins of [0, 1]; per bin, the mean confidence
  and the fraction predicted right. The expected calibration error (ECE) is the gap
  between the two, averaged over the bins weighted by their images.
- Cross-fitting. A calibrated model's temperature was fitted on the whole validation split
  (train, finetune.model.calibration), so scoring that split with it would grade the fit
  on the very data it was fitted on. Evaluate scores it cross-fitted instead: the images
  in FOLDS folds (stratified by class, drawn from the seed), each fold's probabilities
  from a temperature fitted on the other folds alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from finetune.core.errors import StageError
from finetune.model.calibration import class_indices, fit_temperature, scaled_probabilities

FOLDS = 5
BINS = 10
# The folds' own random stream: the training batches draw theirs from [seed, epoch].
FOLDS_STREAM = 0xCA11B


@dataclass
class CrossFit:
    """A calibrated model's validation probabilities, cross-fitted, and what they came from."""

    probabilities: np.ndarray  # a probability per class; fold f's from temperatures[f]
    uncalibrated: np.ndarray  # the same logits at temperature 1: the model without it
    fold_of: np.ndarray  # each image's fold
    temperatures: list[float]  # fold f's, fitted on the images of the other folds


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold, 0 .. folds - 1: each class's images shuffled and dealt out in
    turn, carrying on from the fold the previous class stopped at, so that the folds
    differ by one image at most and hold each class in proportion."""
    rng = np.random.default_rng([seed, FOLDS_STREAM])
    fold_of = np.empty(len(labels), dtype=np.int64)
    start = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold_of[members] = (start + np.arange(len(members))) % folds
        start = (start + len(members)) % folds
    return fold_of


def cross_fit(logits: np.ndarray, labels: np.ndarray, seed: int, folds: int = FOLDS
              ) -> CrossFit:
    """Every image's probabilities under the temperature fitted on the folds it is not in."""
    labels = class_indices(labels)
    folds = min(folds, len(labels))
    if folds < 2:
        raise StageError(f"a calibrated model needs at least 2 validation images to be "
                         f"scored cross-fitted, and there are {len(labels)}: raise val_split")
    fold_of = stratified_folds(labels, folds, seed)
    uncalibrated = scaled_probabilities(logits, 1.0)
    probabilities = np.empty_like(uncalibrated)
    temperatures = []
    for fold in range(folds):
        held_out = fold_of == fold
        temperature = fit_temperature(logits[~held_out], labels[~held_out])
        probabilities[held_out] = scaled_probabilities(logits[held_out], temperature)
        temperatures.append(temperature)
    return CrossFit(probabilities, uncalibrated, fold_of, temperatures)


def reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int = BINS
                ) -> list[dict[str, float]]:
    """The reliability diagram's points: per non-empty bin of confidence, its range, mean
    confidence, fraction right (`accuracy`) and image count."""
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == np.asarray(labels)
    bin_of = np.minimum((confidence * bins).astype(np.int64), bins - 1)  # 1.0: the last
    points = []
    for index in range(bins):
        members = bin_of == index
        if members.any():
            points.append({"bin": f"{index / bins:g}-{(index + 1) / bins:g}",
                           "confidence": float(confidence[members].mean()),
                           "accuracy": float(right[members].mean()),
                           "images": int(members.sum())})
    return points


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray,
                               bins: int = BINS) -> float:
    """sum over bins of (images in it / images) * |accuracy - mean confidence|."""
    return float(sum(point["images"] * abs(point["accuracy"] - point["confidence"])
                     for point in reliability(labels, probabilities, bins)) / len(labels))
