"""Stage evaluate: score the trained model on the validation split.

It runs the layers above the frozen part on the validation images' cached
activations (data/features): the same split, by path, as train's.

Writes metrics/evaluate/metrics.json (accuracy, log loss, the competition's
metric, ROC AUC, per-class precision/recall/F1) and plot data for a confusion
matrix, ROC and precision-recall curves, plus a grid of the most confident
mistakes, all through dvclive so `dvc metrics` and `dvc plots` read them.
"""

from __future__ import annotations

import sys

import numpy as np

from stages.activations import FeatureFile, predict_rows, read_index
from stages.dataset import paths_of, split_samples
from stages.errors import run
from stages.labels import CLASS_NAMES
from stages.network import load_model, trained_part
from stages.params import load_params
from stages.paths import EVALUATE_LIVE_DIR, MODEL_FILE, TRAIN_DIR, TRAIN_FEATURES

MISTAKES_SHOWN = 16


def mistakes_figure(paths: list[str], labels: np.ndarray, dog_probability: np.ndarray):
    """A grid of the validation images the model got wrong with the most confidence."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    wrongness = np.abs(dog_probability - labels)
    worst = [i for i in np.argsort(-wrongness, kind="stable") if wrongness[i] > 0.5]
    worst = worst[:MISTAKES_SHOWN]
    columns = 4
    rows = max(1, -(-len(worst) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, worst, strict=False):
        axis.imshow(plt.imread(paths[index]))
        axis.set_title(f"{paths[index].rsplit('/', 1)[-1]}\ntrue {CLASS_NAMES[labels[index]]}, "
                       f"P(dog) = {dog_probability[index]:.3f}", fontsize=9)
    if not worst:
        axes.flat[0].text(0, 0.5, "no misclassified validation images", fontsize=12)
    figure.suptitle(f"Most confident mistakes ({len(worst)} shown)")
    figure.tight_layout()
    return figure


def main() -> None:
    params = load_params()
    from dvclive import Live
    from sklearn import metrics

    index = read_index(params)
    row_of = {path: row for row, (path, _) in enumerate(index["train"])}
    _, val_files = split_samples(index["train"], params["val_split"], params["seed"])
    model = trained_part(load_model(MODEL_FILE))
    dog_probability = predict_rows(model, FeatureFile(TRAIN_FEATURES),
                                   np.array([row_of[path] for path, _ in val_files]),
                                   params["batch_size"], "evaluate: validation images")
    labels = np.array([label for _, label in val_files])
    predicted = (dog_probability > 0.5).astype(int)

    with Live(str(EVALUATE_LIVE_DIR), dvcyaml=False, save_dvc_exp=False) as live:
        live.log_metric("images", len(labels), plot=False)
        live.log_metric("accuracy", metrics.accuracy_score(labels, predicted), plot=False)
        live.log_metric("log_loss", metrics.log_loss(labels, dog_probability, labels=[0, 1]),
                        plot=False)
        live.log_metric("roc_auc", metrics.roc_auc_score(labels, dog_probability), plot=False)
        precision, recall, f1, _ = metrics.precision_recall_fscore_support(
            labels, predicted, labels=[0, 1], zero_division=0)
        for index, name in enumerate(CLASS_NAMES):
            live.log_metric(f"{name}/precision", precision[index], plot=False)
            live.log_metric(f"{name}/recall", recall[index], plot=False)
            live.log_metric(f"{name}/f1", f1[index], plot=False)

        live.log_sklearn_plot("confusion_matrix", [CLASS_NAMES[i] for i in labels],
                              [CLASS_NAMES[i] for i in predicted], name="confusion_matrix.json")
        live.log_sklearn_plot("roc", labels, dog_probability, name="roc.json")
        live.log_sklearn_plot("precision_recall", labels, dog_probability,
                              name="precision_recall.json")
        photos = [str(TRAIN_DIR / path) for path in paths_of(val_files)]
        live.log_image("mistakes.png", mistakes_figure(photos, labels,
                                                       dog_probability))
        summary = {key: live.summary[key] for key in ("accuracy", "log_loss", "roc_auc")}
    print(f"evaluate: {len(labels)} validation images: {summary}", file=sys.stderr)


if __name__ == "__main__":
    run(main)
