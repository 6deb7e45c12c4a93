"""params.yaml and dvc.yaml agree: every knob is tracked by the stages that read it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages.errors import StageError
from stages.params import EXECUTION_PARAMS, PARAM_SPEC, load_params, validate_params

ROOT = Path(__file__).resolve().parents[1]


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
    # Keras's InceptionV3 notop file, from the recipe's mirror first: tests/test_fetch_weights.py
    # checks that these resolve to the recipe's URLs and md5.
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
])
def test_weights_keys_accept_keras_urls_and_hashes(key: str, value: Any) -> None:
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
