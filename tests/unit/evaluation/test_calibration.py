"""Cross-fitting (finetune.model.calibration) that never scores a fold with a temperature
fitted on it, train's choice of temperature, evaluate's cross-fitting of that choice, and
the reliability bins and ECE against their definitions (tests.support.scores)."""

from __future__ import annotations

import numpy as np
import pytest

from finetune.core.errors import StageError
from finetune.evaluation.calibration import (
    cross_fitted,
    expected_calibration_error,
    reliability,
)
from finetune.evaluation.scores import log_loss_of
from finetune.model.calibration import (
    choose_temperature,
    cross_fit,
    fit_temperature,
    negative_log_likelihood,
    scaled_probabilities,
    stratified_folds,
)
from tests.support.scores import reference_ece


def overconfident_set(classes: int = 3, images: int = 200, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), logits 3 z: a model three times too sure of itself."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (images, 1 if classes == 2 else classes))
    p = scaled_probabilities(logits, 1.0)
    labels = (rng.random(images)[:, None] > p.cumsum(axis=1)).sum(axis=1)
    return 3 * logits, labels


def test_folds_are_stratified_balanced_and_drawn_from_the_seed():
    labels = np.repeat([0, 1, 2], [23, 41, 7])
    folds = stratified_folds(labels, 5, seed=1234)
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for label in (0, 1, 2):  # each class dealt out evenly
        per_fold = np.bincount(folds[labels == label], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    assert np.array_equal(folds, stratified_folds(labels, 5, seed=1234))
    assert not np.array_equal(folds, stratified_folds(labels, 5, seed=1235))


@pytest.mark.parametrize("classes", [2, 4])
def test_each_fold_is_scored_with_the_temperature_of_the_other_folds(classes):
    logits, labels = overconfident_set(classes)
    fitted = cross_fit(logits, labels, seed=7)
    assert len(fitted.temperatures) == 5
    for fold, temperature in enumerate(fitted.temperatures):
        held_out = fitted.fold_of == fold
        assert temperature == fit_temperature(logits[~held_out], labels[~held_out])
        assert np.array_equal(fitted.probabilities[held_out],
                              scaled_probabilities(logits[held_out], temperature))
    assert np.array_equal(fitted.uncalibrated, scaled_probabilities(logits, 1.0))


def test_a_folds_own_logits_never_reach_its_temperature():
    # Make fold 0's logits wildly overconfident: its temperature stays exactly the same (it
    # comes from the other folds) and its probabilities are its new logits at that
    # temperature; every other fold's temperature moves (fold 0 is in their fit). The folds
    # are drawn from the labels and the seed alone, so they stay the same.
    logits, labels = overconfident_set()
    before = cross_fit(logits, labels, seed=7)
    held_out = before.fold_of == 0
    changed = logits.copy()
    changed[held_out] *= 10
    after = cross_fit(changed, labels, seed=7)
    assert np.array_equal(after.fold_of, before.fold_of)
    assert after.temperatures[0] == before.temperatures[0]
    assert np.array_equal(after.probabilities[held_out],
                          scaled_probabilities(changed[held_out], before.temperatures[0]))
    assert all(after.temperatures[fold] > before.temperatures[fold] for fold in range(1, 5))


@pytest.mark.parametrize("classes", [2, 3])
def test_cross_fitting_an_overconfident_model_lowers_its_log_loss_and_ece(classes):
    logits, labels = overconfident_set(classes)
    fitted = cross_fit(logits, labels, seed=7)
    assert all(2 < temperature < 4.5 for temperature in fitted.temperatures)
    assert log_loss_of(labels, fitted.probabilities) < log_loss_of(labels, fitted.uncalibrated)
    assert (expected_calibration_error(labels, fitted.probabilities)
            < expected_calibration_error(labels, fitted.uncalibrated))
    # Argmax, so accuracy, is unchanged by any temperature.
    assert np.array_equal(fitted.probabilities.argmax(axis=1),
                          fitted.uncalibrated.argmax(axis=1))


def calibrated_set(images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes, labels drawn from sigmoid(z): calibrated at T = 1 by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (images, 1))
    return logits, (rng.random(images) < 1 / (1 + np.exp(-logits[:, 0]))).astype(int)


def test_the_fitted_temperature_is_kept_only_where_cross_fitting_says_it_helps():
    # Overconfident: the fit, which cross-fitting confirms.
    logits, labels = overconfident_set()
    choice = choose_temperature(logits, labels, seed=7)
    assert choice.temperature == choice.fitted == fit_temperature(logits, labels)
    assert choice.log_loss_fitted < choice.log_loss_uncalibrated
    # Calibrated already, on a small split: each choice follows its cross-fitted figures,
    # and some keep 1 (the fit's noise would cost more than it removes).
    kept = 0
    for seed in range(6):
        logits, labels = calibrated_set(60, seed)
        choice = choose_temperature(logits, labels, seed)
        helps = choice.log_loss_fitted < choice.log_loss_uncalibrated
        assert choice.temperature == (choice.fitted if helps else 1.0)
        assert choice.log_loss_uncalibrated == negative_log_likelihood(logits, labels, 1.0)
        kept += choice.temperature == 1.0
    assert kept >= 1


def test_evaluate_cross_fits_trains_whole_choice():
    # Nested: each fold's temperature is what train's choice gives on the other folds.
    logits, labels = calibrated_set(100, seed=3)
    fitted = cross_fitted(logits, labels, seed=5)
    for fold, temperature in enumerate(fitted.temperatures):
        others = fitted.fold_of != fold
        assert temperature == choose_temperature(logits[others], labels[others], 5).temperature


@pytest.mark.parametrize("classes", [2, 4])
def test_evaluate_cross_fits_with_tta_as_the_model_is_deployed(classes):
    """tta: flip: each fold's temperature is train's choice on the other folds' plain
    logits alone (the mirror images' play no part: the model keeps one temperature), applied
    to the held-out images' plain and mirrored logits, the two probabilities averaged."""
    logits, labels = overconfident_set(classes, images=100, seed=4)
    rng = np.random.default_rng(9)
    mirrored = logits + rng.normal(0, 1.0, logits.shape)  # a mirror image: other logits
    plain = cross_fitted(logits, labels, seed=5)
    fitted = cross_fitted(logits, labels, seed=5, mirrored=mirrored)
    assert fitted.temperatures == plain.temperatures
    assert np.array_equal(fitted.fold_of, plain.fold_of)
    assert min(fitted.temperatures) > 1.5  # overconfident: a temperature that matters
    for fold, temperature in enumerate(fitted.temperatures):
        held_out = fitted.fold_of == fold
        others = ~held_out
        assert temperature == choose_temperature(logits[others], labels[others], 5).temperature
        expected = (softmax(logits[held_out], temperature)
                    + softmax(mirrored[held_out], temperature)) / 2
        np.testing.assert_allclose(fitted.probabilities[held_out], expected, rtol=1e-12,
                                   atol=1e-15)
    np.testing.assert_allclose(fitted.uncalibrated,
                               (softmax(logits, 1.0) + softmax(mirrored, 1.0)) / 2, rtol=1e-12)
    assert np.allclose(fitted.probabilities.sum(axis=1), 1)
    # A mirror image that changes nothing changes nothing.
    same = cross_fitted(logits, labels, seed=5, mirrored=logits)
    np.testing.assert_allclose(same.probabilities, plain.probabilities, rtol=1e-12)


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) by its definition, a sigmoid's one column z read as [0, z]."""
    z = logits / temperature
    if z.shape[1] == 1:
        z = np.hstack([np.zeros_like(z), z])
    exp = np.exp(z - z.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_too_few_images_to_cross_fit_is_one_line():
    with pytest.raises(StageError, match="at least 2 validation images"):
        cross_fit(np.array([[1.0]]), np.array([1]), seed=0)


def test_reliability_bins_and_ece_by_hand():
    # Confidences 0.95, 0.9 (bin 0.9-1, one right: 0.5 right at 0.925 mean) and 0.6, 0.6
    # (bin 0.6-0.7, both right).
    probabilities = np.array([[0.05, 0.95], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    labels = np.array([1, 1, 1, 0])
    points = reliability(labels, probabilities)
    assert [(p["bin"], p["images"], p["accuracy"]) for p in points] == [
        ("0.6-0.7", 2, 1.0), ("0.9-1", 2, 0.5)]
    assert points[1]["confidence"] == pytest.approx(0.925)
    expected = (2 * abs(1.0 - 0.6) + 2 * abs(0.5 - 0.925)) / 4
    assert expected_calibration_error(labels, probabilities) == pytest.approx(expected)


def test_ece_matches_its_definition():
    logits, labels = overconfident_set(4, images=500)
    probabilities = scaled_probabilities(logits, 1.0)
    assert expected_calibration_error(labels, probabilities) == pytest.approx(
        reference_ece(labels, probabilities), abs=1e-12)
