"""finetune.model.assembly: the backbone split into a frozen and a trainable part, the
model built and compiled per phase (set_phase), BatchNormalization kept in inference mode
while fine-tuning, mixed precision in the model, the same model from a backbone the caller
built (train: built once)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from finetune.core.runtime import configure
from finetune.model.assembly import build_model, set_phase
from finetune.model.backbone import build_backbone, checked_backbone
from finetune.model.saved import load_model
from finetune.training.determinism import set_determinism
from tests.support.networks import CLASSES, SIZE, drawn_images, mobilenet_params


@pytest.mark.parametrize(("unfreeze_after", "fine_tuned"), [
    ("last", []), ("conv_pw_12_relu", ["conv_dw_13", "conv_pw_13"])])
def test_last_names_the_backbones_output_layer(random_mobilenet_file, unfreeze_after,
                                               fine_tuned):
    # `cut_layer: last` keeps the whole backbone; `unfreeze_after: last` fine-tunes none of it.
    params = mobilenet_params(cut_layer="last", unfreeze_after=unfreeze_after)
    model = build_model(params, random_mobilenet_file, fine_tune=True, classes=CLASSES)
    backbone = build_backbone(params)
    assert model.get_layer("head").input.shape == backbone.output.shape
    names = [layer.name for layer in model.layers]
    if not fine_tuned:
        assert "trainable_base" not in names
        assert model.get_layer("frozen_base").output.shape == backbone.output.shape
    else:
        inside = model.get_layer("trainable_base")
        assert [layer.name for layer in inside.layers if layer.trainable_weights] == fine_tuned


def test_a_backbone_built_by_the_caller_gives_the_same_model(random_mobilenet_file):
    """train builds and checks the backbone once, after seeding, and hands it to build_model:
    the same weights, the head's random ones included, as build_model building it itself."""
    params = mobilenet_params(dense_units=8)

    def weights(prebuilt: bool) -> list[np.ndarray]:
        set_determinism(params["seed"])
        backbone = checked_backbone(params) if prebuilt else None
        model = build_model(params, random_mobilenet_file, fine_tune=True, classes=CLASSES,
                            backbone=backbone)
        return [np.asarray(variable) for variable in model.weights]

    built_inside, handed_over = weights(prebuilt=False), weights(prebuilt=True)
    assert len(built_inside) == len(handed_over)
    for inside, over in zip(built_inside, handed_over, strict=True):
        np.testing.assert_array_equal(inside, over)


def test_batchnorm_statistics_and_frozen_part_stay_fixed_while_fine_tuning(
        mobilenet_random_weights, sample_dir):
    # BatchNormalization calibrated on the drawn photos keeps the activations from
    # saturating (plain random statistics would): gradients reach the trainable part.
    keras.utils.set_random_seed(0)
    model = build_model(mobilenet_params(), mobilenet_random_weights, fine_tune=True,
                        classes=CLASSES)
    trainable_base = model.get_layer("trainable_base")
    batchnorms = [layer for layer in trainable_base.layers
                  if isinstance(layer, keras.layers.BatchNormalization)]
    assert batchnorms and not any(layer.trainable for layer in batchnorms)
    # Every other weight of the trainable part: the kernels fine-tuning is for.
    tuned = [w for layer in trainable_base.layers if layer not in batchnorms for w in layer.weights]
    fixed = {"frozen_base": model.get_layer("frozen_base").weights,
             "trainable_base batchnorm": [w for layer in batchnorms for w in layer.weights]}
    assert tuned and all(fixed.values())
    fixed_before = {part: [np.asarray(w) for w in weights] for part, weights in fixed.items()}
    tuned_before = [np.asarray(w) for w in tuned]

    images = drawn_images(sample_dir, 16)
    labels = np.array([[float(i % 2)] for i in range(len(images))], dtype="float32")
    model.fit(images, labels, batch_size=8, epochs=2, verbose=0)

    # Moving statistics included: BatchNormalization ran in inference mode.
    for part, weights in fixed.items():
        for before, weight in zip(fixed_before[part], weights, strict=True):
            np.testing.assert_array_equal(np.asarray(weight), before, err_msg=weight.path)
    # Not vacuous: every kernel of the trainable part moved, the first one too.
    unchanged = [weight.path for before, weight in zip(tuned_before, tuned, strict=True)
                 if np.array_equal(before, np.asarray(weight))]
    assert not unchanged, f"fine-tuning left these weights unchanged: {unchanged}"


def test_head_phase_trains_only_the_head(random_mobilenet_file):
    params = mobilenet_params(head_epochs=1)
    model = build_model(params, random_mobilenet_file, fine_tune=False, classes=CLASSES)
    assert not model.get_layer("trainable_base").trainable
    head_weights = len(model.get_layer("head").trainable_weights)
    assert len(model.trainable_weights) == head_weights
    set_phase(model, params, fine_tune=True)
    assert len(model.trainable_weights) > head_weights


@pytest.mark.parametrize("classes", [CLASSES, ["bird", "cat", "dog"]])
def test_mixed_precision_computes_in_float16_and_outputs_float32(random_mobilenet_file, tmp_path,
                                                                 classes):
    # `precision: mixed_float16` (finetune.core.runtime.configure) is Keras's global
    # policy: the backbone and hidden layers compute in float16 with float32 weights; the
    # output layer stays float32, so probabilities near 0 and 1 are not rounded to exactly 0 or 1.
    params = mobilenet_params(precision="mixed_float16")
    configure(params)
    try:
        model = build_model(params, random_mobilenet_file, fine_tune=True, classes=classes)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    head = model.get_layer("head")
    assert head.layers[1].compute_dtype == "float16"  # the hidden Dense
    assert head.layers[1].kernel.dtype == "float32"
    assert head.layers[-1].compute_dtype == "float32"  # the output
    assert model.get_layer("class_names").compute_dtype == "float32"
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"  # compile wraps it

    images = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    labels = np.arange(4) % len(classes)
    loss = model.train_on_batch(images, labels, return_dict=True)["loss"]
    assert np.isfinite(loss)
    model.save(tmp_path / "model.keras")
    outputs = load_model(tmp_path / "model.keras").predict_on_batch(images)
    assert outputs.dtype == np.float32
    assert ((outputs > 0) & (outputs < 1)).all()
    if len(classes) > 2:
        assert np.allclose(outputs.sum(axis=1), 1, atol=1e-5)
