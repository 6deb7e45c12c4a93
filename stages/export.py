"""Stage export: write the trained model in the formats people deploy, into models/export/.

Each format listed in `export_formats` is written by Keras's own `model.export`
(finetune.model.export): saved_model/ (TensorFlow SavedModel, for TF Serving),
model.tflite (LiteRT) and model.onnx (needs `make setup EXTRAS=export`), each taking the
Keras model's input (raw RGB pixels at its image size, preprocessing inside), with
classes.json beside them. It depends on the model only, so a change of the training
params reruns it and a change of `clip` (submit's) does not. docs/deploy.md shows each
format in use and what they cost.

`export_formats: []`, the default, writes an empty folder at once (no TensorFlow): an
export costs minutes and a copy of the model per format, which every experiment would
pay; list the formats where a model is to be shipped.
"""

from __future__ import annotations

import sys
import warnings

from finetune.core.atomic import atomic_output
from finetune.core.params import load_params
from finetune.core.paths import EXPORT_DIR, MODEL_FILE
from finetune.core.runner import run_main
from finetune.model.export import check_exporters, export_model, list_formats


def main() -> None:
    params = load_params()
    formats = params["export_formats"]
    if not formats:
        with atomic_output(EXPORT_DIR) as folder:
            folder.mkdir()
            list_formats(folder, formats)
        print(f"export: nothing to export (export_formats: []): list tf_saved_model, litert "
              f"or onnx to write them to {EXPORT_DIR}", file=sys.stderr)
        return
    check_exporters(formats)  # before the model loads: a missing converter is one line
    # Keras (TensorFlow) only now: the default, exporting nothing, takes a second.
    from finetune.model.saved import load_model, model_class_names, model_image_size

    model = load_model(MODEL_FILE)
    classes = model_class_names(model)
    size = model_image_size(model, MODEL_FILE)
    with atomic_output(EXPORT_DIR) as folder, warnings.catch_warnings():
        # Keras's tf2onnx shim probes np.object, which NumPy 2 warns about on every run.
        warnings.filterwarnings("ignore", message=".*np.object.*", category=FutureWarning)
        folder.mkdir()
        written = export_model(model, folder, formats, classes, size)
        list_formats(folder, formats)
    names = ", ".join(path.name for path in written.values()) or "no model file"
    print(f"export: wrote {EXPORT_DIR}: {names}, classes.json and formats.json "
          f"({len(classes)} classes, {size} px)", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
