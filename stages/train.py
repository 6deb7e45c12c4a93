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

With `strategy: multi_worker` it trains on several machines at once
(tf.distribute.MultiWorkerMirroredStrategy, the cluster from TF_CONFIG; see
stages/multi_worker.py), `batch_size` being the global batch. Only the chief writes the
outputs; the other workers write theirs to a temporary folder and delete it. A killed
multi-worker run is not resumed: the other workers hold no backup to resume from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
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
from stages.multi_worker import (
    Cluster,
    check_batch_split,
    check_patched_sources,
    check_same_training,
    distribute,
    keras_patched,
    make_strategy,
    read_cluster,
)
from stages.network import augments, build_model, check_architecture, set_phase, trained_part
from stages.params import EXECUTION_PARAMS, load_params
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


@dataclass(frozen=True)
class Outputs:
    """Where train writes: the project's own paths, or the same layout under a temporary
    folder (a worker other than the chief: every worker runs the same steps, and only the
    chief's files count)."""

    root: Path = Path()

    @property
    def model(self) -> Path:
        return self.root / MODEL_FILE

    @property
    def live(self) -> Path:
        return self.root / TRAIN_LIVE_DIR

    @property
    def backup(self) -> Path:
        return self.root / BACKUP_DIR

    @property
    def val_loss_log(self) -> Path:
        return self.live / "plots/metrics/eval/loss.tsv"  # dvclive's record of val_loss

    @property
    def best_weights(self) -> Path:
        return self.backup / "best.weights.h5"


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


def resumable_backup(run_id: str, outputs: Outputs, multi_worker: bool = False) -> bool:
    """True if models/.train-backup holds a killed run of this very training; else clear it.
    Multi-worker training starts afresh: the other workers hold no backup to resume from."""
    stamp = outputs.backup / "run-id"
    if stamp.is_file() and stamp.read_text() == run_id:
        if not multi_worker:
            return True
        print("train: not resuming the interrupted run: multi-worker training cannot resume "
              "(the other workers hold no backup); starting afresh", file=sys.stderr)
    shutil.rmtree(outputs.backup, ignore_errors=True)
    outputs.backup.mkdir(parents=True)
    stamp.write_text(run_id)
    return False


def logged_val_losses(outputs: Outputs) -> list[float]:
    """Validation loss per epoch, as dvclive logged it."""
    if not outputs.val_loss_log.is_file():
        return []
    return [float(row.split("\t")[1])
            for row in outputs.val_loss_log.read_text().splitlines()[1:]]


def forget_logged_epochs(since: int, outputs: Outputs) -> None:
    """Drop dvclive's rows of epochs that a resumed run redoes (logged, killed before
    their backup), so each epoch appears once in the plots."""
    for log in (outputs.live / "plots/metrics").rglob("*.tsv"):
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

    def __init__(self, best_val_loss: float, outputs: Outputs) -> None:
        super().__init__()
        self.best_val_loss, self.outputs = best_val_loss, outputs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (logs or {})["val_loss"] < self.best_val_loss:
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


@dataclass
class TrainingData:
    """What `fit` reads: training batches, validation data, and what identifies them."""

    train: EpochBatches
    validation: Batches  # read from the features, or from the pixels in memory
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
        validation=Batches(val_images, np.arange(len(val_images)), labels_of(val_files),
                           params["batch_size"]),
        identity=[[path, Path(path).stat().st_size] for path, _ in train_files],
        on_features=False, classes=classes)


