"""The feature store: the frozen part's cached activations (the features stage's output).

One `.npy` file per image set (float16 rows, one per image, in the order of the
index), written row by row and read back by rows with `os.pread`: neither side
ever holds the whole file in memory (at 299 px, InceptionV3's `mixed6` is 444 KB
an image in float16, 11 GB for 25,000 images), and reading by rows, unlike a
memory map, does not count the file's pages in the process's resident memory.

float16, not float32: half the disk and I/O; its 11-bit mantissa rounds each
activation by at most 2^-11 of its value, far below what training can tell apart
(see docs/pipeline.md, "Features"). But float16 tops out at 65504, and a backbone without
normalisation (VGG with caffe preprocessing, a pre-activation `unfreeze_after`) can go
beyond: a file whose rows do not all fit is stored in float32 instead (its header says
so, and readers follow it), so nothing is rounded to inf. Nothing non-finite is stored
either: a NaN or inf out of the backbone itself is a one-line error.

index.json records what the rows are (the class names, image paths and labels, test
ids, the unreadable test images), the params that produced them and the weights file's
size and SHA-256, so a stage run by hand (`python -m stages.train` after an edit: DVC's
deps do not guard it) can refuse features made for another configuration, of other
images than data/train.json lists, or with other weights.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from finetune.core.errors import StageError
from finetune.core.paths import FEATURES_INDEX, MIRRORED_FEATURES_INDEX
from finetune.core.progress import Progress
from finetune.dataset.split import Sample

if TYPE_CHECKING:  # a type hint only: submit reads no manifest
    from finetune.dataset.manifest import TrainImages

DTYPE = np.dtype("float16")
WIDE = np.dtype("float32")  # for a file with activations beyond float16's range
FLOAT16_MAX = float(np.finfo(DTYPE).max)  # 65504
# The params that change the activations: exactly the features stage's params in dvc.yaml.
FEATURE_PARAMS = ("backbone", "alpha", "image_size", "preprocessing", "unfreeze_after",
                  "precision")
COPY_ROWS_BYTES = 64 << 20  # rows read back at a time when a file is widened


def storable(rows: np.ndarray, first_row: int = 0) -> np.ndarray:
    """`rows` as stored: float16 where every value fits (bits as a plain cast gives them),
    float32 where one does not. A NaN or inf (out of the backbone, before any cast) is a
    StageError; `first_row` (the row number of rows[0]) names where."""
    rows = np.asarray(rows)
    finite = np.isfinite(rows)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(len(rows), -1).all(axis=1))
        raise StageError(
            f"the frozen part gives NaN or inf for {len(bad)} of {len(rows)} images in a batch "
            f"(the first: row {first_row + int(bad[0])}): nothing is cached. Check the "
            "weights file (`dvc repro -f fetch_weights`), and with precision: mixed_float16 "
            "try float32")
    if rows.size and float(np.abs(rows).max()) > FLOAT16_MAX:
        return np.ascontiguousarray(rows, dtype=WIDE)
    return np.ascontiguousarray(rows, dtype=DTYPE)


class FeatureWriter:
    """Writes `count` rows of `shape` to a .npy file, in order, as they come: float16, or
    float32 from the first batch that float16 cannot hold on (the rows written before it
    are rewritten as float32, their float16 values exactly: every float16 is a float32)."""

    def __init__(self, path: Path, count: int, shape: tuple[int, ...]) -> None:
        self.path, self.count, self.shape, self.written = path, count, tuple(shape), 0
        self.dtype = DTYPE
        self.stream = path.open("wb")
        self._write_header()

    def _write_header(self) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.count, *self.shape)}
        np.lib.format.write_array_header_2_0(self.stream, header)

    def write(self, rows: np.ndarray) -> None:
        stored = storable(rows, self.written)
        assert stored.shape[1:] == self.shape, (stored.shape, self.shape)
        if stored.dtype != self.dtype:
            if self.dtype == DTYPE:  # the first batch float16 cannot hold
                self._widen(float(np.abs(stored).max()))
            stored = np.ascontiguousarray(rows, dtype=WIDE)  # as they came, not rounded
        self.stream.write(stored.tobytes())
        self.written += len(rows)

    def _widen(self, largest: float) -> None:
        """Rewrite the rows written so far as float32, and go on in float32."""
        print(f"features: an activation of {largest:.6g} is beyond float16's range "
              f"({FLOAT16_MAX:g}): storing {self.path.name} in float32 (twice the size)",
              file=sys.stderr)
        self.stream.close()
        narrow = self.path.with_name(f"float16-{self.path.name}")
        self.path.replace(narrow)
        row_values = int(np.prod(self.shape))
        with narrow.open("rb") as source:
            np.lib.format.read_magic(source)
            np.lib.format.read_array_header_2_0(source)
            self.dtype = WIDE
            self.stream = self.path.open("wb")
            self._write_header()
            step = max(1, COPY_ROWS_BYTES // (row_values * DTYPE.itemsize))
            for start in range(0, self.written, step):
                rows = min(step, self.written - start)
                data = np.frombuffer(source.read(rows * row_values * DTYPE.itemsize), DTYPE)
                self.stream.write(data.astype(WIDE).tobytes())
        narrow.unlink()

    def close(self) -> None:
        self.stream.close()
        if self.written != self.count:
            raise StageError(f"wrote {self.written} feature rows of {self.count}")


class FeatureFile:
    """Rows of a .npy feature file (float16, or float32 where float16 could not hold them),
    read on demand: `features[rows]` is a float32 array."""

    def __init__(self, path: Path) -> None:
        try:
            with path.open("rb") as stream:
                version = np.lib.format.read_magic(stream)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(stream)
                self.offset = stream.tell()
        except (OSError, ValueError) as error:
            raise StageError(f"cannot read {path} ({error}): run `dvc repro features`") from None
        if fortran or dtype not in (DTYPE, WIDE) or len(shape) < 2:
            raise StageError(f"{path} is not a feature file: run `dvc repro -f features`")
        self.path, self.count, self.shape, self.dtype = path, shape[0], tuple(shape[1:]), dtype
        self.row_bytes = int(np.prod(self.shape)) * dtype.itemsize
        expected = self.offset + self.count * self.row_bytes
        if path.stat().st_size != expected:
            raise StageError(f"{path} is truncated: run `dvc repro -f features`")
        self.descriptor = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        outside = rows[(rows < 0) | (rows >= self.count)]
        if outside.size:
            raise IndexError(f"row {outside[0]} of {self.count}")
        out = np.empty((len(rows), self.row_bytes), dtype=np.uint8)
        # One read per run of consecutive rows: evaluate and submit read them in order (a
        # batch in one call); training's shuffled batches cost a call per row.
        bounds = [0, *(np.flatnonzero(np.diff(rows) != 1) + 1), len(rows)] if len(rows) else []
        for start, end in itertools.pairwise(bounds):
            size = (end - start) * self.row_bytes
            data = os.pread(self.descriptor, size,
                            self.offset + int(rows[start]) * self.row_bytes)
            if len(data) != size:
                raise StageError(f"{self.path} is truncated: run `dvc repro -f features`")
            out[start:end] = np.frombuffer(data, np.uint8).reshape(end - start, self.row_bytes)
        return out.view(self.dtype).reshape(len(rows), *self.shape).astype(np.float32)

    def __del__(self) -> None:
        descriptor = getattr(self, "descriptor", None)
        if descriptor is not None:
            os.close(descriptor)


def weights_fingerprint(weights: Path, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """The weights file's size, time and SHA-256. The hash is computed only where the
    size and time differ from `known` (a fingerprint recorded earlier): `dvc checkout`
    rewrites the file's time, not its bytes, and reading 90 MB takes a tenth of a second."""
    stat = weights.stat()
    if known and [known.get("size"), known.get("mtime_ns")] == [stat.st_size, stat.st_mtime_ns]:
        return dict(known)
    with weights.open("rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}


def write_index(path: Path, params: dict[str, Any], shape: tuple[int, ...], classes: list[str],
                train: list[Sample], test_ids: list[str], unreadable: dict[str, Any],
                weights: dict[str, Any], dtype: np.dtype = DTYPE, tta: str | None = None
                ) -> None:
    """index.json; `weights` is the weights file's fingerprint (weights_fingerprint), `dtype`
    the widest of the feature files' (each file's header says its own); `tta` ("flip":
    mirrored_features' rows, of the images mirrored) recorded where given."""
    index = {"params": {key: params[key] for key in FEATURE_PARAMS}, "shape": list(shape),
             "dtype": np.dtype(dtype).name, "classes": classes,
             "train": [[path, label] for path, label in train],
             "test_ids": test_ids, "test_unreadable": unreadable, "weights": weights}
    if tta is not None:
        index["tta"] = tta
    path.write_text(json.dumps(index, indent=1) + "\n")


def read_index(params: dict[str, Any], path: Path = FEATURES_INDEX, *,
               images: TrainImages | None = None, weights: Path | None = None,
               stage: str = "features") -> dict[str, Any]:
    """The features' index, checked against the params they must have been made with, and,
    where given, the `images` data/train.json lists (read_manifest's) and the `weights` file: a
    stage checks what it depends on in dvc.yaml. `stage` wrote `path` (the hints name it)."""
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path} not found: run `dvc repro {stage}` first") from None
    except (OSError, ValueError) as error:
        raise StageError(f"cannot read {path} ({error}): run `dvc repro -f {stage}`") from None
    made_with = index.get("params", {})
    for key in FEATURE_PARAMS:
        if made_with.get(key) != params[key]:
            raise StageError(f"the features were made with {key}: {made_with.get(key)!r}, "
                             f"params.yaml has {params[key]!r}: run `dvc repro {stage}`")
    if "classes" not in index or "weights" not in index:
        raise StageError(f"{path} was made by an older version: run `dvc repro -f {stage}`")
    index["train"] = [(str(path), int(label)) for path, label in index["train"]]
    if images is not None:
        check_images(index, images)
    if weights is not None:
        check_weights(index["weights"], weights)
    return index


