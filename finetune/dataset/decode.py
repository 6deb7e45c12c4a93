"""Reading images: one decoder for every stage, so that split_classes keeps exactly
the images that train, evaluate, submit and predict can read.

A bad image is expected (a cut-off download, a corrupt file in a data set): each function
here reports it in its own words, and keeps what TensorFlow's decoders print about it
on stderr besides (DECODER_CHATTER) off the terminal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import numpy as np
import tensorflow as tf

from finetune.core.errors import StageError
from finetune.core.progress import Progress
from finetune.core.quiet_start import filtered_stderr
from finetune.dataset.image_files import READ_ERRORS

DECODE_BATCH = 256  # images per progress update

# What TensorFlow's decoders write to file descriptor 2 about a bad image, besides the
# error they raise (our reason): log lines of its decoding code, such as "E0000
# 00:00:1796551848.299087   11017 jpeg_mem.cc:331] Premature end of JPEG data. Stopped at
# line 0/33", which TF_CPP_MIN_LOG_LEVEL=2 lets through; with warnings shown, the eager
# runtime's echo of the error raised ("W0000 ... local_rendezvous.cc:412] Local rendezvous
# is aborting with status: INVALID_ARGUMENT: jpeg::Uncompress failed. ..."); and libjpeg's
# own messages, such as "Improper call to JPEG library in state 201" or, for an image
# that decodes all the same, "Corrupt JPEG data: 14 extraneous bytes before marker 0xd9".
# Only these are dropped: anything else written meanwhile (a fatal log line, another
# warning) is shown.
DECODER_CHATTER = re.compile(
    r"[IWE]\d{4} \S+ +\d+ (jpeg_mem|jpeg_handle|png_io|gif_io|decode_image_op)\.cc:\d+\] "
    r"|W\d{4} \S+ +\d+ local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: "
    r"|(Corrupt JPEG data|Premature end of JPEG file|Improper call to JPEG library"
    r"|Invalid JPEG file structure|Not a JPEG file|Unsupported (JPEG|marker)|Bogus "
    r"|(Missing )?Huffman |Quantization table|Input file read error|Empty JPEG image"
    r"|JPEG datastream contains no image|Warning: unknown JFIF|Inconsistent progression"
    r"|Invalid (SOS|component ID|progressive)|Unknown Adobe|Sampling factors too large"
    r"|Maximum supported image dimension|Too many color components|Image too wide"
    r"|DCT coefficient out of range|Didn't expect more than one scan)")


def quiet_decoding() -> AbstractContextManager[Callable[[], None]]:
    """A block that decodes images with DECODER_CHATTER kept off stderr (see
    finetune.core.quiet_start.filtered_stderr)."""
    return filtered_stderr(DECODER_CHATTER)


def decode_image(data: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode JPEG/PNG/GIF/BMP bytes as RGB and resize them (bilinear, as
    image_dataset_from_directory does) to uint8 pixels, 4x smaller to cache than float32.
    The model takes these pixels as they are: its first layers do the preprocessing."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.saturate_cast(tf.round(tf.image.resize(image, (image_size, image_size))), tf.uint8)


def _failure_reason(error: tf.errors.OpError) -> str:
    """A decoding error's message as one short line."""
    # Drop TensorFlow's "{{function_node ...}}" prefix and " [Op:DecodeImage]" suffix.
    message = re.sub(r"\{\{.*?\}\}|\[Op:\w+\].*$", "", error.message or "").strip()
    return " ".join(message.split()) or "cannot be decoded"


def decode_error(data: bytes) -> str:
    """"" if `data` decodes as an image (what `decode_image` will do), else the reason it
    cannot, as one short line."""
    if not data:
        return "empty file"
    try:
        with quiet_decoding():
            tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.OpError as error:
        return _failure_reason(error)
    return ""


def decode_pixels(data: bytes, image_size: int) -> np.ndarray | str:
    """`data` decoded and resized as `decode_image` does, as float32 pixels (what the
    model takes), or the reason it cannot be (decode_error's); decoded once."""
    if not data:
        return "empty file"
    try:
        with quiet_decoding():
            return np.asarray(decode_image(data, image_size), dtype=np.float32)
    except tf.errors.OpError as error:
        return _failure_reason(error)


def load_images(read: Callable[[str], bytes], names: list[str], image_size: int, what: str
                ) -> np.ndarray:
    """Decode and resize every image (`read(name)`: its bytes) once, in parallel, into one
    uint8 array in the order of `names`, reporting progress on stderr as `what`.

    Epochs, validation and evaluation then reuse these pixels instead of decoding
    each JPEG again (decoding is about half the time of a naive run on 2 cores).
    20,000 images at 150 px take 1.35 GB. Every image must decode: split_classes listed
    only images that do.
    """
    images = np.zeros((len(names), image_size, image_size, 3), dtype=np.uint8)
    progress = Progress(what, len(names))
    failures: dict[int, str] = {}
    for indices, batch in decode_batches(lambda index: read(names[index]), len(names),
                                         image_size, DECODE_BATCH, failures):
        images[indices] = batch
        progress.update(len(indices))
    if failures:
        index, reason = next(iter(sorted(failures.items())))
        raise StageError(f"{names[index]} cannot be decoded ({reason}): "
                         "run `dvc repro -f split_classes`")
    return images


def decode_batches(read: Callable[[int], bytes], count: int, image_size: int, batch_size: int,
                   failures: dict[int, str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, uint8 images) batches of items 0 .. count - 1, read by `read(index)` in
    order and decoded in parallel. An item that cannot be read or decoded does not stop
    the others: it is left out of the batches, and `failures` says why, by index, once
    the batches are exhausted. Stderr is filtered (quiet_decoding) until the generator
    ends: iterate it in a `for` loop, which also closes it when the loop stops on an
    error."""

    def items() -> Iterator[tuple[int, bytes]]:
        for index in range(count):
            try:
                data = read(index)
            except READ_ERRORS as error:
                failures[index] = f"cannot read it: {error}"
                data = b""  # fails to decode, so it is dropped below
            yield index, data

    dataset = tf.data.Dataset.from_generator(items, output_signature=(
        tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.string)))
    dataset = dataset.map(lambda index, data: (index, decode_image(data, image_size)),
                          num_parallel_calls=tf.data.AUTOTUNE)
    # ignore_errors: a corrupt image is dropped here and found by its missing index (the
    # index travels with each image); the generator cannot raise without ending it all.
    dataset = dataset.ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE)
    decoded = np.zeros(count, dtype=bool)
    # tf.data decodes ahead in its own threads while the caller works on a batch, so the
    # filter is held for the whole loop (until the caller's `for` ends, with or without
    # an error); the lines written meanwhile (the caller's progress) are shown each batch.
    with quiet_decoding() as show:
        for indices, images in dataset.as_numpy_iterator():
            decoded[indices] = True
            show()
            yield indices, images
    for index in map(int, np.flatnonzero(~decoded)):
        if index not in failures:
            failures[index] = decode_error(read(index)) or "cannot be decoded"
