"""Which images train and which validate: the split every stage agrees on."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from stages.errors import StageError
from stages.labels import CLASS_NAMES

# What tf.io.decode_image reads (JPEG XL and WebP too, but Kaggle ships .jpg).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp"})
Sample = tuple[str, int]  # (image path, label: index in CLASS_NAMES)


def split_files(train_dir: Path, val_split: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split each class folder into train and validation files, the same way every time.

    The split is stratified (each class loses the same fraction to validation) and
    depends only on the file names, `val_split` and `seed`, so train and evaluate
    see the same validation images.
    """
    rng = random.Random(seed)
    train: list[Sample] = []
    validation: list[Sample] = []
    for label, name in enumerate(CLASS_NAMES):
        folder = train_dir / name
        if not folder.is_dir():
            raise StageError(f"{folder} not found: run `dvc repro split_classes` first")
        files = sorted(str(path) for path in folder.iterdir() if path.is_file())
        rng.shuffle(files)
        held_out = round(len(files) * val_split)
        if held_out == 0 or held_out == len(files):
            empty = "validation" if held_out == 0 else "training"
            raise StageError(f"val_split: {val_split} leaves no {empty} images "
                             f"of the {len(files)} in {folder}")
        validation += [(path, label) for path in files[:held_out]]
        train += [(path, label) for path in files[held_out:]]
    rng.shuffle(train)
    return train, validation


def paths_of(samples: list[Sample]) -> list[str]:
    return [path for path, _ in samples]


def labels_of(samples: list[Sample]) -> np.ndarray:
    """The labels as the model's targets: one float32 column."""
    return np.array([[label] for _, label in samples], dtype=np.float32)
