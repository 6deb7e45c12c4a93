"""The evaluation scores computed again from their definitions, in plain NumPy: what the
tests hold metrics/evaluate/metrics.json to (finetune.evaluation.scores computes them
with scikit-learn; a wrong average or a wrong column there shows up as a difference here)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest

from finetune.core.paths import (
    EVALUATE_LIVE_DIR,
    MODEL_FILE,
    PREDICTIONS_FILE,
    RELIABILITY_PLOT,
)

EPS = np.finfo(np.float64).eps  # scikit-learn's clip of float64 probabilities


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive's score > a negative's), ties counting half: ROC AUC by its definition."""
    above = (positive[:, None] > negative[None, :]).mean()
    tied = (positive[:, None] == negative[None, :]).mean()
    return float(above + tied / 2)


def _log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """-mean log P(true class), clipped as scikit-learn clips; two classes from P(second)."""
    if probabilities.shape[1] == 2:
        p = np.clip(probabilities[:, 1], EPS, 1 - EPS)
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    rows = probabilities / probabilities.sum(axis=1, keepdims=True)
    truth = np.clip(rows[np.arange(len(labels)), labels], EPS, 1 - EPS)
    return float(-np.mean(np.log(truth)))


def reference_reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10
                          ) -> list[dict[str, float]]:
    """The reliability diagram by its definition: the images whose confidence (the
    predicted class's probability) lies in [i / bins, (i + 1) / bins) (the last bin closed
    at 1); per non-empty bin its mean confidence, the fraction right, the image count."""
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == labels
    points = []
    for index in range(bins):
        low, high = index / bins, (index + 1) / bins
        inside = (confidence >= low) & ((confidence < high) | (index == bins - 1))
        if inside.any():
            points.append({"confidence": float(confidence[inside].mean()),
                           "accuracy": float(right[inside].mean()),
                           "images": int(inside.sum())})
    return points


def reference_ece(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |accuracy - confidence| per bin, weighted by its images."""
    points = reference_reliability(np.asarray(labels), probabilities, bins)
    return sum(point["images"] / len(labels) * abs(point["accuracy"] - point["confidence"])
               for point in points)


def reference_scores(labels: np.ndarray, probabilities: np.ndarray, classes: list[str],
                     calibration: dict | None = None) -> dict[str, float]:
    """metrics.json's flattened keys ("accuracy", "cat/precision", "macro/f1", ...) and
    values, for the images of `labels` with a probability per class (a column each). A class
    with no image among `labels` has no scores of its own, and is not in the averages.
    `calibration` (a calibrated model's: its `temperature`, the `folds` and the
    `uncalibrated` probabilities, at temperature 1) adds the calibration/ keys."""
    labels = np.asarray(labels)
    predicted = probabilities.argmax(axis=1)
    scored = sorted(set(labels.tolist()))
    scores: dict[str, float] = {"images": len(labels),
                                "accuracy": float((predicted == labels).mean()),
                                "log_loss": _log_loss(labels, probabilities)}
    if len(classes) == 2:
        scores["roc_auc"] = _auc(probabilities[labels == 1, 1], probabilities[labels == 0, 1])
    else:
        scores["roc_auc"] = float(np.mean([
            _auc(probabilities[labels == c, c], probabilities[labels != c, c]) for c in scored]))
    totals = {"precision": [], "recall": [], "f1": []}
    for c in scored:
        hits = int(((predicted == c) & (labels == c)).sum())
        claimed, present = int((predicted == c).sum()), int((labels == c).sum())
        precision = hits / claimed if claimed else 0.0
        recall = hits / present
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        for key, value in (("precision", precision), ("recall", recall), ("f1", f1)):
            scores[f"{classes[c]}/{key}"] = value
            totals[key].append(value)
    for key, values in totals.items():
        scores[f"macro/{key}"] = float(np.mean(values))
    if calibration is not None:
        uncalibrated = calibration["uncalibrated"]
        scores |= {"calibration/temperature": calibration["temperature"],
                   "calibration/folds": calibration["folds"],
                   "calibration/ece": reference_ece(labels, probabilities),
                   "calibration/log_loss_uncalibrated": _log_loss(labels, uncalibrated),
                   "calibration/ece_uncalibrated": reference_ece(labels, uncalibrated)}
    return scores


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """{"cat": {"f1": 1.0}} -> {"cat/f1": 1.0}: metrics.json's nesting as dvclive's names."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}/")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def assert_scores_match(metrics: dict, labels: np.ndarray, probabilities: np.ndarray,
                        classes: list[str], train_only: dict[str, int] | None = None,
                        calibration: dict | None = None) -> None:
    """Every score in `metrics` (metrics.json, read) equals its reference value, and no
    score is missing or extra."""
    expected = reference_scores(labels, probabilities, classes, calibration) | {
        f"train_only/{name}": count for name, count in (train_only or {}).items()}
    found = flatten(metrics)
    assert sorted(found) == sorted(expected)
    for key, value in expected.items():
        assert abs(found[key] - value) <= 1e-9 + 1e-6 * abs(value), (key, found[key], value)


