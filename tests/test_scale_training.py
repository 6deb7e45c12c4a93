"""Multi-worker training (`strategy: multi_worker`): two workers on loopback train the
model one process trains, and only the chief writes outputs.

The two-worker run is `make test-scale` (marker `scale`); the checks of TF_CONFIG, of
the batch shares and of the Keras code the workarounds patch are in the default suite.
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

from stages.errors import StageError
from stages.multi_worker import (
    PATCHED_SOURCES,
    check_patched_sources,
    keras_patched,
    read_cluster,
    share,
)
from tests.conftest import (
    ROOT,
    SMALL_NETWORK,
    assert_stage_error,
    extract_features,
    lay_out_project,
    run_stage,
    stage_command,
    stage_env,
    write_train_manifest,
)

# --- default suite: the patched Keras code, TF_CONFIG, the shares ---------------------


def test_keras_functions_patched_are_those_the_workarounds_were_written_for():
    """Fails when a Keras upgrade changes a patched function: re-check the upstream issue
    named in stages/multi_worker.py, then update or drop the patch and its digest."""
    check_patched_sources()


def test_a_changed_patched_function_is_refused_and_the_patch_is_undone(monkeypatch):
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    with keras_patched():
        assert trainer.reduce_per_replica is not original  # applied inside only
    assert trainer.reduce_per_replica is original
    monkeypatch.setitem(PATCHED_SOURCES, "reduce_per_replica", "0" * 64)
    with pytest.raises(StageError, match=r"changed reduce_per_replica.*re-check the upstream"), \
            keras_patched():
        pass
    assert trainer.reduce_per_replica is original


def tf_config(cluster: dict, task_type: str, index: int) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


TWO = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}


@pytest.mark.parametrize(("config", "message"), [
    ("", "strategy multi_worker needs TF_CONFIG"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ("[]", "expected an object with a 'cluster' object"),
    (tf_config({"worker": "127.0.0.1:1"}, "worker", 0), "cluster['worker'] must be a list"),
    (tf_config({"worker": ["127.0.0.1"]}, "worker", 0), "'host:port' strings"),
    (tf_config({**TWO, "ps": ["127.0.0.1:3"]}, "worker", 0), "task type 'ps' is not supported"),
    (tf_config({**TWO, "chief": ["a:1", "b:2"]}, "chief", 0), "at most one chief"),
    (tf_config(TWO, "worker", 2), "task worker 2 is not in the cluster (2 worker address(es))"),
    (tf_config(TWO, "evaluator", 0), "'task' must be"),
    (json.dumps({"cluster": TWO}), "'task' must be"),
])
def test_bad_tf_config_is_one_line(config, message):
    with pytest.raises(StageError) as error:
        read_cluster({"TF_CONFIG": config})
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("cluster", "task_type", "index", "chief"), [
    (TWO, "worker", 0, True),
    (TWO, "worker", 1, False),
    ({**TWO, "chief": ["127.0.0.1:3"]}, "chief", 0, True),
    ({**TWO, "chief": ["127.0.0.1:3"]}, "worker", 0, False),
])
def test_the_chief_is_the_chief_task_or_worker_0(cluster, task_type, index, chief):
    read = read_cluster({"TF_CONFIG": tf_config(cluster, task_type, index)})
    assert read.is_chief == chief
    assert read.workers == sum(len(addresses) for addresses in cluster.values())


@pytest.mark.parametrize("size", [8, 7, 5, 3, 1])
@pytest.mark.parametrize("replicas", [2, 3, 4])
def test_shares_weighted_give_the_mean_over_the_whole_batch(size, replicas):
    """Keras's loss on a replica: sum(weight * loss) / share size, divided by the number of
    replicas; summed over replicas (the gradient all-reduce) it must be the batch's mean,
    each sample counted once, whether the batch splits evenly or not."""
    positions = np.random.default_rng(size).permutation(100)[:size]
    losses = np.random.default_rng(replicas).random(100)
    total, seen = 0.0, []
    for replica in range(replicas):
        mine, weights = share(positions, replicas, replica)
        assert len(mine) == -(-size // replicas)  # every replica the same shape, never empty
        total += np.sum(weights * losses[mine]) / len(mine) / replicas
        seen += list(mine[weights > 0])
    assert sorted(seen) == sorted(positions)
    assert total == pytest.approx(losses[positions].mean(), rel=1e-6)
    if size % replicas == 0:
        assert all((share(positions, replicas, r)[1] == 1).all() for r in range(replicas))


class Positions:
    """Batches of `size` samples: batch i holds positions i*size .. (i+1)*size - 1."""

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size = count, size

    def positions(self, index: int) -> np.ndarray:
        return np.arange(index * self.size, min((index + 1) * self.size, self.count))


@pytest.mark.parametrize(("count", "replicas", "sizes"), [
    (9, 2, [[5, 4]]),  # the last batch (1) would leave a replica empty: joined
    (10, 2, [[4, 4], [1, 1]]),
    (17, 4, [[2, 2, 2, 2], [3, 2, 2, 2]]),
])
def test_validation_shares_are_never_empty_and_cover_every_sample(count, replicas, sizes):
    from stages.multi_worker import evaluation_batches, evaluation_share

    batches = evaluation_batches(Positions(count, 8), -(-count // 8), replicas)
    got = [[len(evaluation_share(batch, replicas, r)[0]) for r in range(replicas)]
           for batch in batches]
    assert got == sizes
    seen = [p for batch in batches for r in range(replicas) for p in
            evaluation_share(batch, replicas, r)[0]]
    assert sorted(seen) == list(range(count))


def test_fewer_validation_images_than_replicas_is_one_line():
    from stages.multi_worker import evaluation_batches

    with pytest.raises(StageError, match="val_split: 1 validation images are fewer than the 2"):
        evaluation_batches(Positions(1, 8), 1, 2)


@pytest.mark.parametrize(("overrides", "config", "message"), [
    ({}, None, "strategy multi_worker needs TF_CONFIG"),
    ({"batch_size": 7}, tf_config(TWO, "worker", 1),
     "batch_size: 7 does not split evenly across 2 workers; use a multiple of 2"),
])
def test_bad_multi_worker_setup_fails_in_one_line_before_training(
        tmp_path, sample_dir, mobilenet_random_weights, overrides, config, message):
    project = lay_out_project(tmp_path, sample_dir, mobilenet_random_weights, 2,
                              **{**SMALL_NETWORK, **overrides}, strategy="multi_worker")
    environment = stage_env()
    environment.pop("TF_CONFIG", None)
    if config is not None:
        environment["TF_CONFIG"] = config
    assert_stage_error(run_stage("train", project, env=environment, timeout=120), message)
    assert not (project / "models/model.keras").exists()


def test_multi_worker_training_does_not_resume_a_backup(tmp_path, capsys):
    """The chief alone holds backups: a resumed chief and fresh workers would train apart."""
    from stages.train import Outputs, resumable_backup

    outputs = Outputs(tmp_path)
    for multi_worker, resumes in ((False, True), (True, False)):
        outputs.backup.mkdir(parents=True, exist_ok=True)
        (outputs.backup / "run-id").write_text("this run")
        (outputs.backup / "epoch-0001.weights.h5").write_bytes(b"weights")
        assert resumable_backup("this run", outputs, multi_worker) == resumes
    assert "multi-worker training cannot resume" in capsys.readouterr().err
    assert [path.name for path in outputs.backup.iterdir()] == ["run-id"]  # started afresh


# --- make test-scale: two workers on loopback against one process ----------------------

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
    from stages.network import load_model

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
    for number in (21, 22):
        (project / f"data/train/dog/dog.{number}.jpg").unlink()
    write_train_manifest(project / "data/train")
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
