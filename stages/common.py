"""Shared, TensorFlow-free helpers for the stage scripts: params, errors, files.

Everything a stage leaves at a declared output path is cached by DVC as good, so
outputs are written to a temporary sibling and renamed into place only once they
are complete (`atomic_output`), and every expected failure is a `StageError`
whose one-line message `run` prints instead of a traceback.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")

# Where the stages read and write; dvc.yaml declares the same paths.
RAW_DIR = Path("data/raw")
TRAIN_ZIP = RAW_DIR / "train.zip"
TEST_ZIP = RAW_DIR / "test.zip"
SAMPLE_SUBMISSION = RAW_DIR / "sample_submission.csv"
TRAIN_DIR = Path("data/train")
DATA_REPORT = Path("metrics/data.json")
WEIGHTS_FILE = Path("models/backbone_notop.h5")
MODEL_FILE = Path("models/model.keras")
SUBMISSION_FILE = Path("data/submission.csv")
CLASS_NAMES = ("cat", "dog")  # label 0 and 1: the competition scores P(dog)


class StageError(Exception):
    """An expected failure, reported to the user as one line that says what to fix."""


def run(main: Callable[[], None]) -> None:
    """Run a stage's `main`, turning a `StageError` into a one-line message and exit 1."""
    try:
        main()
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


# --- params -----------------------------------------------------------------

def _positive(value: float) -> bool:
    return value > 0


def _non_negative(value: float) -> bool:
    return value >= 0


def _at_least_one(value: int) -> bool:
    return value >= 1


def _open_unit(value: float) -> bool:
    return 0 < value < 1


def _unit_rate(value: float) -> bool:
    return 0 <= value < 1


def _one_of(*choices: str) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        return value in choices

    check.__doc__ = " or ".join(repr(c) for c in choices)
    return check


# key -> (accepted types, check or None, what the check requires).
# bool is a subclass of int, so integer keys exclude it explicitly below.
PARAM_SPEC: dict[str, tuple[tuple[type, ...], Callable[[Any], bool] | None, str]] = {
    "competition": ((str,), bool, "a Kaggle competition name"),
    "data_source": ((str,), None, "a path, or \"\" to download"),
    "weights_urls": ((list,), bool, "a non-empty list of URLs or paths"),
    "weights_hash": ((str,), None, "\"algorithm:hexdigest\", or \"\" to skip"),
    "max_unreadable_fraction": ((int, float), _unit_rate, "in [0, 1)"),
    "backbone": ((str,), bool, "a keras.applications model name"),
    "alpha": ((int, float), _positive, "> 0"),
    "cut_layer": ((str,), bool, "a layer name of the backbone"),
    "unfreeze_after": ((str,), bool, "a layer name of the backbone"),
    "preprocessing": ((str,), _one_of("backbone", "unit"), "'backbone' or 'unit'"),
    "head": ((str,), _one_of("flatten", "gap"), "'flatten' or 'gap'"),
    "dense_units": ((int,), _non_negative, ">= 0"),
    "dropout": ((int, float), _unit_rate, "in [0, 1)"),
    "augment_flip": ((bool,), None, "true or false"),
    "augment_rotation": ((int, float), _unit_rate, "in [0, 1) (fraction of a full turn)"),
    "augment_zoom": ((int, float), _unit_rate, "in [0, 1)"),
    "image_size": ((int,), _at_least_one, ">= 1"),
    "batch_size": ((int,), _at_least_one, ">= 1"),
    "val_split": ((int, float), _open_unit, "in (0, 1)"),
    "seed": ((int,), _non_negative, ">= 0"),
    "head_epochs": ((int,), _non_negative, ">= 0"),
    "head_lr": ((int, float), _positive, "> 0"),
    "epochs": ((int,), _at_least_one, ">= 1"),
    "lr": ((int, float), _positive, "> 0"),
    "keep": ((str,), _one_of("best", "last"), "'best' or 'last'"),
    "clip": ((int, float), lambda value: 0 <= value < 0.5, "in [0, 0.5)"),
}


def validate_params(params: Any, source: Path = PARAMS_FILE) -> dict[str, Any]:
    """Check every key of params.yaml; raise a StageError naming the first bad one."""
    if not isinstance(params, dict):
        raise StageError(f"{source}: expected a mapping of keys to values")
    unknown = sorted(set(params) - set(PARAM_SPEC))
    if unknown:
        raise StageError(
            f"{source}: unknown key '{unknown[0]}' (known keys: {', '.join(PARAM_SPEC)})"
        )
    missing = [key for key in PARAM_SPEC if key not in params]
    if missing:
        raise StageError(f"{source}: missing key '{missing[0]}'")
    for key, (types, check, requirement) in PARAM_SPEC.items():
        value = params[key]
        integer_only = int in types and float not in types
        if not isinstance(value, types) or (integer_only and isinstance(value, bool)):
            names = " or ".join(t.__name__ for t in types)
            raise StageError(
                f"{source}: '{key}' must be {names}, got {type(value).__name__} {value!r}"
            )
        if check is not None and not check(value):
            raise StageError(f"{source}: '{key}' must be {requirement}, got {value!r}")
    return params


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `1e-4` is a string; DVC writes YAML 1.2, where it
    is a float (`dvc exp run -S lr=1e-4` writes exactly that). Read floats as 1.2 does."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read and validate params.yaml, so a typo fails before any download or training."""
    try:
        params = yaml.load(path.read_text(), Loader=_Yaml12Loader)
    except FileNotFoundError:
        raise StageError(f"{path} not found: run the stage from the project root") from None
    except yaml.YAMLError as error:
        raise StageError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    return validate_params(params, path)


# --- files ------------------------------------------------------------------

@contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to `final` only if the block succeeds.

    The temporary path sits in the same folder, so the rename is atomic and a
    crash leaves either the old output or none, never a partial one.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    # Keep the extension: some writers insist on it (Keras wants ".keras").
    handle, name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".part{final.suffix}",
                                    dir=final.parent)
    os.close(handle)
    temporary = Path(name)
    temporary.unlink()  # the caller creates it, as a file or a folder
    try:
        yield temporary
        remove(final)
        temporary.replace(final)
    finally:
        remove(temporary)


def remove(path: Path) -> None:
    """Delete a file or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def parse_hash(spec: str) -> tuple[str, str]:
    """Split "md5:abc..." into ("md5", "abc..."), checking the algorithm exists."""
    algorithm, separator, expected = spec.partition(":")
    if not separator or not expected:
        raise StageError(f"weights_hash must look like 'md5:<hex>' or 'sha256:<hex>', got {spec!r}")
    if algorithm not in hashlib.algorithms_available:
        raise StageError(f"weights_hash: unknown hash algorithm '{algorithm}' (use md5 or sha256)")
    return algorithm, expected.lower()


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, algorithm).hexdigest()
