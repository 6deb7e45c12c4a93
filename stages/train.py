"""Stage train: fine-tune the pretrained backbone plus a new head on the training split.

Optionally first trains the head alone (`head_epochs` at `head_lr`, backbone
frozen), then fine-tunes the layers after `unfreeze_after` (`epochs` at `lr`).
Per-epoch metrics go to metrics/train through dvclive; the model kept is the
epoch with the lowest validation loss (`keep: best`) or the last one.

It trains the layers above the frozen part on the features stage's cached
activations (data/features), read from disk batch by batch. Augmentation changes
the frozen part's input every epoch, so with augmentation on it decodes the
images and trains on pixels instead. Either way it saves the whole model, frozen
part included, taking raw pixels.

A killed run resumes: every epoch ends with a checkpoint of the weights and the
optimizer in models/.train-backup (kept between runs, not a DVC output), so the
next `dvc repro` continues from the last completed epoch, with the same batches in
the same order, and ends with the same metrics as an uninterrupted run. The backup
is used only by a run with the same params, images and weights, and deleted once
the model is saved.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from stages.activations import FeatureFile, read_index
from stages.compute import configure
from stages.dataset import (
    check_manifest,
    class_names,
    labels_of,
    list_samples,
    paths_of,
    split_samples,
)
from stages.errors import StageError, run
from stages.files import atomic_output
from stages.images import load_images
from stages.network import augments, build_model, check_architecture, set_phase, trained_part
from stages.params import load_params
from stages.paths import (
    BACKUP_DIR,
    MODEL_FILE,
    TRAIN_DIR,
    TRAIN_FEATURES,
    TRAIN_LIVE_DIR,
    TRAIN_MANIFEST,
    WEIGHTS_FILE,
)
from stages.training import Batches, EpochBatches, EpochRandomness, set_determinism

VAL_LOSS_LOG = TRAIN_LIVE_DIR / "plots/metrics/eval/loss.tsv"  # dvclive's record of val_loss
BEST_WEIGHTS = BACKUP_DIR / "best.weights.h5"


class EpochLogger(DVCLiveCallback):
    """dvclive's Keras callback, stepping by the true epoch number (after a resume too)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.live.step = epoch
        super().on_epoch_end(epoch, logs)


def fingerprint(params: dict[str, Any], data: TrainingData) -> str:
    """What a backup must match to be resumed: params, training inputs, weights file."""
    weights = WEIGHTS_FILE.stat()
    identity = [params, data.identity, [weights.st_size, weights.st_mtime_ns]]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def resumable_backup(run_id: str) -> bool:
    """True if models/.train-backup holds a killed run of this very training; else clear it."""
    stamp = BACKUP_DIR / "run-id"
    if stamp.is_file() and stamp.read_text() == run_id:
        return True
    shutil.rmtree(BACKUP_DIR, ignore_errors=True)
    BACKUP_DIR.mkdir(parents=True)
    stamp.write_text(run_id)
    return False


def logged_val_losses() -> list[float]:
    """Validation loss per epoch, as dvclive logged it."""
    if not VAL_LOSS_LOG.is_file():
        return []
    return [float(row.split("\t")[1]) for row in VAL_LOSS_LOG.read_text().splitlines()[1:]]


def forget_logged_epochs(since: int) -> None:
    """Drop dvclive's rows of epochs that a resumed run redoes (logged, killed before
    their backup), so each epoch appears once in the plots."""
    for log in (TRAIN_LIVE_DIR / "plots/metrics").rglob("*.tsv"):
        header, *rows = log.read_text().splitlines()
        kept = [row for row in rows if int(row.split("\t")[0]) < since]
        log.write_text("\n".join([header, *kept]) + "\n")


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

    def __init__(self, best_val_loss: float) -> None:
        super().__init__()
        self.best_val_loss = best_val_loss

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (logs or {})["val_loss"] < self.best_val_loss:
            self.best_val_loss = logs["val_loss"]
            save_atomically(self.model, BEST_WEIGHTS)
        save_atomically(self.model, BACKUP_DIR / f"epoch-{epoch + 1:04d}.weights.h5")
        for older in BACKUP_DIR.glob("epoch-*.weights.h5"):
            if older.name < f"epoch-{epoch + 1:04d}":
                older.unlink()


def completed_epochs() -> int:
    """Epochs the newest backup holds (0: none)."""
    backups = sorted(BACKUP_DIR.glob("epoch-*.weights.h5"))
    return int(backups[-1].name[6:10]) if backups else 0


def restore(model: keras.Model, epochs_done: int) -> None:
    model.optimizer.build(model.trainable_variables)  # the file holds its state too
    model.load_weights(BACKUP_DIR / f"epoch-{epochs_done:04d}.weights.h5")


@dataclass
class TrainingData:
    """What `fit` reads: training batches, validation data, and what identifies them."""

    train: EpochBatches
    validation: Any  # (pixels, labels) in memory, or Batches read from the features
    identity: list  # for the backup's fingerprint
    on_features: bool  # inputs are frozen_base's activations, not pixels
    classes: list[str]  # label i is classes[i]


