"""finetune.training.checkpoints: multi-worker training resumes no backup; a diverged
(NaN or inf) epoch is never the best."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from finetune.training.checkpoints import (
    Checkpoints,
    best_epoch,
    best_val_loss,
    resumable_backup,
)
from finetune.training.outputs import Outputs


def test_multi_worker_training_does_not_resume_a_backup(tmp_path, capsys):
    """The chief alone holds backups: a resumed chief and fresh workers would train apart."""
    outputs = Outputs(tmp_path)
    for multi_worker, resumes in ((False, True), (True, False)):
        outputs.backup.mkdir(parents=True, exist_ok=True)
        (outputs.backup / "run-id").write_text("this run")
        (outputs.backup / "epoch-0001.weights.h5").write_bytes(b"weights")
        assert resumable_backup("this run", outputs, multi_worker) == resumes
    assert "multi-worker training cannot resume" in capsys.readouterr().err
    assert [path.name for path in outputs.backup.iterdir()] == ["run-id"]  # started afresh


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
