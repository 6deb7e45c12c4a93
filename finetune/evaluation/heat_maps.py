"""Grad-CAM heat maps: where in a photo the saved model found the evidence for a class.

Grad-CAM (Selvaraju et al., 2017) on the last convolutional feature map before the head
(the head's input: trainable_base's output, or frozen_base's when nothing is fine-tuned;
a 4-D map for every backbone, which are built without top or pooling): the gradients of
the class's score, its logit (a sigmoid's single logit for class 1, its negation for
class 0), with respect to that map; each channel weighted by the spatial mean of its
gradients; the ReLU of the weighted sum, normalised to [0, 1] and resized to the image.
The logit is the Temperature layer's input in a calibrated model (a temperature only
scales it, which the normalisation undoes), and the output Dense layer's pre-activation
otherwise. Used by evaluate's mistakes grid and `predict --explain`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from finetune.core.errors import StageError

ALPHA = 0.45  # the heat map's weight in an overlay: the photo stays readable under it
COLORMAP = "jet"  # blue (no evidence) to red (the most): Grad-CAM's usual colours
TITLE = "heat map: Grad-CAM of the predicted class"
# `predict --explain`'s PNG: the photo PNG_WIDTH pixels wide (its own aspect) under a
# band of TITLE_HEIGHT pixels for the title.
PNG_WIDTH = 400
TITLE_HEIGHT = 40
DPI = 100


def grad_cam(model: Any, images: np.ndarray, explained: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(heat maps, classes): a float32 map in [0, 1] at the images' size for each of a batch
    of raw 0-255 pixels (decode_pixels's, at the model's image size), of the class in
    `explained` (an index per image), or of the predicted one where it is None."""
    import tensorflow as tf

    images = np.asarray(images, dtype=np.float32)
    if not len(images):
        return np.zeros(images.shape[:3], np.float32), np.zeros(0, np.int64)
    feature_map = head_input(model, images)
    if len(feature_map.shape) != 4:
        raise StageError(f"{model.name}'s head takes input of shape {feature_map.shape}, "
                         "not a convolutional feature map: no heat map")
    with tf.GradientTape() as tape:
        tape.watch(feature_map)
        logits = tf.cast(head_logits(model.get_layer("head"), feature_map), tf.float32)
        if explained is None:
            explained = predicted_classes(logits.numpy())
        # Images do not interact (BatchNormalization in inference mode): the gradient of
        # the sum is each image's own.
        score = tf.reduce_sum(class_scores(logits, explained))
    gradients = tf.cast(tape.gradient(score, feature_map), tf.float32)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(feature_map, tf.float32), axis=-1))
    cam = tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0]
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    # No positive evidence anywhere: an empty (all-zero) map, not a division by zero.
    maps = tf.where(peak > 0, cam / tf.where(peak > 0, peak, 1.0), 0.0)
    return maps.numpy(), np.asarray(explained, dtype=np.int64)


def head_input(model: Any, images: np.ndarray) -> Any:
    """The feature map the head takes: preprocessing, frozen_base and trainable_base (if
    any) on the images. Augmentation is left out: it changes nothing outside training."""
    x = model.get_layer("frozen_base")(model.get_layer("preprocessing")(images),
                                       training=False)
    if "trainable_base" in [layer.name for layer in model.layers]:
        x = model.get_layer("trainable_base")(x, training=False)
    return x


def head_logits(head: Any, feature_map: Any) -> Any:
    """The head's logits: a calibrated head's Temperature layer's input, or the output
    Dense layer's before its sigmoid or softmax."""
    from keras import ops

    from finetune.model.layers import Temperature

    *body, last = head.layers
    x = feature_map
    for layer in body:
        x = layer(x, training=False)  # Dropout off
    if isinstance(last, Temperature):
        return x  # the `logits` Dense layer's output (finetune.model.assembly.with_temperature)
    x = ops.matmul(ops.cast(x, last.kernel.dtype), last.kernel)
    return x + last.bias if last.use_bias else x


