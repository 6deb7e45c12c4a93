"""finetune.dataset.pillow_decode, the ONNX predict's TensorFlow-free reader: its resize is
TensorFlow's to the bit, a lossless image decodes to the pipeline's pixels exactly, and a
bad file is a one-line reason, as finetune.dataset.decode gives."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from finetune.dataset import decode, pillow_decode
from tests.support.photos import cut_off_jpegs


@pytest.mark.parametrize(("height", "width", "size"), [
    (1, 1, 7), (3, 640, 96), (480, 353, 150), (299, 299, 299), (75, 1003, 224), (50, 60, 128)])
def test_resize_is_tensorflows_to_the_bit(height, width, size):
    # Down, up, equal, one pixel, long thin: the float32 results themselves, not only the
    # rounded pixels, so the half-to-even rounding after it sees the same values.
    image = np.random.default_rng(size).integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = tf.image.resize(image, (size, size)).numpy()
    assert np.array_equal(pillow_decode.resize_bilinear(image, size), expected)


def png_bytes(pixels: np.ndarray, mode: str) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(stream, format="PNG")
    return stream.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_a_png_decodes_to_the_pipelines_pixels(sample_dir, mode):
    with Image.open(sample_dir / "test" / "3.jpg") as photo:
        data = png_bytes(np.asarray(photo.convert("RGB")), mode)
    for size in (32, 96, 150):
        ours = pillow_decode.decode_pixels(data, size)
        assert ours.dtype == np.float32
        assert np.array_equal(ours, decode.decode_pixels(data, size))


def test_a_bad_file_is_a_one_line_reason():
    assert pillow_decode.decode_pixels(b"", 32) == "empty file"
    for data in [b"not an image at all", *cut_off_jpegs().values()]:
        reason = pillow_decode.decode_pixels(data, 32)
        assert isinstance(reason, str) and reason and "\n" not in reason
