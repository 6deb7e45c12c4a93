"""The trained model as saved: loading it, the image size and class names it carries, and
its outputs as a probability per class."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from finetune.core.errors import StageError
from finetune.model import layers  # noqa: F401  registers the custom layers load_model reads
from finetune.model.probabilities import class_probabilities


def load_model(model_file: Path) -> keras.Model:
    """The trained model, for prediction (no optimizer: compile=False)."""
    if not model_file.is_file():
        raise StageError(f"{model_file} not found: run `dvc repro train`")
    if not zipfile.is_zipfile(model_file):
        raise StageError(f"{model_file} is not a .keras archive (truncated?): "
                         "run `dvc repro -f train`")
    try:
        return keras.models.load_model(model_file, compile=False)
    except (OSError, ValueError, KeyError) as error:
        raise StageError(f"cannot load {model_file} ({str(error).splitlines()[0]}): "
                         "run `dvc repro -f train`") from None


def model_image_size(model: keras.Model, model_file: Path) -> int:
    """The square image size the model takes: what it was trained with."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise StageError(f"{model_file} takes input of shape {shape}, not square RGB images")
    return int(shape[1])


def model_class_names(model: keras.Model) -> list[str]:
    """The class names saved in the model, in the order of its outputs."""
    if "class_names" in [layer.name for layer in model.layers]:
        return model.get_layer("class_names").names
    if model.output_shape[-1] == 1:  # a model saved before the names were: cats vs dogs
        return ["cat", "dog"]
    raise StageError(f"{model.name} does not name its {model.output_shape[-1]} classes: "
                     "run `dvc repro -f train`")


def check_model_classes(model: keras.Model, model_file: Path, classes: list[str]) -> None:
    """Refuse a model whose outputs are other classes than the features' (a stage run by
    hand after the data changed, the model not retrained): its columns would be read as
    the wrong classes, or there would be one too few."""
    names = model_class_names(model)
    if names != classes:
        raise StageError(f"{model_file} was trained on the classes {names}, the features are "
                         f"of {classes}: run `dvc repro`")


def predict_probabilities(model: keras.Model, images: Any) -> np.ndarray:
    """A probability per class (see class_probabilities) for a batch of raw 0-255 float32
    pixels."""
    # predict_on_batch runs the compiled predict step without building a dataset per call.
    return class_probabilities(model.predict_on_batch(images))
