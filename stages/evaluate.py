"""Stage evaluate: score the trained model on the validation split.

It runs the layers above the frozen part on the validation images' cached
activations (data/features): the same split, by path, as train's.

Writes metrics/evaluate/metrics.json (accuracy, log loss, ROC AUC, per-class
precision/recall/F1 and their macro average) and plot data for a confusion
matrix, ROC and precision-recall curves, plus a grid of the most confident
mistakes, all through dvclive so `dvc metrics` and `dvc plots` read them.

Two classes are scored as the competition does, on P(second class) (P(dog)).
More are scored on the probability of each class: the multi-class log loss,
one-vs-rest ROC AUC averaged over the classes (macro), and ROC and
precision-recall curves of every (image, class) pair pooled one-vs-rest (the
micro average), so the plots keep one curve each.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from stages.activations import FeatureFile, predict_rows, read_index
from stages.compute import configure
from stages.dataset import check_manifest, list_samples, paths_of, split_samples
from stages.errors import run
from stages.network import class_probabilities, load_model, trained_part
from stages.params import load_params
from stages.paths import (
    EVALUATE_LIVE_DIR,
    MODEL_FILE,
    TRAIN_DIR,
    TRAIN_FEATURES,
    TRAIN_MANIFEST,
)

MISTAKES_SHOWN = 16


def mistakes_figure(paths: list[str], labels: np.ndarray, probabilities: np.ndarray,
                    classes: list[str]) -> Any:
    """A grid of the validation images the model got wrong with the most confidence."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    worst = [i for i in np.argsort(-confidence, kind="stable") if predicted[i] != labels[i]]
    worst = worst[:MISTAKES_SHOWN]
    columns = 4
    rows = max(1, -(-len(worst) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, worst, strict=False):
        axis.imshow(plt.imread(paths[index]))
        axis.set_title(f"{paths[index].rsplit('/', 1)[-1]}\ntrue {classes[labels[index]]}, "
                       f"said {classes[predicted[index]]} ({confidence[index]:.3f})", fontsize=9)
    if not worst:
        axes.flat[0].text(0, 0.5, "no misclassified validation images", fontsize=12)
    figure.suptitle(f"Most confident mistakes ({len(worst)} shown)")
    figure.tight_layout()
    return figure


def log_scores(live: Any, labels: np.ndarray, probabilities: np.ndarray, classes: list[str]
               ) -> None:
    """Accuracy, log loss, ROC AUC and per-class precision/recall/F1, with their plots, from
    a probability per class (a column each)."""
    from sklearn import metrics

    predicted = probabilities.argmax(axis=1)
    every_label = list(range(len(classes)))
    live.log_metric("images", len(labels), plot=False)
    live.log_metric("accuracy", metrics.accuracy_score(labels, predicted), plot=False)
    if len(classes) == 2:  # on P(second class), the competition's way
        scores, truth = probabilities[:, 1], labels
        log_loss = metrics.log_loss(labels, scores, labels=every_label)
        roc_auc = metrics.roc_auc_score(labels, scores)
    else:  # every (image, class) pair, one-vs-rest
        scores, truth = probabilities.ravel(), np.eye(len(classes))[labels].ravel()
        log_loss = metrics.log_loss(labels, probabilities, labels=every_label)
        roc_auc = metrics.roc_auc_score(labels, probabilities, multi_class="ovr",
                                        average="macro", labels=every_label)
    live.log_metric("log_loss", log_loss, plot=False)
    live.log_metric("roc_auc", roc_auc, plot=False)
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(
        labels, predicted, labels=every_label, zero_division=0)
    for index, name in enumerate(classes):
        live.log_metric(f"{name}/precision", precision[index], plot=False)
        live.log_metric(f"{name}/recall", recall[index], plot=False)
        live.log_metric(f"{name}/f1", f1[index], plot=False)
    for key, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        live.log_metric(f"macro/{key}", float(np.mean(values)), plot=False)

    live.log_sklearn_plot("confusion_matrix", [classes[i] for i in labels],
                          [classes[i] for i in predicted], name="confusion_matrix.json")
    live.log_sklearn_plot("roc", truth, scores, name="roc.json")
    live.log_sklearn_plot("precision_recall", truth, scores, name="precision_recall.json")


def main() -> None:
    params = load_params()
    from dvclive import Live

    index = read_index(params)
    # The mistakes grid shows photos of data/train: the ones the features were made of.
    check_manifest(TRAIN_DIR, list_samples(TRAIN_DIR), TRAIN_MANIFEST)
    classes = index["classes"]
    row_of = {path: row for row, (path, _) in enumerate(index["train"])}
    _, val_files = split_samples(index["train"], classes, params["val_split"], params["seed"])
    configure(params)
    model = trained_part(load_model(MODEL_FILE))
    probabilities = class_probabilities(predict_rows(
        model, FeatureFile(TRAIN_FEATURES), np.array([row_of[path] for path, _ in val_files]),
        params["batch_size"], "evaluate: validation images"))
    labels = np.array([label for _, label in val_files])

    with Live(str(EVALUATE_LIVE_DIR), dvcyaml=False, save_dvc_exp=False) as live:
        log_scores(live, labels, probabilities, classes)
        photos = [str(TRAIN_DIR / path) for path in paths_of(val_files)]
        live.log_image("mistakes.png", mistakes_figure(photos, labels, probabilities, classes))
        summary = {key: live.summary[key] for key in ("accuracy", "log_loss", "roc_auc")}
    print(f"evaluate: {len(labels)} validation images of {len(classes)} classes: {summary}",
          file=sys.stderr)


if __name__ == "__main__":
    run(main)
