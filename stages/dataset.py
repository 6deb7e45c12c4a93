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


def list_samples(train_dir: Path) -> list[Sample]:
    """Every image of the class folders, class by class, sorted by path."""
    samples: list[Sample] = []
    for label, name in enumerate(CLASS_NAMES):
        folder = train_dir / name
        if not folder.is_dir():
            raise StageError(f"{folder} not found: run `dvc repro split_classes` first")
        samples += [(path, label) for path in
                    sorted(str(path) for path in folder.iterdir() if path.is_file())]
    return samples


def split_samples(samples: list[Sample], val_split: float, seed: int
                  ) -> tuple[list[Sample], list[Sample]]:
    """Split the samples into train and validation, the same way every time.

    The split is stratified (each class loses the same fraction to validation) and
    depends only on the paths, `val_split` and `seed`, so train and evaluate see the
    same validation images, whether they read the class folders or the features.
    """
    rng = random.Random(seed)
    train: list[Sample] = []
    validation: list[Sample] = []
    for label, name in enumerate(CLASS_NAMES):
        files = sorted(path for path, sample_label in samples if sample_label == label)
        rng.shuffle(files)
        held_out = round(len(files) * val_split)
        if held_out == 0 or held_out == len(files):
            empty = "validation" if held_out == 0 else "training"
            raise StageError(f"val_split: {val_split} leaves no {empty} images "
                             f"of the {len(files)} of class {name}")
        validation += [(path, label) for path in files[:held_out]]
        train += [(path, label) for path in files[held_out:]]
    rng.shuffle(train)
    return train, validation


def split_files(train_dir: Path, val_split: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split the class folders of `train_dir` (see split_samples)."""
    return split_samples(list_samples(train_dir), val_split, seed)


def paths_of(samples: list[Sample]) -> list[str]:
    return [path for path, _ in samples]


def labels_of(samples: list[Sample]) -> np.ndarray:
    """The labels as the model's targets: one float32 column."""
    return np.array([[label] for _, label in samples], dtype=np.float32)
