"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017): one
scalar T > 0 divides the model's logits before its sigmoid or softmax, fitted by
minimising the negative log-likelihood of held-out labels. Every image keeps its most
probable class (so accuracy is unchanged); only how confident the model is moves.

Two classes have one logit z, the sigmoid's input: P(second class) = sigmoid(z / T), which
is the softmax of [0, z] / T. Both cases are therefore computed as a softmax over columns.

On a small validation split a model already close to calibrated gains less from the fit
than the fit's own noise costs on images it was not fitted on. So the temperature train
keeps is chosen (choose_temperature): the fitted one only where cross-fitting on the same
images (each fold scored with the temperature fitted on the others) says it lowers the log
loss, else 1. Evaluate scores that whole choice cross-fitted in turn
(finetune.evaluation.calibration), so no score comes from images a temperature saw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from finetune.core.errors import StageError

# The range T is fitted in. A validation split the model separates perfectly makes the
# likelihood grow as T shrinks, without end; the bound keeps such a fit finite.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
BISECTIONS = 60  # of log(1/T) over [log 1/20, log 1/0.05]: 6 / 2**60, far below float64's step


def logit_columns(logits: np.ndarray) -> np.ndarray:
    """A logit per class, float64: a sigmoid's single column z becomes [0, z]."""
    logits = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    return np.hstack([np.zeros_like(logits), logits]) if logits.shape[1] == 1 else logits


def scaled_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """A probability per class (a column each) of softmax(logits / temperature), float64."""
    scaled = logit_columns(logits) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)  # exp cannot overflow
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def class_indices(labels: np.ndarray) -> np.ndarray:
    """Labels as a flat array of class indices: training's binary labels are a float
    column, (n, 1), which would index a (n, n) block of a logits array, not n entries."""
    return np.asarray(labels).reshape(-1).astype(np.int64)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float
                            ) -> float:
    """The mean of -log P(true class) under softmax(logits / temperature): log loss,
    computed from the logits (never from clipped probabilities)."""
    labels = class_indices(labels)
    scaled = logit_columns(logits) / temperature
    peak = scaled.max(axis=1, keepdims=True)
    log_sum = peak[:, 0] + np.log(np.exp(scaled - peak).sum(axis=1))
    return float(np.mean(log_sum - scaled[np.arange(len(scaled)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [MIN_TEMPERATURE, MAX_TEMPERATURE] that minimises the negative
    log-likelihood of `labels` (class indices) under softmax(logits / T).

    As a function of b = 1 / T the loss, mean(logsumexp(b z) - b z_label), is convex, so
    its slope, mean(E_p[z] - z_label), never decreases: the minimum is where the slope
    crosses zero, found by bisection (on log b, for relative precision). Deterministic, and
    exact up to float64 rounding."""
    z = logit_columns(logits)
    true = z[np.arange(len(z)), class_indices(labels)]

    def slope(log_b: float) -> float:
        p = scaled_probabilities(z, 1 / np.exp(log_b))
        return float(np.mean((p * z).sum(axis=1) - true))

    low, high = np.log(1 / MAX_TEMPERATURE), np.log(1 / MIN_TEMPERATURE)
    if slope(high) <= 0:  # still falling at the sharpest allowed: separable, take the bound
        return MIN_TEMPERATURE
    if slope(low) >= 0:  # rising from the flattest allowed
        return MAX_TEMPERATURE
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        if slope(middle) > 0:
            high = middle
        else:
            low = middle
    return float(1 / np.exp((low + high) / 2))


FOLDS = 5
# The folds' own random stream: the training batches draw theirs from [seed, epoch].
FOLDS_STREAM = 0xCA11B


@dataclass
class CrossFit:
    """Probabilities cross-fitted: each fold's from a temperature chosen on the others."""

    probabilities: np.ndarray  # a probability per class; fold f's from temperatures[f]
    uncalibrated: np.ndarray  # the same logits at temperature 1: the model without it
    fold_of: np.ndarray  # each image's fold
    temperatures: list[float]  # fold f's, from the images of the other folds alone


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold, 0 .. folds - 1: each class's images shuffled and dealt out in
    turn, carrying on from the fold the previous class stopped at, so that the folds
    differ by one image at most and hold each class in proportion."""
    labels = class_indices(labels)
    rng = np.random.default_rng([seed, FOLDS_STREAM])
    fold_of = np.empty(len(labels), dtype=np.int64)
    start = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold_of[members] = (start + np.arange(len(members))) % folds
        start = (start + len(members)) % folds
    return fold_of


def cross_fit(logits: np.ndarray, labels: np.ndarray, seed: int,
              fit: Callable[[np.ndarray, np.ndarray], float] = fit_temperature,
              folds: int = FOLDS) -> CrossFit:
    """Every image's probabilities under the temperature `fit` gives on the images of the
    folds it is not in."""
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
        temperature = fit(logits[~held_out], labels[~held_out])
        probabilities[held_out] = scaled_probabilities(logits[held_out], temperature)
        temperatures.append(temperature)
    return CrossFit(probabilities, uncalibrated, fold_of, temperatures)


@dataclass
class Choice:
    """The temperature chosen, and why: the fitted one, and the log loss cross-fitting gives
    with it and without (at 1) on the same images."""

    temperature: float
    fitted: float
    log_loss_fitted: float  # cross-fitted: each fold at the temperature of the others
    log_loss_uncalibrated: float


def choose_temperature(logits: np.ndarray, labels: np.ndarray, seed: int) -> Choice:
    """fit_temperature's temperature where cross-fitting it lowers the log loss of these
    images below the uncalibrated one, else 1 (fewer than 2 images: 1, untested)."""
    labels = class_indices(labels)
    fitted = fit_temperature(logits, labels)
    uncalibrated = negative_log_likelihood(logits, labels, 1.0)
    if len(labels) < 2:
        return Choice(1.0, fitted, uncalibrated, uncalibrated)
    probabilities = cross_fit(logits, labels, seed).probabilities
    crossfitted = float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels])))
    return Choice(fitted if crossfitted < uncalibrated else 1.0, fitted, crossfitted,
                  uncalibrated)
