"""The evaluation scores computed again from their definitions, in plain NumPy: what the
tests hold metrics/evaluate/metrics.json to (finetune.evaluation.scores computes them
with scikit-learn; a wrong average or a wrong column there shows up as a difference here)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from finetune.core.paths import EVALUATE_LIVE_DIR, MODEL_FILE, PREDICTIONS_FILE, TRAIN_DIR

EPS = np.finfo(np.float64).eps  # scikit-learn's clip of float64 probabilities


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive's score > a negative's), ties counting half: ROC AUC by its definition."""
    above = (positive[:, None] > negative[None, :]).mean()
    tied = (positive[:, None] == negative[None, :]).mean()
    return float(above + tied / 2)


def reference_scores(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]
                     ) -> dict[str, float]:
    """metrics.json's flattened keys ("accuracy", "cat/precision", "macro/f1", ...) and
    values, for the images of `labels` with a probability per class (a column each). A class
    with no image among `labels` has no scores of its own, and is not in the averages."""
    labels = np.asarray(labels)
    predicted = probabilities.argmax(axis=1)
    scored = sorted(set(labels.tolist()))
    scores: dict[str, float] = {"images": len(labels),
                                "accuracy": float((predicted == labels).mean())}
    if len(classes) == 2:
        p = np.clip(probabilities[:, 1], EPS, 1 - EPS)
        scores["log_loss"] = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
        scores["roc_auc"] = _auc(probabilities[labels == 1, 1], probabilities[labels == 0, 1])
    else:
        rows = probabilities / probabilities.sum(axis=1, keepdims=True)
        truth = np.clip(rows[np.arange(len(labels)), labels], EPS, 1 - EPS)
        scores["log_loss"] = float(-np.mean(np.log(truth)))
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
                        classes: list[str], train_only: dict[str, int] | None = None) -> None:
    """Every score in `metrics` (metrics.json, read) equals its reference value, and no
    score is missing or extra."""
    expected = reference_scores(labels, probabilities, classes) | {
        f"train_only/{name}": count for name, count in (train_only or {}).items()}
    found = flatten(metrics)
    assert sorted(found) == sorted(expected)
    for key, value in expected.items():
        assert abs(found[key] - value) <= 1e-9 + 1e-6 * abs(value), (key, found[key], value)


def assert_evaluation_is_sound(project: Path) -> None:
    """What `project`'s evaluate stage wrote holds up: it scored exactly the images train
    held out (by path, whether train read the cached features or the pixels), each row of
    metrics/evaluate/predictions.csv is the saved model's prediction for that photo, and
    every score in metrics.json is its definition computed from those rows."""
    from finetune.core.params import load_params
    from finetune.dataset.decode import load_images
    from finetune.dataset.split import list_samples, train_only_classes
    from finetune.evaluation.predictions import read_predictions
    from finetune.model.saved import load_model, predict_probabilities
    from finetune.training.inputs import feature_data, pixel_data

    with contextlib.chdir(project):
        params = load_params()
        paths, label_names, probabilities, classes = read_predictions(PREDICTIONS_FILE)
        assert feature_data(params).validation_paths == paths
        assert pixel_data(params).validation_paths == paths
        assert label_names == [Path(path).parts[0] for path in paths]
        photos = load_images([str(TRAIN_DIR / path) for path in paths], params["image_size"],
                             "test: decoding the validation images")
        # From pixels, not from the float16 features evaluate read: close, not equal.
        direct = predict_probabilities(load_model(MODEL_FILE), photos.astype(np.float32))
        assert np.abs(direct - probabilities).max() < 0.02
        train_only = train_only_classes(list_samples(TRAIN_DIR), classes, params["val_split"])
        metrics = json.loads((EVALUATE_LIVE_DIR / "metrics.json").read_text())
    labels = np.array([classes.index(name) for name in label_names])
    assert_scores_match(metrics, labels, probabilities, classes, train_only)
