"""finetune.dataset.split: the train/validation split of the images data/train.json
lists (finetune.dataset.manifest), by class. Classes are sorted; the split is stratified,
complete, and a function of the image names, val_split and seed alone, so train and
evaluate agree on it.

The split only reads names, so most tests make up (name, label) samples; those about what
the manifest gives it write one (and empty or made-up bytes stand in for images)."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from finetune.core.errors import StageError
from finetune.dataset.manifest import read_manifest
from finetune.dataset.split import (
    Sample,
    labels_of,
    split_samples,
    train_only_classes,
    train_only_note,
)
from tests.support.projects import write_train_images

CLASS_NAMES = ("cat", "dog")

SEEDS = (0, 1, 2, 7, 1234, 2024)
VAL_SPLITS = (0.1, 0.2, 0.25, 0.5)


def make_samples(counts: dict[str, int]) -> tuple[list[Sample], list[str]]:
    """`counts[name]` images "<name>/<name>.N.jpg" of each class, labelled by its index
    in the sorted class names, as data/train.json gives them (class by class, by name);
    and the class names."""
    classes = sorted(counts)
    samples = [(name, label) for label, class_name in enumerate(classes)
               for name in sorted(f"{class_name}/{class_name}.{number}.jpg"
                                  for number in range(counts[class_name]))]
    return samples, classes


def split_counts(counts: dict[str, int], val_split: float, seed: int
                 ) -> tuple[list[Sample], list[Sample]]:
    return split_samples(*make_samples(counts), val_split, seed)


@pytest.mark.parametrize("counts", [{"cat": 60, "dog": 60}, {"cat": 97, "dog": 13},
                                    {"cat": 9, "dog": 41}],
                         ids=["balanced", "few-dogs", "few-cats"])
def test_each_class_loses_its_share_to_validation(counts: dict[str, int]) -> None:
    samples, classes = make_samples(counts)
    every_image = {name for name, _ in samples}
    for seed, val_split in itertools.product(SEEDS, VAL_SPLITS):
        case = f"seed {seed}, val_split {val_split}"
        train, validation = split_samples(samples, classes, val_split, seed)
        for label, name in enumerate(CLASS_NAMES):
            held_out = [path for path, got in validation if got == label]
            assert len(held_out) == round(counts[name] * val_split), (case, name)
        # Each image once, in one part, labelled by its class.
        names = [name for name, _ in train + validation]
        assert len(names) == len(set(names)) == len(every_image), case
        assert set(names) == every_image, case
        for name, label in train + validation:
            assert name.split("/")[0] == CLASS_NAMES[label], (case, name)


def test_the_split_is_a_function_of_names_val_split_and_seed(tmp_path: Path) -> None:
    names = [f"{label}/{label}.{number}.jpg" for label, count in (("cat", 37), ("dog", 23))
             for number in range(count)]
    write_train_images(tmp_path / "a", dict.fromkeys(names, b""))
    # Another archive, its entries in the other order and with other contents.
    write_train_images(tmp_path / "b", dict.fromkeys(reversed(names), b"x" * 10))
    first, second = (read_manifest(tmp_path / project / "data" / "train.json")
                     for project in ("a", "b"))
    validations = set()
    for seed in SEEDS:
        train, validation = split_samples(first.samples, first.classes, 0.2, seed)
        assert split_samples(first.samples, first.classes, 0.2, seed) == (train, validation), seed
        assert split_samples(second.samples, second.classes, 0.2, seed) == (train, validation), seed
        # Nor does the order of the samples given matter.
        assert split_samples(first.samples[::-1], first.classes, 0.2, seed) == (
            train, validation), seed
        validations.add(frozenset(validation))
    # The seed does choose the validation images.
    assert len(validations) == len(SEEDS)


def test_a_class_too_small_to_hold_one_out_trains_only() -> None:
    counts = {"cat": 40, "dog": 40, "rare": 2, "rarer": 1}  # round(0.4) == round(0.2) == 0
    samples, classes = make_samples(counts)
    train, validation = split_samples(samples, classes, 0.2, 0)
    held_out = Counter(classes[label] for _, label in validation)
    assert held_out == {"cat": 8, "dog": 8}
    trained = Counter(classes[label] for _, label in train)
    assert trained == {"cat": 32, "dog": 32, "rare": 2, "rarer": 1}
    assert train_only_classes(samples, classes, 0.2) == {"rare": 2, "rarer": 1}
    assert train_only_note({"rare": 2, "rarer": 1}, 0.2) == (
        "too few images to hold one out at val_split 0.2, so trained on and not scored: "
        "rare (2 images), rarer (1 image)")
    # The other classes split as they would without the small ones.
    assert split_counts({"cat": 40, "dog": 40}, 0.2, 0)[1] == validation


def test_every_class_keeps_a_training_image() -> None:
    samples, classes = make_samples({"cat": 40, "dog": 3})  # round(2.7) == 3
    train, validation = split_samples(samples, classes, 0.9, 0)
    assert Counter(label for _, label in validation) == {0: 36, 1: 2}
    assert Counter(label for _, label in train) == {0: 4, 1: 1}
    assert train_only_classes(samples, classes, 0.9) == {}


@pytest.mark.parametrize(("counts", "val_split", "small"), [
    ({"cat": 40, "dog": 2}, 0.2, "dog"),
    ({"cat": 1, "dog": 40}, 0.1, "cat"),
])
def test_validation_of_one_class_only_is_refused(counts: dict[str, int], val_split: float,
                                                 small: str) -> None:
    with pytest.raises(StageError, match=rf"^val_split: {val_split} holds out no image of class "
                                         rf"{small} \(of its {counts[small]}\), and scores need "
                                         "validation images of two classes: raise val_split or "
                                         "add images$"):
        split_counts(counts, val_split, 0)


def test_a_class_without_images_is_refused() -> None:
    samples, classes = make_samples({"cat": 10, "dog": 10})
    with pytest.raises(StageError, match=r"^class empty has no images: add some, or remove its "
                                         r"folder and run `dvc repro -f split_classes`$"):
        split_samples(samples, [*classes, "empty"], 0.2, 0)


def test_classes_are_sorted_and_images_may_be_nested(tmp_path: Path) -> None:
    files = ["tulip/a.jpg", "Rose/2019/b.png", "Rose/a.jpg", "daisy/x/y/c.jpg", "daisy/d.jpg"]
    write_train_images(tmp_path, dict.fromkeys(files, b""))
    listed = read_manifest(tmp_path / "data" / "train.json")
    assert listed.classes == ["Rose", "daisy", "tulip"]  # sorted() order
    assert listed.samples == [("Rose/2019/b.png", 0), ("Rose/a.jpg", 0), ("daisy/d.jpg", 1),
                              ("daisy/x/y/c.jpg", 1), ("tulip/a.jpg", 2)]
    train, validation = split_samples(listed.samples, listed.classes, 0.5, 0)
    assert sorted(train + validation) == sorted(listed.samples)


def test_many_classes_each_lose_their_share() -> None:
    counts = {"a": 10, "b": 20, "c": 30, "d": 40, "e": 50}
    train, validation = split_counts(counts, 0.2, 3)
    for label, count in enumerate(counts.values()):
        assert sum(1 for _, got in validation if got == label) == count // 5
        assert sum(1 for _, got in train if got == label) == count - count // 5


def test_labels_of_is_one_float32_column() -> None:
    labels = labels_of([("cat.1.jpg", 0), ("dog.1.jpg", 1), ("dog.2.jpg", 1)])
    assert labels.dtype == np.float32 and labels.shape == (3, 1)
    np.testing.assert_array_equal(labels.ravel(), [0, 1, 1])
