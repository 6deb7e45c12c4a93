"""Multi-worker training (`strategy: multi_worker`): two workers on loopback train the
model one process trains (dropout 0, no augmentation), reproducibly with dropout, and
only the chief writes outputs (marker `scale`, run by `make test-scale`).

Checked in the default suite: TF_CONFIG and the batch shares in
tests/unit/training/test_multi_worker.py, each replica's own dropout masks in
tests/unit/training/test_determinism.py, the Keras code the workarounds patch in
tests/unit/training/test_keras_workarounds.py, no resumed backup in
tests/unit/training/test_checkpoints.py, a bad setup's one-line error in
tests/stages/test_train_multi_worker.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.commands import assert_stage_error, run_stage, stage_command, stage_env
from tests.support.projects import (
    SMALL_NETWORK,
    extract_features,
    lay_out_project,
    train_images,
    write_train_images,
)
from tests.support.shared import ROOT
from tests.support.tf_config import tf_config

# 23 cats and 21 dogs: 35 training photos in batches of 8 (the last batch, 3 photos,
# splits 2 + 1 between the workers) and 9 validation photos (the last, 1 photo, leaves
# the second worker none): the shares' weights are exercised, not only even splits.
PER_CLASS = 23
TRAINING = {**SMALL_NETWORK, "dense_units": 8, "dropout": 0.0, "head_epochs": 1,
            "head_lr": 1e-2, "epochs": 2, "lr": 1e-2, "threads": 1}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder`, by relative path, with its content's digest."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def model_weights(project: Path) -> list[np.ndarray]:
    from finetune.model.saved import load_model

    return load_model(project / "models/model.keras").get_weights()


def logged_val_losses(project: Path) -> list[float]:
    log = project / "metrics/train/plots/metrics/eval/loss.tsv"
    return [float(row.split("\t")[-1]) for row in log.read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, sample_dir, mobilenet_random_weights) -> Path:
    """A project as the stages before train leave it (features extracted): 35 training and
    9 validation photos."""
    project = lay_out_project(tmp_path_factory.mktemp("multi-worker") / "prepared", sample_dir,
                              mobilenet_random_weights, PER_CLASS, **TRAINING)
    dropped = {f"dog/dog.{number}.jpg" for number in (21, 22)}
    write_train_images(project, {name: data for name, data in train_images(project).items()
                                 if name not in dropped})
    extract_features(project)
    return project


def worker_copies(prepared: Path, folder: Path, count: int, **changes: str) -> list[Path]:
    """A copy of the project per worker, as on its own machine after `dvc pull`, with
    `strategy: multi_worker` and `changes` ("key: old" -> "key: new") in params.yaml."""
    changes = {"strategy: default": "strategy: multi_worker", **changes}
    copies = []
    for index in range(count):
        project = shutil.copytree(prepared, folder / f"worker{index}")
        params = project / "params.yaml"
        text = params.read_text()
        for old, new in changes.items():
            assert old in text
            text = text.replace(old, new)
        params.write_text(text)
        copies.append(project)
    return copies


def run_cluster(projects: list[Path], tasks: list[tuple[str, int]], cluster: dict,
                scratch: Path) -> tuple[list[str], float]:
    """`python -m stages.train` in each project at once, each with its TF_CONFIG task and
    `scratch` as TMPDIR; their output, and the wall time until the last one ended."""
    started = time.monotonic()
    processes = [subprocess.Popen(
        stage_command("train"), cwd=project, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=stage_env(PYTHONPATH=str(ROOT), TMPDIR=str(scratch), CUDA_VISIBLE_DEVICES="",
                      TF_CONFIG=tf_config(cluster, *task)))
        for project, task in zip(projects, tasks, strict=True)]
    try:
        outputs = [process.communicate(timeout=300)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-5000:]
    return outputs, time.monotonic() - started


def loopback(count: int) -> list[str]:
    return [f"127.0.0.1:{port}" for port in free_ports(count)]


@pytest.mark.scale
def test_two_workers_train_the_model_one_process_trains(tmp_path, prepared):
    single = shutil.copytree(prepared, tmp_path / "single")
    started = time.monotonic()
    result = run_stage("train", single, timeout=300)
    single_seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]

    workers = worker_copies(prepared, tmp_path, 2)
    before = [tree(project) for project in workers]
    scratch = tmp_path / "tmp"  # each worker's TMPDIR: a non-chief's outputs go there
    scratch.mkdir()
    outputs, multi_seconds = run_cluster(workers, [("worker", 0), ("worker", 1)],
                                         {"worker": loopback(2)}, scratch)
    print(f"\n--- worker 1 (not the chief) ---\n{outputs[1][-1500:]}")

    # Only the chief (worker 0) wrote outputs; worker 1 left its project and TMPDIR as
    # they were.
    chief, other = workers
    assert tree(other) == before[1]
    assert list(scratch.iterdir()) == []
    written = set(tree(chief)) - set(before[0])
    assert "models/model.keras" in written and "metrics/train/metrics.json" in written
    assert not (chief / "models/.train-backup").exists()
    assert set(tree(single)) == set(tree(chief))  # the same files as one process writes

    expected, got = model_weights(single), model_weights(chief)
    assert [w.shape for w in got] == [w.shape for w in expected]
    difference = max(float(np.abs(a - b).max()) for a, b in zip(got, expected, strict=True))
    losses = {"single": logged_val_losses(single), "two workers": logged_val_losses(chief)}
    assert len(set(losses["single"])) == 3, losses  # it learned: the comparison means something
    print(f"largest weight difference, 2 workers vs 1 process: {difference:.3g}")
    print(f"val_loss per epoch: {losses}")
    print(f"wall time: 1 process {single_seconds:.1f} s, 2 workers {multi_seconds:.1f} s "
          f"(each process starts TensorFlow; 35 photos; threads: 1 each)")
    assert difference < 1e-6
    # Validation metrics too (so the same epoch is kept); the training loss and accuracy
    # logged may differ slightly: see the README's multi-worker section.
    assert losses["two workers"] == pytest.approx(losses["single"], rel=1e-5)
    summaries = [json.loads((project / "metrics/train/metrics.json").read_text())
                 for project in (single, chief)]
    assert summaries[1]["eval"] == pytest.approx(summaries[0]["eval"], rel=1e-5)
    assert summaries[1]["kept_epoch"] == summaries[0]["kept_epoch"]
    # The replica count is recorded where it can change the weights (dropout,
    # augmentation): a multi-worker run's metrics say it; one process's stay as they were.
    assert summaries[1]["replicas"] == 2 and "replicas" not in summaries[0]


@pytest.mark.scale
def test_with_dropout_two_worker_runs_give_the_same_weights(tmp_path, prepared):
    """Dropout 0.5: each replica draws its own masks (a function of the seed, epoch, step
    and replica: tests/unit/training/test_determinism.py), so two runs on two workers
    train the same model to the bit. Not one process's: see docs/scaling-out.md."""
    weights = []
    for run in ("first", "second"):
        folder = tmp_path / run
        folder.mkdir()
        workers = worker_copies(prepared, folder, 2, **{"dropout: 0.0": "dropout: 0.5"})
        scratch = folder / "tmp"
        scratch.mkdir()
        run_cluster(workers, [("worker", 0), ("worker", 1)], {"worker": loopback(2)}, scratch)
        weights.append(model_weights(workers[0]))
    first, second = weights
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.scale
def test_a_chief_and_a_worker_train_on_pixels_with_augmentation(tmp_path, prepared):
    """The other input path and the other TF_CONFIG layout: a "chief" task and worker 0
    (not the chief then). Augmentation draws differ per replica, so this checks that it
    trains and who writes, not the weights."""
    projects = worker_copies(prepared, tmp_path, 2, **{"augment_flip: false":
                                                       "augment_flip: true"})
    before = [tree(project) for project in projects]
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    addresses = loopback(2)
    outputs, _ = run_cluster(projects, [("chief", 0), ("worker", 0)],
                             {"chief": addresses[:1], "worker": addresses[1:]}, scratch)
    assert all("training on pixels" in output for output in outputs)
    chief, other = projects
    assert tree(other) == before[1]
    assert list(scratch.iterdir()) == []
    assert {"models/model.keras", "metrics/train/metrics.json"} <= set(tree(chief))
    assert len(logged_val_losses(chief)) == 3


@pytest.mark.scale
def test_workers_given_different_params_all_stop_in_one_line(tmp_path, prepared):
    projects = worker_copies(prepared, tmp_path, 2)
    params = projects[1] / "params.yaml"
    assert "\nlr: 0.01\n" in params.read_text()
    params.write_text(params.read_text().replace("\nlr: 0.01\n", "\nlr: 0.02\n"))
    before = [tree(project) for project in projects]
    addresses = {"worker": loopback(2)}
    started = [subprocess.Popen(
        stage_command("train"), cwd=project, text=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=stage_env(PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="",
                      TF_CONFIG=tf_config(addresses, "worker", index)))
        for index, project in enumerate(projects)]
    try:
        errors = [process.communicate(timeout=300)[1] for process in started]
    finally:
        for process in started:
            process.kill()
    for process, stderr in zip(started, errors, strict=True):  # both stop, neither hangs
        result = subprocess.CompletedProcess(process.args, process.returncode, "", stderr)
        assert_stage_error(result, "the workers were not given the same training")
    assert [tree(project) for project in projects] == before
