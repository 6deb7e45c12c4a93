"""How well the validation probabilities are calibrated, and a calibrated model scored
honestly.

- The reliability diagram's bins: the images grouped by the probability of the class
  predicted (their confidence) in BINS equal bins of [0, 1]; per bin, the mean confidence
  and the fraction predicted right. The expected calibration error (ECE) is the gap
  between the two, averaged over the bins weighted by their images.
- Cross-fitting. A calibrated model's temperature was chosen on the whole validation split
  (train, finetune.model.calibration), so scoring that split with it would grade the
  choice on the very data it was made on. Evaluate scores it cross-fitted instead: the
  images in 5 folds (stratified by class, drawn from the seed), each fold's
  probabilities from the temperature train's procedure chooses on the other folds alone
  (with `tta: flip`, applied to each image's and its mirror image's logits, averaged).
"""

from __future__ import annotations

import numpy as np

from finetune.model.calibration import (
    CrossFit,
    choose_temperature,
    cross_fit,
    scaled_probabilities,
)
from finetune.model.probabilities import mirror_average

BINS = 10


def cross_fitted(logits: np.ndarray, labels: np.ndarray, seed: int,
                 mirrored: np.ndarray | None = None) -> CrossFit:
    """A calibrated model's validation probabilities as evaluate scores them: each fold's
    from the temperature train's procedure (choose_temperature) gives on the other folds.
    With `mirrored`, the logits of each image's mirror image (`tta: flip`), as the deployed
    model with test-time augmentation gives them: the fold's temperature, chosen on the
    other folds' plain logits alone (as train chooses it), applied to the image's logits
    and to its mirror's, the two probabilities averaged; `uncalibrated` likewise at 1."""
    fit = cross_fit(logits, labels, seed,
                    lambda logits, labels: choose_temperature(logits, labels, seed).temperature)
    if mirrored is None:
        return fit
    flipped = np.empty_like(fit.probabilities)
    for fold, temperature in enumerate(fit.temperatures):
        held_out = fit.fold_of == fold
        flipped[held_out] = scaled_probabilities(mirrored[held_out], temperature)
    return CrossFit(mirror_average(fit.probabilities, flipped),
                    mirror_average(fit.uncalibrated, scaled_probabilities(mirrored, 1.0)),
                    fit.fold_of, fit.temperatures)


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
