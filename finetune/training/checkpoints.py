"""Checkpoints and exact resume.

Every epoch ends with a backup of the weights and the optimizer in models/.train-backup
(kept between runs, not a DVC output), so the next `dvc repro` after a kill continues
from the last completed epoch, with the same batches in the same order, and ends with
the same metrics as an uninterrupted run. A backup is used only by a run with the same
params, images and weights (its record, in run.json), and deleted once the model is saved.
Execution params (threads, cluster, strategy: finetune.core.params.EXECUTION_PARAMS) are
not part of the record: they cannot change the weights, so a killed run resumes under
other ones. A backup that does not match is discarded with one line saying what differs.

A non-finite validation loss (a diverged epoch: NaN or inf) is worse than any finite
one, so such an epoch is never kept as the best.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import keras

from finetune.core.params import EXECUTION_PARAMS
from finetune.core.paths import WEIGHTS_FILE
from finetune.training.outputs import Outputs


def run_record(params: dict[str, Any], identity: list) -> dict[str, Any]:
    """What a backup must match to be resumed: the params that can change the weights, the
    training inputs (a digest: the list of images is long) and the weights file."""
    weights = WEIGHTS_FILE.stat()
    images = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return {"params": {key: value for key, value in params.items()
                       if key not in EXECUTION_PARAMS},
            "images": images, "weights file": [weights.st_size, weights.st_mtime_ns]}


def differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two run records, in words: 'lr 0.01 -> 0.001, images'."""
    old_params, new_params = old.get("params", {}), new["params"]
    changed = [f"{key} {old_params.get(key, '(unset)')!r} -> {new_params.get(key, '(unset)')!r}"
               for key in sorted({*old_params, *new_params}, key=str)
               if old_params.get(key) != new_params.get(key)]
    changed += [what for what in ("images", "weights file") if old.get(what) != new[what]]
    return ", ".join(changed) or "nothing recorded"


def resumable_backup(record: dict[str, Any], outputs: Outputs,
                     multi_worker: bool = False) -> bool:
    """True if models/.train-backup holds a killed run of this very training; else clear it,
    saying why when it held completed epochs. Multi-worker training starts afresh: the
    other workers hold no backup to resume from."""
    stamp = outputs.backup / "run.json"
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        recorded = None
    # Through JSON, as stored: a tuple param and the list read back compare equal.
    record = json.loads(json.dumps(record))
    if recorded == record:
        if not multi_worker:
            return True
        print("train: not resuming the interrupted run: multi-worker training cannot resume "
              "(the other workers hold no backup); starting afresh", file=sys.stderr)
    elif completed_epochs(outputs):
        why = (f"it differs from this run in {differences(recorded, record)}"
               if isinstance(recorded, dict) else "it records no params to compare "
               "(made by an older version)")
        print(f"train: discarding the backup of an interrupted run ({outputs.backup}, "
              f"{completed_epochs(outputs)} epoch(s)): {why}; starting afresh", file=sys.stderr)
    shutil.rmtree(outputs.backup, ignore_errors=True)
    outputs.backup.mkdir(parents=True)
    stamp.write_text(json.dumps(record, sort_keys=True))
    return False


def improves(val_loss: float, best: float) -> bool:
    """True if an epoch's `val_loss` beats `best`: NaN and inf never do (`nan < inf` is
    False, but min() keeps a leading NaN, so the comparison alone is not enough)."""
    return math.isfinite(val_loss) and val_loss < best


def best_epoch(history: list[float]) -> int | None:
    """The 1-based epoch of the lowest finite validation loss (the first of equals, as
    the checkpoint keeps it); None if no epoch has a finite one: training diverged."""
    finite = [(loss, epoch) for epoch, loss in enumerate(history, 1) if math.isfinite(loss)]
    return min(finite)[1] if finite else None


def best_val_loss(history: list[float]) -> float:
    """The lowest finite validation loss of `history` (inf if none): a resumed run's bar."""
    epoch = best_epoch(history)
    return history[epoch - 1] if epoch is not None else math.inf


def save_atomically(model: keras.Model, path: Path) -> None:
    partial = path.with_name(f"partial-{path.name}")  # Keras wants the .weights.h5 ending
    model.save_weights(partial)
    partial.replace(path)


class Checkpoints(keras.callbacks.Callback):
    """At each epoch end: the best weights so far, then a backup to resume from.

    Keras's BackupAndRestore is not safe against SIGKILL: it writes the weights,
    then the epoch number, each in place, and a kill during or between the two
    leaves a backup that does not load or resumes the wrong epoch. Here every file
    is complete before a rename makes it visible, and the epoch is in its name.
    """

    def __init__(self, best_val_loss: float, outputs: Outputs) -> None:
        super().__init__()
        self.best_val_loss, self.outputs = best_val_loss, outputs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if improves((logs or {})["val_loss"], self.best_val_loss):
            self.best_val_loss = logs["val_loss"]
            save_atomically(self.model, self.outputs.best_weights)
        save_atomically(self.model, self.outputs.backup / f"epoch-{epoch + 1:04d}.weights.h5")
        for older in self.outputs.backup.glob("epoch-*.weights.h5"):
            if older.name < f"epoch-{epoch + 1:04d}":
                older.unlink()


def completed_epochs(outputs: Outputs) -> int:
    """Epochs the newest backup holds (0: none)."""
    backups = sorted(outputs.backup.glob("epoch-*.weights.h5"))
    return int(backups[-1].name[6:10]) if backups else 0


def restore(model: keras.Model, epochs_done: int, outputs: Outputs) -> None:
    model.optimizer.build(model.trainable_variables)  # the file holds its state too
    model.load_weights(outputs.backup / f"epoch-{epochs_done:04d}.weights.h5")
