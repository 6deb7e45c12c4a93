"""Stage train: fine-tune the pretrained backbone plus a new head on the training split.

Optionally first trains the head alone (`head_epochs` at `head_lr`, backbone
frozen), then fine-tunes the layers after `unfreeze_after` (`epochs` at `lr`).
Per-epoch metrics go to metrics/train through dvclive; the model kept is the
epoch with the lowest validation loss (`keep: best`) or the last one.
"""

from __future__ import annotations

import sys

from stages.common import (
    MODEL_FILE,
    TRAIN_DIR,
    WEIGHTS_FILE,
    StageError,
    atomic_output,
    load_params,
    run,
)
from stages.model import (
    build_backbone,
    build_model,
    check_layers,
    image_dataset,
    set_determinism,
    set_phase,
    split_files,
)

LIVE_DIR = "metrics/train"
BEST_WEIGHTS = MODEL_FILE.with_name(".best.weights.h5")  # scratch space, not a DVC output


def main() -> None:
    params = load_params()
    # Names are checked before the slow parts (reading images, loading weights).
    check_layers(build_backbone(params), params)
    if not WEIGHTS_FILE.exists():
        raise StageError(f"{WEIGHTS_FILE} not found: run `dvc repro fetch_weights` first")

    import keras
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    set_determinism(params["seed"])
    train_files, val_files = split_files(TRAIN_DIR, params["val_split"], params["seed"])
    size, batch = params["image_size"], params["batch_size"]
    train_data = image_dataset(train_files, size, batch, shuffle_seed=params["seed"])
    val_data = image_dataset(val_files, size, batch)
    print(f"train: {len(train_files)} training and {len(val_files)} validation images",
          file=sys.stderr)

    head_epochs, epochs = params["head_epochs"], params["epochs"]
    model = build_model(params, WEIGHTS_FILE, fine_tune=head_epochs == 0)
    # One checkpoint callback across both phases: it remembers the best val_loss so far.
    keep_best = keras.callbacks.ModelCheckpoint(
        BEST_WEIGHTS, monitor="val_loss", save_best_only=True, save_weights_only=True)
    verbose = "auto" if sys.stdout.isatty() else 2  # one line per epoch in CI logs

    # dvcyaml=False: dvc.yaml is written by hand; the steps run on across both fits.
    with Live(LIVE_DIR, dvcyaml=False, save_dvc_exp=False) as live:
        callbacks = [DVCLiveCallback(live=live), keep_best]
        history = []
        if head_epochs:
            fit = model.fit(train_data, validation_data=val_data, epochs=head_epochs,
                            callbacks=callbacks, verbose=verbose)
            history += fit.history["val_loss"]
            set_phase(model, params, fine_tune=True)
        fit = model.fit(train_data, validation_data=val_data, initial_epoch=head_epochs,
                        epochs=head_epochs + epochs, callbacks=callbacks, verbose=verbose)
        history += fit.history["val_loss"]

        best_epoch = 1 + min(range(len(history)), key=history.__getitem__)
        kept_epoch = best_epoch if params["keep"] == "best" else len(history)
        if kept_epoch != len(history):
            model.load_weights(BEST_WEIGHTS)
        live.summary["kept_epoch"] = kept_epoch
        live.summary["best_epoch"] = best_epoch

    # Saved without the optimizer: Adam's moment estimates (twice the trainable
    # weights) only matter to resume training; evaluation and prediction need none.
    inference_model = keras.Model(model.inputs, model.outputs, name=model.name)
    with atomic_output(MODEL_FILE) as partial:
        inference_model.save(partial)
    BEST_WEIGHTS.unlink(missing_ok=True)
    print(f"train: saved {MODEL_FILE} from epoch {kept_epoch} of {len(history)} "
          f"(val_loss {history[kept_epoch - 1]:.4f})", file=sys.stderr)


if __name__ == "__main__":
    run(main)
