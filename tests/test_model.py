"""The model: any keras.applications backbone, checked names, exact weight loading,
BatchNormalization kept in inference mode, preprocessing inside the saved model."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from stages.common import StageError, load_params
from tests.conftest import ROOT, write_legacy_weights

keras = pytest.importorskip("keras")
from stages.model import (  # noqa: E402
    build_backbone,
    build_model,
    load_model,
    set_phase,
)

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


def test_backbone_names_are_case_and_underscore_insensitive():
    assert build_backbone(mobilenet_params(backbone="MobileNet")).name.startswith("mobilenet")
    assert build_backbone(mobilenet_params(backbone="inception_v3", image_size=75,
                                           alpha=1.0)).name == "inception_v3"


@pytest.mark.parametrize(("overrides", "key", "suggestion"), [
    ({"backbone": "mobilnet"}, "backbone", "MobileNet"),
    ({"backbone": "inceptionv4"}, "backbone", "InceptionV3"),
    ({"cut_layer": "conv_pw_13_rel"}, "cut_layer", "conv_pw_13_relu"),
    ({"unfreeze_after": "mixed6"}, "unfreeze_after", "conv_"),
])
def test_unknown_names_fail_with_the_closest_valid_ones(random_mobilenet_file, overrides, key,
                                                       suggestion):
    with pytest.raises(StageError) as error:
        build_model(mobilenet_params(**overrides), random_mobilenet_file, fine_tune=True)
    message = str(error.value)
    assert message.startswith(f"{key}:") and suggestion in message and "\n" not in message


def test_unfreeze_after_above_cut_layer_is_refused(random_mobilenet_file):
    params = mobilenet_params(cut_layer="conv_pw_11_relu", unfreeze_after="conv_pw_13_relu")
    with pytest.raises(StageError, match=r"^unfreeze_after: .* must be at or below it"):
        build_model(params, random_mobilenet_file, fine_tune=True)


def test_image_size_below_the_backbone_minimum_is_refused():
    with pytest.raises(StageError, match=r"^image_size"):
        build_backbone(mobilenet_params(backbone="InceptionV3", alpha=1.0, image_size=60))


def test_loaded_tensors_equal_those_in_the_file(random_mobilenet_file):
    model = build_model(mobilenet_params(), random_mobilenet_file, fine_tune=True)
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
        build_model(mobilenet_params(), path, fine_tune=True)
    message = str(error.value)
    assert "does not fit" in message and "\n" not in message
    if wrong == "other_alpha":
        assert "mismatch" in message.lower()


def test_batchnorm_statistics_and_frozen_part_stay_fixed_while_fine_tuning(mobilenet_weights):
    # Real ImageNet weights: with random ones the ReLU6 activations saturate and no
    # gradient reaches the trainable part, so the test could not see it being trained.
    model = build_model(mobilenet_params(), mobilenet_weights, fine_tune=True)
    trainable_base = model.get_layer("trainable_base")
    batchnorms = [layer for layer in trainable_base.layers
                  if isinstance(layer, keras.layers.BatchNormalization)]
    assert batchnorms and not any(layer.trainable for layer in batchnorms)
    assert any(layer.trainable_weights for layer in trainable_base.layers)
    moving = [np.asarray(w) for layer in batchnorms
              for w in (layer.moving_mean, layer.moving_variance)]
    frozen_before = [np.asarray(w) for w in model.get_layer("frozen_base").weights]
    tuned_before = [np.asarray(w) for w in trainable_base.trainable_weights]

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, SIZE, SIZE, 3)).astype("float32")
    model.fit(images, rng.integers(0, 2, (8, 1)).astype("float32"), epochs=2, verbose=0)

    for before, layer_weight in zip(moving, [w for layer in batchnorms
                                             for w in (layer.moving_mean, layer.moving_variance)],
                                    strict=True):
        np.testing.assert_array_equal(before, np.asarray(layer_weight))
    for before, weight in zip(frozen_before, model.get_layer("frozen_base").weights, strict=True):
        np.testing.assert_array_equal(before, np.asarray(weight))
    changed = [not np.array_equal(before, np.asarray(weight))
               for before, weight in zip(tuned_before, trainable_base.trainable_weights,
                                         strict=True)]
    assert any(changed), "fine-tuning changed no weight of the trainable part"


def test_head_phase_trains_only_the_head(random_mobilenet_file):
    params = mobilenet_params(head_epochs=1)
    model = build_model(params, random_mobilenet_file, fine_tune=False)
    assert not model.get_layer("trainable_base").trainable
    head_weights = len(model.get_layer("head").trainable_weights)
    assert len(model.trainable_weights) == head_weights
    set_phase(model, params, fine_tune=True)
    assert len(model.trainable_weights) > head_weights


@pytest.mark.parametrize(("mode", "low", "high"), [("backbone", -1.0, 1.0), ("unit", 0.0, 1.0)])
def test_preprocessing_scales_raw_pixels(random_mobilenet_file, mode, low, high):
    model = build_model(mobilenet_params(preprocessing=mode), random_mobilenet_file,
                        fine_tune=True)
    preprocessing = model.get_layer("preprocessing")
    scaled = np.asarray(preprocessing(np.array([[[[0.0, 127.5, 255.0]]]], dtype="float32")))
    np.testing.assert_allclose(scaled.ravel(), [low, (low + high) / 2, high], atol=1e-6)


@pytest.mark.parametrize("head", ["flatten", "gap"])
def test_saved_model_predicts_the_same_after_loading(random_mobilenet_file, tmp_path, head):
    params = mobilenet_params(head=head, preprocessing="backbone", augment_flip=True,
                              augment_rotation=0.1, augment_zoom=0.1)
    model = build_model(params, random_mobilenet_file, fine_tune=True)
    images = np.random.default_rng(1).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    # Augmentation is off outside training: two predictions agree.
    np.testing.assert_array_equal(expected, model.predict(images, verbose=0))
    model.save(tmp_path / "model.keras")
    np.testing.assert_allclose(load_model(tmp_path / "model.keras").predict(images, verbose=0),
                               expected, atol=1e-6)
