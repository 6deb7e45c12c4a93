"""What split_classes wrote: data/train.json, the labelled images of data/raw/train.zip
(the classes and each image's name, size, CRC-32 and archive entry), which the stages
reading the images depend on and read the images through (read_manifest,
open_train_images), and the report metrics/data.json (images per class, unlabelled and
unreadable ones).

An image is named `<class>/<path in its class folder>` ("cat/cat.0.jpg",
"rose/2019/7.png"): the features' rows, the split and predictions.csv use this name.
The images stay in train.zip, which the stages read entry by entry: no folder of tens of
thousands of files for DVC to hash, check out, push and pull.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.core.atomic import atomic_output
from finetune.core.errors import StageError
from finetune.core.paths import DATA_REPORT, TRAIN_MANIFEST, TRAIN_ZIP
from finetune.dataset.archive import open_train_archive, read_entry

if TYPE_CHECKING:  # type hints only: reading the manifest needs no listing code
    from finetune.dataset.classes import LabelledEntry
    from finetune.dataset.split import Sample

RERUN = "run `dvc repro -f split_classes`"


@dataclass(frozen=True)
class ListedImage:
    """An image as data/train.json lists it: its train.zip entry, size and CRC-32."""

    entry: str
    size: int
    crc: int


@dataclass(frozen=True)
class TrainImages:
    """The manifest at `path`, read: label i is classes[i]; `samples` are (name, label)
    class by class, each sorted by name; `listed` gives each name's entry in train.zip."""

    path: Path
    classes: list[str]
    samples: list[Sample]
    listed: dict[str, ListedImage]


def write_manifest(images: list[LabelledEntry]) -> None:
    """The manifest (data/train.json): the classes and, per class, each image's name in
    its class folder, size, CRC-32 and entry (the archive's own), sorted: it changes
    exactly when the images do."""
    manifest: dict[str, list] = {label: [] for label in sorted({i.label for i in images})}
    for image in sorted(images, key=lambda image: (image.label, image.name)):
        manifest[image.label].append([image.name, image.info.file_size, image.info.CRC,
                                      image.info.filename])
    with atomic_output(TRAIN_MANIFEST) as partial:
        partial.write_text(json.dumps({"classes": list(manifest), "images": manifest}) + "\n")


def read_manifest(manifest: Path = TRAIN_MANIFEST) -> TrainImages:
    """The images `manifest` lists, refused in one line if it is missing, unreadable, or
    lists fewer than two classes."""
    try:
        found = json.loads(manifest.read_text())
        classes = [str(label) for label in found["classes"]]
        samples: list[Sample] = []
        listed: dict[str, ListedImage] = {}
        for number, label in enumerate(classes):
            for name, size, crc, entry in found["images"][label]:
                samples.append((f"{label}/{name}", number))
                listed[f"{label}/{name}"] = ListedImage(str(entry), int(size), int(crc))
    except FileNotFoundError:
        raise StageError(f"{manifest} not found: run `dvc repro split_classes`") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StageError(f"cannot read {manifest} ({error}): {RERUN}") from None
    if len(classes) < 2:
        raise StageError(f"{manifest} lists {len(classes)} class(es), a classifier needs two "
                         f"or more: {RERUN}")
    return TrainImages(manifest, classes, samples, listed)


@contextmanager
def open_train_images(images: TrainImages, archive_path: Path = TRAIN_ZIP
                      ) -> Iterator[Callable[[str], bytes]]:
    """train.zip, checked against the manifest (each listed entry present with its size
    and CRC-32: the archive's directory, read in a second, not the images), as a reader of
    an image's bytes by name. An archive edited or replaced since split_classes is refused
    before anything slow."""
    with open_train_archive(archive_path) as archive:
        entries = {info.filename: info for info in archive.infolist()}
        for name, image in images.listed.items():
            info = entries.get(image.entry)
            if info is None or (info.file_size, info.CRC) != (image.size, image.crc):
                what = "has no entry" if info is None else (
                    f"has another entry ({info.file_size:,} bytes, CRC {info.CRC:08x}; "
                    f"{images.path} says {image.size:,}, {image.crc:08x})")
                raise StageError(f"{archive_path} {what} '{image.entry}' for {name}: "
                                 f"{archive_path} changed since split_classes; {RERUN}")

        def read(name: str) -> bytes:
            return read_entry(archive, entries[images.listed[name].entry])

        yield read


def write_report(counts: dict[str, int], unlabelled: int, unreadable: dict[str, str]) -> None:
    """The data report (DATA_REPORT): images per class, those in no class folder, the
    unreadable ones."""
    report = {"classes": sorted(counts), "images": counts, "unlabelled": unlabelled,
              "unreadable": len(unreadable), "unreadable_files": dict(sorted(unreadable.items()))}
    with atomic_output(DATA_REPORT) as partial:
        partial.write_text(json.dumps(report, indent=2) + "\n")
