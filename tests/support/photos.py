"""Photos drawn at test time whose classes can be learned, and the layouts they come in
(Kaggle's, class folders)."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import IO

CLASSES = ("cat", "dog")
# Background colour of each drawn class (see draw_photo); any other label is a bird.
BACKGROUNDS = {"cat": (200, 120, 60), "dog": (60, 110, 200), "bird": (70, 170, 70)}


def draw_photo(label: str, seed: int) -> bytes:
    """A small photo whose class can be learned: a cat is a dark disc on a warm
    background, a dog a light square on a cool one, anything else (a bird) a mid-grey
    triangle on green. Odd sizes, noise, and some grayscale images (shape still tells
    them apart) and PNG files, so decoding, resizing and RGB conversion are exercised;
    a few hundred bytes to a few KB."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(f"{label}-{seed}")
    width, height = rng.randint(31, 140), rng.randint(29, 130)
    base = BACKGROUNDS.get(label, BACKGROUNDS["bird"])
    background = tuple(min(255, max(0, c + rng.randint(-40, 40))) for c in base)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    size = rng.uniform(0.35, 0.7) * min(width, height)
    x, y = rng.uniform(0, width - size), rng.uniform(0, height - size)
    if label == "cat":
        draw.ellipse((x, y, x + size, y + size), fill=(30, 20, 20))
    elif label == "dog":
        draw.rectangle((x, y, x + size, y + size), fill=(235, 235, 225))
    else:
        draw.polygon([(x, y + size), (x + size, y + size), (x + size / 2, y)], fill=(128,) * 3)
    png = seed % 5 == 2
    if not png:  # noise would make a PNG tens of KB
        noise = np.random.default_rng(seed).normal(0, 8, (height, width, 3))
        image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype("uint8"))
    if seed % 7 == 3:
        image = image.convert("L")
    stream = io.BytesIO()
    image.save(stream, format="PNG" if png else "JPEG", quality=80)
    return stream.getvalue()


def make_sample(folder: Path, per_class: int, test_images: int) -> Path:
    """A folder in the layout of Kaggle's data and of ../shared's sample: train/cat.N.jpg,
    train/dog.N.jpg, test/N.jpg (unlabelled, both classes) and sample_submission.csv.
    Files are named .jpg as Kaggle's are, whatever their format."""
    (folder / "train").mkdir(parents=True)
    (folder / "test").mkdir()
    for label in CLASSES:
        for number in range(per_class):
            (folder / "train" / f"{label}.{number}.jpg").write_bytes(draw_photo(label, number))
    for number in range(1, test_images + 1):
        photo = draw_photo(CLASSES[number % 2], 10_000 + number)
        (folder / "test" / f"{number}.jpg").write_bytes(photo)
    with (folder / "sample_submission.csv").open("w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["id", "label"])
        writer.writerows([number, 0.5] for number in range(1, test_images + 1))
    return folder


DRAWN_CLASSES = ("bird", "cat", "dog")  # a data set of class folders (make_class_folders)
DRAWN_PER_CLASS = 20


def make_class_folders(folder: Path) -> Path:
    """The data set's own folder (not a class) holding a folder per class; some images
    nested a level deeper, plus files that are not images."""
    for label in DRAWN_CLASSES:
        for number in range(DRAWN_PER_CLASS):
            nested = "2019/" if number % 4 == 0 else ""
            path = folder / label / f"{nested}{label}-{number}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(draw_photo(label, number))
    (folder / "README.txt").write_text("three classes of drawn photos")
    (folder / "cat" / ".DS_Store").write_bytes(b"\0")
    return folder


def photo_pixels(photo: Path | IO[bytes], size: int):
    """`photo` as the model takes it, decoded here independently of the project's own
    decoder (finetune.dataset.decode), so that neither test material nor a test's expected values
    share a bug with the code under test: Pillow decodes it as RGB (a grayscale image's
    one channel three times), then the documented resize: bilinear, half-pixel centres,
    no antialiasing (tf.image.resize, as Keras's image_dataset_from_directory does),
    rounded to whole 0-255 values. float32 pixels, size x size x 3.

    Equal to the pipeline's pixels for PNG; JPEG decoders may differ by a few levels
    (TensorFlow uses libjpeg's fast integer IDCT, Pillow its accurate one)."""
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    with Image.open(photo) as image:
        rgb = np.asarray(image.convert("RGB"))
    resized = tf.image.resize(rgb, (size, size), method="bilinear", antialias=False)
    return np.clip(np.round(np.asarray(resized)), 0, 255).astype(np.float32)


def gray_png(photo: Path, path: Path) -> Path:
    """`photo` as a grayscale PNG at `path` (named .jpg, as Kaggle names every test image):
    the drawn photos have grayscale JPEGs and colour PNGs only."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(photo) as image:
        image.convert("L").save(path, format="PNG")
    return path


PET_IMAGES_CLASSES = ("Cat", "Dog")  # capitalised, as in Microsoft's archive


def make_pet_images_zip(path: Path, per_class: int) -> list[str]:
    """A zip in the layout of Microsoft's copy of Kaggle's photos (the archive Keras's
    "image classification from scratch" example downloads; finetune.sources.web.
    PET_IMAGES_URL): drawn photos PetImages/Cat/0.jpg ... PetImages/Dog/<per_class - 1>.jpg,
    and what makes the real one awkward: a Thumbs.db in each class folder, an empty .jpg in
    each class, a JPEG cut short in Dog, and a readme and a licence (.docx) beside
    PetImages/. Deflated, as the real one is. The licence is 400 KB of bytes that do not
    compress (a .docx is a zip itself), so that a transfer of the archive broken off
    half-way has written whole chunks of the downloader's. Returns the unreadable images,
    as split_classes lists them ("Cat/12.jpg")."""
    import zipfile

    unreadable = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("MSR-LA - 3467.docx", random.Random(3467).randbytes(400_000))
        archive.writestr("readme[1].txt", "The Dogs vs. Cats photos, from Kaggle.\r\n")
        for label in PET_IMAGES_CLASSES:
            folder = f"PetImages/{label}"
            for number in range(per_class):
                archive.writestr(f"{folder}/{number}.jpg", draw_photo(label.lower(), number))
            archive.writestr(f"{folder}/Thumbs.db", bytes(range(256)) * 8)
            archive.writestr(f"{folder}/{per_class}.jpg", b"")
            unreadable.append(f"{label}/{per_class}.jpg")
        jpeg = draw_photo("dog", 0)  # seed 0: a colour JPEG (see draw_photo)
        archive.writestr(f"PetImages/Dog/{per_class + 1}.jpg", jpeg[: len(jpeg) // 2])
        unreadable.append(f"Dog/{per_class + 1}.jpg")
    return unreadable


def cut_off_jpegs() -> dict[str, bytes]:
    """Drawn JPEGs cut off as a broken download leaves them, by name. TensorFlow refuses
    both, and its decoder says so on stderr too, each a different way: "half.jpg" (cut
    in its pixel data) with its log line "E0000 ... jpeg_mem.cc:331] Premature end of
    JPEG data. Stopped at line 14/68", "headers.jpg" (cut at 500 bytes) with libjpeg's
    "Improper call to JPEG library in state 201"."""
    jpeg = draw_photo("cat", 0)  # seed 0: a colour JPEG of 2,296 bytes (see draw_photo)
    return {"half.jpg": jpeg[: len(jpeg) // 2], "headers.jpg": jpeg[:500]}
