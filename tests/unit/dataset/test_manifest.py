"""finetune.dataset.manifest.check_manifest: class folders against data/train.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.core.errors import StageError
from finetune.dataset.manifest import check_manifest
from finetune.dataset.split import list_samples
from tests.support.projects import write_train_manifest


@pytest.fixture
def train_dir(tmp_path) -> Path:
    for label in ("cat", "dog"):
        (tmp_path / "train" / label).mkdir(parents=True)
        for number in range(3):
            (tmp_path / "train" / label / f"{label}.{number}.jpg").write_bytes(
                bytes(100 + number))
    write_train_manifest(tmp_path / "train")
    return tmp_path / "train"


def test_the_folder_split_classes_wrote_passes(train_dir):
    check_manifest(train_dir, list_samples(train_dir), train_dir.parent / "train.json")


def test_an_image_of_another_size_is_refused(train_dir):
    """Same names, other bytes (an image replaced by hand): the size tells, at a stat."""
    (train_dir / "dog" / "dog.2.jpg").write_bytes(bytes(7))
    with pytest.raises(StageError, match=r"train does not match .*train.json "
                                         r"\(.*train/dog/dog.2.jpg is 7 bytes, "
                                         r".*train.json says 102\): run "
                                         r"`dvc repro -f split_classes`"):
        check_manifest(train_dir, list_samples(train_dir), train_dir.parent / "train.json")
