"""The backbone: any keras.applications model by name, its layer params checked before
anything slow runs, its pretrained weights loaded whole or not at all."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Layout:
    """Where a backbone can be split, read from its config (tenths of a second for a large
    backbone). `skip_end[name]`: the position of the first operation that takes a tensor
    from before the layer `name` while lying past it (len(operations) if none): the layers
    above `name` take only its output as long as they stop below that position."""

    names: tuple[str, ...]  # the layers (not the bare ops of the config), in order
    position: dict[str, int]  # each layer's position in the config's topological order
    kind: dict[str, str]  # each layer's class name
    skip_end: dict[str, int]

    def splits_at(self, unfreeze_after: str, cut_layer: str) -> bool:
        """True if the part from `unfreeze_after` to `cut_layer` takes only
        `unfreeze_after`'s output: no connection skips past it to `cut_layer` or below
        (one going past only to layers above cut_layer does not count: they are dropped)."""
        return self.skip_end[unfreeze_after] > self.position[cut_layer]


def layout(backbone: keras.Model) -> Layout:
    """The backbone's Layout, from its config."""
    operations = backbone.get_config()["layers"]  # in topological order
    position = {operation["name"]: index for index, operation in enumerate(operations)}
    # For each operation, the first later one taking a tensor from before it: an edge from
    # i to j sets it for every operation strictly between i and j.
    skip_end = [len(operations)] * len(operations)
    for index, operation in enumerate(operations):
        for source in _inputs(operation["inbound_nodes"]):
            for between in range(position[source] + 1, index):
                skip_end[between] = min(skip_end[between], index)
    names = tuple(layer.name for layer in backbone.layers)
    return Layout(names, {name: position[name] for name in names},
                  {name: operations[position[name]]["class_name"] for name in names},
                  {name: skip_end[position[name]] for name in names})


def block_outputs(backbone: keras.Model | Layout) -> list[str]:
    """Layers to cut at: those whose output is all that flows on (no connection skips
    past them, so the network below is whole) and that end a block: MobileNet's
    conv_pw_1_relu, ResNet's conv2_block1_out (not the Add just before it), InceptionV3's
    mixed0. Where none ends a block (VGG's activations are in its convolutions), all of
    the first kind. Read from the model's config: for messages only."""
    plan = backbone if isinstance(backbone, Layout) else layout(backbone)
    end = max(plan.position.values()) + 1
    cuts = [name for name in plan.names  # cut at an InputLayer, nothing is left
            if plan.skip_end[name] >= end and plan.kind[name] != "InputLayer"]
    ends = [name for name in cuts if plan.kind[name] in BLOCK_ENDS
            and not _followed_by_a_cut_block_end(plan, name, cuts)]
    return ends or cuts


def _followed_by_a_cut_block_end(plan: Layout, name: str, cuts: list[str]) -> bool:
    following = plan.position[name] + 1
    return any(plan.position[other] == following and plan.kind[other] in BLOCK_ENDS
               for other in cuts)


def _spread(names: list[str]) -> list[str]:
    """The first and last of `names` and evenly spaced ones between, SHOWN at most and
    fewer if they would not fit SHOWN_CHARS."""
    for count in range(min(SHOWN, len(names)), 1, -1):
        picked = [names[round(i * (len(names) - 1) / (count - 1))] for i in range(count)]
        if len(", ".join(picked)) <= SHOWN_CHARS:
            return picked
    return [names[0], names[-1]] if len(names) > 1 else names


def _unknown_layer(plan: Layout, params: dict[str, Any], key: str) -> str:
    """Why the layer param `key` fails: the backbone named as params.yaml names it (not
    Keras's 'mobilenet_0.25_224'), and the valid names closest to the value or, where
    none is close, the backbone's block outputs."""
    value = params[key]
    message = (f"{key}: {params['backbone']} has no layer '{value}' ('{LAST_LAYER}' names "
               "its output); ")
    close = difflib.get_close_matches(value, list(plan.names), n=5, cutoff=0.5)
    if close:
        return message + f"closest: {', '.join(close)}"
    outputs = block_outputs(plan)
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
def _layout(backbone: str, alpha: float, image_size: int) -> Layout:
    """The Layout of the backbone so configured. Cached, since building one takes a second
    or two: the tests run many stages in one process, each checking its params."""
    params = {"backbone": backbone, "alpha": alpha, "image_size": image_size}
    return layout(build_backbone(params))


