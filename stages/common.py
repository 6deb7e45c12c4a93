"""Shared, TensorFlow-free helpers for the stage scripts: params, errors, files.

Everything a stage leaves at a declared output path is cached by DVC as good, so
outputs are written to a temporary sibling and renamed into place only once they
are complete (`atomic_output`), and every expected failure is a `StageError`
whose one-line message `run` prints instead of a traceback.
"""

from __future__ import annotations

import hashlib
import math
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


def run(main: Callable[[], None], error_status: int = 1) -> None:
    """Run a stage's `main`, turning a `StageError` into a one-line message and
    `error_status` (a command may keep 1 for something else, as predict does)."""
    try:
        main()
    except StageError as error:
        # One line, whatever the message holds: callers and CI read stderr's last line.
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(error_status)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


# --- params -----------------------------------------------------------------

def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _non_negative(value: float) -> bool:
    return value >= 0


def _at_least_one(value: int) -> bool:
    return value >= 1


def _open_unit(value: float) -> bool:
    return 0 < value < 1


def _unit_rate(value: float) -> bool:
    return 0 <= value < 1


def _non_empty_strings(values: list[Any]) -> bool:
    return bool(values) and all(isinstance(value, str) and value.strip() for value in values)


def _hash_spec(value: str) -> bool:
    if not value:
        return True
    try:
        parse_hash(value)
    except StageError:
        return False
    return True


def _one_of(*choices: str) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        return value in choices

    check.__doc__ = " or ".join(repr(c) for c in choices)
    return check


# key -> (accepted types, check or None, what the check requires).
# bool is a subclass of int, so numeric keys exclude it explicitly below.
PARAM_SPEC: dict[str, tuple[tuple[type, ...], Callable[[Any], bool] | None, str]] = {
    "competition": ((str,), bool, "a Kaggle competition name"),
    "data_source": ((str,), None, "a path, or \"\" to download"),
    "weights_urls": ((list,), _non_empty_strings, "a non-empty list of URLs or paths"),
    "weights_hash": ((str,), _hash_spec,
                     "\"md5:<32 hex digits>\" or \"sha256:<64 hex digits>\", or \"\" to skip"),
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
    unknown = sorted(set(params) - set(PARAM_SPEC), key=str)  # keys need not be strings
    if unknown:
        raise StageError(
            f"{source}: unknown key '{unknown[0]}' (known keys: {', '.join(PARAM_SPEC)})"
        )
    missing = [key for key in PARAM_SPEC if key not in params]
    if missing:
        raise StageError(f"{source}: missing key '{missing[0]}'")
    for key, (types, check, requirement) in PARAM_SPEC.items():
        value = params[key]
        # `lr: true` is no learning rate, though True == 1 to Python.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            raise StageError(
                f"{source}: '{key}' must be {names}, got {type(value).__name__} {value!r}"
            )
        if check is not None and not check(value):
            raise StageError(f"{source}: '{key}' must be {requirement}, got {value!r}")
    return params


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `1e-4` is a string; DVC writes YAML 1.2, where it
    is a float (`dvc exp run -S lr=1e-4` writes exactly that). Read floats as 1.2 does.

    PyYAML also keeps the last of two equal keys, so an edit of the first `lr:` would
    be silently ignored; DVC's own YAML reader refuses duplicates, and so does this one."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key '{key_node.value}' appears twice", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


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
        params = yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12Loader)
    except FileNotFoundError:
        raise StageError(f"{path} not found: run the stage from the project root") from None
    except (OSError, UnicodeDecodeError) as error:
        raise StageError(f"cannot read {path}: {error}") from None
    except yaml.YAMLError as error:
        raise StageError(f"{path} is not valid YAML: {_describe_yaml_error(error)}") from None
    return validate_params(params, path)


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    """"what (line N)": PyYAML's own text spreads over several lines."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark or error.context_mark
        return error.problem + (f" (line {mark.line + 1})" if mark else "")
    return str(error).splitlines()[0] if str(error) else error.__class__.__name__


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
    """Split "md5:abc..." into ("md5", "abc..."), checking the algorithm exists and the
    digest has its length, so a typo fails now and not as a mismatch after a download."""
    algorithm, separator, expected = (part.strip().lower() for part in spec.partition(":"))
    if not separator or not expected:
        raise StageError(f"weights_hash must look like 'md5:<hex>' or 'sha256:<hex>', got {spec!r}")
    try:
        digest_size = hashlib.new(algorithm).digest_size
    except (ValueError, TypeError):
        digest_size = 0
    if algorithm not in hashlib.algorithms_available or not digest_size:  # shake_*: no size
        raise StageError(f"weights_hash: unknown hash algorithm '{algorithm}' (use md5 or sha256)")
    if not re.fullmatch(f"[0-9a-f]{{{2 * digest_size}}}", expected):
        raise StageError(f"weights_hash: a {algorithm} digest is {2 * digest_size} hex digits, "
                         f"got {expected!r}")
    return algorithm, expected


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB blocks (hashlib.file_digest needs Python 3.11)."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
