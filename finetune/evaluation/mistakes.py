"""The grid of the validation images the model got wrong with the most confidence."""

from __future__ import annotations

from typing import Any

import numpy as np

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
