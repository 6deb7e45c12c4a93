"""params.yaml and dvc.yaml agree: every knob is tracked by the stages that read it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from stages.params import PARAM_SPEC, load_params

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
    untracked = leaves(params) - tracked_params()
    assert not untracked, f"params.yaml keys no stage lists under params: {sorted(untracked)}"


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
    assert params["weights_urls"][0] == (
        "https://storage.googleapis.com/mledu-datasets/"
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5")
    expected = {"backbone": "InceptionV3", "image_size": 150, "batch_size": 64,
                "val_split": 0.2, "seed": 1234, "cut_layer": "mixed7",
                "unfreeze_after": "mixed6", "head": "flatten", "dense_units": 1024,
                "dropout": 0.2, "lr": 1e-5, "epochs": 2, "head_epochs": 0}
    assert {key: params[key] for key in expected} == expected
