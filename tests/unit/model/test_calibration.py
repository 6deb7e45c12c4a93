"""finetune.model.calibration: temperature scaling's fit, on logits whose calibration is
known (labels drawn from the softmax of the logits themselves)."""

from __future__ import annotations

import numpy as np
import pytest

from finetune.model.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    fit_temperature,
    negative_log_likelihood,
    scaled_probabilities,
)


def calibrated_set(classes: int, images: int = 20_000, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from their own softmax: calibrated at T = 1 by construction.
    Two classes as a sigmoid's single logit column, as the model gives them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (images, 1 if classes == 2 else classes))
    p = scaled_probabilities(logits, 1.0)
    labels = (rng.random(images)[:, None] > p.cumsum(axis=1)).sum(axis=1)
    return logits, labels


@pytest.mark.parametrize("classes", [2, 5])
def test_a_calibrated_set_keeps_temperature_one(classes):
    logits, labels = calibrated_set(classes)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.04)


@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize("scale", [3.0, 0.5])
def test_logits_scaled_by_a_factor_give_that_temperature(classes, scale):
    # Overconfident (x 3) or underconfident (x 0.5): the fit undoes the scale.
    logits, labels = calibrated_set(classes)
    assert fit_temperature(scale * logits, labels) == pytest.approx(scale, rel=0.04)


def test_the_fit_is_the_minimum_of_the_log_loss():
    logits, labels = calibrated_set(3, images=500, seed=1)
    logits = 2.2 * logits
    fitted = fit_temperature(logits, labels)
    best = negative_log_likelihood(logits, labels, fitted)
    for nearby in (fitted * 0.999, fitted * 1.001, fitted * 0.9, fitted * 1.1, 1.0):
        assert negative_log_likelihood(logits, labels, nearby) > best


def test_two_classes_are_a_sigmoid_of_the_scaled_logit():
    logits = np.array([[-3.0], [0.0], [0.7], [12.0]])
    p = scaled_probabilities(logits, 2.0)
    assert p[:, 1] == pytest.approx(1 / (1 + np.exp(-logits[:, 0] / 2.0)), rel=1e-12)
    assert p.sum(axis=1) == pytest.approx(1.0, rel=1e-12)


def test_the_log_loss_is_computed_from_the_logits_without_overflow():
    # A logit of 800 would overflow exp(); a confident mistake costs its full margin.
    logits = np.array([[800.0], [-800.0]])
    assert negative_log_likelihood(logits, np.array([0, 0]), 1.0) == pytest.approx(400.0)


def test_a_separable_set_stops_at_the_bound():
    # Every image right with a margin: sharper is always better, without end.
    logits = np.array([[-2.0], [-1.0], [1.0], [3.0]])
    assert fit_temperature(logits, np.array([0, 0, 1, 1])) == MIN_TEMPERATURE
    # Every image wrong: the flattest allowed.
    assert fit_temperature(logits, np.array([1, 1, 0, 0])) == MAX_TEMPERATURE


def test_the_fit_is_deterministic():
    logits, labels = calibrated_set(4, images=300)
    assert fit_temperature(logits, labels) == fit_temperature(logits.copy(), labels.copy())


def test_labels_as_a_float_column_are_the_same_labels():
    # Training's binary labels are float32 of shape (n, 1), as Keras's loss takes them.
    logits, labels = calibrated_set(2, images=300)
    column = labels.astype(np.float32)[:, None]
    assert fit_temperature(logits, column) == fit_temperature(logits, labels)
    assert negative_log_likelihood(logits, column, 1.7) == negative_log_likelihood(
        logits, labels, 1.7)
