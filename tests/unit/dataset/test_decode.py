"""finetune.dataset.decode: decoding reports its progress in lines, without a terminal."""

from __future__ import annotations

from finetune.dataset.decode import load_images


def test_decoding_reports_progress_without_a_terminal(capfd, sample_dir):
    photos = sorted(str(path) for path in (sample_dir / "train").glob("*.jpg"))
    pixels = load_images(photos, 32, "train: decoding training images")
    assert pixels.shape == (len(photos), 32, 32, 3)
    err = capfd.readouterr().err
    assert f"train: decoding training images: {len(photos)}/{len(photos)} images (100%" in err
