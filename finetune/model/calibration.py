"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017): one
scalar T > 0 divides the model's logits before its sigmoid or softmax, fitted by
minimising the negative log-likelihood of held-out labels. Every image keeps its most
probable class (so accuracy is unchanged); only how confident the model is moves.

Two classes have one logit z, the sigmoid's input: P(second class) = sigmoid(z / T), which
is the softmax of [0, z] / T. Both cases are therefore computed as a softmax over columns.
"""

from __future__ import annotations

import numpy as np

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
