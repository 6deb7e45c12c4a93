"""Stage split_classes: extract train.zip into one folder per class.

Kaggle's train.zip is flat (train/cat.0.jpg, train/dog.0.jpg, ...); the data
loader wants data/train/cat/ and data/train/dog/. Entries are extracted straight
into place (no second copy of the images), each one decoded once with
TensorFlow's own decoder (the one training uses) so that an unreadable image is
skipped here, and listed in metrics/data.json, instead of crashing training later.
TensorFlow's JPEG decoder refuses a truncated file ("Premature end of JPEG data"),
so a cut-off download is caught by the decode alone.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath

from stages.errors import StageError, run
from stages.files import atomic_output, remove
from stages.labels import CLASS_NAMES
from stages.params import load_params
from stages.paths import DATA_REPORT, TRAIN_DIR, TRAIN_ZIP

# The class is the file name's prefix: cat.123.jpg -> cat.
IMAGE_NAME = re.compile(rf"^({'|'.join(CLASS_NAMES)})\.[^/]*\.(jpe?g|png)$", re.IGNORECASE)
# JPEGs barely compress: an archive, or an entry, that claims to expand more than this
# is not photos. Entries under SMALL_ENTRY may compress better (a tiny flat image) and
# cannot hurt.
MAX_EXPANSION = 50
SMALL_ENTRY = 1 << 20
CHUNK = 64  # images per task of the thread pool
REFETCH = "run `dvc repro -f fetch_data`"
# What reading a damaged or unsupported entry raises (bad CRC, broken deflate stream,
# cut-off data, encryption, a compression method zipfile lacks).
READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError,
               NotImplementedError)


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


def workers() -> int:
    """Threads to check images with: one per CPU this process may use (decoding is
    CPU-bound; more threads only contend for the cores and the GIL)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def main() -> None:
    params = load_params()
    max_unreadable: float = params["max_unreadable_fraction"]
    # Outputs describe this run's archive or nothing: a failed run must not leave the
    # previous archive's images for a later train to pick up. (DVC removes them too.)
    remove(TRAIN_DIR)
    remove(DATA_REPORT)

    try:
        archive = zipfile.ZipFile(TRAIN_ZIP)
    except FileNotFoundError:
        raise StageError(f"{TRAIN_ZIP} not found: run `dvc repro fetch_data` first") from None
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise StageError(f"{TRAIN_ZIP} is not a zip archive (truncated download?): "
                         f"{REFETCH}") from None
    except OSError as error:
        raise StageError(f"cannot read {TRAIN_ZIP}: {error}") from None

    with archive:
        members = safe_members(archive)
        check_expansion(members, TRAIN_ZIP.stat().st_size)
        images: list[tuple[zipfile.ZipInfo, str, str]] = []  # (entry, file name, class)
        for info in members:
            name = entry_name(info).name
            match = IMAGE_NAME.match(name)
            if match:
                images.append((info, name, match.group(1).lower()))
        if not images:
            raise StageError(f"{TRAIN_ZIP} holds no cat.*.jpg or dog.*.jpg files: "
                             "is it Kaggle's train.zip?")
        # Entries are flattened into one folder per class: two with one name would
        # overwrite each other.
        seen: dict[str, str] = {}
        for info, name, _ in images:
            if name.lower() in seen:
                raise StageError(f"{TRAIN_ZIP}: entries '{seen[name.lower()]}' and "
                                 f"'{info.filename}' have the same file name; {REFETCH}")
            seen[name.lower()] = info.filename
        # Checked before decoding too, so that a wrong archive fails in a second.
        for label in CLASS_NAMES:
            if not any(image_label == label for _, _, image_label in images):
                raise StageError(f"{TRAIN_ZIP} holds no {label}.* images; "
                                 "a class with no images cannot be learned")

        # Imported here, once (not from several threads at once), after the cheap checks.
        from stages.images import decode_error

        counts = dict.fromkeys(CLASS_NAMES, 0)
        unreadable: dict[str, str] = {}
        with atomic_output(TRAIN_DIR) as staging, ThreadPoolExecutor(workers()) as pool:
            for label in CLASS_NAMES:
                (staging / label).mkdir(parents=True)

            def check(chunk: list[tuple[zipfile.ZipInfo, str, str]]) -> list[tuple[str, str, str]]:
                """Read, decode and, if readable, write each image of `chunk`: (file name,
                class, why it is unreadable or "")."""
                checked = []
                for info, name, label in chunk:
                    data = read(archive, info)
                    reason = decode_error(data)
                    if not reason:
                        (staging / label / name).write_bytes(data)
                    checked.append((name, label, reason))
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
                    for name, label, reason in checked:
                        if reason:
                            unreadable[name] = reason
                        else:
                            counts[label] += 1
                    before, done = done, done + len(checked)
                    if done * 10 // len(images) > before * 10 // len(images):  # every 10%
                        print(f"split_classes: {done}/{len(images)} images checked",
                              file=sys.stderr)
            except BaseException:
                # A damaged entry (refused as a whole) or ^C: stop now, not after the rest.
                pool.shutdown(cancel_futures=True)
                raise

            empty = [name for name, count in counts.items() if count == 0]
            if empty:
                raise StageError(f"{TRAIN_ZIP}: no readable '{empty[0]}' images; "
                                 "a class with no images cannot be learned")
            fraction = len(unreadable) / len(images)
            if fraction > max_unreadable:
                raise StageError(f"{TRAIN_ZIP}: {len(unreadable)} of {len(images)} images "
                                 f"({fraction:.1%}) are unreadable, over max_unreadable_fraction "
                                 f"{max_unreadable}; fetch the data again")

    report = {"images": counts, "unreadable": len(unreadable),
              "unreadable_files": dict(sorted(unreadable.items()))}
    with atomic_output(DATA_REPORT) as partial:
        partial.write_text(json.dumps(report, indent=2) + "\n")
    print(f"split_classes: {counts} images in {TRAIN_DIR}, "
          f"{len(unreadable)} unreadable skipped (listed in {DATA_REPORT})", file=sys.stderr)


if __name__ == "__main__":
    run(main)