def feature_data(params: dict[str, Any]) -> TrainingData:
    """The cached activations of the frozen part, read from disk batch by batch."""
    index = read_index(params)
    row_of = {path: row for row, (path, _) in enumerate(index["train"])}
    train_files, val_files = split_samples(index["train"], index["classes"], params["val_split"],
                                           params["seed"])
    features = FeatureFile(TRAIN_FEATURES)
    train_rows = np.array([row_of[path] for path, _ in train_files])
    val_rows = np.array([row_of[path] for path, _ in val_files])
    batch = params["batch_size"]
    print(f"train: training on the cached features of {len(train_rows)} training and "
          f"{len(val_rows)} validation images ({TRAIN_FEATURES})", file=sys.stderr)
    stat = TRAIN_FEATURES.stat()
    return TrainingData(
        train=EpochBatches(features, train_rows, labels_of(train_files), batch, params["seed"]),
        validation=Batches(features, val_rows, labels_of(val_files), batch),
        identity=[paths_of(train_files), stat.st_size, stat.st_mtime_ns],
        on_features=True, classes=index["classes"])


def pixel_data(params: dict[str, Any]) -> TrainingData:
    """Every image decoded once into memory, for the whole model to train on."""
    samples, classes = list_samples(TRAIN_DIR), class_names(TRAIN_DIR)
    check_manifest(TRAIN_DIR, samples, TRAIN_MANIFEST)
    train_files, val_files = split_samples(samples, classes, params["val_split"], params["seed"])
    size = params["image_size"]
    train_images = load_images(paths_of(train_files), size, "train: decoding training images")
    val_images = load_images(paths_of(val_files), size, "train: decoding validation images")
    return TrainingData(
        train=EpochBatches(train_images, np.arange(len(train_images)), labels_of(train_files),
                           params["batch_size"], params["seed"]),
        validation=(val_images.astype("float32"), labels_of(val_files)),
        identity=[[path, Path(path).stat().st_size] for path, _ in train_files],
        on_features=False, classes=classes)


def train(params: dict[str, Any], data: TrainingData) -> None:
    """Fit (resuming a killed run of the same training), keep the best or last epoch, and
    save the whole model, frozen part included, taking raw pixels."""
    resuming = resumable_backup(fingerprint(params, data))
    done = completed_epochs() if resuming else 0
    if resuming:
        print(f"train: resuming the interrupted run after epoch {done}", file=sys.stderr)
        forget_logged_epochs(since=done)
    head_epochs, epochs = params["head_epochs"], params["epochs"]
    total = head_epochs + epochs
    fine_tune = head_epochs == 0 or done > head_epochs
    model = build_model(params, WEIGHTS_FILE, fine_tune=fine_tune, classes=data.classes)
    # On features, fit the layers above frozen_base: they are shared with `model`.
    trainee = trained_part(model) if data.on_features else model
    set_phase(trainee, params, fine_tune=fine_tune)
    if done:
        restore(trainee, done)

    # The best val_loss so far survives a resume in dvclive's log, kept by `persist`.
    checkpoints = Checkpoints(min(logged_val_losses(), default=float("inf")) if resuming
                              else float("inf"))
    verbose = "auto" if sys.stdout.isatty() else 2  # one line per epoch in CI logs
    validation_batch = None if data.on_features else params["batch_size"]

    def fit(first_epoch: int, end_epoch: int) -> None:
        # Logged before checkpointed: a backup never gets ahead of the log.
        callbacks = [EpochRandomness(), logger, checkpoints]
        data.train.first_epoch = first_epoch
        # shuffle=False: EpochBatches shuffles, by epoch, and fit's own would be ignored.
        trainee.fit(data.train, steps_per_epoch=data.train.steps, shuffle=False,
                    validation_data=data.validation, validation_batch_size=validation_batch,
                    initial_epoch=first_epoch, epochs=end_epoch, callbacks=callbacks,
                    verbose=verbose)

    # dvcyaml=False: dvc.yaml is written by hand; one step per epoch across both fits.
    with Live(str(TRAIN_LIVE_DIR), dvcyaml=False, save_dvc_exp=False, resume=resuming) as live:
        logger = EpochLogger(live=live)
        if done < head_epochs:
            fit(done, head_epochs)
        if head_epochs and done <= head_epochs:
            set_phase(trainee, params, fine_tune=True)
        if max(done, head_epochs) < total:
            fit(max(done, head_epochs), total)

        history = logged_val_losses()[:total]
        best_epoch = 1 + history.index(min(history))
        kept_epoch = best_epoch if params["keep"] == "best" else total
        if kept_epoch != total:
            trainee.load_weights(BEST_WEIGHTS)
        live.summary["kept_epoch"] = kept_epoch
        live.summary["best_epoch"] = best_epoch

    # Saved without the optimizer: Adam's moment estimates (twice the trainable
    # weights) only matter to resume training; evaluation and prediction need none.
    inference_model = keras.Model(model.inputs, model.outputs, name=model.name)
    with atomic_output(MODEL_FILE) as partial:
        inference_model.save(partial)
    shutil.rmtree(BACKUP_DIR)
    print(f"train: saved {MODEL_FILE} from epoch {kept_epoch} of {total} "
          f"(val_loss {history[kept_epoch - 1]:.4f})", file=sys.stderr)


def main() -> None:
    params = load_params()
    # Names are checked before the slow parts (reading inputs, loading weights).
    check_architecture(params)
    if not WEIGHTS_FILE.exists():
        raise StageError(f"{WEIGHTS_FILE} not found: run `dvc repro fetch_weights` first")
    configure(params)
    set_determinism(params["seed"])
    if augments(params):
        print("train: augmentation is on, so the frozen part's input changes every epoch: "
              "training on pixels, not on the cached features", file=sys.stderr)
        data = pixel_data(params)
    else:
        data = feature_data(params)
    train(params, data)


if __name__ == "__main__":
    run(main)
