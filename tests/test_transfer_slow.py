"""Transfer learning proven on real photos (slow: `make test-slow`, run by CI).

The real ImageNet-pretrained MobileNet (alpha 0.25) from ../shared, through the
whole pipeline (`dvc exp run -S backbone=mobilenet ...`, as the README documents),
on the 1,000 real photos of the shared sample with the pipeline's own 80/20 split,
must reach 0.92 validation accuracy; the same configuration with random weights
must stay below 0.75. The difference is the transfer. Without ../shared it skips, and
under CI (REQUIRE_SHARED=1) it fails instead.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from scripts.demo import MOBILENET_PARAMS, copy_project
from tests.conftest import dvc, stage_env, write_legacy_weights

pytestmark = pytest.mark.slow


def set_params(params: dict) -> list[str]:
    """`-S key=value` arguments for `dvc exp run` (lists in Hydra's [a,b] syntax)."""
    arguments = []
    for key, value in params.items():
        text = f"[{','.join(map(str, value))}]" if isinstance(value, list) else value
        arguments += ["-S", f"{key}={text}"]
    return arguments


def run_experiment(project, params: dict) -> tuple[dict, float]:
    start = time.monotonic()
    dvc(project, stage_env(), "exp", "run", *set_params(params))
    elapsed = time.monotonic() - start
    return json.loads((project / "metrics/evaluate/metrics.json").read_text()), elapsed


def test_pretrained_mobilenet_transfers_and_random_weights_do_not(
        tmp_path, real_sample_dir, mobilenet_weights):
    import keras

    project = tmp_path / "project"
    project.mkdir()
    copy_project(project, {"data_source": str(real_sample_dir)})

    pretrained, seconds = run_experiment(project, {**MOBILENET_PARAMS,
                                                   "weights_urls": [str(mobilenet_weights)]})
    print(f"\npretrained MobileNet: {pretrained['accuracy']:.3f} accuracy, "
          f"log loss {pretrained['log_loss']:.3f} on {pretrained['images']} validation photos, "
          f"{seconds:.0f} s for the whole dvc exp run")
    assert pretrained["images"] == 200
    assert pretrained["accuracy"] >= 0.92

    keras.utils.set_random_seed(0)
    random_weights = tmp_path / "random_mobilenet.h5"
    write_legacy_weights(keras.applications.MobileNet(
        input_shape=(224, 224, 3), alpha=0.25, include_top=False, weights=None), random_weights)
    digest = hashlib.sha256(random_weights.read_bytes()).hexdigest()
    random, seconds = run_experiment(project, {**MOBILENET_PARAMS,
                                               "weights_urls": [str(random_weights)],
                                               "weights_hash": f"sha256:{digest}"})
    print(f"random-weight MobileNet: {random['accuracy']:.3f} accuracy, "
          f"log loss {random['log_loss']:.3f}, {seconds:.0f} s")
    assert random["accuracy"] < 0.75
