"""finetune.training.checkpoints: which backup is resumed, and the line saying why not;
a diverged (NaN or inf) epoch is never the best."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from finetune.core.params import EXECUTION_PARAMS
from finetune.core.paths import WEIGHTS_FILE
from finetune.training.checkpoints import (
    Checkpoints,
    best_epoch,
    best_val_loss,
    resumable_backup,
    run_record,
)
from finetune.training.outputs import Outputs

PARAMS = {"lr": 0.01, "epochs": 2, "threads": 0, "cluster": "", "cluster_workers": 1,
          "strategy": "default"}


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A folder holding a weights file, as the working directory (paths are relative)."""
    monkeypatch.chdir(tmp_path)
    WEIGHTS_FILE.parent.mkdir(parents=True)
    WEIGHTS_FILE.write_bytes(b"weights")
    return tmp_path


def killed_run(outputs: Outputs, record: dict, epochs: int = 1) -> None:
    """The backup a run killed after `epochs` epochs leaves."""
    outputs.backup.mkdir(parents=True, exist_ok=True)
    resumable_backup(record, outputs)
    for epoch in range(1, epochs + 1):
        (outputs.backup / f"epoch-{epoch:04d}.weights.h5").write_bytes(b"weights")


def test_multi_worker_training_does_not_resume_a_backup(project, capsys):
    """The chief alone holds backups: a resumed chief and fresh workers would train apart."""
    outputs, record = Outputs(project), run_record(PARAMS, ["a.jpg"])
    for multi_worker, resumes in ((False, True), (True, False)):
        killed_run(outputs, record)
        assert resumable_backup(record, outputs, multi_worker) == resumes
    assert "multi-worker training cannot resume" in capsys.readouterr().err
    assert [path.name for path in outputs.backup.iterdir()] == ["run.json"]  # started afresh


@pytest.mark.parametrize("key", sorted(EXECUTION_PARAMS))
def test_execution_params_do_not_stop_a_resume(project, key, capsys):
    """threads, cluster, strategy cannot change the weights: a killed run resumes under
    other values of them."""
    outputs = Outputs(project)
    killed_run(outputs, run_record(PARAMS, ["a.jpg"]))
    other = {**PARAMS, key: {"threads": 3, "cluster": "local", "cluster_workers": 4,
                             "strategy": "multi_worker"}[key]}
    assert resumable_backup(run_record(other, ["a.jpg"]), outputs)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("change", "named"), [
    (lambda params, images: ({**params, "lr": 0.001}, images), "lr 0.01 -> 0.001"),
    (lambda params, images: ({**params, "epochs": 3, "threads": 2}, images), "epochs 2 -> 3"),
    (lambda params, images: (params, ["b.jpg"]), "images"),
    (lambda params, images: (params | {"seed": 7}, images), "seed '(unset)' -> 7"),
])
def test_a_backup_of_other_training_is_discarded_with_one_line_saying_why(
        project, change, named, capsys):
    outputs = Outputs(project)
    killed_run(outputs, run_record(PARAMS, ["a.jpg"]), epochs=2)
    assert not resumable_backup(run_record(*change(PARAMS, ["a.jpg"])), outputs)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("train: discarding the backup of an interrupted run (")
    assert "2 epoch(s)): it differs from this run in " + named in lines[0]
    assert "threads" not in lines[0]
    assert lines[0].endswith("; starting afresh")
    assert [path.name for path in outputs.backup.iterdir()] == ["run.json"]


def test_a_backup_of_other_weights_says_so(project, capsys):
    outputs = Outputs(project)
    killed_run(outputs, run_record(PARAMS, ["a.jpg"]))
    WEIGHTS_FILE.write_bytes(b"other weights")
    assert not resumable_backup(run_record(PARAMS, ["a.jpg"]), outputs)
    assert "it differs from this run in weights file;" in capsys.readouterr().err


def test_a_backup_without_a_record_is_discarded_with_a_reason(project, capsys):
    """A backup of an older version (run-id only) cannot say what differs; it says that."""
    outputs = Outputs(project)
    outputs.backup.mkdir(parents=True)
    (outputs.backup / "run-id").write_text("0123abcd")
    (outputs.backup / "epoch-0001.weights.h5").write_bytes(b"weights")
    assert not resumable_backup(run_record(PARAMS, ["a.jpg"]), outputs)
    assert "it records no params to compare" in capsys.readouterr().err


def test_an_empty_backup_is_replaced_silently(project, capsys):
    """Killed before its first epoch ended: nothing of value is discarded, nothing said."""
    outputs = Outputs(project)
    killed_run(outputs, run_record(PARAMS, ["a.jpg"]), epochs=0)
    assert not resumable_backup(run_record({**PARAMS, "lr": 1.0}, ["a.jpg"]), outputs)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("history", "best"), [
    ([0.6, 0.5, 0.4], 3),
    ([math.nan, 0.5, 0.4], 3),  # min() keeps a leading NaN: it used to pick epoch 1
    ([0.5, math.nan, 0.6], 1),
    ([0.5, math.inf, 0.4, 0.4], 3),  # the first of equals, as the checkpoint keeps it
    ([math.nan, math.inf, math.nan], None),  # diverged: nothing to keep
])
def test_a_non_finite_epoch_is_never_the_best(history, best):
    assert best_epoch(history) == best
    assert best_val_loss(history) == (history[best - 1] if best else math.inf)


class _Model:
    def save_weights(self, path):
        Path(path).write_bytes(b"weights")


def test_checkpoint_keeps_no_nan_epoch_as_best(tmp_path):
    """`nan < inf` is False and `nan < 0.5` too, so a NaN epoch writes no best weights;
    a finite epoch after it does (and is then the one kept)."""
    outputs = Outputs(tmp_path)
    outputs.backup.mkdir(parents=True)
    checkpoints = Checkpoints(math.inf, outputs)
    checkpoints.set_model(_Model())
    checkpoints.on_epoch_end(0, {"val_loss": math.nan})
    assert not outputs.best_weights.exists()
    checkpoints.on_epoch_end(1, {"val_loss": 0.5})
    assert outputs.best_weights.exists() and checkpoints.best_val_loss == 0.5
    outputs.best_weights.unlink()
    for epoch, loss in ((2, math.nan), (3, math.inf), (4, 0.6)):
        checkpoints.on_epoch_end(epoch, {"val_loss": loss})
    assert not outputs.best_weights.exists() and checkpoints.best_val_loss == 0.5
    assert [path.name for path in outputs.backup.glob("epoch-*")] == ["epoch-0005.weights.h5"]
