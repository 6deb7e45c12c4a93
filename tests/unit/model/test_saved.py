"""finetune.model.saved: a saved model loads with the same weights and predicts the same,
preprocessing and augmentation inside it."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from finetune.model.assembly import build_model
from finetune.model.saved import load_model
from tests.support.networks import CLASSES, drawn_images, mobilenet_params


@pytest.mark.parametrize("head", ["flatten", "gap"])
def test_saved_model_predicts_the_same_after_loading(mobilenet_random_weights, sample_dir,
                                                     tmp_path, head):
    # Calibrated random weights and drawn photos: predictions differ from photo to photo,
    # so a loaded model with other weights than the saved one cannot predict the same.
    keras.utils.set_random_seed(0)
    params = mobilenet_params(head=head, preprocessing="backbone", augment_flip=True,
                              augment_rotation=0.1, augment_zoom=0.1)
    model = build_model(params, mobilenet_random_weights, fine_tune=True, classes=CLASSES)
    images = drawn_images(sample_dir, 8)
    expected = model.predict(images, verbose=0)
    assert np.ptp(expected) > 0.05, f"predictions barely depend on the image: {expected.ravel()}"
    # Augmentation is off outside training: two predictions agree.
    np.testing.assert_array_equal(expected, model.predict(images, verbose=0))
    model.save(tmp_path / "model.keras")

    loaded = load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-6)
    for saved, restored in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(restored), np.asarray(saved), err_msg=saved.path)
