"""The network: any keras.applications backbone, cut, split and given a new head.

The model is built from named parts so that the data flow can change without a
rewrite (for instance, running `frozen_base` once per image and caching its
output):

    image (raw 0-255 pixels)
      -> augmentation  (random flip/rotation/zoom, training only; absent when off)
      -> preprocessing (the backbone's own preprocess_input, or x / 255)
      -> frozen_base   (backbone input .. unfreeze_after; never trained)
      -> trainable_base (unfreeze_after .. cut_layer; fine-tuned; absent when empty)
      -> head          (flatten or global average pooling, Dense, Dropout, then a
                        sigmoid for two classes or a softmax over N)
      -> class_names   (the identity, carrying the class names into the saved model)

With `calibration: temperature` the saved model's head ends instead in a linear Dense layer
(the same weights: the logits) and a Temperature layer, which divides them by the
temperature fitted after training and applies the sigmoid or softmax (with_temperature).

BatchNormalization layers of the backbone always run in inference mode, keeping
their ImageNet statistics while the layers around them are fine-tuned (the Keras
transfer-learning guide's rule). The guide's `base(x, training=False)` is not
enough in Keras 3: `fit` calls the model with `training=True`, which overrides it
(keras-team/keras#20285). A BatchNormalization layer with `trainable = False` runs
in inference mode whatever `training` says, so `set_phase` freezes them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras

from finetune.core.timings import mark
from finetune.model.backbone import (
    build_backbone,
    check_layers,
    checked_backbone,
    layer_name,
    load_backbone_weights,
)
from finetune.model.layers import (
    ClassNames,
    Temperature,
    augmentation,
    build_head,
    mirroring,
    preprocessing,
)


def frozen_part(backbone: keras.Model, params: dict[str, Any]) -> keras.Model:
    """Backbone input .. unfreeze_after: never trained, so its output can be cached."""
    split = backbone.get_layer(layer_name(backbone, params, "unfreeze_after")).output
    frozen_base = keras.Model(backbone.input, split, name="frozen_base")
    frozen_base.trainable = False
    return frozen_base


def trainable_part(backbone: keras.Model, params: dict[str, Any]) -> keras.Model | None:
    """unfreeze_after .. cut_layer, fine-tuned on unfreeze_after's output alone (None when
    they are the same layer). check_layers has made sure that output is all it needs."""
    unfreeze_after, cut_layer = (layer_name(backbone, params, key)
                                 for key in ("unfreeze_after", "cut_layer"))
    if unfreeze_after == cut_layer:
        return None
    return keras.Model(backbone.get_layer(unfreeze_after).output,
                       backbone.get_layer(cut_layer).output, name="trainable_base")


def build_feature_extractor(params: dict[str, Any], weights_file: Path, mirror: bool = False
                            ) -> keras.Model:
    """Raw pixels -> preprocessing -> frozen_base: what the features stage caches. It reads
    only the params that change these activations (not cut_layer, the head or training).
    With `mirror`, each image is mirrored left-right first: what mirrored_features caches
    (`tta: flip`), by the same extraction code."""
    backbone = build_backbone(params)
    check_layers(backbone, params, keys=("unfreeze_after",))
    load_backbone_weights(backbone, weights_file)
    size = params["image_size"]
    inputs = keras.Input((size, size, 3), name="image")
    x = mirroring()(inputs) if mirror else inputs
    outputs = frozen_part(backbone, params)(preprocessing(params)(x))
    return keras.Model(inputs, outputs, name="mirrored_extractor" if mirror
                       else "feature_extractor")


def build_model(params: dict[str, Any], weights_file: Path, fine_tune: bool,
                classes: list[str], backbone: keras.Model | None = None) -> keras.Model:
    """Build and compile the model for `classes` (label i is classes[i]); call it inside a
    tf.distribute strategy's scope to scale. `backbone`: one checked_backbone made and no
    model uses yet (a caller that checked the params on it: built once, not twice);
    without it, one is built here."""
    if backbone is None:
        backbone = checked_backbone(params)
    load_backbone_weights(backbone, weights_file)
    mark("weights")

    frozen_base = frozen_part(backbone, params)
    size = params["image_size"]
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    augment = augmentation(params)
    if augment is not None:
        x = augment(x)
    x = preprocessing(params)(x)
    x = frozen_base(x)
    trainable_base = trainable_part(backbone, params)
    if trainable_base is not None:
        x = trainable_base(x)
    head = build_head(params, len(classes))(x)
    outputs = ClassNames(classes, name="class_names", dtype="float32")(head)
    model = keras.Model(inputs, outputs, name=f"{backbone.name}_classifier")
    set_phase(model, params, fine_tune)
    return model


def trained_part(model: keras.Model) -> keras.Model:
    """The model above frozen_base (trainable_base, if any, and the head), as a model of
    its own that takes frozen_base's activations. It shares its layers with `model`:
    training one trains the other."""
    features = keras.Input(model.get_layer("frozen_base").output.shape[1:], name="features")
    x = _trainable_base(model, features)
    return keras.Model(features, model.get_layer("head")(x), name="trained_part")


def _trainable_base(model: keras.Model, x: Any) -> Any:
    if "trainable_base" in [layer.name for layer in model.layers]:
        return model.get_layer("trainable_base")(x)
    return x


def with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """`model` (as build_model made it) with its outputs divided by `temperature` before the
    sigmoid or softmax: the head's output Dense layer becomes a linear one named `logits`,
    of the same weights, followed by a Temperature layer. Every other layer is shared."""
    head = model.get_layer("head")
    output = head.layers[-1]
    logits = keras.layers.Dense.from_config(
        {**output.get_config(), "activation": "linear", "name": "logits"})
    calibrated_head = keras.Sequential(
        [*head.layers[:-1], logits,
         Temperature(temperature, output.get_config()["activation"], name="temperature",
                     dtype="float32")],
        name="head")
    x = calibrated_head(head.input)  # head.input: what the head is called on in `model`
    logits.set_weights(output.get_weights())
    outputs = ClassNames(model.get_layer("class_names").names, name="class_names",
                         dtype="float32")(x)
    return keras.Model(model.inputs, outputs, name=model.name)


def model_temperature(model: keras.Model) -> float | None:
    """The temperature a calibrated model divides its logits by; None for one saved with
    `calibration: none`."""
    last = model.get_layer("head").layers[-1]
    return last.temperature if isinstance(last, Temperature) else None


def logits_part(model: keras.Model, on_features: bool = True) -> keras.Model:
    """The logits of a model with_temperature made (its Temperature layer's input), as a
    model of its own that takes frozen_base's activations (`on_features`) or raw pixels."""
    if on_features:
        inputs = keras.Input(model.get_layer("frozen_base").output.shape[1:], name="features")
        x = inputs
    else:  # augmentation left out: it changes nothing outside training
        inputs = keras.Input(model.input_shape[1:], name="image")
        x = model.get_layer("frozen_base")(model.get_layer("preprocessing")(inputs))
    x = _trainable_base(model, x)
    for layer in model.get_layer("head").layers[:-1]:
        x = layer(x)
    return keras.Model(inputs, x, name="logits_part")


def set_phase(model: keras.Model, params: dict[str, Any], fine_tune: bool) -> None:
    """Freeze or unfreeze `trainable_base` and (re)compile: Keras needs a compile after either."""
    if "trainable_base" in [layer.name for layer in model.layers]:
        trainable_base = model.get_layer("trainable_base")
        trainable_base.trainable = fine_tune  # sets every layer inside, BatchNorm included
        for layer in trainable_base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False  # inference mode: see the module docstring
    binary = model.output_shape[-1] == 1  # a sigmoid: two classes
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=params["lr" if fine_tune else "head_lr"]),
        loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
