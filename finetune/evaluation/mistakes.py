"""The grid of the validation images the model got wrong with the most confidence, each
with the Grad-CAM heat map of the class it said overlaid (finetune.evaluation.heat_maps)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from finetune.evaluation.heat_maps import TITLE, overlay, photo_heat_maps, read_photo

MISTAKES_SHOWN = 16


def most_confident_mistakes(labels: np.ndarray, probabilities: np.ndarray,
                            shown: int = MISTAKES_SHOWN) -> list[int]:
    """The indices of the `shown` misclassified images of highest confidence, highest first."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    worst = [int(i) for i in np.argsort(-confidence, kind="stable") if predicted[i] != labels[i]]
    return worst[:shown]


def mistakes_figure(names: list[str], photos: list[bytes], labels: np.ndarray,
                    probabilities: np.ndarray, classes: list[str], heat_maps: np.ndarray) -> Any:
    """A grid of the mistakes most_confident_mistakes chose (`names`, encoded `photos`,
    `labels`, `probabilities` and `heat_maps`: theirs, in its order), each photo with the
    heat map of the predicted class overlaid."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    columns = 4
    rows = max(1, -(-len(names) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for index, axis in enumerate(axes.flat[:len(names)]):
        axis.imshow(overlay(read_photo(photos[index]), heat_maps[index]))
        axis.set_title(f"{names[index].rsplit('/', 1)[-1]}\ntrue {classes[labels[index]]}, "
                       f"said {classes[predicted[index]]} ({confidence[index]:.3f})", fontsize=9)
    if not names:
        axes.flat[0].text(0, 0.5, "no misclassified validation images", fontsize=12)
    figure.suptitle(f"Most confident mistakes ({len(names)} shown; {TITLE})")
    figure.tight_layout()
    return figure


def mistakes_grid(model: Any, read: Callable[[str], bytes], names: list[str],
                  labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> Any:
    """The grid of the most confident of these mistakes (images `names`, `read(name)`:
    its bytes), each with the heat map of the class said: the full `model` on the shown
    photos' pixels only (at most MISTAKES_SHOWN, the only ones read)."""
    shown = most_confident_mistakes(labels, probabilities)
    shown_names = [names[i] for i in shown]
    photos = [read(name) for name in shown_names]
    heat_maps = photo_heat_maps(model, photos, shown_names, probabilities[shown].argmax(axis=1))
    return mistakes_figure(shown_names, photos, labels[shown], probabilities[shown], classes,
                           heat_maps)
