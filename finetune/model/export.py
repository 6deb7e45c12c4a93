"""The trained model in the formats people deploy, written by Keras's own `model.export`:
a TensorFlow SavedModel (TF Serving), a LiteRT (TensorFlow Lite) file and an ONNX file,
each taking what the Keras model takes (a batch of raw 0-255 RGB pixels, float32, at its
image size; the preprocessing is inside) and giving its outputs (one sigmoid column
P(second class) for two classes, a softmax over more; finetune.model.probabilities reads
both). classes.json beside them names the classes and the image size; the ONNX file
carries them in its metadata too, so `predict --model model.onnx` needs nothing else.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from finetune.core.errors import StageError
from finetune.core.paths import (
    EXPORT_CLASSES,
    EXPORT_LIST,
    EXPORT_ONNX,
    EXPORT_SAVED_MODEL,
    EXPORT_TFLITE,
)

# format -> the file or folder it is written to, inside the export folder being written
EXPORT_NAMES = {"tf_saved_model": EXPORT_SAVED_MODEL.name, "litert": EXPORT_TFLITE.name,
                "onnx": EXPORT_ONNX.name}
CLASSES_NAME = EXPORT_CLASSES.name
INPUT_NAME = "image"  # the exported input's name (Keras's ONNX export would say "unk__N")
# ONNX metadata keys (model.metadata_props; onnxruntime's custom_metadata_map)
CLASS_NAMES_KEY = "class_names"
IMAGE_SIZE_KEY = "image_size"
# What each format needs beyond TensorFlow: the modules Keras's export imports.
NEEDS = {"onnx": ("tf2onnx", "onnx")}
EXTRA = "export"  # extras/export.txt


def list_formats(folder: Path, formats: list[str]) -> None:
    """formats.json in `folder` (the export folder being written): the formats it holds,
    none by default; the folder is never empty, which DVC would warn about."""
    (folder / EXPORT_LIST.name).write_text(json.dumps({"formats": formats}) + "\n")


def check_exporters(formats: list[str]) -> None:
    """Refuse, before the model is loaded, a format whose converter is not installed."""
    for export_format in formats:
        missing = [name for name in NEEDS.get(export_format, ())
                   if importlib.util.find_spec(name) is None]
        if missing:
            raise StageError(
                f"export_formats lists {export_format}, which needs {' and '.join(missing)}: "
                f"run `make setup EXTRAS={EXTRA}` (or drop {export_format} from export_formats)")


def float32_only(model: Any) -> None:
    """Keras exports ONNX from float32 models only; a mixed precision one is refused."""
    mixed = sorted({layer.dtype_policy.name for layer in model._flatten_layers()
                    if layer.dtype_policy.name not in ("float32",)})
    if mixed:
        raise StageError(f"the model computes in {', '.join(mixed)}: ONNX export needs a "
                         "float32 model (train with precision: float32, or drop onnx from "
                         "export_formats)")


def export_model(model: Any, folder: Path, formats: list[str], classes: list[str],
                 image_size: int) -> dict[str, Path]:
    """Write each format of `formats` and classes.json into `folder`; return the path of
    each format's file or folder."""
    import tensorflow as tf

    if "onnx" in formats:
        float32_only(model)
    # A named input with a free batch size: the Keras model's own input.
    signature = [tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=INPUT_NAME)]
    written = {}
    for export_format in formats:
        path = folder / EXPORT_NAMES[export_format]
        model.export(str(path), format=export_format, input_signature=signature, verbose=False)
        written[export_format] = path
    if "onnx" in formats:
        label_onnx(written["onnx"], classes, image_size)
    (folder / CLASSES_NAME).write_text(json.dumps(
        {"classes": classes, "image_size": image_size}, indent=2) + "\n")
    return written


def label_onnx(path: Path, classes: list[str], image_size: int) -> None:
    """Put the class names and the image size into the ONNX file's metadata."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in ((CLASS_NAMES_KEY, json.dumps(classes)),
                       (IMAGE_SIZE_KEY, str(image_size))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
