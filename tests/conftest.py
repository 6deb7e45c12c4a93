"""Shared test material, made at test time: photos, a Kaggle-layout sample, backbone
weight files, a loopback file server. Only claims that need real photos or real
pretrained weights read ../shared (`real_sample_dir`, `mobilenet_weights`); they skip
where it is absent, and fail instead under CI (REQUIRE_SHARED=1, set by .ci/run)."""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import http.server
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REAL_SAMPLE = SHARED / "data" / "dogs-vs-cats-sample"
FLOWERS = SHARED / "data" / "flowers-sample"  # 500 real photos, a folder per class (five)
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
# The same file name as the real one, so the legacy-HDF5 layout is the real one too.
INCEPTION_NOTOP = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
CLASSES = ("cat", "dog")


def needs_shared(path: Path, what: str) -> Path:
    """`path` if it exists; else skip, or fail where CI promised ../shared (REQUIRE_SHARED=1)."""
    if path.exists():
        return path
    message = f"needs {what} at {path} (absent here)"
    if os.environ.get("REQUIRE_SHARED") == "1":
        pytest.fail(f"{message}, but REQUIRE_SHARED=1: CI must run this test", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def real_sample_dir() -> Path:
    """The 1,000 real Kaggle photos in ../shared: only for claims about real photos."""
    return needs_shared(REAL_SAMPLE, "the shared sample photos")


@pytest.fixture(scope="session")
def flowers_dir() -> Path:
    """Real flower photos in five class folders: only for claims about other data sets."""
    return needs_shared(FLOWERS, "the shared flowers sample")


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    """Real ImageNet-pretrained MobileNet (alpha 0.25) weights: only for claims about transfer."""
    return needs_shared(MOBILENET_WEIGHTS, "the shared MobileNet weights")


# --- photos ---------------------------------------------------------------------

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


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Drawn photos in the sample's layout: 60 per class for training, 20 for the test set."""
    return make_sample(tmp_path_factory.mktemp("sample") / "dogs-vs-cats", 60, 20)


# --- weights --------------------------------------------------------------------

def write_legacy_weights(model, path: Path) -> None:
    """Save `model`'s weights in the legacy Keras-2 HDF5 layout of the published *_notop.h5
    files (Keras 3's save_weights only writes its new format)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """InceptionV3 without top, random weights, in the layout of the real notop file."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.InceptionV3(include_top=False, weights=None,
                                           input_shape=(75, 75, 3))
    path = tmp_path_factory.mktemp("weights") / INCEPTION_NOTOP
    write_legacy_weights(model, path)
    return path


def calibrate_batchnorm(backbone, images) -> None:
    """Set each BatchNormalization layer's moving statistics to those of its inputs on
    `images` (preprocessed). Random weights with the initial statistics (mean 0, variance
    1) make features vanish within a few blocks and every prediction 0.5; calibrated,
    the random features still tell the drawn classes apart, as pretrained ones would."""
    import keras
    import numpy as np

    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            inputs = np.asarray(keras.Model(backbone.input, layer.input)(images))
            gamma, beta, _, _ = layer.get_weights()
            layer.set_weights([gamma, beta, inputs.mean(axis=(0, 1, 2)),
                               inputs.var(axis=(0, 1, 2))])


def photo_pixels(photo: Path, size: int):
    """`photo` as the model takes it, decoded here independently of the project's own
    decoder (stages.images), so that neither test material nor a test's expected values
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


@pytest.fixture(scope="session")
def mobilenet_random_weights(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    """MobileNet (alpha 0.25) without top: random weights, BatchNormalization calibrated
    on the drawn photos at 96 px, in the legacy HDF5 layout of the published files.
    Loads at any image size; stands in for the pretrained file wherever a test's claim
    is about the pipeline, not about transfer. Random features keep the classes apart
    in the first blocks only: a test that needs learning cuts at `conv_pw_3_relu`
    (a linear probe there: 0.93 on held-out drawn photos; at `conv_pw_13_relu`: chance)."""
    import keras
    import numpy as np

    size = 96
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNet(input_shape=(size, size, 3), alpha=0.25,
                                            include_top=False, weights=None)
    photos = sorted((sample_dir / "train").glob("*.jpg"))[::3]
    pixels = np.stack([photo_pixels(photo, size) for photo in photos])
    calibrate_batchnorm(backbone, pixels / 127.5 - 1)  # MobileNet's preprocess_input
    path = tmp_path_factory.mktemp("weights") / "mobilenet_2_5_notop_random.h5"
    write_legacy_weights(backbone, path)
    return path


def md5(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "md5").hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on loopback while in the block; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server; yields (base URL, folder it serves)."""
    folder = tmp_path / "served"
    folder.mkdir()
    with serving(folder) as url:
        yield url, folder