def assert_evaluation_is_sound(project: Path) -> None:
    """What `project`'s evaluate stage wrote holds up: it scored exactly the images train
    held out (by path, whether train read the cached features or the pixels), each row of
    metrics/evaluate/predictions.csv is the saved model's prediction for that photo (for a
    calibrated model: with the temperature fitted on the other folds; with `tta: flip`, the
    mean of the predictions for the photo and for its mirror image), every score in
    metrics.json is its definition computed from those rows, and so is the reliability
    diagram."""
    from finetune.core.params import load_params
    from finetune.dataset.decode import load_images
    from finetune.dataset.manifest import open_train_images, read_manifest
    from finetune.dataset.split import train_only_classes
    from finetune.evaluation.predictions import read_predictions
    from finetune.model.assembly import model_temperature
    from finetune.model.saved import load_model, predict_probabilities
    from finetune.training.inputs import feature_data, pixel_data

    with contextlib.chdir(project):
        params = load_params()
        paths, label_names, probabilities, classes = read_predictions(PREDICTIONS_FILE)
        assert feature_data(params).validation_paths == paths
        assert pixel_data(params).validation_paths == paths
        assert label_names == [Path(path).parts[0] for path in paths]
        labels = np.array([classes.index(name) for name in label_names])
        images = read_manifest()
        with open_train_images(images) as read:
            photos = load_images(read, paths, params["image_size"],
                                 "test: decoding the validation images")
        model = load_model(MODEL_FILE)
        calibration = None
        # tta: flip: each photo's mirror image too (the width axis reversed).
        mirrors = photos[:, :, ::-1].astype(np.float32) if params["tta"] == "flip" else None
        if model_temperature(model) is None:
            direct = predict_probabilities(model, photos.astype(np.float32))
            if mirrors is not None:
                direct = (direct + predict_probabilities(model, mirrors)) / 2
        else:
            direct, calibration = cross_fitted(model, photos, labels, params, len(classes),
                                               mirrors)
        # From pixels, not from the float16 features evaluate read: close, not equal.
        assert np.abs(direct - probabilities).max() < 0.02
        train_only = train_only_classes(images.samples, classes, params["val_split"])
        metrics = json.loads((EVALUATE_LIVE_DIR / "metrics.json").read_text())
        points = json.loads(RELIABILITY_PLOT.read_text())
    assert_scores_match(metrics, labels, probabilities, classes, train_only, calibration)
    expected = reference_reliability(labels, probabilities)
    assert [point["images"] for point in points] == [point["images"] for point in expected]
    for point, reference in zip(points, expected, strict=True):
        for key in ("confidence", "accuracy"):
            assert point[key] == pytest.approx(reference[key], rel=1e-9, abs=1e-12), key


def cross_fitted(model: object, photos: np.ndarray, labels: np.ndarray, params: dict,
                 classes: int, mirrors: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """A calibrated model's validation probabilities as evaluate scores them, recomputed:
    each fold's logits (from the pixels) divided by the temperature train's choice gives on
    the other folds' (choose_temperature: tests/unit/evaluation/test_calibration.py); with
    `mirrors` (tta: flip), the probabilities of the photo and of its mirror image under that
    temperature, averaged. And what reference_scores needs of it: the uncalibrated
    probabilities from the cached features' logits, as evaluate reads them."""
    from finetune.core.paths import MIRRORED_TRAIN_FEATURES, TRAIN_FEATURES
    from finetune.features.store import FeatureFile
    from finetune.model.assembly import logits_part, model_temperature
    from finetune.model.calibration import (
        FOLDS,
        choose_temperature,
        scaled_probabilities,
        stratified_folds,
    )
    from finetune.training.inputs import feature_data

    on_pixels = logits_part(model, on_features=False)
    logits = np.asarray(on_pixels.predict_on_batch(photos.astype(np.float32)), dtype=np.float64)
    folds = min(FOLDS, len(labels))
    fold_of = stratified_folds(labels, folds, params["seed"])
    direct = np.empty((len(labels), classes))
    for fold in range(folds):
        held_out = fold_of == fold
        # From the plain logits alone, as train chooses the temperature the model keeps.
        temperature = choose_temperature(logits[~held_out], labels[~held_out],
                                         params["seed"]).temperature
        direct[held_out] = scaled_probabilities(logits[held_out], temperature)
        if mirrors is not None:
            mirrored = np.asarray(on_pixels.predict_on_batch(mirrors[held_out]), dtype=np.float64)
            direct[held_out] = (direct[held_out]
                                + scaled_probabilities(mirrored, temperature)) / 2
    validation = feature_data(params).validation
    uncalibrated = [scaled_probabilities(logits_part(model).predict_on_batch(
                        FeatureFile(path)[validation.rows].astype(np.float32)), 1.0)
                    for path in (TRAIN_FEATURES, MIRRORED_TRAIN_FEATURES)[
                        :1 if mirrors is None else 2]]
    return direct, {"temperature": model_temperature(model), "folds": folds,
                    "uncalibrated": sum(uncalibrated) / len(uncalibrated)}
