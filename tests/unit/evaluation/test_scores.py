"""Validation scores (finetune.evaluation.scores), logged through a real dvclive Live."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from dvclive import Live
from sklearn.metrics import log_loss

from finetune.evaluation.scores import headline, log_scores
from tests.support.scores import assert_scores_match


def softmax_rows(count: int, classes: int) -> np.ndarray:
    """Probabilities as a float32 softmax gives them: rows summing to 1 within ~1e-7."""
    logits = np.random.default_rng(0).normal(size=(count, classes)).astype(np.float32)
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def test_many_classes_are_scored_without_warnings_on_float32_softmax_rows(tmp_path):
    rows = softmax_rows(60, 5)
    probabilities = rows.astype(np.float64)  # as class_probabilities hands them over
    assert not np.allclose(probabilities.sum(axis=1), 1, rtol=1.5e-8, atol=0)  # the trap
    labels = np.arange(60) % 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn's "do not sum to one" would fail here
        with Live(str(tmp_path / "live"), dvcyaml=False, save_dvc_exp=False) as live:
            log_scores(live, labels, probabilities, [f"c{i}" for i in range(5)])
    logged = json.loads((tmp_path / "live" / "metrics.json").read_text())
    exact = -np.mean(np.log(probabilities[np.arange(60), labels]
                            / probabilities.sum(axis=1)))
    assert abs(logged["log_loss"] - exact) < 1e-12
    assert abs(logged["log_loss"] - log_loss(labels, probabilities.astype(np.float32))) < 1e-6


def test_the_headline_is_rounded_for_people():
    summary = {"accuracy": 0.955, "log_loss": 0.12842175961471955,
               "roc_auc": 0.9947999999999999, "images": 200}
    assert headline(summary) == {"accuracy": 0.955, "log_loss": 0.128422, "roc_auc": 0.9948}
    assert str(headline(summary)) == "{'accuracy': 0.955, 'log_loss': 0.128422, 'roc_auc': 0.9948}"


def logged(tmp_path, labels, probabilities, classes, train_only=None) -> dict:
    with Live(str(tmp_path / "live"), dvcyaml=False, save_dvc_exp=False) as live:
        log_scores(live, labels, probabilities, classes, train_only)
    return json.loads((tmp_path / "live" / "metrics.json").read_text())


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_every_score_is_its_definition(tmp_path, classes):
    """Each logged number equals a plain-NumPy computation from its definition (a macro
    average of one class, a swapped column, a wrong average would differ)."""
    rng = np.random.default_rng(classes)
    labels = rng.integers(0, classes, 90)
    # Informative but imperfect probabilities, so that every score is in (0, 1).
    logits = rng.normal(size=(90, classes)) + 1.5 * np.eye(classes)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if classes == 2:  # scored on P(second class): with ties, which count half in ROC AUC
        second = np.round(probabilities[:, 1], 1)
        probabilities = np.stack([1 - second, second], axis=1)
    names = [f"c{i}" for i in range(classes)]
    metrics = logged(tmp_path, labels, probabilities, names)
    assert_scores_match(metrics, labels, probabilities, names)
    per_class_f1 = [metrics[name]["f1"] for name in names]
    assert len(set(per_class_f1)) > 1  # the macro average is a real average here


def test_a_class_with_no_validation_image_is_listed_not_scored(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.choice([0, 1, 3], 60)  # no image of class 2: it trained only
    logits = rng.normal(size=(60, 4)) + 2 * np.eye(4)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = ["a", "b", "rare", "d"]
    metrics = logged(tmp_path, labels, probabilities, names, {"rare": 2})
    assert "rare" not in {key for key in metrics if key != "train_only"}
    assert metrics["train_only"] == {"rare": 2}
    assert_scores_match(metrics, labels, probabilities, names, {"rare": 2})
