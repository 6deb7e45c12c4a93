"""Validation scores, logged through dvclive so `dvc metrics` and `dvc plots` read them.

Two classes are scored as the competition does, on P(second class) (P(dog)). More are
scored on the probability of each class: the multi-class log loss, one-vs-rest ROC AUC
averaged over the classes (macro), and ROC and precision-recall curves of every (image,
class) pair pooled one-vs-rest (the micro average), so the plots keep one curve each.

A class with no validation image (too few images to hold one out: it trains only, see
finetune.dataset.split.held_out_count) has no scores of its own, and the macro averages
are over the classes scored; metrics.json lists it under `train_only` with its image count.

Every run draws a reliability diagram (finetune.evaluation.calibration). A calibrated
model (`calibration: temperature`) is scored on its cross-fitted probabilities, every score
above included, and metrics.json adds `calibration/`: the model's temperature, the
number of folds, the expected calibration error, and the log loss and ECE of the same
network without its temperature. With `calibration: none` metrics.json is what it was.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from finetune.core.paths import RELIABILITY_PLOT
from finetune.evaluation.calibration import CrossFit, expected_calibration_error, reliability

HEADLINE = ("accuracy", "log_loss", "roc_auc")  # what the stage prints
DIGITS = 6  # of the printed scores: the metrics file keeps every digit


def log_scores(live: Any, labels: np.ndarray, probabilities: np.ndarray, classes: list[str],
               train_only: dict[str, int] | None = None, calibrated: CrossFit | None = None,
               temperature: float | None = None) -> None:
    """Accuracy, log loss, ROC AUC and per-class precision/recall/F1, with their plots, from
    a probability per class (a column each); `train_only`: the classes with no validation
    image, and their image counts; `calibrated`: the cross-fitting `probabilities` come
    from, for a model of that `temperature`."""
    from sklearn import metrics

    predicted = probabilities.argmax(axis=1)
    every_label = list(range(len(classes)))
    scored = sorted({int(label) for label in labels})
    live.log_metric("images", len(labels), plot=False)
    live.log_metric("accuracy", metrics.accuracy_score(labels, predicted), plot=False)
    log_loss = log_loss_of(labels, probabilities)
    if len(classes) == 2:  # on P(second class), the competition's way
        scores, truth = probabilities[:, 1], labels
        roc_auc = metrics.roc_auc_score(labels, scores)
    else:  # every (image, class) pair, one-vs-rest
        scores, truth = probabilities.ravel(), np.eye(len(classes))[labels].ravel()
        if len(scored) == len(classes):
            roc_auc = metrics.roc_auc_score(labels, probabilities, multi_class="ovr",
                                            average="macro", labels=every_label)
        else:  # scikit-learn's one-vs-rest needs every class among the labels
            roc_auc = float(np.mean([metrics.roc_auc_score(labels == label, probabilities[:, label])
                                     for label in scored]))
    live.log_metric("log_loss", log_loss, plot=False)
    live.log_metric("roc_auc", roc_auc, plot=False)
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(
        labels, predicted, labels=scored, zero_division=0)
    for index, label in enumerate(scored):
        live.log_metric(f"{classes[label]}/precision", precision[index], plot=False)
        live.log_metric(f"{classes[label]}/recall", recall[index], plot=False)
        live.log_metric(f"{classes[label]}/f1", f1[index], plot=False)
    for key, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        live.log_metric(f"macro/{key}", float(np.mean(values)), plot=False)
    for name, images in (train_only or {}).items():
        live.log_metric(f"train_only/{name}", images, plot=False)
    if calibrated is not None:
        live.log_metric("calibration/temperature", temperature, plot=False)
        live.log_metric("calibration/folds", len(calibrated.temperatures), plot=False)
        live.log_metric("calibration/ece", expected_calibration_error(labels, probabilities),
                        plot=False)
        live.log_metric("calibration/log_loss_uncalibrated",
                        log_loss_of(labels, calibrated.uncalibrated), plot=False)
        live.log_metric("calibration/ece_uncalibrated",
                        expected_calibration_error(labels, calibrated.uncalibrated), plot=False)

    live.log_sklearn_plot("confusion_matrix", [classes[i] for i in labels],
                          [classes[i] for i in predicted], name="confusion_matrix.json")
    live.log_sklearn_plot("roc", truth, scores, name="roc.json")
    live.log_sklearn_plot("precision_recall", truth, scores, name="precision_recall.json")
    live.log_plot(RELIABILITY_PLOT.stem, reliability(labels, probabilities), x="confidence",
                  y=["accuracy", "confidence"])


def log_loss_of(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Log loss: on P(second class) for two classes (the competition's), else multi-class."""
    from sklearn import metrics

    every_label = list(range(probabilities.shape[1]))
    if len(every_label) == 2:
        return metrics.log_loss(labels, probabilities[:, 1], labels=every_label)
    # A float32 softmax's rows sum to 1 within ~1e-7, not within float64's precision,
    # which scikit-learn checks (and warns about): renormalise them in float64.
    rows = probabilities / probabilities.sum(axis=1, keepdims=True)
    return metrics.log_loss(labels, rows, labels=every_label)


def headline(summary: dict[str, Any]) -> dict[str, float]:
    """The headline scores of a summary, rounded for people (no float noise such as
    0.9947999999999999)."""
    return {key: round(float(summary[key]), DIGITS) for key in HEADLINE}
