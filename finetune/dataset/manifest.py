"""What split_classes wrote: data/train.json (the classes and each image's path, size and
CRC-32), which the stages reading the images depend on instead of the folder, and the
report metrics/data.json (images per class, unlabelled and unreadable ones)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.core.atomic import atomic_output
from finetune.core.errors import StageError
from finetune.core.paths import DATA_REPORT, TRAIN_MANIFEST

if TYPE_CHECKING:  # type hints only: reading the manifest needs no archive code
    from finetune.dataset.classes import LabelledEntry
    from finetune.dataset.split import Sample


def write_manifest(images: list[LabelledEntry]) -> None:
    """The manifest (data/train.json): the classes and, per class, each image's path,
    size and CRC-32 (the archive's own), sorted: it changes exactly when data/train does."""
    manifest: dict[str, list] = {label: [] for label in sorted({i.label for i in images})}
    for image in sorted(images, key=lambda image: (image.label, image.name)):
        manifest[image.label].append([image.name, image.info.file_size, image.info.CRC])
    with atomic_output(TRAIN_MANIFEST) as partial:
        partial.write_text(json.dumps({"classes": list(manifest), "images": manifest}) + "\n")


def check_manifest(train_dir: Path, samples: list[Sample], manifest: Path) -> None:
    """Refuse class folders that are not what split_classes wrote (the manifest lists
    them): the stages reading the images depend on the manifest, not on the folder. Each
    image's name and size are compared: a stat each, so 25,000 images take a fraction of
    a second (a CRC would read them all); an image edited by hand changes its size."""
    try:
        listed = json.loads(manifest.read_text())["images"]
        sizes = {f"{label}/{name}": size for label, files in listed.items()
                 for name, size, *_ in files}
    except FileNotFoundError:
        raise StageError(f"{manifest} not found: run `dvc repro split_classes`") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StageError(f"cannot read {manifest} ({error}): run `dvc repro -f split_classes`"
                         ) from None
    expected = sorted(sizes)
    found_in_order = [Path(path).relative_to(train_dir).as_posix() for path, _ in samples]
    found = sorted(found_in_order)
    if found != expected:
        odd = sorted(set(found) ^ set(expected))
        raise StageError(f"{train_dir} does not match {manifest} (first difference: "
                         f"{odd[0] if odd else 'the order'}): run `dvc repro -f split_classes`")
    for (path, _), name in zip(samples, found_in_order, strict=True):
        size = Path(path).stat().st_size
        if size != sizes[name]:
            raise StageError(f"{train_dir} does not match {manifest} ({path} is {size:,} "
                             f"bytes, {manifest} says {sizes[name]:,}): "
                             "run `dvc repro -f split_classes`")


def write_report(counts: dict[str, int], unlabelled: int, unreadable: dict[str, str]) -> None:
    """The data report (DATA_REPORT): images per class, those in no class folder, the
    unreadable ones."""
    report = {"classes": sorted(counts), "images": counts, "unlabelled": unlabelled,
              "unreadable": len(unreadable), "unreadable_files": dict(sorted(unreadable.items()))}
    with atomic_output(DATA_REPORT) as partial:
        partial.write_text(json.dumps(report, indent=2) + "\n")
