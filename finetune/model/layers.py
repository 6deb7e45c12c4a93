"""The layers around the backbone: augmentation, preprocessing, the head (with its
temperature, when calibrated), and the layer that carries the class names into the saved
model."""

from __future__ import annotations

import importlib
from typing import Any

import keras

from finetune.model.backbone import backbone_class


@keras.saving.register_keras_serializable(package="dogs_vs_cats")
class BackbonePreprocess(keras.layers.Layer):
    """The backbone's own `preprocess_input` as a layer, so the saved model takes raw pixels."""

    def __init__(self, backbone: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        module = importlib.import_module(backbone_class(backbone).__module__)
        self.preprocess_input = module.preprocess_input

    def call(self, images: Any) -> Any:
        return self.preprocess_input(images)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "backbone": self.backbone}


def augments(params: dict[str, Any]) -> bool:
    """Whether training changes the images (and so the frozen part's output) every epoch."""
    return bool(params["augment_flip"] or params["augment_rotation"] or params["augment_zoom"])


def augmentation(params: dict[str, Any]) -> keras.Sequential | None:
    """Random flips, rotations and zooms; Keras applies them only while training."""
    seed = params["seed"]
    layers = []
    if params["augment_flip"]:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if params["augment_rotation"]:
        layers.append(keras.layers.RandomRotation(params["augment_rotation"], seed=seed))
    if params["augment_zoom"]:
        layers.append(keras.layers.RandomZoom(params["augment_zoom"], seed=seed))
    return keras.Sequential(layers, name="augmentation") if layers else None


@keras.saving.register_keras_serializable(package="dogs_vs_cats")
class ClassNames(keras.layers.Layer):
    """The identity on the model's output, carrying the class names: the saved model says
    what its outputs are, so predict and submit need no params to name them."""

    def __init__(self, names: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.names = list(names)

    def call(self, probabilities: Any) -> Any:
        return probabilities

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "names": self.names}


@keras.saving.register_keras_serializable(package="dogs_vs_cats")
class Temperature(keras.layers.Layer):
    """The output's activation (sigmoid or softmax) of the logits divided by one temperature,
    fitted after training (`calibration: temperature`, finetune.model.calibration). The last
    layer of a calibrated head, after the output Dense layer made linear: the saved model
    gives calibrated probabilities, so predict and submit need no params to apply it."""

    def __init__(self, temperature: float, activation: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.temperature = float(temperature)
        self.activation = activation  # "sigmoid" or "softmax", the output Dense layer's

    def call(self, logits: Any) -> Any:
        return keras.activations.get(self.activation)(logits / self.temperature)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "temperature": self.temperature,
                "activation": self.activation}


def mirroring() -> keras.layers.Layer:
    """Each image mirrored left-right (the width axis of NHWC images), as RandomFlip's
    "horizontal" mode flips, every time: the mirrored_features stage's extractor
    (`tta: flip`). Never saved in a model, so a Lambda layer."""
    return keras.layers.Lambda(lambda images: keras.ops.flip(images, axis=2), name="mirror")


def build_head(params: dict[str, Any], classes: int) -> keras.Sequential:
    """Pooling, the hidden layer, dropout and the output: one sigmoid unit, P(second
    class), for two classes (as the reference recipe); a softmax over more."""
    pooling = keras.layers.Flatten() if params["head"] == "flatten" else (
        keras.layers.GlobalAveragePooling2D())
    layers = [pooling]
    if params["dense_units"]:
        layers.append(keras.layers.Dense(params["dense_units"], activation="relu"))
    # float32 under a mixed precision policy too: a sigmoid or softmax computed in float16
    # rounds probabilities near 0 and 1 to exactly 0 and 1 (the Keras mixed precision guide).
    output = (keras.layers.Dense(1, activation="sigmoid", dtype="float32") if classes == 2
              else keras.layers.Dense(classes, activation="softmax", dtype="float32"))
    layers += [keras.layers.Dropout(params["dropout"], seed=params["seed"]), output]
    return keras.Sequential(layers, name="head")


def preprocessing(params: dict[str, Any]) -> keras.layers.Layer:
    if params["preprocessing"] == "backbone":
        return BackbonePreprocess(params["backbone"], name="preprocessing")
    return keras.layers.Rescaling(1 / 255, name="preprocessing")  # the reference recipe's
