"""Reading images without TensorFlow, for the ONNX predict (finetune.model.onnx_runtime):
Pillow decodes, and NumPy resizes exactly as the pipeline does (finetune.dataset.decode:
`tf.image.resize`, bilinear with half-pixel centres and no antialiasing, rounded half to
even and saturated to uint8).

The resize is the same to the bit (tests/unit/dataset/test_pillow_decode.py). The
decoders are not: TensorFlow decodes a JPEG with libjpeg's fast integer IDCT, Pillow with
the accurate one, so a JPEG's pixels may differ by a few levels (docs/deploy.md gives
what that moves on the shared photos); a PNG, GIF or BMP decodes the same.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Pillow's refusals of a bad file: not an image, truncated, a decompression bomb.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def resize_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lower and upper source index and the weight of the upper one for each output
    index, in float32 as TensorFlow's ResizeBilinear computes them (half-pixel centres)."""
    scale = np.float32(in_size) / np.float32(out_size)
    source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(source)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(source).astype(np.int64), in_size - 1)
    return lower, upper, (source - floor).astype(np.float32)


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """An HxWxC image resized to size x size as `tf.image.resize(image, (size, size))`
    does (float32, the same operations in the same order)."""
    pixels = np.asarray(image, dtype=np.float32)
    rows, row_upper, row_weight = resize_weights(pixels.shape[0], size)
    cols, col_upper, col_weight = resize_weights(pixels.shape[1], size)
    col_weight = col_weight[None, :, None]
    top, bottom = pixels[rows], pixels[row_upper]
    top = top[:, cols] + (top[:, col_upper] - top[:, cols]) * col_weight
    bottom = bottom[:, cols] + (bottom[:, col_upper] - bottom[:, cols]) * col_weight
    return top + (bottom - top) * row_weight[:, None, None]


def decode_rgb(data: bytes) -> np.ndarray:
    """The first frame of an image file as uint8 RGB (grayscale repeated, alpha dropped:
    what `tf.io.decode_image(..., channels=3)` gives); raises one of DECODE_ERRORS."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def decode_pixels(data: bytes, image_size: int) -> np.ndarray | str:
    """`data` decoded and resized as finetune.dataset.decode.decode_pixels does, as float32
    0-255 pixels (what the model takes), or the reason it cannot be, in one line."""
    if not data:
        return "empty file"
    try:
        image = decode_rgb(data)
    except DECODE_ERRORS as error:
        return " ".join(str(error).split()) or type(error).__name__
    resized = np.round(resize_bilinear(image, image_size))  # half to even, as tf.round
    return np.clip(resized, 0, 255).astype(np.float32)  # saturate_cast to uint8's range
