"""A model's outputs as a probability per class, in NumPy only: what the Keras model and
every exported file (finetune.model.export) give, read the same way, with or without
TensorFlow installed (the ONNX predict, finetune.model.onnx_runtime); and test-time
augmentation's average of an image's probabilities with its mirror image's (`tta: flip`:
evaluate, submit, predict --tta flip)."""

from __future__ import annotations

import numpy as np


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """The model's outputs as a probability per class (a column each), float64: a sigmoid's
    single column P(second class) becomes the two columns 1 - p, p."""
    outputs = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    return np.hstack([1 - outputs, outputs]) if outputs.shape[1] == 1 else outputs


def mirror_average(probabilities: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """Each image's probability per class averaged with its mirror image's (`tta: flip`),
    float64: rows of probabilities in, rows of probabilities out (each still sums to 1)."""
    return (np.asarray(probabilities, dtype=np.float64)
            + np.asarray(mirrored, dtype=np.float64)) / 2
