"""Stage evaluate: score the trained model on the validation split.

It runs the layers above the frozen part on the validation images' cached activations
(data/features): the same split, by path, as train's. Writes metrics/evaluate/metrics.json
(accuracy, log loss, ROC AUC, per-class precision/recall/F1 and their macro average) and
plot data for a confusion matrix, ROC and precision-recall curves and a reliability
diagram, plus a grid of the most confident mistakes (each with the Grad-CAM heat map of the
class said: the full model on the photos' pixels, for the images shown only), all through
dvclive, and every image's prediction to metrics/evaluate/predictions.csv
(finetune.evaluation). A model calibrated by train (`calibration: temperature`) is scored
on cross-fitted probabilities: each image's from a temperature fitted without it
(finetune.evaluation.calibration). With `tta: flip`, each image's probabilities are
averaged with its mirror image's, whose activations mirrored_features cached
(data/mirrored_features).
"""

from __future__ import annotations

import sys

import numpy as np

from finetune.core.params import load_params
from finetune.core.paths import (
    EVALUATE_LIVE_DIR,
    MISTAKES_GRID,
    MODEL_FILE,
    PREDICTIONS_FILE,
)
from finetune.core.runner import run_main
from finetune.core.runtime import configure
from finetune.dataset.manifest import open_train_images, read_manifest
from finetune.dataset.split import (
    paths_of,
    split_samples,
    train_only_classes,
    train_only_note,
)
from finetune.evaluation.mistakes import mistakes_grid
from finetune.evaluation.predictions import validation_probabilities, write_predictions
from finetune.evaluation.scores import headline, log_scores
from finetune.features.store import read_index, read_mirrored_index
from finetune.model.assembly import logits_part, model_temperature, trained_part
from finetune.model.saved import check_model_classes, load_model


def main() -> None:
    params = load_params()
    from dvclive import Live

    images = read_manifest()
    index = read_index(params, images=images)
    mirrored = read_mirrored_index(params, index) is not None  # tta: flip
    classes = index["classes"]
    row_of = {path: row for row, (path, _) in enumerate(index["train"])}
    _, val_files = split_samples(index["train"], classes, params["val_split"], params["seed"])
    train_only = train_only_classes(index["train"], classes, params["val_split"])
    # The mistakes grid shows the photos the features were made of: train.zip's, checked
    # against the manifest before the model loads.
    with open_train_images(images) as read_photo:
        configure(params)
        model = load_model(MODEL_FILE)
        check_model_classes(model, MODEL_FILE, classes)
        labels = np.array([label for _, label in val_files])
        temperature = model_temperature(model)
        # A calibrated model is scored cross-fitted, from its logits
        # (finetune.evaluation.calibration).
        part = trained_part(model) if temperature is None else logits_part(model)
        probabilities, calibrated, seconds = validation_probabilities(
            part, np.array([row_of[path] for path, _ in val_files]), labels, params,
            temperature is not None, mirrored)

        with Live(str(EVALUATE_LIVE_DIR), dvcyaml=False, save_dvc_exp=False) as live:
            log_scores(live, labels, probabilities, classes, train_only, calibrated, temperature)
            live.log_image(MISTAKES_GRID.name, mistakes_grid(
                model, read_photo, paths_of(val_files), labels, probabilities, classes))
            summary = headline(live.summary)
    write_predictions(PREDICTIONS_FILE, paths_of(val_files), labels, probabilities, classes)
    print(f"evaluate: {len(labels)} validation images of {len(classes)} classes: {summary}"
          + ("" if calibrated is None else f", calibrated (temperature {temperature:.6g}), "
             f"cross-fitted over {len(calibrated.temperatures)} folds ({seconds:.2f} s)")
          + (", tta: flip (each image averaged with its mirror image)" if mirrored else ""),
          file=sys.stderr)
    if train_only:
        print(f"evaluate: {train_only_note(train_only, params['val_split'])}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