def predicted_classes(logits: np.ndarray) -> np.ndarray:
    """The class the model predicts from its logits: as class_probabilities's argmax does
    (a sigmoid's P(class 1) = 0.5 exactly, logit 0, is class 0)."""
    if logits.shape[-1] == 1:
        return (logits[:, 0] > 0).astype(np.int64)
    return logits.argmax(axis=-1)


def class_scores(logits: Any, explained: np.ndarray) -> Any:
    """Each image's score for its class: the logit of a softmax's class; a sigmoid's logit
    for class 1 and its negation for class 0 (the evidence for "not class 1")."""
    import tensorflow as tf

    explained = tf.constant(np.asarray(explained, dtype=np.int64))
    if logits.shape[-1] == 1:
        return tf.where(explained == 1, logits[:, 0], -logits[:, 0])
    return tf.gather(logits, explained, axis=1, batch_dims=1)


def photo_heat_maps(model: Any, photos: list[bytes], names: list[str], explained: np.ndarray
                    ) -> np.ndarray:
    """grad_cam's maps of encoded photos (named `names` in errors), decoded as every stage
    decodes them (decode_pixels) at the model's image size."""
    from finetune.dataset.decode import decode_pixels

    size = int(model.input_shape[1])
    images = []
    for photo, name in zip(photos, names, strict=True):
        pixels = decode_pixels(photo, size)
        if isinstance(pixels, str):
            raise StageError(f"{name}: {pixels}: run `dvc repro -f split_classes`")
        images.append(pixels)
    return grad_cam(model, np.stack(images) if images else np.zeros((0, size, size, 3)),
                    explained)[0]


def read_photo(photo: bytes | str | Path) -> np.ndarray:
    """A photo (its encoded bytes, or its file) as uint8 RGB pixels at its own size
    (grayscale and palette images too)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(photo) if isinstance(photo, bytes) else photo) as image:
        return np.asarray(image.convert("RGB"))


def overlay(photo: np.ndarray, heat_map: np.ndarray, alpha: float = ALPHA,
            colormap: str = COLORMAP) -> np.ndarray:
    """The photo (uint8 RGB) with the heat map (values in [0, 1], any size: stretched
    bilinearly to the photo's, as the model's input was stretched from it) blended over
    it in the colormap's colours: uint8 RGB at the photo's size."""
    import matplotlib
    from PIL import Image

    height, width = photo.shape[:2]
    stretched = np.asarray(Image.fromarray(np.asarray(heat_map, np.float32), mode="F")
                           .resize((width, height), Image.Resampling.BILINEAR))
    colours = matplotlib.colormaps[colormap](np.clip(stretched, 0, 1))[..., :3] * 255
    blended = (1 - alpha) * photo.astype(np.float32) + alpha * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def png_size(photo_width: int, photo_height: int) -> tuple[int, int]:
    """heat_map_figure's size in pixels for a photo of this size: the photo scaled to
    PNG_WIDTH, its aspect kept, and the title's band."""
    return PNG_WIDTH, max(1, round(PNG_WIDTH * photo_height / photo_width)) + TITLE_HEIGHT


def heat_map_figure(photo_file: Path, heat_map: np.ndarray, title: str) -> Any:
    """`predict --explain`'s figure: the photo with its heat map overlaid, under a title;
    png_size's pixels at DPI."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    photo = read_photo(photo_file)
    width, height = png_size(photo.shape[1], photo.shape[0])
    # Agg truncates the size in pixels: half a pixel more keeps float error from losing one.
    figure = plt.figure(figsize=((width + 0.5) / DPI, (height + 0.5) / DPI), dpi=DPI)
    band = TITLE_HEIGHT / height
    axis = figure.add_axes((0, 0, 1, 1 - band))
    axis.imshow(overlay(photo, heat_map), aspect="auto")  # the axes has the photo's aspect
    axis.axis("off")
    figure.text(0.5, 1 - band / 2, f"{title}\n{TITLE}", ha="center", va="center", fontsize=9)
    return figure


def save_figure(figure: Any, path: Path) -> None:
    """heat_map_figure's figure as a PNG (png_size's pixels), written atomically."""
    import matplotlib.pyplot as plt

    from finetune.core.atomic import atomic_output

    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)
    plt.close(figure)