def stage_env(**extra: str) -> dict[str, str]:
    """Environment for running stages and DVC in a subprocess: this interpreter's venv
    first on PATH (stage commands call `python`), no analytics, a git identity, and
    none of the caller's proxy or Kaggle settings (every server a test talks to is on
    loopback, and a developer's own Kaggle credentials never take part); then `extra`."""
    dropped = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {key: value for key, value in os.environ.items()
           if key.lower() not in dropped and not key.startswith("KAGGLE_")}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def write_params(project: Path, **changes: object) -> dict[str, Any]:
    """project/params.yaml: the project's own params.yaml with `changes`; returns it."""
    import yaml

    params = {**yaml.safe_load((ROOT / "params.yaml").read_text()), **changes}
    project.mkdir(parents=True, exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return params


def stage_command(stage: str, *args: str) -> list[str]:
    """`python -m stages.<stage> ARGS`, as dvc.yaml runs it."""
    return [sys.executable, "-m", f"stages.{stage}", *args]


def run_stage(stage: str, project: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a stage in `project` as DVC does, with this checkout's `stages` importable;
    the environment is `env`, or stage_env()'s."""
    environment = {**(stage_env() if env is None else env), "PYTHONPATH": str(ROOT)}
    return subprocess.run(stage_command(stage, *args), cwd=project, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def assert_stage_error(result: subprocess.CompletedProcess[str], *hints: str,
                       status: int = 1) -> str:
    """A stage that failed as expected: exit `status`, no traceback, and one `error:`
    line (stderr's last) holding every hint; returns that line."""
    assert result.returncode == status, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = error_line(result.stderr)
    for hint in hints:
        assert hint in line, line
    return line


def dvc(project: Path, env: dict[str, str], *args: str, ok: bool = True,
        timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run `dvc ARGS` in `project`; unless `ok` is False, fail the test if it fails."""
    result = subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if ok:
        assert result.returncode == 0, (
            f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def ran_stages(output: str) -> list[str]:
    """The stages `dvc repro` / `dvc exp run` ran, in order, from its output."""
    return re.findall(r"Running stage '(\w+)'", output)


def error_line(stderr: str) -> str:
    """A failed stage's one-line error: the last line of stderr, and the only "error:" one.
    (Stages that import TensorFlow may print its start-up log lines before it.)"""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), stderr
    assert sum(line.startswith("error: ") for line in lines) == 1, stderr
    return lines[-1]


def write_train_manifest(train_dir: Path) -> None:
    """data/train.json for class folders laid out by hand, as split_classes writes it."""
    import zlib

    images = {folder.name: [[path.relative_to(folder).as_posix(), path.stat().st_size,
                             zlib.crc32(path.read_bytes())]
                            for path in sorted(folder.rglob("*")) if path.is_file()]
              for folder in sorted(train_dir.iterdir()) if folder.is_dir()}
    manifest = {"classes": list(images), "images": images}
    (train_dir.parent / "train.json").write_text(json.dumps(manifest) + "\n")


def lay_out_project(root: Path, sample_dir: Path, weights_file: Path, per_class: int,
                    test_images: int = 4, **params: object) -> Path:
    """A project folder as fetch_data, split_classes and fetch_weights leave it:
    data/raw/{test.zip, sample_submission.csv} (the first `test_images` test photos),
    data/train/{cat,dog}/ (the first `per_class` photos of each), models/backbone_notop.h5,
    and params.yaml with `params`."""
    import zipfile

    for label in CLASSES:
        folder = root / "data" / "train" / label
        folder.mkdir(parents=True)
        for number in range(per_class):
            shutil.copy(sample_dir / "train" / f"{label}.{number}.jpg", folder)
    write_train_manifest(root / "data" / "train")
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    with zipfile.ZipFile(raw / "test.zip", "w") as archive:
        for number in range(1, test_images + 1):
            archive.write(sample_dir / "test" / f"{number}.jpg", f"test/{number}.jpg")
    (raw / "sample_submission.csv").write_text(
        "id,label\n" + "".join(f"{number},0.5\n" for number in range(1, test_images + 1)))
    (root / "models").mkdir()
    shutil.copy(weights_file, root / "models" / "backbone_notop.h5")
    write_params(root, **params)
    return root


def extract_features(project: Path) -> None:
    """Run the features stage in `project` (laid out by lay_out_project)."""
    result = run_stage("features", project, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


# --- the features stage's output, shared by tests/test_features.py and test_submit_predict.py

# The small network of the features and submit tests: MobileNet (alpha 0.25) at 96 px,
# split at conv_pw_3_relu (24 x 24 x 32 activations), a linear head on their average.
SMALL_NETWORK = {
    "backbone": "MobileNet", "alpha": 0.25, "image_size": 96, "preprocessing": "backbone",
    "cut_layer": "conv_pw_3_relu", "unfreeze_after": "conv_pw_3_relu",
    "head": "gap", "dense_units": 0, "batch_size": 8,
}


def write_test_set(project: Path, entries: list[tuple[str, bytes]], ids: list[str]) -> None:
    """project/data/raw/test.zip holding `entries` ((name, bytes), in this order) and
    project/data/raw/sample_submission.csv listing `ids` in this order."""
    import zipfile

    raw = project / "data" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(raw / "test.zip", "w") as archive:
        for name, data in entries:
            archive.writestr(name, data)
    with (raw / "sample_submission.csv").open("w", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["id", "label"])
        writer.writerows([image_id, 0.5] for image_id in ids)


def gray_png(photo: Path, path: Path) -> Path:
    """`photo` as a grayscale PNG at `path` (named .jpg, as Kaggle names every test image):
    the drawn photos have grayscale JPEGs and colour PNGs only."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(photo) as image:
        image.convert("L").save(path, format="PNG")
    return path


class Extracted:
    """A project where the features stage ran (see `extracted_features`). Tests must not
    change `project`: copy it (shutil.copytree) to run other stages in it."""

    def __init__(self, project: Path, photos: dict[str, Path], ids: list[str], corrupt: str,
                 result: subprocess.CompletedProcess[str]) -> None:
        self.project, self.photos, self.ids, self.corrupt = project, photos, ids, corrupt
        self.result = result  # the features stage's run


EXTRACTED_TEST_PHOTOS = 20  # the drawn test photos 1..20, then a grayscale PNG and a corrupt JPEG
EXTRACTED_PER_CLASS = 8  # training photos per class: colour and grayscale JPEGs, colour PNGs


@pytest.fixture(scope="session")
def extracted_features(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path,
                       mobilenet_random_weights: Path) -> Extracted:
    """The features stage, run once with SMALL_NETWORK and `mobilenet_random_weights` on:
    data/train with the first EXTRACTED_PER_CLASS drawn photos of each class; test.zip
    holding, in reverse order, test/1.jpg .. test/20.jpg (the drawn test photos),
    test/21.jpg (a grayscale PNG) and test/22.jpg (a JPEG truncated to 500 bytes: the
    corrupt one); sample_submission.csv listing their ids shuffled (neither the
    archive's order nor sorted). `photos` maps each id to the file stored for it."""
    root = tmp_path_factory.mktemp("extracted")
    project = lay_out_project(root / "project", sample_dir, mobilenet_random_weights,
                              EXTRACTED_PER_CLASS, **SMALL_NETWORK)
    sources = root / "test"
    sources.mkdir()
    photos = {str(n): sample_dir / "test" / f"{n}.jpg"
              for n in range(1, EXTRACTED_TEST_PHOTOS + 1)}
    gray = str(EXTRACTED_TEST_PHOTOS + 1)
    photos[gray] = gray_png(photos["1"], sources / f"{gray}.jpg")
    corrupt = str(EXTRACTED_TEST_PHOTOS + 2)
    photos[corrupt] = sources / f"{corrupt}.jpg"
    photos[corrupt].write_bytes(photos["4"].read_bytes()[:500])
    ids = list(photos)
    random.Random(0).shuffle(ids)
    write_test_set(project, [(f"test/{n}.jpg", photos[n].read_bytes())
                             for n in reversed(photos)], ids)
    result = run_stage("features", project, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return Extracted(project, photos, ids, corrupt, result)
