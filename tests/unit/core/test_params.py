"""finetune.core.params: params.yaml read and checked against the schema (load_params,
validate_params: one line naming the key), hash specs (parse_hash), and params.yaml and
dvc.yaml agree: every knob is tracked by the stages that read it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune.core.errors import StageError
from finetune.core.params import (
    EXECUTION_PARAMS,
    PARAM_SPEC,
    load_params,
    parse_hash,
    validate_params,
)
from tests.support.projects import write_yaml
from tests.support.shared import ROOT

SHIPPED = ROOT / "params.yaml"


# --- params.yaml against dvc.yaml ---------------------------------------------


def leaves(tree: object, prefix: str = "") -> set[str]:
    """Dotted paths of the scalar/list leaves of a YAML mapping (what `-S key=...` can set)."""
    if isinstance(tree, dict):
        return set().union(*(leaves(value, f"{prefix}{key}.") for key, value in tree.items()))
    return {prefix.rstrip(".")}


def tracked_params() -> set[str]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    tracked: set[str] = set()
    for stage in stages.values():
        for entry in stage.get("params", []):
            if isinstance(entry, dict):  # {other_file.yaml: [keys]}
                for keys in entry.values():
                    tracked.update(keys)
            else:
                tracked.add(entry)
    return tracked


def test_every_params_leaf_is_tracked_by_a_stage():
    # An untracked key makes `dvc exp run -S key=...` a silent no-op: DVC records an
    # experiment with identical metrics and reruns nothing.
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    untracked = leaves(params) - tracked_params() - set(EXECUTION_PARAMS)
    assert not untracked, f"params.yaml keys no stage lists under params: {sorted(untracked)}"


def test_execution_params_are_tracked_by_no_stage():
    # They say how and where a stage runs, not what it writes: listing one would make
    # `dvc exp run -S threads=1` recompute cached outputs for nothing.
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(EXECUTION_PARAMS) <= set(params)
    assert not set(EXECUTION_PARAMS) & tracked_params()


def test_stages_track_no_key_missing_from_params_yaml():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert tracked_params() <= leaves(params)


def test_lr_and_training_knobs_are_top_level():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in ("lr", "epochs", "batch_size", "image_size", "seed", "backbone"):
        assert key in params and not isinstance(params[key], dict), key


def test_shipped_params_match_the_schema_and_each_key_has_a_comment():
    params = load_params(ROOT / "params.yaml")
    assert set(params) == set(PARAM_SPEC)
    text = (ROOT / "params.yaml").read_text()
    for key in params:
        line = re.search(rf"^{key}:.*$", text, re.MULTILINE)
        assert line and "#" in line.group(0), f"params.yaml: '{key}' has no one-line comment"


def test_reference_recipe_is_the_default():
    params = load_params(ROOT / "params.yaml")
    assert params["competition"] == "dogs-vs-cats-redux-kernels-edition"
    # Keras's InceptionV3 notop file, from the recipe's mirror first:
    # tests/stages/test_fetch_weights.py checks that these resolve to the recipe's URLs and md5.
    assert (params["weights_urls"], params["weights_hash"]) == ("keras", "keras")
    expected = {"backbone": "InceptionV3", "image_size": 150, "batch_size": 64,
                "val_split": 0.2, "seed": 1234, "cut_layer": "mixed7",
                "unfreeze_after": "mixed6", "head": "flatten", "dense_units": 1024,
                "dropout": 0.2, "lr": 1e-5, "epochs": 2, "head_epochs": 0}
    assert {key: params[key] for key in expected} == expected


@pytest.mark.parametrize(("key", "value"), [
    ("weights_urls", "keras"),
    ("weights_urls", ["https://example.com/w.h5", "offline/w.h5", "file:///tmp/w.h5"]),
    ("weights_hash", "keras"),
    ("weights_hash", ""),
    ("weights_hash", "md5:bcbd6486424b2319ff4ef7d526e38f63"),
    ("weights_hash", "sha256:" + "0f" * 32),
    ("data_source", ""),
    ("data_source", "https://example.com/photos.zip"),
    ("data_source", "HTTP://127.0.0.1:8000/photos.zip"),
    ("data_source", "../shared/data/photos"),
    ("data_source", "/data/my:photos"),  # a colon, no scheme
    ("data_source_hash", ""),
    ("data_source_hash", "md5:bcbd6486424b2319ff4ef7d526e38f63"),
    ("data_source_hash", "sha256:" + "0f" * 32),
])
def test_source_keys_accept_urls_paths_and_hashes(key: str, value: Any) -> None:
    params = load_params(ROOT / "params.yaml")
    params[key] = value
    assert validate_params(params)[key] == value


@pytest.mark.parametrize(("key", "value"), [
    ("weights_urls", "https://example.com/w.h5"),  # one URL is a list of one
    ("weights_urls", "Keras"),
    ("weights_urls", []),
    ("weights_urls", ["https://example.com/w.h5", " "]),
    ("weights_hash", "KERAS"),
    ("weights_hash", "keras:bcbd6486424b2319ff4ef7d526e38f63"),
    ("weights_hash", "md5:bcbd"),
])
def test_bad_weights_values_name_the_accepted_forms(key: str, value: Any) -> None:
    params = load_params(ROOT / "params.yaml")
    params[key] = value
    with pytest.raises(StageError) as refused:
        validate_params(params)
    message = str(refused.value)
    assert "\n" not in message and f"'{key}' must be" in message, message
    forms = (["list of URLs or paths", '"keras"'] if key == "weights_urls"
             else ['"md5:<32 hex digits>"', '"sha256:<64 hex digits>"', '"keras"', '"" to skip'])
    assert all(form in message for form in forms), message


@pytest.mark.parametrize(("key", "value"), [
    ("data_source", "ftp://example.com/photos.zip"),
    ("data_source", "s3://bucket/photos.zip"),
    ("data_source", "file:///data/photos.zip"),
    ("data_source_hash", "keras"),  # Keras publishes checksums of weights, not of data
    ("data_source_hash", "md5:bcbd"),
    ("data_source_hash", "bcbd6486424b2319ff4ef7d526e38f63"),
])
def test_bad_data_values_name_the_accepted_forms(key: str, value: Any) -> None:
    params = load_params(ROOT / "params.yaml")
    params[key] = value
    with pytest.raises(StageError) as refused:
        validate_params(params)
    message = str(refused.value)
    assert "\n" not in message and f"'{key}' must be" in message and repr(value) in message
    forms = (["a path", "an http:// or https:// URL of a zip", '"" to download from Kaggle']
             if key == "data_source"
             else ['"md5:<32 hex digits>"', '"sha256:<64 hex digits>"', '"" to skip'])
    assert all(form in message for form in forms), message


# --- load_params, validate_params --------------------------------------------


def test_shipped_params_validate(params: dict[str, Any]) -> None:
    assert set(params) == set(PARAM_SPEC)
    assert validate_params(params) is params


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", "2"),
        ("epochs", True),
        ("epochs", 2.0),
        ("epochs", 0),
        ("lr", "abc"),
        ("lr", True),
        ("lr", 0),
        ("lr", -1e-5),
        ("lr", float("inf")),
        ("lr", None),
        ("val_split", 0),
        ("val_split", 1),
        ("val_split", 1.5),
        ("dropout", 1.0),
        ("max_unreadable_fraction", 1),
        ("preprocessing", "imagenet"),
        ("weights_urls", []),
        ("weights_urls", "https://example.com/w.h5"),
        ("weights_urls", ["https://example.com/w.h5", 3]),
        ("weights_hash", "bcbd6486424b2319ff4ef7d526e38f63"),  # no algorithm
        ("weights_hash", "md5:"),
        ("weights_hash", "md5:not-hex-at-all-but-32-chars-xx"),
        ("weights_hash", "md5:bcbd6486424b2319ff4ef7d526e38f6"),  # 31 digits
        ("weights_hash", "sha256:bcbd6486424b2319ff4ef7d526e38f63"),  # an md5's length
        ("weights_hash", "crc99:bcbd6486424b2319ff4ef7d526e38f63"),
        ("weights_hash", "shake_128:bcbd6486424b2319ff4ef7d526e38f63"),  # no fixed size
    ],
)
def test_bad_value_names_the_key(params: dict[str, Any], key: str, value: Any) -> None:
    params[key] = value
    with pytest.raises(StageError, match=f"'{key}'"):
        validate_params(params)


def test_unknown_key_is_named(params: dict[str, Any]) -> None:
    params["learning_rate"] = 1e-3
    with pytest.raises(StageError, match="unknown key 'learning_rate'"):
        validate_params(params)


def test_unknown_keys_of_mixed_types(params: dict[str, Any]) -> None:
    params.update({1: "x", "zzz": "y"})  # sorting them must not raise a TypeError
    with pytest.raises(StageError, match="unknown key '1'"):
        validate_params(params)


def test_missing_key_is_named(params: dict[str, Any]) -> None:
    del params["seed"]
    with pytest.raises(StageError, match="missing key 'seed'"):
        validate_params(params)


def test_good_hash_and_empty_hash_pass(params: dict[str, Any]) -> None:
    for spec in ("", "MD5:BCBD6486424B2319FF4EF7D526E38F63", "sha256:" + "0f" * 32):
        params["weights_hash"] = spec
        validate_params(params)


def test_bare_exponent_loads_as_float(tmp_path: Path) -> None:
    # DVC writes `lr: 1e-4` (YAML 1.2); PyYAML's YAML 1.1 would read the string "1e-4".
    text = SHIPPED.read_text()
    text = text.replace("\nlr: 1.0e-5", "\nlr: 1e-4")
    text = text.replace("\nhead_lr: 1.0e-3", "\nhead_lr: 2E-3")
    assert "\nlr: 1e-4" in text and "\nhead_lr: 2E-3" in text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    loaded = load_params(path)
    assert loaded["lr"] == 1e-4 and isinstance(loaded["lr"], float)
    assert loaded["head_lr"] == 2e-3 and isinstance(loaded["head_lr"], float)


def test_bad_value_in_file_names_the_key(tmp_path: Path, params: dict[str, Any]) -> None:
    params["epochs"] = "2"
    with pytest.raises(StageError, match="'epochs' must be int, got str '2'"):
        load_params(write_yaml(tmp_path / "params.yaml", params))


def test_duplicate_key_is_refused(tmp_path: Path) -> None:
    # PyYAML would keep the second `lr:` and silently ignore an edit of the first.
    path = tmp_path / "params.yaml"
    path.write_text(SHIPPED.read_text() + "lr: 0.1\n")
    with pytest.raises(StageError, match='duplicate key "lr"'):
        load_params(path)


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"lr: [1e-4\nepochs: 2\n", "is not valid YAML"),
        (b"\tlr: 1\n", "is not valid YAML"),
        (b"\xff\xfe\x00binary\x00", "cannot read"),
        (b"just a sentence\n", "expected a mapping"),
        (b"", "expected a mapping"),
    ],
    ids=["unclosed-list", "tab", "binary", "scalar", "empty"],
)
def test_non_yaml_file(tmp_path: Path, content: bytes, hint: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(StageError, match=hint) as raised:
        load_params(path)
    assert "\n" not in str(raised.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="not found: run the stage from the project root"):
        load_params(tmp_path / "params.yaml")


# --- parse_hash --------------------------------------------------------------


def test_parse_hash_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert parse_hash(f"SHA256:{digest.upper()}") == ("sha256", digest)
    algorithm, expected = parse_hash(f"md5:{hashlib.md5(b'weights').hexdigest()}")
    assert (algorithm, expected) == ("md5", hashlib.md5(b"weights").hexdigest())


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("md5", "must look like"),
        ("nope:abcd", "unknown hash algorithm 'nope'"),
        ("md5:abcd", "32 hex digits"),
    ],
)
def test_parse_hash_refuses(spec: str, hint: str) -> None:
    with pytest.raises(StageError, match=hint):
        parse_hash(spec)


@pytest.mark.parametrize(("key", "value"), [("lr", -1), ("lr", "fast"), ("learning_rate", 1)])
def test_a_bad_value_says_how_to_undo_a_failed_experiment(params: dict[str, Any], key: str,
                                                          value: Any) -> None:
    # DVC leaves a failed `dvc exp run -S`'s params in the workspace, and the next run
    # fails on them too: the error says how to get the committed params back.
    with pytest.raises(StageError, match=r"; if a failed `dvc exp run -S` left it there, "
                                         r"`git checkout params\.yaml` restores the committed "
                                         r"value$"):
        validate_params({**params, key: value})
