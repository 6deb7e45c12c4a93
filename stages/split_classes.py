"""Stage split_classes: extract train.zip into one folder per class.

The archive holds either one folder per class (`daisy/1.jpg`, `rose/2019/7.png`:
the layout keras.utils.image_dataset_from_directory reads; images may be nested
inside a class folder), or, like Kaggle's train.zip, images named after their
class in one folder (`train/cat.0.jpg`: the class is the name up to its first
dot). Folders that every image shares (`train/`, `flowers/`) are not classes.
Hidden files and folders and macOS's `__MACOSX/` are skipped, as are files that
are not images (by extension) and, beside class folders, images in no class folder
(counted in metrics/data.json).

Entries are extracted straight into data/train/<class>/ (no second copy of the
images), each one decoded once with TensorFlow's own decoder (the one training
uses) so that an unreadable image is skipped here, and listed in
metrics/data.json, instead of crashing training later. TensorFlow's JPEG decoder
refuses a truncated file ("Premature end of JPEG data"), so a cut-off download is
caught by the decode alone.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath

from stages.errors import StageError, run
from stages.files import IMAGE_EXTENSIONS, READ_ERRORS, atomic_output, remove
from stages.params import load_params
from stages.paths import DATA_REPORT, TRAIN_DIR, TRAIN_MANIFEST, TRAIN_ZIP

# A file named after its class, Kaggle's way: cat.123.jpg -> cat.
CLASS_IN_NAME = re.compile(r"^([^.]+)\.[^/]*\.[^./]+$")
# JPEGs barely compress: an archive, or an entry, that claims to expand more than this
# is not photos. Entries under SMALL_ENTRY may compress better (a tiny flat image) and
# cannot hurt.
MAX_EXPANSION = 50
SMALL_ENTRY = 1 << 20
CHUNK = 64  # images per task of the thread pool
REFETCH = "run `dvc repro -f fetch_data`"


@dataclass(frozen=True)
class Image:
    """An image entry of the archive, and where it goes: data/train/<label>/<name>."""

    info: zipfile.ZipInfo
    label: str
    name: str  # path inside the class folder ("cat.0.jpg", "2019/7.png")

    @property
    def listed_as(self) -> str:
        """How metrics/data.json names it: its path in data/train."""
        return f"{self.label}/{self.name}"


def entry_name(info: zipfile.ZipInfo) -> PurePosixPath:
    """The entry's path, with Windows separators read as separators."""
    return PurePosixPath(info.filename.replace("\\", "/"))


def safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The archive's files, refusing any entry that could land outside the target folder."""
    members = []
    for info in archive.infolist():
        path = entry_name(info)
        is_link = stat.S_ISLNK(info.external_attr >> 16)
        if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", info.filename):
            raise StageError(f"{TRAIN_ZIP}: entry '{info.filename}' would be written outside "
                             f"{TRAIN_DIR}; refusing this archive, fetch it again")
        if is_link:
            raise StageError(f"{TRAIN_ZIP}: entry '{info.filename}' is a symbolic link; "
                             "refusing this archive, fetch it again")
        if not info.is_dir():
            members.append(info)
    return members


def check_expansion(members: list[zipfile.ZipInfo], archive_size: int) -> None:
    """Refuse a zip bomb before reading it: entries are read whole into memory."""
    for info in members:
        if info.file_size > max(MAX_EXPANSION * info.compress_size, SMALL_ENTRY):
            raise StageError(f"{TRAIN_ZIP}: entry '{info.filename}' claims to expand from "
                             f"{info.compress_size:,} to {info.file_size:,} bytes, over "
                             f"{MAX_EXPANSION}x: not a photo; {REFETCH}")
    expanded = sum(info.file_size for info in members)
    if expanded > MAX_EXPANSION * max(archive_size, SMALL_ENTRY):
        raise StageError(f"{TRAIN_ZIP} claims to expand to {expanded:,} bytes, over "
                         f"{MAX_EXPANSION}x its size: not an archive of photos; {REFETCH}")


def read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """An entry's bytes; a damaged entry means a damaged archive, refused as a whole."""
    try:
        return archive.read(info)
    except READ_ERRORS as error:
        raise StageError(f"{TRAIN_ZIP}: cannot read entry '{info.filename}' ({error}); "
                         f"{REFETCH}") from None


def is_image(path: PurePosixPath) -> bool:
    """An image file to use: an image extension, nothing hidden on its way (.DS_Store,
    .git/, macOS's __MACOSX/._x.jpg resource forks)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not any(
        part.startswith(".") or part == "__MACOSX" for part in path.parts)


def check_class_names(labels: set[str]) -> None:
    """Class names become folder names, metric keys and predict's output columns."""
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


def classify(members: list[zipfile.ZipInfo]) -> tuple[list[Image], int]:
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
    images: list[Image] = []
    if all(len(path.parts) == depth + 1 for _, path in entries):
        for info, path in entries:  # one folder: the class is in the file name
            match = CLASS_IN_NAME.match(path.name)
            if match:
                images.append(Image(info, match.group(1).lower(), path.name))
        if not images:
            where = f"one folder of images, '{entries[0][1].parts[depth - 1]}'," if depth else (
                "images")
            raise StageError(f"{TRAIN_ZIP} holds {where} neither named <class>.<id>.<ext> (as "
                             "Kaggle's train.zip) nor in class folders: a classifier needs two "
                             "or more classes, one folder of images each")
    else:
        for info, path in entries:  # one folder per class; images beside them have none
            if len(path.parts) > depth + 1:
                images.append(Image(info, path.parts[depth], "/".join(path.parts[depth + 1:])))
    check_class_names({image.label for image in images})
    # Two entries with one destination (on a case-insensitive file system too) would
    # overwrite each other.
    seen: dict[str, str] = {}
    for image in images:
        first = seen.setdefault(image.listed_as.casefold(), image.info.filename)
        if first != image.info.filename:
            raise StageError(f"{TRAIN_ZIP}: entries '{first}' and '{image.info.filename}' have "
                             f"the same file name; {REFETCH}")
    return images, len(entries) - len(images)


