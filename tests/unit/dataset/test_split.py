"""finetune.dataset.split: the classes and the train/validation split. Classes are the
sorted class folders; the split is stratified, complete, and a function of the file names,
val_split and seed alone, so train and evaluate agree on it.

split_files only lists names, so empty files stand in for images."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from finetune.core.errors import StageError
from finetune.dataset.split import (
    class_names,
    labels_of,
    list_samples,
    split_files,
    split_samples,
    train_only_classes,
    train_only_note,
)

CLASS_NAMES = ("cat", "dog")

SEEDS = (0, 1, 2, 7, 1234, 2024)
VAL_SPLITS = (0.1, 0.2, 0.25, 0.5)


def make_classes(train_dir: Path, counts: dict[str, int], reverse: bool = False,
                 content: bytes = b"") -> Path:
    """Class folders holding `counts[name]` files cat.N.jpg / dog.N.jpg, created in
    reverse order if asked (the order a folder lists its files in must not matter)."""
    for name, count in counts.items():
        folder = train_dir / name
        folder.mkdir(parents=True)
        numbers = range(count)
        for number in reversed(numbers) if reverse else numbers:
            (folder / f"{name}.{number}.jpg").write_bytes(content)
    return train_dir


def names(samples: list[tuple[str, int]]) -> list[tuple[str, str, int]]:
    """(class folder, file name, label) of each sample: the split without its train_dir."""
    return [(Path(path).parent.name, Path(path).name, label) for path, label in samples]


@pytest.mark.parametrize("counts", [{"cat": 60, "dog": 60}, {"cat": 97, "dog": 13},
                                    {"cat": 9, "dog": 41}],
                         ids=["balanced", "few-dogs", "few-cats"])
def test_each_class_loses_its_share_to_validation(tmp_path: Path, counts: dict[str, int]) -> None:
    train_dir = make_classes(tmp_path / "train", counts)
    every_file = {str(path) for path in train_dir.glob("*/*")}
    for seed, val_split in itertools.product(SEEDS, VAL_SPLITS):
        case = f"seed {seed}, val_split {val_split}"
        train, validation = split_files(train_dir, val_split, seed)
        for label, name in enumerate(CLASS_NAMES):
            held_out = [path for path, got in validation if got == label]
            assert len(held_out) == round(counts[name] * val_split), (case, name)
        # Each file once, in one part, labelled by its folder.
        paths = [path for path, _ in train + validation]
        assert len(paths) == len(set(paths)) == len(every_file), case
        assert set(paths) == every_file, case
        for path, label in train + validation:
            assert Path(path).parent.name == CLASS_NAMES[label], (case, path)


def test_the_split_is_a_function_of_names_val_split_and_seed(tmp_path: Path) -> None:
    counts = {"cat": 37, "dog": 23}
    first = make_classes(tmp_path / "a" / "train", counts)
    # Another folder, files created in the other order and with other contents.
    second = make_classes(tmp_path / "b" / "train", counts, reverse=True, content=b"x" * 10)
    validations = set()
    for seed in SEEDS:
        train, validation = split_files(first, 0.2, seed)
        assert split_files(first, 0.2, seed) == (train, validation), seed
        again_train, again_validation = split_files(second, 0.2, seed)
        assert names(again_train) == names(train), seed
        assert names(again_validation) == names(validation), seed
        validations.add(frozenset(names(validation)))
    # The seed does choose the validation files.
    assert len(validations) == len(SEEDS)


def test_a_class_too_small_to_hold_one_out_trains_only(tmp_path: Path) -> None:
    counts = {"cat": 40, "dog": 40, "rare": 2, "rarer": 1}  # round(0.4) == round(0.2) == 0
    train_dir = make_classes(tmp_path / "train", counts)
    samples, classes = list_samples(train_dir), class_names(train_dir)
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
    without = make_classes(tmp_path / "without", {"cat": 40, "dog": 40})
    assert names(split_files(without, 0.2, 0)[1]) == names(validation)


def test_every_class_keeps_a_training_image(tmp_path: Path) -> None:
    train_dir = make_classes(tmp_path / "train", {"cat": 40, "dog": 3})  # round(2.7) == 3
    train, validation = split_files(train_dir, 0.9, 0)
    assert Counter(label for _, label in validation) == {0: 36, 1: 2}
    assert Counter(label for _, label in train) == {0: 4, 1: 1}
    assert train_only_classes(list_samples(train_dir), list(CLASS_NAMES), 0.9) == {}


@pytest.mark.parametrize(("counts", "val_split", "small"), [
    ({"cat": 40, "dog": 2}, 0.2, "dog"),
    ({"cat": 1, "dog": 40}, 0.1, "cat"),
])
def test_validation_of_one_class_only_is_refused(tmp_path: Path, counts: dict[str, int],
                                                 val_split: float, small: str) -> None:
    train_dir = make_classes(tmp_path / "train", counts)
    with pytest.raises(StageError, match=rf"^val_split: {val_split} holds out no image of class "
                                         rf"{small} \(of its {counts[small]}\), and scores need "
                                         "validation images of two classes: raise val_split or "
                                         "add images$"):
        split_files(train_dir, val_split, 0)


def test_an_empty_class_folder_is_refused(tmp_path: Path) -> None:
    train_dir = make_classes(tmp_path / "train", {"cat": 10, "dog": 10})
    (train_dir / "empty").mkdir()
    with pytest.raises(StageError, match=r"^class empty has no images: add some, or remove its "
                                         r"folder and run `dvc repro -f split_classes`$"):
        split_files(train_dir, 0.2, 0)


def test_one_class_folder_is_refused(tmp_path: Path) -> None:
    train_dir = make_classes(tmp_path / "train", {"cat": 10})
    with pytest.raises(StageError, match=r"holds 1 class folder\(s\), a classifier needs two "
                                         r"or more: run `dvc repro -f split_classes`"):
        split_files(train_dir, 0.2, 0)


def test_a_missing_train_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"not found: run `dvc repro split_classes` first"):
        split_files(tmp_path / "train", 0.2, 0)


def test_classes_are_the_sorted_folders_and_images_may_be_nested(tmp_path: Path) -> None:
    train_dir = tmp_path / "train"
    files = ["tulip/a.jpg", "Rose/2019/b.png", "Rose/a.jpg", "daisy/x/y/c.jpg", "daisy/d.jpg"]
    for name in files:
        (train_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (train_dir / name).write_bytes(b"")
    assert class_names(train_dir) == ["Rose", "daisy", "tulip"]  # sorted() order
    samples = [(Path(path).relative_to(train_dir).as_posix(), label)
               for path, label in list_samples(train_dir)]
    assert samples == [("Rose/2019/b.png", 0), ("Rose/a.jpg", 0), ("daisy/d.jpg", 1),
                       ("daisy/x/y/c.jpg", 1), ("tulip/a.jpg", 2)]


def test_many_classes_each_lose_their_share(tmp_path: Path) -> None:
    counts = {"a": 10, "b": 20, "c": 30, "d": 40, "e": 50}
    train, validation = split_files(make_classes(tmp_path / "train", counts), 0.2, 3)
    for label, count in enumerate(counts.values()):
        assert sum(1 for _, got in validation if got == label) == count // 5
        assert sum(1 for _, got in train if got == label) == count - count // 5


def test_labels_of_is_one_float32_column() -> None:
    labels = labels_of([("cat.1.jpg", 0), ("dog.1.jpg", 1), ("dog.2.jpg", 1)])
    assert labels.dtype == np.float32 and labels.shape == (3, 1)
    np.testing.assert_array_equal(labels.ravel(), [0, 1, 1])