# --- test-time augmentation: the mirrored images' features (tta: flip) ---------------

MIRRORED_STAGE = "mirrored_features"


def write_no_mirrored_index(path: Path) -> None:
    """mirrored_features' index.json under `tta: none`: no rows, and it says why."""
    path.write_text(json.dumps({"tta": "none"}) + "\n")


def read_mirrored_index(params: dict[str, Any], index: dict[str, Any],
                        path: Path = MIRRORED_FEATURES_INDEX) -> dict[str, Any] | None:
    """With `tta: flip`, mirrored_features' index, checked as read_index checks the features
    and row for row against theirs (`index`, read_index's): the same images and test ids
    in the same order, the same weights and shape. None with `tta: none` (not read)."""
    if params["tta"] == "none":
        return None
    try:
        made_with = json.loads(path.read_text()).get("tta")
    except FileNotFoundError:
        raise StageError(f"{path} not found: run `dvc repro {MIRRORED_STAGE}` first") from None
    except (OSError, ValueError, AttributeError) as error:
        raise StageError(f"cannot read {path} ({error}): run `dvc repro -f {MIRRORED_STAGE}`"
                         ) from None
    if made_with != params["tta"]:
        raise StageError(f"the mirrored features were made with tta: {made_with!r}, "
                         f"params.yaml has {params['tta']!r}: run `dvc repro {MIRRORED_STAGE}`")
    mirrored = read_index(params, path, stage=MIRRORED_STAGE)
    for key in ("classes", "train", "test_ids", "shape"):
        if mirrored[key] != index[key]:
            raise StageError(f"the mirrored features' {key} differ from the features': run "
                             f"`dvc repro {MIRRORED_STAGE}`")
    if mirrored["weights"].get("sha256") != index["weights"].get("sha256"):
        raise StageError(f"the mirrored features were made with another weights file than "
                         f"the features: run `dvc repro {MIRRORED_STAGE}`")
    return mirrored


