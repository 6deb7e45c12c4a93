"""An exported ONNX model (finetune.model.export) run by onnxruntime, with no TensorFlow:
what `predict --model model.onnx` uses. The file names its classes and image size in its
metadata; the pixels come from finetune.dataset.pillow_decode. Installed on its own by
extras/onnx-predict.txt (onnxruntime, NumPy, Pillow; see docs/deploy.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from finetune.core.errors import StageError
from finetune.model.probabilities import class_probabilities

# The metadata keys finetune.model.export writes (it imports TensorFlow, so they are
# repeated here; tests/unit/model/test_onnx_runtime.py ties the two).
CLASS_NAMES_KEY = "class_names"
IMAGE_SIZE_KEY = "image_size"


class OnnxClassifier:
    """An ONNX classifier file: its image size, class names and probabilities."""

    def __init__(self, model_file: Path) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise StageError(f"{model_file} is an ONNX model, which needs onnxruntime: "
                             "pip install -r extras/onnx-predict.txt") from None
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are not ours to show
        try:
            self.session = onnxruntime.InferenceSession(
                str(model_file), options, providers=["CPUExecutionProvider"])
        # onnxruntime's errors (InvalidProtobuf, Fail, ...) derive from Exception only.
        except Exception as error:
            reason = " ".join(str(error).split())
            raise StageError(f"cannot load {model_file} as an ONNX model ({reason}): "
                             "export it again with `dvc repro export`") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        if CLASS_NAMES_KEY not in metadata:
            raise StageError(f"{model_file} does not name its classes: export it with "
                             "`dvc repro export`, which writes them into the file")
        self.classes: list[str] = json.loads(metadata[CLASS_NAMES_KEY])
        self.input = self.session.get_inputs()[0]
        shape = self.input.shape
        self.image_size = int(metadata.get(IMAGE_SIZE_KEY, shape[1]))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """A probability per class (float64, a column each) for raw 0-255 float32 pixels."""
        (outputs,) = self.session.run(None, {self.input.name: np.asarray(images, np.float32)})
        return class_probabilities(outputs)
