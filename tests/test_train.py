"""The train stage on a small run: determinism, resuming, best-epoch selection, early failures.

MobileNet (alpha 0.25) with random weights whose BatchNormalization is calibrated on
the drawn photos (conftest's `mobilenet_random_weights`), cut at `conv_pw_3_relu`,
where such features still tell the drawn classes apart: the model learns, so its
metrics move from epoch to epoch and equal metrics mean something.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import (
    ROOT,
    assert_stage_error,
    run_stage,
    stage_command,
    stage_env,
    write_params,
)

PER_CLASS = 30  # 24 training and 6 validation photos per class
SMALL = {
    "backbone": "MobileNet", "alpha": 0.25, "image_size": 96, "batch_size": 16,
    "cut_layer": "conv_pw_3_relu", "unfreeze_after": "conv_pw_2_relu", "head": "gap",
    "dense_units": 16, "epochs": 2, "lr": 1e-2, "head_epochs": 1, "head_lr": 1e-2,
    "augment_flip": True, "augment_rotation": 0.05,
}
VAL_LOSS_LOG = "metrics/train/plots/metrics/eval/loss.tsv"
VAL_ACCURACY_LOG = "metrics/train/plots/metrics/eval/accuracy.tsv"


@pytest.fixture(scope="module")
def weights_file(mobilenet_random_weights) -> Path:
    return mobilenet_random_weights


def flat(metrics: dict, prefix: str = "") -> dict[str, float]:
    items: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def logged(project: Path, log: str) -> list[float]:
    """One value per epoch, as dvclive logged it."""
    return [float(row.split("\t")[-1]) for row in (project / log).read_text().splitlines()[1:]]


def make_project(root: Path, sample_dir: Path, weights_file: Path, **overrides) -> Path:
    """A project dir as split_classes and fetch_weights leave it: PER_CLASS photos per class."""
    for label in ("cat", "dog"):
        folder = root / "data" / "train" / label
        folder.mkdir(parents=True)
        for number in range(PER_CLASS):
            shutil.copy(sample_dir / "train" / f"{label}.{number}.jpg", folder)
    (root / "models").mkdir()
    shutil.copy(weights_file, root / "models" / "backbone_notop.h5")
    write_params(root, **{**SMALL, **overrides})
    return root


def train(project: Path) -> subprocess.CompletedProcess:
    return run_stage("train", project, timeout=600)


def test_same_params_give_the_same_metrics(tmp_path, sample_dir, weights_file):
    runs = []
    for name in ("first", "second"):
        project = make_project(tmp_path / name, sample_dir, weights_file)
        result = train(project)
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(json.loads((project / "metrics/train/metrics.json").read_text()))
        assert (project / "models/model.keras").is_file()
        assert not (project / "models/.train-backup").exists()
    assert runs[0] == runs[1]
    # Head epoch + 2 fine-tuning epochs, one continuous step count in dvclive.
    losses = logged(tmp_path / "first", VAL_LOSS_LOG)
    assert len(losses) == 3
    # Not equal by being constant: the model learned (validation loss moved every
    # epoch, and the last epoch classifies most validation photos right).
    assert len(set(losses)) == 3, losses
    assert logged(tmp_path / "first", VAL_ACCURACY_LOG)[-1] >= 0.75


def test_training_killed_mid_way_resumes_and_ends_as_an_uninterrupted_run(
        tmp_path, sample_dir, weights_file):
    overrides = {"epochs": 4}
    reference = make_project(tmp_path / "uninterrupted", sample_dir, weights_file, **overrides)
    assert train(reference).returncode == 0
    expected_losses = logged(reference, VAL_LOSS_LOG)
    assert len(set(expected_losses)) == 5, expected_losses  # epochs differ: a real check

    project = make_project(tmp_path / "killed", sample_dir, weights_file, **overrides)
    log = project / VAL_LOSS_LOG
    process = subprocess.Popen(stage_command("train"), cwd=project,
                               env=stage_env(PYTHONPATH=str(ROOT)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # Kill (SIGKILL: no clean-up) once two of the five epochs are logged: mid fine-tuning.
    while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (project / "models/model.keras").exists()

    resumed = train(project)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the interrupted run" in resumed.stderr
    expected = json.loads((reference / "metrics/train/metrics.json").read_text())
    got = json.loads((project / "metrics/train/metrics.json").read_text())
    assert flat(got) == pytest.approx(flat(expected), rel=1e-5, abs=1e-6)
    assert logged(project, VAL_LOSS_LOG) == pytest.approx(expected_losses, rel=1e-5, abs=1e-6)
    steps = [row.split("\t")[0] for row in log.read_text().splitlines()[1:]]
    assert steps == ["0", "1", "2", "3", "4"]  # each epoch once, redone ones too


def test_a_backup_from_other_params_is_not_resumed(tmp_path, sample_dir, weights_file):
    project = make_project(tmp_path, sample_dir, weights_file)
    stale = project / "models/.train-backup"
    stale.mkdir()
    (stale / "run-id").write_text("a run with other params")
    result = train(project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" not in result.stderr
    assert not stale.exists()


def validation_loss(project: Path) -> float:
    """The saved model's loss on the validation split, computed here from the model file."""
    import keras
    import numpy as np
    import yaml

    from stages.dataset import labels_of, split_files
    from stages.images import load_images
    from stages.network import load_model

    params = yaml.safe_load((project / "params.yaml").read_text())
    _, validation = split_files(project / "data/train", params["val_split"], params["seed"])
    images = load_images([path for path, _ in validation], params["image_size"], "validation")
    model = load_model(project / "models/model.keras")
    predictions = model.predict(images.astype(np.float32), verbose=0)
    return float(np.mean(keras.losses.binary_crossentropy(labels_of(validation), predictions)))


def test_kept_epoch_is_the_best_by_validation_loss(tmp_path, sample_dir, weights_file):
    # Two head epochs that learn, then one fine-tuning epoch at a learning rate that
    # wrecks the model: the best epoch (2) is not the last (3), by far.
    project = make_project(tmp_path, sample_dir, weights_file, head_epochs=2, head_lr=1e-2,
                           epochs=1, lr=0.3)
    result = train(project)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((project / "metrics/train/metrics.json").read_text())
    losses = logged(project, VAL_LOSS_LOG)
    assert len(losses) == 3
    best = 1 + losses.index(min(losses))
    assert best != len(losses) and losses[-1] > 2 * losses[best - 1], losses  # precondition
    assert metrics["best_epoch"] == best
    assert metrics["kept_epoch"] == best
    # The model file holds the kept epoch's weights, not the last epoch's.
    saved = validation_loss(project)
    assert saved == pytest.approx(losses[best - 1], abs=1e-4), losses
    assert saved != pytest.approx(losses[-1], abs=1e-2)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"backbone": "ResNet5O"}, "backbone: unknown keras.applications model 'ResNet5O'"),
    ({"cut_layer": "conv_pw_14_relu"}, "cut_layer: "),
    ({"lr": 0}, "'lr' must be > 0"),
])
def test_bad_params_fail_before_reading_images(tmp_path, sample_dir, weights_file, overrides,
                                               message):
    project = make_project(tmp_path, sample_dir, weights_file, **overrides)
    shutil.rmtree(project / "data")  # would fail differently if the images were read first
    assert_stage_error(train(project), message)
    assert not (project / "models/model.keras").exists()
