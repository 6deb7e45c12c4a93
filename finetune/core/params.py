"""params.yaml: read it as DVC does, and check every key before any work starts.

DVC reads and writes params.yaml as YAML 1.2 with ruamel.yaml (`dvc exp run
-S lr=1e-4` writes `lr: 1e-4`, a float in YAML 1.2 and a string in PyYAML's
YAML 1.1); the stages read it with the same library, which also refuses a key
written twice (PyYAML would silently keep the second).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from finetune.core.errors import StageError
from finetune.core.paths import PARAMS_FILE

# weights_urls / weights_hash value: the file keras.applications publishes for the
# configured backbone, or its checksum (resolved by finetune.sources.keras_weights).
KERAS = "keras"
# A value that names a URL scheme ("https://", "s3://"); a data_source URL is http(s) only.
URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")
HTTP_SCHEMES = ("http://", "https://")


def is_http_url(value: str) -> bool:
    """Whether a data_source is a URL to download (else a path, or "" for Kaggle)."""
    return value.lower().startswith(HTTP_SCHEMES)


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


def _urls_spec(value: list[Any] | str) -> bool:
    # The one string is "keras": a single URL is still written as a list of one.
    return value == KERAS if isinstance(value, str) else _non_empty_strings(value)


def _hash_spec(value: str) -> bool:
    if value in ("", KERAS):
        return True
    try:
        parse_hash(value)
    except StageError:
        return False
    return True


def _data_source_spec(value: str) -> bool:
    # ftp://, s3://, file://...: refused now, not read as a relative path that is missing.
    return is_http_url(value) or not URL_SCHEME.match(value)


def _data_hash_spec(value: str) -> bool:
    return value != KERAS and _hash_spec(value)  # Keras publishes no checksum of data


def _cluster_spec(value: str) -> bool:
    return value in ("", "local") or re.fullmatch(r"(tcp|tls|inproc|ucx)://\S+", value) is not None


# What the export stage can write (finetune.model.export): Keras's `model.export` formats.
EXPORT_FORMATS = ("tf_saved_model", "litert", "onnx")


def _export_formats(values: list[Any]) -> bool:
    return (all(isinstance(value, str) and value in EXPORT_FORMATS for value in values)
            and len(set(values)) == len(values))


def _one_of(*choices: str) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        return value in choices

    check.__doc__ = " or ".join(repr(c) for c in choices)
    return check


# key -> (accepted types, check or None, what the check requires).
# bool is a subclass of int, so numeric keys exclude it explicitly below.
PARAM_SPEC: dict[str, tuple[tuple[type, ...], Callable[[Any], bool] | None, str]] = {
    "competition": ((str,), bool, "a Kaggle competition name"),
    "data_source": ((str,), _data_source_spec,
                    "a path, an http:// or https:// URL of a zip, or \"\" to download from "
                    "Kaggle"),
    "data_source_hash": ((str,), _data_hash_spec,
                         "\"md5:<32 hex digits>\", \"sha256:<64 hex digits>\" (checks the zip "
                         "a data_source URL downloads), or \"\" to skip"),
    "weights_urls": ((list, str), _urls_spec,
                     "a non-empty list of URLs or paths, or \"keras\" (Keras's own file)"),
    "weights_hash": ((str,), _hash_spec,
                     "\"md5:<32 hex digits>\", \"sha256:<64 hex digits>\", \"keras\" (Keras's "
                     "own checksum), or \"\" to skip"),
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
    "calibration": ((str,), _one_of("none", "temperature"), "'none' or 'temperature'"),
    "tta": ((str,), _one_of("none", "flip"), "'none' or 'flip'"),
    "clip": ((int, float), lambda value: 0 <= value < 0.5, "in [0, 0.5)"),
    "export_formats": ((list,), _export_formats,
                       f"a list of distinct formats among {', '.join(EXPORT_FORMATS)}"),
    "precision": ((str,), _one_of("float32", "mixed_float16", "mixed_bfloat16"),
                  "'float32', 'mixed_float16' or 'mixed_bfloat16'"),
    "threads": ((int,), _non_negative, ">= 0 (0 = all cores)"),
    "cluster": ((str,), _cluster_spec,
                "\"\" (this process), \"local\" (a Dask cluster on this machine) or a "
                "scheduler address such as \"tcp://host:8786\""),
    "cluster_workers": ((int,), _at_least_one, ">= 1"),
    "strategy": ((str,), _one_of("default", "multi_worker"), "'default' or 'multi_worker'"),
}

# Keys that change how fast a stage runs or where, never what it writes: no stage lists
# them under `params:` in dvc.yaml, so `-S threads=1` on a queued experiment reruns
# nothing that is cached. Each with the reason; the tests hold the code to it.
EXECUTION_PARAMS = {
    "threads": "TensorFlow's thread pools; op determinism makes the results the same",
    "cluster": "where the features are computed; the distributed result is bit-identical "
               "to the serial one (tests/scale/test_dask_features.py)",
    "cluster_workers": "how many local Dask workers compute the features; same bits",
    "strategy": "how many processes train; with the same global batch the weights agree "
                "within 1e-6 (tests/scale/test_multi_worker_training.py)",
}


def undo_hint(source: Path) -> str:
    """How to undo a value `dvc exp run -S` wrote: DVC leaves a failed experiment's params in
    the workspace, so the next run fails on them too."""
    return (f"; if a failed `dvc exp run -S` left it there, `git checkout {source}` restores "
            "the committed value")


def validate_params(params: Any, source: Path = PARAMS_FILE) -> dict[str, Any]:
    """Check every key of params.yaml; raise a StageError naming the first bad one."""
    if not isinstance(params, dict):
        raise StageError(f"{source}: expected a mapping of keys to values")
    unknown = sorted(set(params) - set(PARAM_SPEC), key=str)  # keys need not be strings
    if unknown:
        raise StageError(
            f"{source}: unknown key '{unknown[0]}' (known keys: {', '.join(PARAM_SPEC)})"
            + undo_hint(source))
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
                + undo_hint(source))
        if check is not None and not check(value):
            raise StageError(f"{source}: '{key}' must be {requirement}, got {value!r}"
                             + undo_hint(source))
    return params


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read and validate params.yaml, so a typo fails before any download or training."""
    try:
        params = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{path} not found: run the stage from the project root") from None
    except (OSError, UnicodeDecodeError) as error:
        raise StageError(f"cannot read {path}: {error}") from None
    except YAMLError as error:
        raise StageError(f"{path} is not valid YAML: {_describe_yaml_error(error)}") from None
    return validate_params(params, path)


def _describe_yaml_error(error: YAMLError) -> str:
    """"what (line N)": the library's own text spreads over several lines."""
    if isinstance(error, MarkedYAMLError) and error.problem:
        mark = error.problem_mark or error.context_mark
        return error.problem + (f" (line {mark.line + 1})" if mark else "")
    return str(error).splitlines()[0] if str(error) else error.__class__.__name__


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
