"""The train stage on a small real run: determinism, best-epoch selection, early failures."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, stage_env

SMALL = {
    "backbone": "MobileNet", "alpha": 0.25, "image_size": 96, "batch_size": 16,
    "cut_layer": "conv_pw_13_relu", "unfreeze_after": "conv_pw_12_relu", "head": "gap",
    "dense_units": 16, "epochs": 2, "lr": 1e-3, "head_epochs": 1, "head_lr": 1e-3,
    "augment_flip": True, "augment_rotation": 0.05,
}


@pytest.fixture(scope="module")
def weights_file(mobilenet_weights) -> Path:
    # The real pretrained weights: with random ones MobileNet predicts a constant 0.5,
    # and equal metrics would prove nothing.
    return mobilenet_weights


def flat(metrics: dict, prefix: str = "") -> dict[str, float]:
    items: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def make_project(root: Path, sample_dir: Path, weights_file: Path, **overrides) -> Path:
    """A project dir as split_classes and fetch_weights leave it: 20 photos per class."""
    for label in ("cat", "dog"):
        folder = root / "data" / "train" / label
        folder.mkdir(parents=True)
        for number in range(20):
            shutil.copy(sample_dir / "train" / f"{label}.{number}.jpg", folder)
    (root / "models").mkdir()
    shutil.copy(weights_file, root / "models" / "backbone_notop.h5")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump({**params, **SMALL, **overrides}))
    return root


def train(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.train"], cwd=project, capture_output=True,
                          text=True, env=stage_env(PYTHONPATH=str(ROOT)), timeout=600)


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
    history = (tmp_path / "first/metrics/train/plots/metrics/eval/loss.tsv").read_text()
    assert len(history.strip().splitlines()) == 1 + 3


def test_training_killed_mid_way_resumes_and_ends_as_an_uninterrupted_run(
        tmp_path, sample_dir, weights_file):
    overrides = {"epochs": 4}
    reference = make_project(tmp_path / "uninterrupted", sample_dir, weights_file, **overrides)
    assert train(reference).returncode == 0

    project = make_project(tmp_path / "killed", sample_dir, weights_file, **overrides)
    log = project / "metrics/train/plots/metrics/eval/loss.tsv"
    process = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=project,
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


def test_kept_epoch_is_the_best_by_validation_loss(tmp_path, sample_dir, weights_file):
    project = make_project(tmp_path, sample_dir, weights_file, epochs=3, lr=3e-2)
    result = train(project)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((project / "metrics/train/metrics.json").read_text())
    rows = (project / "metrics/train/plots/metrics/eval/loss.tsv").read_text().splitlines()[1:]
    losses = [float(row.split("\t")[-1]) for row in rows]
    assert metrics["best_epoch"] == 1 + losses.index(min(losses))
    assert metrics["kept_epoch"] == metrics["best_epoch"]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"backbone": "ResNet5O"}, "backbone: unknown keras.applications model 'ResNet5O'"),
    ({"cut_layer": "conv_pw_14_relu"}, "cut_layer: "),
    ({"lr": 0}, "'lr' must be > 0"),
])
def test_bad_params_fail_before_reading_images(tmp_path, sample_dir, weights_file, overrides,
                                               message):
    project = make_project(tmp_path, sample_dir, weights_file, **overrides)
    shutil.rmtree(project / "data")  # would fail differently if the images were read first
    result = train(project)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (project / "models/model.keras").exists()
