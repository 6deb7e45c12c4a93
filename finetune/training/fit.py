"""The fit loop: build the model, fit (the head alone first if asked, then fine-tuning),
resume a killed run of the same training, keep the best or last epoch, fit its temperature
on the validation split if asked (`calibration`), and save the whole model, frozen part
included, taking raw pixels. On a multi-worker cluster every worker
runs it in step (finetune.training.multi_worker); only the chief's files count."""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from typing import Any

import keras
import numpy as np
from dvclive import Live

from finetune.core.atomic import atomic_output
from finetune.core.errors import StageError
from finetune.core.params import EXECUTION_PARAMS
from finetune.core.paths import WEIGHTS_FILE
from finetune.core.timings import mark
from finetune.model.assembly import (
    build_model,
    logits_part,
    set_phase,
    trained_part,
    with_temperature,
)
from finetune.model.calibration import choose_temperature
from finetune.training.checkpoints import (
    Checkpoints,
    best_epoch,
    best_val_loss,
    completed_epochs,
    restore,
    resumable_backup,
    run_record,
)
from finetune.training.determinism import EpochRandomness
from finetune.training.inputs import TrainingData
from finetune.training.keras_workarounds import keras_patched
from finetune.training.live_log import EpochLogger, forget_logged_epochs, logged_val_losses
from finetune.training.multi_worker import WorkerRole, check_same_training, distribute
from finetune.training.outputs import Outputs, worker_outputs


def train(params: dict[str, Any], data: TrainingData, outputs: Outputs | None = None,
          strategy: Any = None, backbone: keras.Model | None = None) -> None:
    """Fit (resuming a killed run of the same training), keep the best or last epoch, and
    save the whole model, frozen part included, taking raw pixels. With a tf.distribute
    `strategy`, the model is built and trained in its scope, each replica on its share of
    each batch. `backbone`: see build_model (not with a strategy: built in its scope)."""
    outputs = outputs or Outputs()  # the project's own paths
    resuming = resumable_backup(run_record(params, data.identity), outputs,
                                strategy is not None)
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
        model = build_model(params, WEIGHTS_FILE, fine_tune=fine_tune, classes=data.classes,
                            backbone=backbone)
        # On features, fit the layers above frozen_base: they are shared with `model`.
        trainee = trained_part(model) if data.on_features else model
        set_phase(trainee, params, fine_tune=fine_tune)
    if done:
        restore(trainee, done, outputs)
    mark("model")

    # The best val_loss so far survives a resume in dvclive's log, kept by `persist`.
    checkpoints = Checkpoints(best_val_loss(logged_val_losses(outputs)) if resuming
                              else math.inf, outputs)
    verbose = "auto" if sys.stdout.isatty() else 2  # one line per epoch in CI logs
    training, validation = data.train, data.validation
    if strategy is not None:  # each replica its share of each batch (see multi_worker)
        training = distribute(strategy, data.train, steps=None)
        validation = distribute(strategy, data.validation, steps=data.validation.num_batches)

    randomness = EpochRandomness()  # one for both fits: it keeps the seeds built with

    def fit(first_epoch: int, end_epoch: int) -> None:
        # Logged before checkpointed: a backup never gets ahead of the log.
        callbacks = [randomness, logger, checkpoints]
        data.train.first_epoch = first_epoch
        mark("fit")
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
        best = best_epoch(history)  # a NaN or inf epoch is never the best
        kept_epoch = best if params["keep"] == "best" else total
        if kept_epoch is None or not math.isfinite(history[kept_epoch - 1]):
            # The backup goes: it holds the diverged weights and would only resume them.
            # With the same params a rerun diverges the same way (training is exact), so
            # the error says what to change.
            shutil.rmtree(outputs.backup, ignore_errors=True)
            raise StageError(diverged(params, history, best))
        if kept_epoch != total:
            trainee.load_weights(outputs.best_weights)
        live.summary["kept_epoch"] = kept_epoch
        live.summary["best_epoch"] = best
        if strategy is not None:
            # Each replica draws its own dropout and augmentation: with either on, the
            # weights depend on how many replicas trained (docs/scaling-out.md).
            live.summary["replicas"] = strategy.num_replicas_in_sync

    saved = inference_model(params, model, data)
    with atomic_output(outputs.model) as partial:
        saved.save(partial)
    shutil.rmtree(outputs.backup)
    print(f"train: saved {outputs.model} from epoch {kept_epoch} of {total} "
          f"(val_loss {history[kept_epoch - 1]:.4f})", file=sys.stderr)


def inference_model(params: dict[str, Any], model: keras.Model, data: TrainingData
                    ) -> keras.Model:
    """What train saves: `model` without its optimizer (Adam's moment estimates, twice the
    trainable weights, only matter to resume training); with `calibration: temperature`,
    its logits divided by the temperature chosen on the validation split (the best fit, if
    cross-fitting says it lowers the log loss; else 1)."""
    if params["calibration"] == "none":
        return keras.Model(model.inputs, model.outputs, name=model.name)
    start = time.perf_counter()
    logits_model = logits_part(with_temperature(model, 1.0), on_features=data.on_features)
    validation = data.validation
    logits = np.concatenate([logits_model.predict_on_batch(validation[index][0])
                             for index in range(validation.num_batches)])
    choice = choose_temperature(logits, validation.labels, params["seed"])
    why = (f"cross-fitted log loss {choice.log_loss_fitted:.4f} against "
           f"{choice.log_loss_uncalibrated:.4f} uncalibrated")
    print(f"train: temperature {choice.temperature:.6g} "
          + (f"fitted on the logits of the {len(logits)} validation images ({why})"
             if choice.temperature != 1.0 else
             f"kept: the {choice.fitted:.6g} fitted on the logits of the {len(logits)} "
             f"validation images would not lower their log loss ({why})")
          + f" ({time.perf_counter() - start:.2f} s)", file=sys.stderr)
    return with_temperature(model, choice.temperature)


def diverged(params: dict[str, Any], history: list[float], best: int | None) -> str:
    """The one line that says training diverged (no finite validation loss to keep), and
    what to try."""
    rates = f"`lr` ({params['lr']:g})" + (f" or `head_lr` ({params['head_lr']:g})"
                                         if params["head_epochs"] else "")
    if best is None:
        where, other = f"in all {len(history)} epochs (last: {history[-1]})", ""
    else:  # keep: last, and the last epoch diverged
        where = (f"in the last epoch, {len(history)} ({history[-1]}), which keep: last keeps "
                 f"(epoch {best} had {history[best - 1]:.4f})")
        other = ", or set keep: best"
    return f"training diverged: the validation loss is not finite {where}; nothing saved. " \
           f"Lower {rates}{other} and run again"


def train_on_cluster(params: dict[str, Any], data: TrainingData, cluster: WorkerRole,
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
