"""Which labelled images train and which validate.

The classes are those data/train.json lists (finetune.dataset.manifest), sorted: label i
is the i-th name. For Kaggle's competition that is ("cat", "dog"), so dog is label 1 and
a two-class model's sigmoid is P(dog).
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np

from finetune.core.errors import StageError

Sample = tuple[str, int]  # (image name: <class>/<path>, label: index in the sorted class names)


def held_out_count(images: int, val_split: float) -> int:
    """How many of a class's `images` go to validation: its `val_split` share, rounded,
    but never all of them (every class keeps a training image). A class too small for
    its share to round to one image (one or two images at 0.2) trains only."""
    return max(0, min(round(images * val_split), images - 1))


def train_only_classes(samples: list[Sample], classes: list[str], val_split: float
                       ) -> dict[str, int]:
    """The classes that hold out no validation image at `val_split`, with their image
    counts: the model learns them, but evaluate cannot score them."""
    counts = Counter(label for _, label in samples)
    return {name: counts[label] for label, name in enumerate(classes)
            if held_out_count(counts[label], val_split) == 0}


def train_only_note(train_only: dict[str, int], val_split: float) -> str:
    """What the stages print about train_only_classes' result."""
    listed = ", ".join(f"{name} ({count} image{'s' * (count != 1)})"
                       for name, count in train_only.items())
    return (f"too few images to hold one out at val_split {val_split}, so trained on and not "
            f"scored: {listed}")


def split_samples(samples: list[Sample], classes: list[str], val_split: float, seed: int
                  ) -> tuple[list[Sample], list[Sample]]:
    """Split the samples into train and validation, the same way every time.

    The split is stratified (each class loses the same fraction to validation, see
    held_out_count) and depends only on the names, `val_split` and `seed`, so train and
    evaluate see the same validation images, whether they read the pixels or the
    features. Scores need validation images of two classes at least.
    """
    rng = random.Random(seed)
    train: list[Sample] = []
    validation: list[Sample] = []
    for label, name in enumerate(classes):
        files = sorted(name for name, sample_label in samples if sample_label == label)
        if not files:
            raise StageError(f"class {name} has no images: add some, or remove its folder "
                             "and run `dvc repro -f split_classes`")
        rng.shuffle(files)
        held_out = held_out_count(len(files), val_split)
        validation += [(path, label) for path in files[:held_out]]
        train += [(path, label) for path in files[held_out:]]
    if len({label for _, label in validation}) < 2:
        small = train_only_classes(samples, classes, val_split)
        name, count = min(small.items(), key=lambda item: item[1])
        raise StageError(f"val_split: {val_split} holds out no image of class {name} (of its "
                         f"{count}), and scores need validation images of two classes: raise "
                         "val_split or add images")
    rng.shuffle(train)
    return train, validation


def paths_of(samples: list[Sample]) -> list[str]:
    return [path for path, _ in samples]


def labels_of(samples: list[Sample]) -> np.ndarray:
    """The labels as the model's targets: one float32 column (the class index: 0/1 for a
    sigmoid's binary cross-entropy, 0..N-1 for a softmax's sparse categorical one)."""
    return np.array([[label] for _, label in samples], dtype=np.float32)
