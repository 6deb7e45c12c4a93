"""finetune.dataset.manifest: data/train.json read back (read_manifest), and train.zip read
through it (open_train_images), refused in one line where it no longer matches."""

from __future__ import annotations

import contextlib
import json
import zipfile
import zlib
from pathlib import Path

import pytest

from finetune.core.errors import StageError
from finetune.dataset.classes import classify
from finetune.dataset.manifest import open_train_images, read_manifest, write_manifest
from tests.support.projects import write_train_images, write_zip

# Given out of order, in nested folders too: the manifest lists them class by class,
# each class sorted by name.
IMAGES = {
    "tulip/a.jpg": bytes(100),
    "Rose/2019/b.png": bytes(101),
    "Rose/a.jpg": bytes(102),
    "daisy/x/y/c.jpg": bytes(103),
    "daisy/d.jpg": bytes(104),
}
RERUN = "run `dvc repro -f split_classes`"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_train_images(tmp_path, IMAGES)
    return tmp_path


def manifest(project: Path) -> Path:
    return project / "data" / "train.json"


def archive(project: Path) -> Path:
    return project / "data" / "raw" / "train.zip"


def read_all(project: Path) -> dict[str, bytes]:
    listed = read_manifest(manifest(project))
    with open_train_images(listed, archive(project)) as read:
        return {name: read(name) for name, _ in listed.samples}


def rewrite_archive(project: Path, images: dict[str, bytes]) -> None:
    """train.zip replaced by one holding `images`, data/train.json left as it was."""
    archive(project).unlink()
    write_zip(archive(project), images)


def refusal(error: pytest.ExceptionInfo[StageError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_the_manifest_reads_back_class_by_class_in_name_order(project: Path) -> None:
    listed = read_manifest(manifest(project))
    assert listed.path == manifest(project)
    assert listed.classes == ["Rose", "daisy", "tulip"]  # sorted() order
    assert listed.samples == [("Rose/2019/b.png", 0), ("Rose/a.jpg", 0), ("daisy/d.jpg", 1),
                              ("daisy/x/y/c.jpg", 1), ("tulip/a.jpg", 2)]
    assert {name: (image.entry, image.size, image.crc)
            for name, image in listed.listed.items()} == {
        name: (name, len(data), zlib.crc32(data)) for name, data in IMAGES.items()}


def test_each_image_is_read_from_the_archive_by_name(project: Path) -> None:
    assert read_all(project) == IMAGES


def test_an_image_is_named_by_class_and_read_from_its_own_entry(tmp_path: Path) -> None:
    # Kaggle's layout: the entry "train/cat.0.jpg" is the image "cat/cat.0.jpg".
    entries = {f"train/{label}.{number}.jpg": bytes([number]) * (10 + number)
               for label in ("cat", "dog") for number in range(2)}
    write_zip(archive(tmp_path), entries)
    with zipfile.ZipFile(archive(tmp_path)) as opened, contextlib.chdir(tmp_path):
        write_manifest(classify(opened.infolist())[0])
    listed = read_manifest(manifest(tmp_path))
    assert listed.classes == ["cat", "dog"]
    assert listed.listed["dog/dog.1.jpg"].entry == "train/dog.1.jpg"
    assert read_all(tmp_path) == {f"{label}/{label}.{number}.jpg": bytes([number]) * (10 + number)
                                  for label in ("cat", "dog") for number in range(2)}


def test_a_missing_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StageError) as error:
        read_manifest(tmp_path / "train.json")
    assert refusal(error) == f"{tmp_path / 'train.json'} not found: run `dvc repro split_classes`"


@pytest.mark.parametrize("text", [
    "{not json",
    '{"images": {}}',  # no classes
    '{"classes": ["cat", "dog"], "images": {"cat": []}}',  # no dog
    # The earlier format: name, size and CRC-32, no entry.
    '{"classes": ["cat", "dog"], "images": {"cat": [["cat.0.jpg", 1, 2]], "dog": []}}',
], ids=["not-json", "no-classes", "class-not-listed", "no-entry"])
def test_an_unreadable_manifest_is_refused(project: Path, text: str) -> None:
    manifest(project).write_text(text)
    with pytest.raises(StageError) as error:
        read_manifest(manifest(project))
    message = refusal(error)
    assert message.startswith(f"cannot read {manifest(project)} (")
    assert message.endswith(f"): {RERUN}")


def test_a_manifest_of_one_class_is_refused(project: Path) -> None:
    found = json.loads(manifest(project).read_text())
    manifest(project).write_text(json.dumps({"classes": ["daisy"], "images": {
        "daisy": found["images"]["daisy"]}}))
    with pytest.raises(StageError) as error:
        read_manifest(manifest(project))
    assert refusal(error) == (f"{manifest(project)} lists 1 class(es), a classifier needs two "
                              f"or more: {RERUN}")


def test_an_entry_missing_from_the_archive_is_refused(project: Path) -> None:
    rewrite_archive(project, {name: data for name, data in IMAGES.items()
                              if name != "daisy/d.jpg"})
    with pytest.raises(StageError) as error:
        read_all(project)
    assert refusal(error) == (f"{archive(project)} has no entry 'daisy/d.jpg' for daisy/d.jpg: "
                              f"{archive(project)} changed since split_classes; {RERUN}")


@pytest.mark.parametrize("data", [bytes(7), b"\x01" * 104],  # the size tells; the CRC-32 does
                         ids=["other-size", "same-size"])
def test_an_entry_of_other_bytes_is_refused(project: Path, data: bytes) -> None:
    rewrite_archive(project, IMAGES | {"daisy/d.jpg": data})
    with pytest.raises(StageError) as error:
        read_all(project)
    assert refusal(error) == (
        f"{archive(project)} has another entry ({len(data):,} bytes, CRC {zlib.crc32(data):08x}; "
        f"{manifest(project)} says 104, {zlib.crc32(bytes(104)):08x}) 'daisy/d.jpg' for "
        "daisy/d.jpg: "
        f"{archive(project)} changed since split_classes; {RERUN}")


def test_a_missing_archive_is_refused(project: Path) -> None:
    archive(project).unlink()
    with pytest.raises(StageError) as error:
        read_all(project)
    assert refusal(error) == f"{archive(project)} not found: run `dvc repro fetch_data` first"
