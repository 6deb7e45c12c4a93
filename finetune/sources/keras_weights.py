"""`weights_urls: keras` and `weights_hash: keras`: the file keras.applications publishes.

"keras" stands for the notop ImageNet weight file that keras.applications itself
downloads for the configured backbone, alpha and image size, and for the checksum
Keras checks it against. Both are read from the installed Keras, never from a table
typed here, so that `dvc exp run -S backbone=EfficientNetB0` needs no lookup by hand:
the backbone is built with weights="imagenet" while Keras's `get_file` is replaced by
a function that raises with its arguments. Every keras.applications module calls
`file_utils.get_file(...)` through the module attribute, so the stand-in sees the
file name, URL and checksum of every backbone, and nothing is downloaded.

TensorFlow is imported only when a "keras" value is used: explicit URLs and an
explicit hash resolve to themselves.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import sys
import unittest.mock
import warnings
from dataclasses import dataclass
from typing import Any

from finetune.core.errors import StageError
from finetune.core.params import KERAS

# Mirrors tried before Keras's own URL, by Keras's file name: the one fact kept by hand.
# The reference recipe downloads InceptionV3's notop file from Google's mledu-datasets
# bucket; it stays first so that the default params fetch the recipe's file from the
# recipe's place (the same file as Keras's: the same md5), with Keras's URL as fallback.
MIRRORS = {
    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5":
        "https://storage.googleapis.com/mledu-datasets/"
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


@dataclass(frozen=True)
class KerasFile:
    """A weight file as keras.applications asks get_file for it."""

    name: str
    url: str
    file_hash: str  # hex digest Keras checks, "" where it publishes none
    algorithm: str  # "md5" or "sha256", as Keras's get_file picks it


class _Requested(Exception):
    """Raised by the stand-in for get_file, carrying the file Keras asked for: not an
    error, the way out of the constructor before it downloads anything."""

    def __init__(self, requested: KerasFile) -> None:
        super().__init__(requested.name)
        self.requested = requested


def published_weights(params: dict[str, Any]) -> tuple[list[str], str]:
    """(URLs to try in order, hash spec "algo:hex" or "") for params.yaml's weights_urls and
    weights_hash, with "keras" resolved from keras.applications for the configured backbone.
    With explicit URLs and `weights_hash: keras`, the URLs are mirrors of Keras's file."""
    urls, hash_spec = params["weights_urls"], params["weights_hash"]
    if KERAS not in (urls, hash_spec):
        return list(urls), hash_spec
    keras_file = requested_file(params)
    if urls == KERAS:
        urls = [url for url in (MIRRORS.get(keras_file.name), keras_file.url) if url]
    if hash_spec == KERAS:
        hash_spec = keras_hash_spec(keras_file)
    return list(urls), hash_spec


def keras_hash_spec(keras_file: KerasFile) -> str:
    """"algo:hex" of Keras's checksum, or "" (no check, said on stderr) where it has none."""
    if not keras_file.file_hash:
        print(f"fetch_weights: Keras publishes no checksum for {keras_file.name}; not checking "
              "it (to pin it, set weights_hash: sha256:<the digest printed once it is written>)",
              file=sys.stderr)
        return ""
    return f"{keras_file.algorithm}:{keras_file.file_hash.lower()}"


def requested_file(params: dict[str, Any]) -> KerasFile:
    """The notop ImageNet file keras.applications asks get_file for, for this backbone,
    alpha and image size: the backbone is built (seconds) and nothing is downloaded."""
    from keras.src.utils import file_utils

    from finetune.model.backbone import backbone_class

    constructor = backbone_class(params["backbone"])
    options = {}
    if "alpha" in inspect.signature(constructor).parameters:  # as build_backbone
        options["alpha"] = params["alpha"]
    size = params["image_size"]
    noise = io.StringIO()
    try:
        with (
            unittest.mock.patch.object(file_utils, "get_file", _stand_in(file_utils)),
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(noise),
            contextlib.redirect_stderr(noise),
        ):
            warnings.simplefilter("always")
            constructor(include_top=False, weights="imagenet", input_shape=(size, size, 3),
                        **options)
    except _Requested as request:
        _report_warnings(constructor.__name__, size, request.requested, caught)
        return request.requested
    except ValueError as error:
        raise _rejected(constructor.__name__, size, options.get("alpha"), error) from None
    raise StageError(f"backbone: keras.applications.{constructor.__name__} downloads no weight "
                     "file for weights='imagenet'; set weights_urls to your own file")


def _stand_in(file_utils: Any) -> Any:
    """A get_file that raises _Requested with what it was asked for, read as Keras reads it."""
    signature = inspect.signature(file_utils.get_file)

    def get_file(*args: Any, **kwargs: Any) -> str:
        asked = signature.bind(*args, **kwargs)
        asked.apply_defaults()
        origin, fname = asked.arguments["origin"], asked.arguments["fname"]
        file_hash, algorithm = asked.arguments["file_hash"], asked.arguments["hash_algorithm"]
        if asked.arguments["md5_hash"] and not file_hash:  # Keras's deprecated spelling
            file_hash, algorithm = asked.arguments["md5_hash"], "md5"
        raise _Requested(KerasFile(
            name=fname or origin.rsplit("/", 1)[-1],
            url=origin,
            file_hash=file_hash or "",
            algorithm=file_utils.resolve_hasher(algorithm, file_hash).name,
        ))

    return get_file


def _report_warnings(backbone: str, size: int, keras_file: KerasFile,
                     caught: list[warnings.WarningMessage]) -> None:
    """Keras's warnings while picking the file (MobileNet at a size it has no file for falls
    back to the 224 px one), as one line each of ours instead of its multi-line output."""
    for text in dict.fromkeys(" ".join(str(w.message).split()) for w in caught):
        print(f"fetch_weights: {backbone} at {size} px loads {keras_file.name}; Keras warns: "
              f"{text}", file=sys.stderr)


def _rejected(backbone: str, size: int, alpha: float | None, error: ValueError) -> StageError:
    """Keras's refusal of weights="imagenet" for this configuration, as what to change
    (`alpha` is None for a backbone that takes none)."""
    reason = " ".join(str(error).split()) or type(error).__name__
    if alpha is not None and "alpha" in reason.lower():
        # Keras's message lists the alphas it has weights for, each in backquotes.
        choices = list(dict.fromkeys(re.findall(r"`(\d+(?:\.\d+)?)`", reason)))
        accepted = f"use one of {', '.join(choices)}" if choices else f"Keras: {reason}; change it"
        return StageError(f"alpha: Keras publishes no ImageNet weights for {backbone} alpha "
                          f"{alpha}; {accepted} or set weights_urls to your own file")
    what, keys = (f"{size} px", "image_size") if alpha is None else (
        f"{size} px, alpha {alpha}", "image_size/alpha")
    return StageError(f"{keys}: Keras publishes no ImageNet weights for {backbone} at {what} "
                      f"({reason}); change {keys} or set weights_urls to your own file")
