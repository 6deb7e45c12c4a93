"""The classes of train.zip's images, from either layout.

The archive holds either one folder per class (`daisy/1.jpg`, `rose/2019/7.png`: the
layout keras.utils.image_dataset_from_directory reads; images may be nested inside a class
folder), or, like Kaggle's train.zip, images named after their class in one folder
(`train/cat.0.jpg`: the class is the name up to its first dot). Folders that every image
shares (`train/`, `flowers/`) are not classes. Hidden files and folders, macOS's
`__MACOSX/` and files that are not images are skipped; beside class folders, images in
no class folder are counted, not used.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass

from finetune.core.errors import StageError
from finetune.core.paths import TRAIN_ZIP
from finetune.dataset.archive import REFETCH, entry_name
from finetune.dataset.image_files import IMAGE_EXTENSIONS, is_image

# A file named after its class, Kaggle's way: cat.123.jpg -> cat.
CLASS_IN_NAME = re.compile(r"^([^.]+)\.[^/]*\.[^./]+$")


@dataclass(frozen=True)
class LabelledEntry:
    """An image entry of the archive, its class, and its path in its class folder."""

    info: zipfile.ZipInfo
    label: str
    name: str  # path inside the class folder ("cat.0.jpg", "2019/7.png")

    @property
    def listed_as(self) -> str:
        """The image's name everywhere (data/train.json, the features, the split,
        metrics/data.json, predictions.csv): <class>/<path in its class folder>."""
        return f"{self.label}/{self.name}"


def check_class_names(labels: set[str]) -> None:
    """Class names become parts of image names, metric keys and predict's output columns."""
    for label in labels:
        if any(ord(character) < 32 for character in label):
            raise StageError(f"{TRAIN_ZIP}: class {label!r} has a control character in its "
                             "name; rename that folder")
    folded: dict[str, str] = {}
    for label in sorted(labels):
        other = folded.setdefault(label.casefold(), label)
        if other != label:  # one folder on a case-insensitive file system
            raise StageError(f"{TRAIN_ZIP}: classes '{other}' and '{label}' differ only in "
                             "case; rename one")
    if len(labels) < 2:
        found = f"one class, '{next(iter(labels))}'" if labels else "no class"
        raise StageError(f"{TRAIN_ZIP} holds images of {found}: a classifier needs two or "
                         "more (one folder of images per class)")


def classify(members: list[zipfile.ZipInfo]) -> tuple[list[LabelledEntry], int]:
    """The archive's images with their classes, and how many images have none (see the
    module docstring for the two layouts)."""
    entries = [(info, entry_name(info)) for info in members]
    entries = [(info, path) for info, path in entries if is_image(path)]
    if not entries:
        raise StageError(f"{TRAIN_ZIP} holds no {'/'.join(sorted(IMAGE_EXTENSIONS))} images")
    # Strip the folders every image shares: train/, or the data set's own folder.
    depth = 0
    while len({path.parts[depth] for _, path in entries}) == 1 and all(
            len(path.parts) > depth + 1 for _, path in entries):
        depth += 1
    images: list[LabelledEntry] = []
    if all(len(path.parts) == depth + 1 for _, path in entries):
        for info, path in entries:  # one folder: the class is in the file name
            match = CLASS_IN_NAME.match(path.name)
            if match:
                images.append(LabelledEntry(info, match.group(1).lower(), path.name))
        if not images:
            where = f"one folder of images, '{entries[0][1].parts[depth - 1]}'," if depth else (
                "images")
            raise StageError(f"{TRAIN_ZIP} holds {where} neither named <class>.<id>.<ext> (as "
                             "Kaggle's train.zip) nor in class folders: a classifier needs two "
                             "or more classes, one folder of images each")
    else:
        for info, path in entries:  # one folder per class; images beside them have none
            if len(path.parts) > depth + 1:
                images.append(LabelledEntry(info, path.parts[depth],
                                            "/".join(path.parts[depth + 1:])))
    check_class_names({image.label for image in images})
    # Two entries with one name (on a case-insensitive file system too) would be one
    # image to the stages, and one file wherever the images are unpacked.
    seen: dict[str, str] = {}
    for image in images:
        first = seen.setdefault(image.listed_as.casefold(), image.info.filename)
        if first != image.info.filename:
            raise StageError(f"{TRAIN_ZIP}: entries '{first}' and '{image.info.filename}' have "
                             f"the same file name; {REFETCH}")
    return images, len(entries) - len(images)
