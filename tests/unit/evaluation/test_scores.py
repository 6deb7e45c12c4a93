"""Validation scores (finetune.evaluation.scores), logged through a real dvclive Live."""

from __future__ import annotations

import json
import warnings

import numpy as np
from dvclive import Live
from sklearn.metrics import log_loss

from finetune.evaluation.scores import headline, log_scores


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