def check_architecture(params: dict[str, Any]) -> None:
    """Fail at once on a bad backbone name, image size, alpha, layer name or split (seconds:
    no weights are loaded), so no stage downloads or trains for a configuration that cannot
    work."""
    check_split(_layout(params["backbone"], params["alpha"], params["image_size"]), params)


def checked_backbone(params: dict[str, Any]) -> keras.Model:
    """build_backbone, its layer params checked on it (check_layers): check_architecture
    for a caller that goes on to use the backbone (train), which would otherwise build it
    twice (seconds for InceptionV3)."""
    backbone = build_backbone(params)
    check_layers(backbone, params)
    return backbone


def layer_name(backbone: keras.Model | Layout, params: dict[str, Any], key: str) -> str:
    """The backbone layer that the layer param `key` names (`last`: its output layer)."""
    if params[key] != LAST_LAYER:
        return params[key]
    return backbone.names[-1] if isinstance(backbone, Layout) else backbone.layers[-1].name


def check_layers(backbone: keras.Model, params: dict[str, Any],
                 keys: tuple[str, ...] = ("unfreeze_after", "cut_layer")) -> None:
    """check_split on a backbone already built."""
    check_split(layout(backbone), params, keys)


def check_split(plan: Layout, params: dict[str, Any],
                keys: tuple[str, ...] = ("unfreeze_after", "cut_layer")) -> None:
    """Fail at once, with valid names, if a layer param names no layer of the backbone, or
    (with cut_layer) if the layers from unfreeze_after to cut_layer cannot run on
    unfreeze_after's output alone."""
    for key in keys:
        if layer_name(plan, params, key) not in plan.position:
            raise StageError(_unknown_layer(plan, params, key))
    if "cut_layer" not in keys:
        return
    unfreeze_after, cut_layer = (layer_name(plan, params, key)
                                 for key in ("unfreeze_after", "cut_layer"))
    if plan.names.index(unfreeze_after) > plan.names.index(cut_layer):
        raise StageError(f"unfreeze_after: '{params['unfreeze_after']}' comes after cut_layer "
                         f"'{params['cut_layer']}'; it must be at or below it")
    if not plan.splits_at(unfreeze_after, cut_layer):
        raise StageError(_inside_a_block(plan, params, unfreeze_after, cut_layer))


def _inside_a_block(plan: Layout, params: dict[str, Any], unfreeze_after: str,
                    cut_layer: str) -> str:
    """Why `unfreeze_after` cannot split the network below `cut_layer`, with the nearest
    layers before and after it that can (block outputs where there are some)."""
    here, cut = plan.position[unfreeze_after], plan.position[cut_layer]
    valid = [name for name in plan.names if plan.position[name] <= cut
             and plan.kind[name] != "InputLayer" and plan.splits_at(name, cut_layer)]
    ends = [name for name in valid if plan.kind[name] in BLOCK_ENDS]
    before = ([name for name in ends if plan.position[name] < here]
              or [name for name in valid if plan.position[name] < here])
    after = ([name for name in ends if plan.position[name] > here]
             or [name for name in valid if plan.position[name] > here])
    # Of a run of block ends (ResNet's Add, then its ReLU), the last: the block's output.
    nearest = [f"{before[-1]} (before it)"] if before else []
    if after:
        last = after[0]
        for name in after[1:]:
            if plan.position[name] != plan.position[last] + 1:
                break
            last = name
        nearest.append(f"{last} (after it)")
    return (f"unfreeze_after: {params['backbone']}'s '{params['unfreeze_after']}' is inside "
            f"a block: a connection skips past it to a layer at or below cut_layer "
            f"'{params['cut_layer']}', so the fine-tuned part cannot start from its output "
            f"alone; the nearest layers it can be: {', '.join(nearest)}")


def load_backbone_weights(backbone: keras.Model, weights_file: Path) -> None:
    """Load pretrained weights, failing on any mismatch rather than loading part of them."""
    try:
        backbone.load_weights(weights_file)
    except (ValueError, OSError, KeyError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise StageError(f"{weights_file} does not fit {backbone.name} as configured "
                         f"(check backbone, alpha and weights_urls): {reason}") from None
