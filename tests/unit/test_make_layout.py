"""scripts/make_layout.py: the benchmark's synthetic photos, square or of real photos' sizes."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from scripts.make_layout import KAGGLE, KAGGLE_SIZES, draw_photo, make_layout


def sizes(folder: Path) -> list[tuple[int, int]]:
    return [Image.open(path).size for path in sorted(folder.rglob("*.jpg"))]


def test_photos_of_real_sizes_follow_the_table_and_stay_the_same(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "kaggle", 40, 10, seed=3, size=KAGGLE)
    found = sizes(layout)
    assert len(found) == 50
    assert set(found) <= set(KAGGLE_SIZES)
    assert len(set(found)) >= 8  # drawn across the table, not one size
    again = make_layout(tmp_path / "again", 40, 10, seed=3, size=KAGGLE)
    assert [path.read_bytes() for path in sorted(layout.rglob("*.jpg"))] == [
        path.read_bytes() for path in sorted(again.rglob("*.jpg"))]


def test_square_photos_by_default_of_any_size_asked(tmp_path: Path) -> None:
    assert set(sizes(make_layout(tmp_path / "square", 6, 2))) == {(200, 200)}
    assert Image.open(io.BytesIO(draw_photo("dog", 5, 0, 96))).size == (96, 96)


def test_the_table_has_real_photos_mean_size() -> None:
    widths, heights = zip(*KAGGLE_SIZES, strict=True)
    assert round(sum(widths) / len(widths)) == 402
    assert round(sum(heights) / len(heights)) == 358
