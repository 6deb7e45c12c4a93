"""Reading train.zip safely: entries whose names climb out of the archive's folder, links
and zip bombs are refused before any image is read; a damaged entry refuses the archive."""

from __future__ import annotations

import re
import stat
import zipfile
from pathlib import Path, PurePosixPath

from finetune.core.errors import StageError
from finetune.core.paths import TRAIN_ZIP
from finetune.dataset.image_files import READ_ERRORS

# JPEGs barely compress: an archive, or an entry, that claims to expand more than this
# is not photos. Entries under SMALL_ENTRY may compress better (a tiny flat image) and
# cannot hurt.
MAX_EXPANSION = 50
SMALL_ENTRY = 1 << 20
REFETCH = "run `dvc repro -f fetch_data`"


def entry_name(info: zipfile.ZipInfo) -> PurePosixPath:
    """The entry's path, with Windows separators read as separators."""
    return PurePosixPath(info.filename.replace("\\", "/"))


def safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The archive's files, refusing any entry whose name is absolute or climbs out of the
    archive's folder (`..`): image names become paths wherever the images are unpacked."""
    members = []
    for info in archive.infolist():
        path = entry_name(info)
        is_link = stat.S_ISLNK(info.external_attr >> 16)
        if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", info.filename):
            raise StageError(f"{TRAIN_ZIP}: entry '{info.filename}' points outside the "
                             "archive's folder; refusing this archive, fetch it again")
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


def read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """An entry's bytes; a damaged entry means a damaged archive, refused as a whole."""
    try:
        return archive.read(info)
    except READ_ERRORS as error:
        raise StageError(f"{TRAIN_ZIP}: cannot read entry '{info.filename}' ({error}); "
                         f"{REFETCH}") from None


def open_train_archive(path: Path = TRAIN_ZIP) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise StageError(f"{path} not found: run `dvc repro fetch_data` first") from None
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise StageError(f"{path} is not a zip archive (truncated download?): "
                         f"{REFETCH}") from None
    except OSError as error:
        raise StageError(f"cannot read {path}: {error}") from None
