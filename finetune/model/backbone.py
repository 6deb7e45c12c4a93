"""The backbone: any keras.applications model by name, its layer params checked before
anything slow runs, its pretrained weights loaded whole or not at all."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras

from finetune.core.errors import StageError

# keras.applications names by their normalised form: "inception_v3" -> "InceptionV3".
BACKBONES = {
    name.lower(): name for name in dir(keras.applications) if name[:1].isupper()
}


def _normalise(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


# A layer param's value for the backbone's own output layer: `cut_layer: last` keeps the
# whole backbone; `unfreeze_after: last` as well fine-tunes none of it.
LAST_LAYER = "last"


# The layers that end a block of a keras.applications backbone: a non-linearity, or where
# its branches merge (ResNet's Add, InceptionV3's Concatenate, EfficientNet's Multiply).
BLOCK_ENDS = {"Activation", "ReLU", "Add", "Concatenate", "Multiply"}
SHOWN, SHOWN_CHARS = 6, 120  # at most this many layer names, in this many characters


def _inputs(inbound: Any) -> Iterator[str]:
    """The operations an `inbound_nodes` entry of a model's config takes tensors from."""
    if isinstance(inbound, dict):
        if "keras_history" in inbound:
            yield inbound["keras_history"][0]
            return
        inbound = list(inbound.values())
    if isinstance(inbound, list | tuple):
        for item in inbound:
            yield from _inputs(item)


def block_outputs(backbone: keras.Model) -> list[str]:
    """Layers to cut at: those whose output is all that flows on (no connection skips
    past them, so the network below is whole) and that end a block: MobileNet's
    conv_pw_1_relu, ResNet's conv2_block1_out (not the Add just before it), InceptionV3's
    mixed0. Where none ends a block (VGG's activations are in its convolutions), all of
    the first kind. Read from the model's config (tenths of a second for a large backbone):
    for messages only."""
    operations = backbone.get_config()["layers"]  # in topological order
    position = {operation["name"]: index for index, operation in enumerate(operations)}
    # +1 where a connection starts skipping operations, -1 past its last: the running sum
    # is how many connections skip each operation.
    skips = [0] * (len(operations) + 1)
    for index, operation in enumerate(operations):
        for source in _inputs(operation["inbound_nodes"]):
            if position[source] + 1 < index:
                skips[position[source] + 1] += 1
                skips[index] -= 1
    layers = {layer.name for layer in backbone.layers}  # not the bare ops of the config
    cuts: dict[int, str] = {}  # position -> class name
    skipping = 0
    for index, operation in enumerate(operations):
        skipping += skips[index]
        if (not skipping and operation["name"] in layers
                and operation["class_name"] != "InputLayer"):  # cut there, nothing is left
            cuts[index] = operation["class_name"]
    ends = [operations[index]["name"] for index, kind in cuts.items()
            if kind in BLOCK_ENDS and cuts.get(index + 1) not in BLOCK_ENDS]
    return ends or [operations[index]["name"] for index in cuts]


def _spread(names: list[str]) -> list[str]:
    """The first and last of `names` and evenly spaced ones between, SHOWN at most and
    fewer if they would not fit SHOWN_CHARS."""
    for count in range(min(SHOWN, len(names)), 1, -1):
        picked = [names[round(i * (len(names) - 1) / (count - 1))] for i in range(count)]
        if len(", ".join(picked)) <= SHOWN_CHARS:
            return picked
    return [names[0], names[-1]] if len(names) > 1 else names


def _unknown_layer(backbone: keras.Model, params: dict[str, Any], key: str) -> str:
    """Why the layer param `key` fails: the backbone named as params.yaml names it (not
    Keras's 'mobilenet_0.25_224'), and the valid names closest to the value or, where
    none is close, the backbone's block outputs."""
    value = params[key]
    message = (f"{key}: {params['backbone']} has no layer '{value}' ('{LAST_LAYER}' names "
               "its output); ")
    close = difflib.get_close_matches(value, [layer.name for layer in backbone.layers],
                                      n=5, cutoff=0.5)
    if close:
        return message + f"closest: {', '.join(close)}"
    outputs = block_outputs(backbone)
    if len(outputs) == 1:
        return message + f"its one block output is {outputs[0]}"
    return message + f"its {len(outputs)} block outputs include {', '.join(_spread(outputs))}"


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


@functools.lru_cache(maxsize=8)
def _layer_names(backbone: str, alpha: float, image_size: int) -> tuple[str, ...]:
    """The layer names of the backbone so configured. Cached, since building one takes a
    second or two: the tests run many stages in one process, each checking its params."""
    params = {"backbone": backbone, "alpha": alpha, "image_size": image_size}
    return tuple(layer.name for layer in build_backbone(params).layers)


def check_architecture(params: dict[str, Any]) -> None:
    """Fail at once on a bad backbone name, image size, alpha or layer name (seconds: no
    weights are loaded), so no stage downloads or trains for a configuration that cannot work."""
    names = _layer_names(params["backbone"], params["alpha"], params["image_size"])
    chosen = [names[-1] if params[key] == LAST_LAYER else params[key]
              for key in ("unfreeze_after", "cut_layer")]
    if all(name in names for name in chosen) and names.index(chosen[0]) <= names.index(chosen[1]):
        return
    check_layers(build_backbone(params), params)  # says what is wrong, with the names to use


def layer_name(backbone: keras.Model, params: dict[str, Any], key: str) -> str:
    """The backbone layer that the layer param `key` names (`last`: its output layer)."""
    return backbone.layers[-1].name if params[key] == LAST_LAYER else params[key]


def check_layers(backbone: keras.Model, params: dict[str, Any],
                 keys: tuple[str, ...] = ("unfreeze_after", "cut_layer")) -> None:
    """Fail at once, with valid names, if a layer param names no layer of the backbone."""
    names = [layer.name for layer in backbone.layers]
    for key in keys:
        if layer_name(backbone, params, key) not in names:
            raise StageError(_unknown_layer(backbone, params, key))
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
