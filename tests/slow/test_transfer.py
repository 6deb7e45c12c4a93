"""Transfer learning proven on real photos (slow: `make test-slow`, run by CI).

The real ImageNet-pretrained MobileNet (alpha 0.25) from ../shared, through the
whole pipeline (`dvc exp run -S backbone=mobilenet ...`, as the README documents),
with the pipeline's own 80/20 split:
  - on the 1,000 real cat and dog photos of the shared sample, it must reach 0.92
    validation accuracy; the same configuration with random weights must stay below
    0.75;
  - on the 500 real flower photos in five class folders (`data_source` pointing at the
    folder), 0.80; with random weights, at most 0.40 (chance is 0.20).
The difference is the transfer. Without ../shared it skips, and under CI
(REQUIRE_SHARED=1) it fails instead.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from scripts.demo import MOBILENET_PARAMS, copy_project
from tests.support.commands import dvc, stage_env
from tests.support.weights import write_legacy_weights

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


def random_mobilenet_file(folder) -> tuple[str, str]:
    """MobileNet (alpha 0.25) notop weights, random (seed 0), and their sha256 spec."""
    import keras

    keras.utils.set_random_seed(0)
    path = folder / "random_mobilenet.h5"
    write_legacy_weights(keras.applications.MobileNet(
        input_shape=(224, 224, 3), alpha=0.25, include_top=False, weights=None), path)
    return str(path), f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def pretrained_and_random(project, params: dict, weights, folder, what: str
                          ) -> tuple[dict, dict]:
    """The validation metrics of `params` with the pretrained `weights`, then with random
    weights in the same layout; each printed with the time of its whole dvc exp run."""
    pretrained, seconds = run_experiment(project, {**params, "weights_urls": [str(weights)]})
    print(f"\npretrained MobileNet{what}: {pretrained['accuracy']:.3f} accuracy, "
          f"log loss {pretrained['log_loss']:.3f}, macro F1 {pretrained['macro']['f1']:.3f} on "
          f"{pretrained['images']} validation photos, {seconds:.0f} s for the whole dvc exp run")
    random_weights, digest = random_mobilenet_file(folder)
    random, seconds = run_experiment(project, {**params, "weights_urls": [random_weights],
                                               "weights_hash": digest})
    print(f"random-weight MobileNet{what}: {random['accuracy']:.3f} accuracy, "
          f"log loss {random['log_loss']:.3f}, {seconds:.0f} s")
    return pretrained, random


def test_pretrained_mobilenet_transfers_and_random_weights_do_not(
        tmp_path, real_sample_dir, mobilenet_weights):
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project, {"data_source": str(real_sample_dir)})
    pretrained, random = pretrained_and_random(project, MOBILENET_PARAMS, mobilenet_weights,
                                               tmp_path, "")
    assert pretrained["images"] == 200
    assert pretrained["accuracy"] >= 0.92
    assert random["accuracy"] < 0.75


# The whole pretrained backbone frozen (`last`: its output), a small head on its pooled
# features, a softmax over the five classes: the README's flowers command.
FLOWERS_PARAMS = {**MOBILENET_PARAMS, "cut_layer": "last", "unfreeze_after": "last",
                  "dense_units": 128, "dropout": 0.5, "epochs": 40}


def test_pretrained_mobilenet_learns_five_kinds_of_flowers(tmp_path, flowers_dir,
                                                          mobilenet_weights):
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project)
    pretrained, random = pretrained_and_random(
        project, {**FLOWERS_PARAMS, "data_source": str(flowers_dir)}, mobilenet_weights,
        tmp_path, " on flowers")
    report = json.loads((project / "metrics/data.json").read_text())
    assert report["classes"] == ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    assert pretrained["images"] == 100
    assert pretrained["accuracy"] >= 0.80
    assert random["accuracy"] <= 0.40
