"""Which files are images, and what reading one can raise: one definition for every
stage (split_classes, fetch_data, features, submit, predict)."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import PurePosixPath

# The files that are images: what tf.io.decode_image reads (and what
# keras.utils.image_dataset_from_directory lists).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp"})
# What reading one file or zip entry can raise: a file's OSError; zipfile's for a damaged
# entry (bad CRC, broken deflate stream, cut-off data), an encrypted one (RuntimeError)
# or a compression method it lacks.
READ_ERRORS = (OSError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError,
               NotImplementedError)


def is_image(path: PurePosixPath) -> bool:
    """An image file to use: an image extension, nothing hidden on its way (.DS_Store,
    .git/, macOS's __MACOSX/._x.jpg resource forks)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not any(
        part.startswith(".") or part == "__MACOSX" for part in path.parts)
