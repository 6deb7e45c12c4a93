"""Synthetic photos in the layout of Kaggle's Dogs vs. Cats data, for benchmarks.

    python -m scripts.make_layout FOLDER [--train 25000] [--test 12500] [--seed 0]
                                         [--size 200|kaggle]

writes FOLDER/train/cat.N.jpg and dog.N.jpg (half of --train each), FOLDER/test/N.jpg
(N = 1..--test) and FOLDER/sample_submission.csv: the unpacked layout that the
pipeline's `data_source` accepts. The defaults are the competition's sizes.

Each photo is a 200x200 JPEG (quality 85), or with `--size kaggle` a JPEG of one of
KAGGLE_SIZES (real Kaggle photos' sizes: 402x358 on average, as decoding costs at full
size), of a tinted, textured background with one shape (a cat: a dark disc on a warm
background; a dog: a light square on a cool one),
drawn from (seed, class, number) alone, so the same arguments give the same bytes
whatever the number of worker processes. Cheap (about 1 ms a photo), of the size of a
real photo at that resolution, and decodable by TensorFlow and Pillow alike: what a
benchmark needs, since it times the network, not what the photos show.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("cat", "dog")
BACKGROUNDS = {"cat": (200, 120, 60), "dog": (60, 110, 200)}  # warm, cool
STAMP = "layout.json"  # written last: a folder with it is complete, and says what it holds
CHUNK = 500  # photos per task handed to a worker process
# Real Kaggle photos' sizes (width, height): the 1,100 of ../shared's sample sorted by area
# in 20 equal groups, the middle photo of each. Their mean, 402x358, and mean area are the
# sample's; half the photos are 500 px on the long side, as the competition's mostly are.
KAGGLE_SIZES = ((154, 152), (249, 196), (299, 225), (257, 302), (375, 249), (287, 389),
                (287, 432), (291, 499), (421, 382), (499, 334), (499, 357), (500, 374),
                (500, 374), (500, 374), (499, 375), (499, 375), (443, 427), (499, 401),
                (500, 436), (486, 500))
KAGGLE = "kaggle"  # the `size` that draws KAGGLE_SIZES


def photo_size(label: str, number: int, seed: int, size: int | str) -> tuple[int, int]:
    """(width, height) of a photo: size x size, or one of KAGGLE_SIZES drawn from its own
    stream (so a square layout's photos stay what they were)."""
    if size != KAGGLE:
        return int(size), int(size)
    rng = np.random.default_rng([seed, CLASSES.index(label), number, 1])
    return KAGGLE_SIZES[rng.integers(len(KAGGLE_SIZES))]


def draw_photo(label: str, number: int, seed: int, size: int | str) -> bytes:
    """One JPEG, a function of its arguments alone."""
    width, height = photo_size(label, number, seed, size)
    rng = np.random.default_rng([seed, CLASSES.index(label), number])
    base = np.array(BACKGROUNDS[label]) + rng.integers(-40, 41, 3)
    # Coarse noise, enlarged: texture like a photo's, which makes JPEGs of realistic size
    # (flat colour would compress to almost nothing and make decoding unrealistically cheap).
    coarse = rng.normal(0, 25, (height // 8, width // 8, 3))
    texture = np.asarray(Image.fromarray(np.clip(128 + coarse, 0, 255).astype(np.uint8))
                         .resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    pixels = base + (texture - 128) + rng.normal(0, 6, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    extent = rng.uniform(0.3, 0.7) * min(width, height)
    x, y = rng.uniform(0, 1, 2) * (np.array([width, height]) - extent)
    draw = ImageDraw.Draw(image)
    if label == "cat":
        draw.ellipse((x, y, x + extent, y + extent), fill=(30, 20, 20))
    else:
        draw.rectangle((x, y, x + extent, y + extent), fill=(235, 235, 225))
    stream = io.BytesIO()
    image.save(stream, format="JPEG", quality=85)
    return stream.getvalue()


def write_photos(jobs: list[tuple[Path, str, int]], seed: int, size: int | str) -> int:
    """Draw and write (path, class, number) photos; runs in a worker process."""
    for path, label, number in jobs:
        path.write_bytes(draw_photo(label, number, seed, size))
    return len(jobs)


def photo_jobs(folder: Path, train: int, test: int) -> list[tuple[Path, str, int]]:
    """Every photo to draw: the training ones by class, then the test ones. Test photo N
    shows class N % 2, drawn with numbers past any training one's so it is a new photo."""
    cats = train // 2
    jobs = [(folder / "train" / f"cat.{n}.jpg", "cat", n) for n in range(cats)]
    jobs += [(folder / "train" / f"dog.{n}.jpg", "dog", n) for n in range(train - cats)]
    jobs += [(folder / "test" / f"{n}.jpg", CLASSES[n % 2], train + n) for n in range(1, test + 1)]
    return jobs


def make_layout(folder: Path, train: int, test: int, seed: int = 0,
                size: int | str = 200) -> Path:
    """Write the layout into `folder` (replaced), or keep it if it already holds exactly
    this one: drawing 37,500 photos takes minutes, and a benchmark reruns often."""
    wanted = {"train": train, "test": test, "seed": seed, "size": size}
    stamp = folder / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return folder
    if train < 2 or test < 1:
        raise ValueError("need at least 2 training photos (one per class) and 1 test photo")
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "train").mkdir(parents=True)
    (folder / "test").mkdir()
    jobs = photo_jobs(folder, train, test)
    chunks = [jobs[start:start + CHUNK] for start in range(0, len(jobs), CHUNK)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(write_photos, chunks, [seed] * len(chunks), [size] * len(chunks)))
    with (folder / "sample_submission.csv").open("w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["id", "label"])
        writer.writerows([number, 0.5] for number in range(1, test + 1))
    stamp.write_text(json.dumps(wanted) + "\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder to write (replaced)")
    parser.add_argument("--train", type=int, default=25_000,
                        help="training photos, half per class (default: 25,000, as Kaggle's)")
    parser.add_argument("--test", type=int, default=12_500,
                        help="unlabelled test photos (default: 12,500, as Kaggle's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawing (default: 0)")
    parser.add_argument("--size", default="200",
                        help=f"photo width and height in px, or '{KAGGLE}': real photos' sizes")
    args = parser.parse_args()
    size = args.size if args.size == KAGGLE else int(args.size)
    make_layout(args.folder, args.train, args.test, args.seed, size)
    print(f"make_layout: {args.train:,} training and {args.test:,} test photos in {args.folder}")


if __name__ == "__main__":
    main()
