"""finetune.model.layers: the head (a sigmoid for two classes, a softmax over more, the
class names carried by the model) and preprocessing inside the model."""

from __future__ import annotations

import numpy as np
import pytest

from finetune.model.assembly import build_model
from finetune.model.saved import model_class_names
from tests.support.networks import CLASSES, mobilenet_params


@pytest.mark.parametrize(("classes", "activation", "units", "loss"), [
    (["cat", "dog"], "sigmoid", 1, "binary_crossentropy"),
    (["a", "b", "c"], "softmax", 3, "sparse_categorical_crossentropy")])
def test_two_classes_get_a_sigmoid_more_a_softmax(random_mobilenet_file, classes, activation,
                                                  units, loss):
    model = build_model(mobilenet_params(), random_mobilenet_file, fine_tune=True,
                        classes=classes)
    output = model.get_layer("head").layers[-1]
    assert output.get_config()["activation"] == activation and output.units == units
    assert model.loss == loss
    assert model_class_names(model) == classes


@pytest.mark.parametrize(("mode", "low", "high"), [("backbone", -1.0, 1.0), ("unit", 0.0, 1.0)])
def test_preprocessing_scales_raw_pixels(random_mobilenet_file, mode, low, high):
    model = build_model(mobilenet_params(preprocessing=mode), random_mobilenet_file,
                        fine_tune=True, classes=CLASSES)
    preprocessing = model.get_layer("preprocessing")
    scaled = np.asarray(preprocessing(np.array([[[[0.0, 127.5, 255.0]]]], dtype="float32")))
    np.testing.assert_allclose(scaled.ravel(), [low, (low + high) / 2, high], atol=1e-6)
