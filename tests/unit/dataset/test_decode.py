"""finetune.dataset.decode: decoding reports its progress in lines, without a terminal, and
a bad image in its own words, without what TensorFlow's decoders print about it."""

from __future__ import annotations

import numpy as np
import pytest

from finetune.core.errors import StageError
from finetune.dataset.decode import (
    DECODER_CHATTER,
    decode_batches,
    decode_error,
    decode_pixels,
    load_images,
)
from tests.support.photos import cut_off_jpegs


def test_decoding_reports_progress_without_a_terminal(capfd, sample_dir):
    photos = {path.name: path.read_bytes()
              for path in sorted((sample_dir / "train").glob("*.jpg"))}
    names = list(photos)
    pixels = load_images(photos.__getitem__, names, 32, "train: decoding training images")
    assert pixels.shape == (len(photos), 32, 32, 3)
    err = capfd.readouterr().err
    assert f"train: decoding training images: {len(photos)}/{len(photos)} images (100%" in err
    # In the order of `names`, whichever order the images decode in.
    for index in (0, len(names) - 1):
        np.testing.assert_array_equal(pixels[index], decode_pixels(photos[names[index]], 32))
    backwards = load_images(photos.__getitem__, names[::-1], 32, "again")
    np.testing.assert_array_equal(backwards, pixels[::-1])


def test_an_image_that_does_not_decode_is_refused_by_name(sample_dir):
    # split_classes listed only images that decode: one that does not now was changed.
    good = (sample_dir / "test" / "1.jpg").read_bytes()
    images = {"cat/cat.0.jpg": good, "dog/dog.0.jpg": b"not an image", "dog/dog.1.jpg": good}
    with pytest.raises(StageError, match=r"^dog/dog\.0\.jpg cannot be decoded \(.+\): "
                                         r"run `dvc repro -f split_classes`$"):
        load_images(images.__getitem__, list(images), 32, "train: decoding training images")


def test_a_cut_off_jpeg_is_reported_without_the_decoders_chatter(capfd, sample_dir):
    # TensorFlow's decoder logs "E0000 ... jpeg_mem.cc:331] Premature end of JPEG data"
    # and libjpeg "Improper call to JPEG library in state 201" on fd 2 for these; the
    # reason is what we report, so neither may reach the terminal, on any path.
    good = (sample_dir / "test" / "1.jpg").read_bytes()
    for name, data in cut_off_jpegs().items():
        reason = decode_error(data)
        assert "JPEG" in reason, name
        assert decode_pixels(data, 32) == reason, name
        failures: dict[int, str] = {}
        batches = list(decode_batches([good, data, good].__getitem__, 3, 32, 2, failures))
        assert [list(indices) for indices, _ in batches] == [[0, 2]]
        assert failures == {1: reason}
    assert decode_pixels(good, 32).shape == (32, 32, 3)
    # Nothing about them ("jpeg" in every such line). Not err == "": where a test imported
    # TensorFlow before finetune's quiet start, its own INFO lines show.
    assert "jpeg" not in capfd.readouterr().err.lower()


@pytest.mark.parametrize(("line", "dropped"), [
    ("E0000 00:00:1796551848.299087   11017 jpeg_mem.cc:331] Premature end of JPEG data. "
     "Stopped at line 0/33", True),
    ("Improper call to JPEG library in state 201", True),
    ("Corrupt JPEG data: 14 extraneous bytes before marker 0xd9", True),  # and decoded
    ("Input file read error", True),  # a JPEG short of its last 2 bytes
    ("W0000 00:00:1796553801.365039   25505 local_rendezvous.cc:412] Local rendezvous is "
     "aborting with status: INVALID_ARGUMENT: jpeg::Uncompress failed.", True),  # the error
    # Not the decoders' chatter: a fatal line, another source's error, our own lines.
    ("F0000 00:00:1796551848.299087   11017 jpeg_mem.cc:331] Check failed: x", False),
    ("E0000 00:00:1796552211.567799   14767 cuda_platform.cc:52] failed call to cuInit", False),
    ("predict: 2 of 3 file(s) could not be read as images", False),
    ("Traceback (most recent call last):", False),
])
def test_only_the_decoders_chatter_is_dropped(line, dropped):
    assert bool(DECODER_CHATTER.match(line)) is dropped
