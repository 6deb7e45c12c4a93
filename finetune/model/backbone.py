"""The backbone: any keras.applications model by name, its layer params checked before
anything slow runs, its pretrained weights loaded whole or not at all."""

from __future__ import annotations

import difflib
import inspect
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


def _closest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    return ", ".join(close) if close else ", ".join(candidates[:5]) + ", ..."


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
