"""finetune.model.backbone: any keras.applications backbone by name, checked names (the
closest valid ones offered), exact weight loading."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from finetune.core.errors import StageError
from finetune.model.assembly import build_model, trainable_part
from finetune.model.backbone import (
    block_outputs,
    build_backbone,
    check_architecture,
    check_layers,
)
from tests.support.networks import CLASSES, SIZE, mobilenet_params
from tests.support.weights import write_legacy_weights


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


# The names each message offers, best first, as difflib ranks them (n=5, cutoff 0.5).
@pytest.mark.parametrize(("overrides", "key", "closest"), [
    ({"backbone": "mobilnet"}, "backbone", "MobileNet, MobileNetV2, "),
    ({"backbone": "inceptionv4"}, "backbone", "InceptionV3, "),
    ({"cut_layer": "conv_pw_13_rel"}, "cut_layer",
     "conv_pw_13_relu, conv_pw_3_relu, conv_pw_1_relu, conv_pw_12_relu, conv_pw_11_relu"),
    ({"unfreeze_after": "conv_pw_11_rleu"}, "unfreeze_after",
     "conv_pw_11_relu, conv_pw_1_relu, conv_pw_13_relu, conv_pw_12_relu, conv_pw_10_relu"),
], ids=["backbone-typo", "backbone-version", "cut-typo", "unfreeze-swap"])
def test_unknown_names_fail_with_the_closest_valid_ones(random_mobilenet_file, overrides, key,
                                                       closest):
    with pytest.raises(StageError) as error:
        build_model(mobilenet_params(**overrides), random_mobilenet_file, fine_tune=True,
                    classes=CLASSES)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{key}: "), message
    offered = message.partition("; closest: ")[2]
    if key == "backbone":  # keras.applications grows: only the best matches are pinned
        assert offered.startswith(closest), message
    else:  # the backbone as params.yaml names it ("mobilenet"), not Keras's "mobilenet_0.25_96"
        assert message.startswith(f"{key}: mobilenet has no layer '{overrides[key]}'"), message
        assert offered == closest, message


def test_a_name_like_none_offers_the_block_outputs(random_mobilenet_file):
    # An InceptionV3 name resembles no MobileNet layer: the first layers (input_layer,
    # conv1, conv1_bn, ...) would be no help, the ends of its blocks are.
    with pytest.raises(StageError) as error:
        build_model(mobilenet_params(backbone="mobile_net", unfreeze_after="mixed6"),
                    random_mobilenet_file, fine_tune=True, classes=CLASSES)
    assert str(error.value) == (
        "unfreeze_after: mobile_net has no layer 'mixed6' ('last' names its output); its 27 "
        "block outputs include conv1_relu, conv_dw_3_relu, conv_pw_5_relu, conv_pw_8_relu, "
        "conv_dw_11_relu, conv_pw_13_relu")


@pytest.mark.parametrize(("backbone", "size", "count", "every"), [
    ("MobileNet", 96, 27, r"conv1_relu|conv_(dw|pw)_\d+_relu"),
    ("ResNet50", 32, 17, r"conv1_relu|conv\d_block\d_out"),
    ("InceptionV3", 75, 16, r"activation(_\d+)?|mixed\d+"),
])
def test_block_outputs_are_where_the_network_can_be_split(backbone, size, count, every):
    model = build_backbone(mobilenet_params(backbone=backbone, image_size=size,
                                            alpha=0.25 if backbone == "MobileNet" else 1.0))
    outputs = block_outputs(model)
    assert len(outputs) == count and outputs[-1] == model.layers[-1].name, outputs
    assert all(re.fullmatch(every, name) for name in outputs), outputs
    if backbone == "InceptionV3":
        assert outputs[-11:] == [f"mixed{n}" for n in range(11)]
    # All that flows on: the rest of the network is a model of each one's output alone (as
    # trainable_base is of unfreeze_after's); the first layer of the last block is not,
    # unless the network is a chain.
    for name in outputs[:-1]:
        keras.Model(model.get_layer(name).output, model.output)
    names = [layer.name for layer in model.layers]
    inside = model.get_layer(names[names.index(outputs[-2]) + 1])
    if backbone != "MobileNet":
        with pytest.raises(ValueError, match="not connected"):
            keras.Model(inside.output, model.output)


def test_unfreeze_after_above_cut_layer_is_refused(random_mobilenet_file):
    params = mobilenet_params(cut_layer="conv_pw_11_relu", unfreeze_after="conv_pw_13_relu")
    with pytest.raises(StageError, match=r"^unfreeze_after: .* must be at or below it"):
        build_model(params, random_mobilenet_file, fine_tune=True, classes=CLASSES)


def resnet_params(**overrides: object) -> dict:
    return mobilenet_params(backbone="ResNet50", alpha=1.0, image_size=32, **overrides)


def test_unfreeze_after_inside_a_residual_block_is_refused_before_anything_runs():
    """The shortcut of conv4_block1 skips past conv4_block1_1_relu to the block's Add, below
    cut_layer: the fine-tuned part would need more than unfreeze_after's output, which Keras
    found only when train built it (`Output with path '' is not connected to 'inputs'`)."""
    params = resnet_params(unfreeze_after="conv4_block1_1_relu", cut_layer="conv4_block2_out")
    with pytest.raises(StageError) as error:
        check_architecture(params)
    assert str(error.value) == (
        "unfreeze_after: ResNet50's 'conv4_block1_1_relu' is inside a block: a connection "
        "skips past it to a layer at or below cut_layer 'conv4_block2_out', so the fine-tuned "
        "part cannot start from its output alone; the nearest layers it can be: "
        "conv3_block4_out (before it), conv4_block1_out (after it)")
    with pytest.raises(StageError, match="is inside a block"):  # the check the model build runs
        check_layers(build_backbone(params), params)
    # A skip past it only to layers above cut_layer does not count: they are dropped.
    check_architecture(resnet_params(unfreeze_after="conv4_block1_1_relu",
                                     cut_layer="conv4_block1_2_relu"))


def test_every_mobilenet_layer_can_be_unfreeze_after():
    """MobileNet is a chain: no connection skips a layer, so every split is valid."""
    names = [layer.name for layer in build_backbone(mobilenet_params()).layers]
    for name in names[1:]:
        check_architecture(mobilenet_params(unfreeze_after=name, cut_layer="last"))


def test_the_check_accepts_exactly_the_splits_keras_can_build():
    """For a sample of ResNet50's layers as unfreeze_after and cut_layer: the check accepts
    a split if and only if finetune.model.assembly can build its fine-tuned part."""
    backbone = build_backbone(resnet_params())
    names = [layer.name for layer in backbone.layers]
    # Residual blocks of both kinds (conv4_block1 has a projection shortcut, conv4_block2 an
    # identity one); cuts low in the network keep the parts Keras builds small.
    cuts = ["conv2_block1_2_relu", "conv3_block1_out", "conv4_block1_add", "conv4_block2_out"]
    accepted = refused = 0
    for cut_layer in cuts:
        for unfreeze_after in names[1:names.index(cut_layer) + 1:3]:
            params = resnet_params(unfreeze_after=unfreeze_after, cut_layer=cut_layer)
            try:
                check_architecture(params)
            except StageError:
                refused += 1
                with pytest.raises(ValueError, match="not connected"):
                    trainable_part(backbone, params)
            else:
                accepted += 1
                trainable_part(backbone, params)
    assert accepted > 5 and refused > 5, (accepted, refused)  # both kinds were tried


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
