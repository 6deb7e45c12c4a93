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

BatchNormalization layers of the backbone always run in inference mode, keeping
their ImageNet statistics while the layers around them are fine-tuned (the Keras
transfer-learning guide's rule). The guide's `base(x, training=False)` is not
enough in Keras 3: `fit` calls the model with `training=True`, which overrides it
(keras-team/keras#20285). A BatchNormalization layer with `trainable = False` runs
in inference mode whatever `training` says, so `set_phase` freezes them all.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from stages.errors import StageError

# keras.applications names by their normalised form: "inception_v3" -> "InceptionV3".
BACKBONES = {
    name.lower(): name for name in dir(keras.applications) if name[:1].isupper()
}


def _normalise(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


# A layer param's value for the backbone's own output layer: `cut_layer: last` keeps the
# whole backbone; `unfreeze_after: last` as well fine-tunes none of it.
LAST_LAYER = "last"


def _closest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    return ", ".join(close) if close else ", ".join(candidates[:5]) + ", ..."


# --- backbone ---------------------------------------------------------------

def backbone_class(name: str) -> Any:
    """The keras.applications constructor called `name` (case and '_' ignored)."""
    key = _normalise(name)
    if key not in BACKBONES:
        close = difflib.get_close_matches(key, list(BACKBONES), n=5, cutoff=0.5)
        hint = ", ".join(BACKBONES[c] for c in close) or ", ".join(sorted(BACKBONES.values()))
        raise StageError(f"backbone: unknown keras.applications model '{name}'; closest: {hint}")
    return getattr(keras.applications, BACKBONES[key])


def build_backbone(params: dict[str, Any]) -> keras.Model:
    """The backbone without its classifier and without weights, at the configured size."""
    constructor = backbone_class(params["backbone"])
    options = {}
    if "alpha" in inspect.signature(constructor).parameters:
        options["alpha"] = params["alpha"]
    elif params["alpha"] != 1.0:
        raise StageError(f"alpha: {constructor.__name__} has no width multiplier; set alpha: 1.0")
    size = params["image_size"]
    try:
        return constructor(input_shape=(size, size, 3), include_top=False, weights=None, **options)
    except ValueError as error:
        raise StageError(f"image_size/alpha: {constructor.__name__} rejects {size} px, "
                         f"alpha {params['alpha']}: {str(error).splitlines()[0]}") from None


def check_architecture(params: dict[str, Any]) -> None:
    """Fail at once on a bad backbone name, image size, alpha or layer name (seconds: no
    weights are loaded), so no stage downloads or trains for a configuration that cannot work."""
    check_layers(build_backbone(params), params)


def layer_name(backbone: keras.Model, params: dict[str, Any], key: str) -> str:
    """The backbone layer that the layer param `key` names (`last`: its output layer)."""
    return backbone.layers[-1].name if params[key] == LAST_LAYER else params[key]


def check_layers(backbone: keras.Model, params: dict[str, Any],
                 keys: tuple[str, ...] = ("unfreeze_after", "cut_layer")) -> None:
    """Fail at once, with the closest names, if a layer param names no layer of the backbone."""
    names = [layer.name for layer in backbone.layers]
    for key in keys:
        if layer_name(backbone, params, key) not in names:
            raise StageError(f"{key}: {backbone.name} has no layer '{params[key]}' "
                             f"('{LAST_LAYER}' names its output); "
                             f"closest: {_closest(params[key], names)}")
    if "cut_layer" in keys and (names.index(layer_name(backbone, params, "unfreeze_after"))
                                > names.index(layer_name(backbone, params, "cut_layer"))):
        raise StageError(f"unfreeze_after: '{params['unfreeze_after']}' comes after cut_layer "
                         f"'{params['cut_layer']}'; it must be at or below it")


def load_backbone_weights(backbone: keras.Model, weights_file: Path) -> None:
    """Load pretrained weights, failing on any mismatch rather than loading part of them."""
    try:
        backbone.load_weights(weights_file)
    except (ValueError, OSError, KeyError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise StageError(f"{weights_file} does not fit {backbone.name} as configured "
                         f"(check backbone, alpha and weights_urls): {reason}") from None


# --- model ------------------------------------------------------------------

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


def frozen_part(backbone: keras.Model, params: dict[str, Any]) -> keras.Model:
    """Backbone input .. unfreeze_after: never trained, so its output can be cached."""
    split = backbone.get_layer(layer_name(backbone, params, "unfreeze_after")).output
    frozen_base = keras.Model(backbone.input, split, name="frozen_base")
    frozen_base.trainable = False
    return frozen_base


def build_feature_extractor(params: dict[str, Any], weights_file: Path) -> keras.Model:
    """Raw pixels -> preprocessing -> frozen_base: what the features stage caches. It reads
    only the params that change these activations (not cut_layer, the head or training)."""
    backbone = build_backbone(params)
    check_layers(backbone, params, keys=("unfreeze_after",))
    load_backbone_weights(backbone, weights_file)
    size = params["image_size"]
    inputs = keras.Input((size, size, 3), name="image")
    outputs = frozen_part(backbone, params)(preprocessing(params)(inputs))
    return keras.Model(inputs, outputs, name="feature_extractor")


def build_model(params: dict[str, Any], weights_file: Path, fine_tune: bool,
                classes: list[str]) -> keras.Model:
    """Build and compile the model for `classes` (label i is classes[i]); call it inside a
    tf.distribute strategy's scope to scale."""
    backbone = build_backbone(params)
    check_layers(backbone, params)
    load_backbone_weights(backbone, weights_file)

    frozen_base = frozen_part(backbone, params)
    unfreeze_after, cut_layer = (layer_name(backbone, params, key)
                                 for key in ("unfreeze_after", "cut_layer"))
    split = backbone.get_layer(unfreeze_after).output
    size = params["image_size"]
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    augment = augmentation(params)
    if augment is not None:
        x = augment(x)
    x = preprocessing(params)(x)
    x = frozen_base(x)
    if unfreeze_after != cut_layer:
        cut = backbone.get_layer(cut_layer).output
        trainable_base = keras.Model(split, cut, name="trainable_base")
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
    x = features
    if "trainable_base" in [layer.name for layer in model.layers]:
        x = model.get_layer("trainable_base")(x)
    return keras.Model(features, model.get_layer("head")(x), name="trained_part")


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


def load_model(model_file: Path) -> keras.Model:
    """The trained model, for prediction (no optimizer: compile=False)."""
    if not model_file.is_file():
        raise StageError(f"{model_file} not found: run `dvc repro train`")
    if not zipfile.is_zipfile(model_file):
        raise StageError(f"{model_file} is not a .keras archive (truncated?): "
                         "run `dvc repro -f train`")
    try:
        return keras.models.load_model(model_file, compile=False)
    except (OSError, ValueError, KeyError) as error:
        raise StageError(f"cannot load {model_file} ({str(error).splitlines()[0]}): "
                         "run `dvc repro -f train`") from None


def model_image_size(model: keras.Model, model_file: Path) -> int:
    """The square image size the model takes: what it was trained with."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise StageError(f"{model_file} takes input of shape {shape}, not square RGB images")
    return int(shape[1])


def model_class_names(model: keras.Model) -> list[str]:
    """The class names saved in the model, in the order of its outputs."""
    if "class_names" in [layer.name for layer in model.layers]:
        return model.get_layer("class_names").names
    if model.output_shape[-1] == 1:  # a model saved before the names were: cats vs dogs
        return ["cat", "dog"]
    raise StageError(f"{model.name} does not name its {model.output_shape[-1]} classes: "
                     "run `dvc repro -f train`")


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """The model's outputs as a probability per class (a column each), float64: a sigmoid's
    single column P(second class) becomes the two columns 1 - p, p."""
    outputs = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    return np.hstack([1 - outputs, outputs]) if outputs.shape[1] == 1 else outputs


def predict_probabilities(model: keras.Model, images: Any) -> np.ndarray:
    """A probability per class (see class_probabilities) for a batch of raw 0-255 float32
    pixels."""
    # predict_on_batch runs the compiled predict step without building a dataset per call.
    return class_probabilities(model.predict_on_batch(images))