def workers() -> int:
    """Threads to check images with: one per CPU this process may use (decoding is
    CPU-bound; more threads only contend for the cores and the GIL)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_images(archive: zipfile.ZipFile, images: list[Image], max_unreadable: float
                 ) -> tuple[list[Image], dict[str, int], dict[str, str]]:
    """Decode every image and write the readable ones into data/train/<class>/; return
    those, how many each class has, and why each unreadable one is."""
    # Imported here, once (not from several threads at once), after the cheap checks.
    from stages.images import decode_error

    labels = sorted({image.label for image in images})
    counts = dict.fromkeys(labels, 0)
    readable: list[Image] = []
    unreadable: dict[str, str] = {}
    with atomic_output(TRAIN_DIR) as staging, ThreadPoolExecutor(workers()) as pool:
        for label in labels:
            (staging / label).mkdir(parents=True)

        def check(chunk: list[Image]) -> list[tuple[Image, str]]:
            """Read, decode and, if readable, write each image of `chunk`: (image, why it
            is unreadable or "")."""
            checked = []
            for image in chunk:
                data = read(archive, image.info)
                reason = decode_error(data)
                if not reason:
                    destination = staging / image.label / image.name
                    if "/" in image.name:
                        destination.parent.mkdir(parents=True, exist_ok=True)
                    destination.write_bytes(data)
                checked.append((image, reason))
            return checked

        # Each worker reads, decodes and writes its own images, one at a time (bounded
        # memory), and nothing waits on the main thread. Decoding releases the GIL; so
        # do the reads (one shared archive handle, locked per entry: cheaper than a
        # handle per worker, each parsing the directory again) and the writes.
        chunks = [images[start:start + CHUNK] for start in range(0, len(images), CHUNK)]
        futures = [pool.submit(check, chunk) for chunk in chunks]
        try:
            done = 0
            for future in futures:  # in order, for the progress lines
                checked = future.result()
                for image, reason in checked:
                    if reason:
                        unreadable[image.listed_as] = reason
                    else:
                        counts[image.label] += 1
                        readable.append(image)
                before, done = done, done + len(checked)
                if done * 10 // len(images) > before * 10 // len(images):  # every 10%
                    print(f"split_classes: {done}/{len(images)} images checked",
                          file=sys.stderr)
        except BaseException:
            # A damaged entry (refused as a whole) or ^C: stop now, not after the rest.
            pool.shutdown(cancel_futures=True)
            raise

        empty = [label for label, count in counts.items() if count == 0]
        if empty:
            raise StageError(f"{TRAIN_ZIP}: no readable '{empty[0]}' images; "
                             "a class with no images cannot be learned")
        fraction = len(unreadable) / len(images)
        if fraction > max_unreadable:
            raise StageError(f"{TRAIN_ZIP}: {len(unreadable)} of {len(images)} images "
                             f"({fraction:.1%}) are unreadable, over max_unreadable_fraction "
                             f"{max_unreadable}; fetch the data again")
    return readable, counts, unreadable


def write_manifest(images: list[Image]) -> None:
    """The manifest (data/train.json): the classes and, per class, each image's path,
    size and CRC-32 (the archive's own), sorted: it changes exactly when data/train does."""
    manifest: dict[str, list] = {label: [] for label in sorted({i.label for i in images})}
    for image in sorted(images, key=lambda image: (image.label, image.name)):
        manifest[image.label].append([image.name, image.info.file_size, image.info.CRC])
    with atomic_output(TRAIN_MANIFEST) as partial:
        partial.write_text(json.dumps({"classes": list(manifest), "images": manifest}) + "\n")


def open_archive() -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(TRAIN_ZIP)
    except FileNotFoundError:
        raise StageError(f"{TRAIN_ZIP} not found: run `dvc repro fetch_data` first") from None
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise StageError(f"{TRAIN_ZIP} is not a zip archive (truncated download?): "
                         f"{REFETCH}") from None
    except OSError as error:
        raise StageError(f"cannot read {TRAIN_ZIP}: {error}") from None


def main() -> None:
    params = load_params()
    # Outputs describe this run's archive or nothing: a failed run must not leave the
    # previous archive's images for a later train to pick up. (DVC removes them too.)
    for output in (TRAIN_DIR, TRAIN_MANIFEST, DATA_REPORT):
        remove(output)
    with open_archive() as archive:
        members = safe_members(archive)
        check_expansion(members, TRAIN_ZIP.stat().st_size)
        images, unlabelled = classify(members)  # in a second, before any decoding
        readable, counts, unreadable = check_images(archive, images,
                                                    params["max_unreadable_fraction"])
    write_manifest(readable)
    report = {"classes": sorted(counts), "images": counts, "unlabelled": unlabelled,
              "unreadable": len(unreadable), "unreadable_files": dict(sorted(unreadable.items()))}
    with atomic_output(DATA_REPORT) as partial:
        partial.write_text(json.dumps(report, indent=2) + "\n")
    ignored = f", {unlabelled} images in no class folder ignored" if unlabelled else ""
    print(f"split_classes: {counts} images in {TRAIN_DIR}, {len(unreadable)} unreadable "
          f"skipped (listed in {DATA_REPORT}){ignored}", file=sys.stderr)


if __name__ == "__main__":
    run(main)
