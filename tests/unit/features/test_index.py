"""The features' index (finetune.features.store.read_index): features that are not those
of data/train.json's images, or of the weights file, are refused, as DVC's deps would
refuse them under `dvc repro`, when a stage runs by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from finetune.core.errors import StageError
from finetune.dataset.manifest import read_manifest
from finetune.features.store import (
    FEATURE_PARAMS,
    read_index,
    read_mirrored_index,
    weights_fingerprint,
    write_index,
    write_no_mirrored_index,
)

PARAMS = {key: f"value of {key}" for key in FEATURE_PARAMS}
IMAGES = {"cat": ["cat.0.jpg", "cat.1.jpg"], "dog": ["dog.0.jpg"]}


@pytest.fixture
def project(tmp_path) -> Path:
    """index.json of the features of IMAGES made with weights.h5, and train.json (the
    manifest, as split_classes writes data/train.json) listing IMAGES."""
    (tmp_path / "weights.h5").write_bytes(b"weights" * 1000)
    write_manifest(tmp_path, IMAGES)
    train = [(f"{label}/{name}", number) for number, label in enumerate(IMAGES)
             for name in IMAGES[label]]
    write_index(tmp_path / "index.json", PARAMS, (2, 2, 8), list(IMAGES), train, [], {},
                weights_fingerprint(tmp_path / "weights.h5"))
    return tmp_path


def write_manifest(project: Path, images: dict[str, list[str]]) -> None:
    """project/train.json listing `images` (class -> names in its folder): name, size,
    CRC-32 and train.zip entry each (no archive: the index is checked against the list)."""
    listed = {label: [[name, 100, 0, f"train/{name}"] for name in names]
              for label, names in images.items()}
    (project / "train.json").write_text(json.dumps({"classes": list(images), "images": listed}))


def read(project: Path) -> dict:
    return read_index(PARAMS, project / "index.json",
                      images=read_manifest(project / "train.json"),
                      weights=project / "weights.h5")


def test_the_features_of_the_listed_images_and_weights_are_read(project):
    assert read(project)["classes"] == ["cat", "dog"]


@pytest.mark.parametrize(("images", "named"), [
    ({"cat": ["cat.0.jpg"], "dog": ["dog.0.jpg"]}, "cat/cat.1.jpg"),
    ({**IMAGES, "dog": ["dog.0.jpg", "dog.7.jpg"]}, "dog/dog.7.jpg"),
])
def test_features_of_other_images_than_the_manifest_lists_are_refused(project, images, named):
    write_manifest(project, images)  # split_classes rerun by hand, features not
    with pytest.raises(StageError, match=rf"^the features are of other images than "
                                         rf".*train.json lists \(first difference: {named}\): "
                                         r"run `dvc repro features`$"):
        read(project)


def test_features_of_other_classes_than_the_manifest_lists_are_refused(project):
    write_manifest(project, {"cat": IMAGES["cat"], "fox": IMAGES["dog"]})
    with pytest.raises(StageError, match=r"^the features are of the classes \['cat', 'dog'\], "
                                         r".*train.json lists \['cat', 'fox'\]: "
                                         r"run `dvc repro features`$"):
        read(project)


def test_features_of_other_weights_are_refused(project):
    """Same size, other bytes: the hash tells, not the size."""
    weights = project / "weights.h5"
    weights.write_bytes(b"WEIGHTS" * 1000)
    with pytest.raises(StageError, match=r"^the features were made with another .*weights.h5 "
                                         r"\(sha256 \w{12}…, 7,000 bytes; now \w{12}…, 7,000 "
                                         r"bytes\): run `dvc repro features`$"):
        read(project)


def test_weights_with_a_new_time_and_the_same_bytes_pass(project):
    """`dvc checkout` rewrites the file and its time, not its bytes."""
    weights = project / "weights.h5"
    weights.write_bytes(weights.read_bytes())
    os.utime(weights, ns=(1, 1))
    assert read(project)["classes"] == ["cat", "dog"]


def test_checks_not_asked_for_are_not_made(project):
    """submit depends on neither data/train.json nor the weights file (dvc.yaml)."""
    (project / "train.json").unlink()
    (project / "weights.h5").unlink()
    assert read_index(PARAMS, project / "index.json")["classes"] == ["cat", "dog"]


def test_an_index_without_the_weights_fingerprint_is_refused(project):
    index = json.loads((project / "index.json").read_text())
    del index["weights"]
    (project / "index.json").write_text(json.dumps(index))
    with pytest.raises(StageError, match="made by an older version: run `dvc repro -f features`"):
        read(project)


# --- the mirrored images' features (tta: flip; stages/mirrored_features.py) ----------

def write_mirrored(project: Path, **changes: object) -> Path:
    """mirrored_features' index beside the features', as tta: flip writes it, with `changes`."""
    index = {**json.loads((project / "index.json").read_text()), "tta": "flip", **changes}
    (project / "mirrored.json").write_text(json.dumps(index))
    return project / "mirrored.json"


def read_mirrored(project: Path, tta: str = "flip") -> dict | None:
    return read_mirrored_index({**PARAMS, "tta": tta}, read(project), project / "mirrored.json")


def test_mirrored_features_are_read_only_with_tta_flip(project):
    assert read_mirrored(project, "none") is None  # not even looked for
    write_mirrored(project)
    assert read_mirrored(project)["train"] == read(project)["train"]


@pytest.mark.parametrize(("changes", "hint"), [
    ({"test_ids": ["1"]}, "the mirrored features' test_ids differ from the features'"),
    ({"train": [["cat/cat.1.jpg", 0], ["cat/cat.0.jpg", 0], ["dog/dog.0.jpg", 1]]},
     "the mirrored features' train differ from the features'"),
    ({"weights": {"sha256": "0" * 64}}, "made with another weights file than the features"),
    ({"params": {**PARAMS, "image_size": 7}}, "made with image_size: 7"),
    ({"tta": "none"}, "made with tta: 'none', params.yaml has 'flip'"),
])
def test_mirrored_features_unlike_the_features_are_refused(project, changes, hint):
    write_mirrored(project, **changes)
    with pytest.raises(StageError, match="run `dvc repro mirrored_features`") as error:
        read_mirrored(project)
    assert hint in str(error.value)


def test_the_index_of_tta_none_is_refused_under_tta_flip_and_a_missing_one_named(project):
    write_no_mirrored_index(project / "mirrored.json")
    with pytest.raises(StageError, match=r"made with tta: 'none', params.yaml has 'flip': "
                                         r"run `dvc repro mirrored_features`$"):
        read_mirrored(project)
    (project / "mirrored.json").unlink()
    with pytest.raises(StageError, match=r"mirrored.json not found: run `dvc repro "
                                         r"mirrored_features` first$"):
        read_mirrored(project)