def check_images(index: dict[str, Any], images: TrainImages) -> None:
    """Refuse features of other images, or other classes, than data/train.json lists
    (`images`, read_manifest's)."""
    if index["classes"] != images.classes:
        raise StageError(f"the features are of the classes {index['classes']}, {images.path} "
                         f"lists {images.classes}: run `dvc repro features`")
    found, expected = sorted(index["train"]), sorted(images.samples)
    if found != expected:
        odd = sorted(set(found) ^ set(expected))
        raise StageError(f"the features are of other images than {images.path} lists (first "
                         f"difference: {odd[0][0] if odd else 'a repeated image'}): "
                         "run `dvc repro features`")


def check_weights(recorded: dict[str, Any], weights: Path) -> None:
    """Refuse features made with another weights file than `weights`."""
    try:
        current = weights_fingerprint(weights, recorded)
    except FileNotFoundError:
        raise StageError(f"{weights} not found: run `dvc repro fetch_weights`") from None
    if current["sha256"] != recorded.get("sha256"):
        raise StageError(f"the features were made with another {weights} "
                         f"(sha256 {str(recorded.get('sha256'))[:12]}…, {recorded.get('size'):,} "
                         f"bytes; now {current['sha256'][:12]}…, {current['size']:,} bytes): "
                         "run `dvc repro features`")


def predict_rows(trained_part: Any, features: FeatureFile, rows: np.ndarray, batch_size: int,
                 what: str) -> np.ndarray:
    """The model's outputs for `features[rows]`, batch by batch: float64, a row per image
    (one column, P(second class), for two classes; a probability per class for more).
    `trained_part` is the model above its frozen part (finetune.model.assembly.trained_part)."""
    expected = tuple(trained_part.input_shape[1:])
    if expected != features.shape:
        raise StageError(f"the model takes activations of shape {expected}, the features are "
                         f"{features.shape}: run `dvc repro`")
    progress = Progress(what, len(rows))
    outputs = []
    for start in range(0, len(rows), batch_size):
        batch = features[rows[start:start + batch_size]]
        outputs.append(np.asarray(trained_part.predict_on_batch(batch)))
        progress.update(len(batch))
    units = int(trained_part.output_shape[-1])
    return (np.concatenate(outputs).astype(np.float64) if outputs
            else np.zeros((0, units)))
