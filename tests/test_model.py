"""The model: any keras.applications backbone, checked names, exact weight loading,
BatchNormalization kept in inference mode, preprocessing inside the saved model."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from stages.errors import StageError
from stages.network import build_backbone, build_model, load_model, set_phase
from stages.params import load_params
from tests.conftest import ROOT, photo_pixels, write_legacy_weights

CLASSES = ["cat", "dog"]  # the model's classes, as split_classes names them

SIZE = 96


def mobilenet_params(**overrides: object) -> dict:
    params = load_params(ROOT / "params.yaml")
    params.update(backbone="mobilenet", alpha=0.25, image_size=SIZE, head="gap", dense_units=8,
                  cut_layer="conv_pw_13_relu", unfreeze_after="conv_pw_11_relu")
    params.update(overrides)
    return params


@pytest.fixture(scope="module")
def random_mobilenet_file(tmp_path_factory) -> Path:
    """MobileNet alpha 0.25 weights, random but distinct from a fresh init, in the legacy layout."""
    keras.utils.set_random_seed(7)
    model = keras.applications.MobileNet(input_shape=(SIZE, SIZE, 3), alpha=0.25,
                                         include_top=False, weights=None)
    path = tmp_path_factory.mktemp("weights") / "mobilenet_025_notop.h5"
    write_legacy_weights(model, path)
    return path


def file_tensors(path: Path) -> dict[str, list[np.ndarray]]:
    """Layer name -> its weight arrays, read straight from a legacy Keras HDF5 file."""
    tensors = {}
    with h5py.File(path, "r") as file:
        for layer in file.attrs["layer_names"]:
            name = layer.decode() if isinstance(layer, bytes) else layer
            group = file[name]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
            if names:
                tensors[name] = [np.asarray(group[n]) for n in names]
    return tensors


def drawn_images(sample_dir: Path, count: int) -> np.ndarray:
    """`count` drawn photos of both classes as raw 0-255 float32 pixels at SIZE px."""
    photos = sorted((sample_dir / "train").glob("*.jpg"))[1::3][:count]
    return np.stack([photo_pixels(photo, SIZE) for photo in photos])


def test_backbone_names_are_case_and_underscore_insensitive():
    assert build_backbone(mobilenet_params(backbone="MobileNet")).name.startswith("mobilenet")
    assert build_backbone(mobilenet_params(backbone="inception_v3", image_size=75,
                                           alpha=1.0)).name == "inception_v3"


# The names each message offers, best first, as difflib ranks them (n=5, cutoff 0.5).
MOBILENET_FIRST_LAYERS = r"input_layer(_\d+)?, conv1, conv1_bn, conv1_relu, conv_dw_1, \.\.\."


@pytest.mark.parametrize(("overrides", "key", "closest"), [
    ({"backbone": "mobilnet"}, "backbone", "MobileNet, MobileNetV2, "),
    ({"backbone": "inceptionv4"}, "backbone", "InceptionV3, "),
    ({"cut_layer": "conv_pw_13_rel"}, "cut_layer",
     "conv_pw_13_relu, conv_pw_3_relu, conv_pw_1_relu, conv_pw_12_relu, conv_pw_11_relu"),
    ({"unfreeze_after": "conv_pw_11_rleu"}, "unfreeze_after",
     "conv_pw_11_relu, conv_pw_1_relu, conv_pw_13_relu, conv_pw_12_relu, conv_pw_10_relu"),
    # An InceptionV3 name resembles no MobileNet layer: the message lists the first ones.
    ({"unfreeze_after": "mixed6"}, "unfreeze_after", MOBILENET_FIRST_LAYERS),
], ids=["backbone-typo", "backbone-version", "cut-typo", "unfreeze-swap", "unfreeze-none-close"])
def test_unknown_names_fail_with_the_closest_valid_ones(random_mobilenet_file, overrides, key,
                                                       closest):
    with pytest.raises(StageError) as error:
        build_model(mobilenet_params(**overrides), random_mobilenet_file, fine_tune=True,
                    classes=CLASSES)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{key}: "), message
    offered = message.partition("; closest: ")[2]
    if closest is MOBILENET_FIRST_LAYERS:
        assert re.fullmatch(closest, offered), message
    elif key == "backbone":  # keras.applications grows: only the best matches are pinned
        assert offered.startswith(closest), message
    else:
        assert offered == closest, message


def test_unfreeze_after_above_cut_layer_is_refused(random_mobilenet_file):
    params = mobilenet_params(cut_layer="conv_pw_11_relu", unfreeze_after="conv_pw_13_relu")
    with pytest.raises(StageError, match=r"^unfreeze_after: .* must be at or below it"):
        build_model(params, random_mobilenet_file, fine_tune=True, classes=CLASSES)


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


@pytest.mark.parametrize(("classes", "activation", "units", "loss"), [
    (["cat", "dog"], "sigmoid", 1, "binary_crossentropy"),
    (["a", "b", "c"], "softmax", 3, "sparse_categorical_crossentropy")])
def test_two_classes_get_a_sigmoid_more_a_softmax(random_mobilenet_file, classes, activation,
                                                  units, loss):
    from stages.network import model_class_names

    model = build_model(mobilenet_params(), random_mobilenet_file, fine_tune=True,
                        classes=classes)
    output = model.get_layer("head").layers[-1]
    assert output.get_config()["activation"] == activation and output.units == units
    assert model.loss == loss
    assert model_class_names(model) == classes


def test_image_size_below_the_backbone_minimum_is_refused():
    with pytest.raises(StageError, match=r"^image_size"):
        build_backbone(mobilenet_params(backbone="InceptionV3", alpha=1.0, image_size=60))


def test_loaded_tensors_equal_those_in_the_file(random_mobilenet_file):
    model = build_model(mobilenet_params(), random_mobilenet_file, fine_tune=True,
                        classes=CLASSES)
    expected = file_tensors(random_mobilenet_file)
    loaded = {}
    for part in ("frozen_base", "trainable_base"):
        for layer in model.get_layer(part).layers:
            if layer.weights:
                loaded[layer.name] = [np.asarray(w) for w in layer.weights]
    # Every layer up to the cut is in the model, with exactly the file's values.
    assert loaded, "no backbone weights in the model"
    for name, arrays in loaded.items():
        assert name in expected, name
        assert len(arrays) == len(expected[name])
        for got, want in zip(arrays, expected[name], strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("wrong", ["other_alpha", "other_backbone", "truncated", "not_hdf5"])
def test_weights_that_do_not_fit_fail_with_one_line(random_mobilenet_file, tmp_path, wrong):
    path = tmp_path / "wrong.h5"
    if wrong == "other_alpha":
        write_legacy_weights(keras.applications.MobileNet(
            input_shape=(SIZE, SIZE, 3), alpha=0.5, include_top=False, weights=None), path)
    elif wrong == "other_backbone":
        write_legacy_weights(keras.applications.MobileNetV2(
            input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False, weights=None), path)
    elif wrong == "truncated":
        path.write_bytes(random_mobilenet_file.read_bytes()[:100_000])
    else:
        path.write_text("<html>Not Found</html>")
    with pytest.raises(StageError) as error:
        build_model(mobilenet_params(), path, fine_tune=True, classes=CLASSES)
    message = str(error.value)
    assert "does not fit" in message and "\n" not in message
    if wrong == "other_alpha":
        assert "mismatch" in message.lower()


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


@pytest.mark.parametrize(("mode", "low", "high"), [("backbone", -1.0, 1.0), ("unit", 0.0, 1.0)])
def test_preprocessing_scales_raw_pixels(random_mobilenet_file, mode, low, high):
    model = build_model(mobilenet_params(preprocessing=mode), random_mobilenet_file,
                        fine_tune=True, classes=CLASSES)
    preprocessing = model.get_layer("preprocessing")
    scaled = np.asarray(preprocessing(np.array([[[[0.0, 127.5, 255.0]]]], dtype="float32")))
    np.testing.assert_allclose(scaled.ravel(), [low, (low + high) / 2, high], atol=1e-6)


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


@pytest.mark.parametrize("classes", [CLASSES, ["bird", "cat", "dog"]])
def test_mixed_precision_computes_in_float16_and_outputs_float32(random_mobilenet_file, tmp_path,
                                                                 classes):
    # `precision: mixed_float16` (stages.compute.configure) is Keras's global policy: the
    # backbone and hidden layers compute in float16 with float32 weights; the output layer
    # stays float32, so probabilities near 0 and 1 are not rounded to exactly 0 or 1.
    from stages.compute import configure

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