def train(params: dict[str, Any], data: TrainingData, outputs: Outputs = Outputs(),
          strategy: Any = None) -> None:
    """Fit (resuming a killed run of the same training), keep the best or last epoch, and
    save the whole model, frozen part included, taking raw pixels. With a tf.distribute
    `strategy`, the model is built and trained in its scope, each replica on its share of
    each batch."""
    resuming = resumable_backup(fingerprint(params, data), outputs, strategy is not None)
    done = completed_epochs(outputs) if resuming else 0
    if resuming:
        print(f"train: resuming the interrupted run after epoch {done}", file=sys.stderr)
        forget_logged_epochs(since=done, outputs=outputs)
    head_epochs, epochs = params["head_epochs"], params["epochs"]
    total = head_epochs + epochs
    fine_tune = head_epochs == 0 or done > head_epochs

    def scope() -> contextlib.AbstractContextManager:  # a fresh one each time: not reentrant
        return strategy.scope() if strategy is not None else contextlib.nullcontext()

    with scope():
        model = build_model(params, WEIGHTS_FILE, fine_tune=fine_tune, classes=data.classes)
        # On features, fit the layers above frozen_base: they are shared with `model`.
        trainee = trained_part(model) if data.on_features else model
        set_phase(trainee, params, fine_tune=fine_tune)
    if done:
        restore(trainee, done, outputs)

    # The best val_loss so far survives a resume in dvclive's log, kept by `persist`.
    checkpoints = Checkpoints(min(logged_val_losses(outputs), default=float("inf")) if resuming
                              else float("inf"), outputs)
    verbose = "auto" if sys.stdout.isatty() else 2  # one line per epoch in CI logs
    training, validation = data.train, data.validation
    if strategy is not None:  # each replica its share of each batch (see multi_worker)
        training = distribute(strategy, data.train, steps=None)
        validation = distribute(strategy, data.validation, steps=data.validation.num_batches)

    def fit(first_epoch: int, end_epoch: int) -> None:
        # Logged before checkpointed: a backup never gets ahead of the log.
        callbacks = [EpochRandomness(), logger, checkpoints]
        data.train.first_epoch = first_epoch
        # shuffle=False: EpochBatches shuffles, by epoch, and fit's own would be ignored.
        trainee.fit(training, steps_per_epoch=data.train.steps, shuffle=False,
                    validation_data=validation,
                    initial_epoch=first_epoch, epochs=end_epoch, callbacks=callbacks,
                    verbose=verbose)

    # dvcyaml=False: dvc.yaml is written by hand; one step per epoch across both fits.
    with Live(str(outputs.live), dvcyaml=False, save_dvc_exp=False, resume=resuming) as live:
        logger = EpochLogger(live=live)
        if done < head_epochs:
            fit(done, head_epochs)
        if head_epochs and done <= head_epochs:
            with scope():
                set_phase(trainee, params, fine_tune=True)
        if max(done, head_epochs) < total:
            fit(max(done, head_epochs), total)

        history = logged_val_losses(outputs)[:total]
        best_epoch = 1 + history.index(min(history))
        kept_epoch = best_epoch if params["keep"] == "best" else total
        if kept_epoch != total:
            trainee.load_weights(outputs.best_weights)
        live.summary["kept_epoch"] = kept_epoch
        live.summary["best_epoch"] = best_epoch

    # Saved without the optimizer: Adam's moment estimates (twice the trainable
    # weights) only matter to resume training; evaluation and prediction need none.
    inference_model = keras.Model(model.inputs, model.outputs, name=model.name)
    with atomic_output(outputs.model) as partial:
        inference_model.save(partial)
    shutil.rmtree(outputs.backup)
    print(f"train: saved {outputs.model} from epoch {kept_epoch} of {total} "
          f"(val_loss {history[kept_epoch - 1]:.4f})", file=sys.stderr)


@contextlib.contextmanager
def worker_outputs(cluster: Cluster) -> Iterator[Outputs]:
    """The project's paths on the chief; on another worker, a temporary folder deleted
    afterwards: it writes nothing that a DVC stage declares."""
    if cluster.is_chief:
        yield Outputs()
        return
    with tempfile.TemporaryDirectory(prefix=f"train-{cluster.task_type}-{cluster.index}-") as root:
        (Path(root) / MODEL_FILE).parent.mkdir(parents=True)
        yield Outputs(Path(root))


def train_on_cluster(params: dict[str, Any], data: TrainingData, cluster: Cluster,
                     strategy: Any) -> None:
    """`train` on this worker of the cluster, in step with the others."""
    # What every worker must share (not file times: `dvc pull` sets those per machine).
    identity = [{key: value for key, value in params.items() if key not in EXECUTION_PARAMS},
                data.classes, len(data.train.rows), data.validation.num_batches]
    check_same_training(strategy, identity)
    with keras_patched(), worker_outputs(cluster) as outputs:
        train(params, data, outputs, strategy)
    if not cluster.is_chief:
        print(f"train: {cluster.task_type} {cluster.index} done; the chief wrote the outputs",
              file=sys.stderr)


def main() -> None:
    params = load_params()
    # TF_CONFIG and Keras's patched code are checked before TensorFlow starts.
    cluster = read_cluster() if params["strategy"] == "multi_worker" else None
    if cluster is not None:
        check_batch_split(params["batch_size"], cluster.workers)
        check_patched_sources()
    configure(params)
    # Made before TensorFlow runs any op: it configures the collectives then.
    strategy = make_strategy(params["batch_size"]) if cluster is not None else None
    # Names are checked before the slow parts (reading inputs, loading weights).
    check_architecture(params)
    if not WEIGHTS_FILE.exists():
        raise StageError(f"{WEIGHTS_FILE} not found: run `dvc repro fetch_weights` first")
    set_determinism(params["seed"])
    if augments(params):
        print("train: augmentation is on, so the frozen part's input changes every epoch: "
              "training on pixels, not on the cached features", file=sys.stderr)
        data = pixel_data(params)
    else:
        data = feature_data(params)
    if cluster is None:
        train(params, data)
    else:
        train_on_cluster(params, data, cluster, strategy)


if __name__ == "__main__":
    run(main)
