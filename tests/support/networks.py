"""A small network for the model tests: MobileNet (alpha 0.25) at SIZE px with its
params, and drawn photos as the pixels it takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finetune.core.params import load_params
from tests.support.photos import photo_pixels
from tests.support.shared import ROOT

CLASSES = ["cat", "dog"]  # the model's classes, as split_classes names them

SIZE = 96


def mobilenet_params(**overrides: object) -> dict:
    params = load_params(ROOT / "params.yaml")
    params.update(backbone="mobilenet", alpha=0.25, image_size=SIZE, head="gap", dense_units=8,
                  cut_layer="conv_pw_13_relu", unfreeze_after="conv_pw_11_relu")
    params.update(overrides)
    return params


def drawn_images(sample_dir: Path, count: int) -> np.ndarray:
    """`count` drawn photos of both classes as raw 0-255 float32 pixels at SIZE px."""
    photos = sorted((sample_dir / "train").glob("*.jpg"))[1::3][:count]
    return np.stack([photo_pixels(photo, SIZE) for photo in photos])
