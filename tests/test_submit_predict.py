"""stages/submit.py and stages/predict.py run as commands on a small model.

One MobileNet (alpha 0.25, 96 px) with random weights whose BatchNormalization is
calibrated on the drawn photos (conftest's `mobilenet_random_weights`), cut at
`conv_pw_3_relu`, is built and saved once per module; each test runs the scripts in a
fresh project folder holding params.yaml, data/raw/test.zip,
data/raw/sample_submission.csv and models/model.keras.

The expected predictions come from pixels decoded with Pillow (conftest's
`photo_pixels`), not with the project's own decoder (`stages.images.decode_image`),
so that a decoding bug cannot hide by being on both sides of the comparison.
"""

from __future__ import annotations

import csv
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import ROOT, assert_stage_error, photo_pixels, run_stage, write_params

SIZE = 96
IMAGES = 20
SMALL = {
    "backbone": "MobileNet", "alpha": 0.25, "image_size": SIZE,
    "cut_layer": "conv_pw_3_relu", "unfreeze_after": "conv_pw_3_relu",
    "head": "gap", "dense_units": 0, "batch_size": 8,
}
# How far a JPEG's prediction may be from the one on Pillow's pixels. JPEG decoders
# may differ: TensorFlow uses libjpeg's fast integer IDCT, Pillow its accurate one, up
# to 4 levels on a pixel (0.5 to 1 on average on these photos), which moves this
# model's P(dog) by up to 0.04 (measured). A PNG is lossless: every correct decoder
# gives the same pixels, and its prediction must match to float precision, which
# catches what the JPEG tolerance could hide (channels swapped, grayscale expanded
# wrongly, resized values truncated instead of rounded).
JPEG_TOLERANCE = 0.1
PNG_TOLERANCE = 1e-5


def tolerance(photo: Path) -> float:
    with Image.open(photo) as image:
        return PNG_TOLERANCE if image.format == "PNG" else JPEG_TOLERANCE


def kinds(photos: list[Path]) -> set[tuple[str, str]]:
    """(format, mode) of each photo: ("JPEG", "RGB"), ("PNG", "L")..."""
    found = set()
    for photo in photos:
        with Image.open(photo) as image:
            found.add((image.format, image.mode))
    return found


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path,
               mobilenet_random_weights: Path) -> Path:
    """The small model, saved. Its head is set so that its logits have mean 0 and
    standard deviation 2 over the test photos: predictions fall on both sides of 0.5
    and some beyond 0.4 and 0.6, so mix-ups and clipping show."""
    import numpy as np

    from stages.network import build_model
    from stages.params import load_params

    params = {**load_params(ROOT / "params.yaml"), **SMALL}
    model = build_model(params, mobilenet_random_weights, fine_tune=True)
    x = np.stack([photo_pixels(sample_dir / "test" / f"{n}.jpg", SIZE)
                  for n in range(1, IMAGES + 1)])
    base = model.get_layer("frozen_base")(model.get_layer("preprocessing")(x))
    features = np.asarray(base).mean(axis=(1, 2))  # the head's global average pooling
    output = model.get_layer("head").layers[-1]
    kernel, _ = output.get_weights()
    logits = features @ kernel
    scale = 2 / logits.std()
    output.set_weights([kernel * scale, -logits.mean(axis=0) * scale])
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


@pytest.fixture
def photos(sample_dir: Path) -> list[Path]:
    """The drawn test photos: colour and grayscale JPEGs, and PNGs named .jpg."""
    return [sample_dir / "test" / f"{n}.jpg" for n in range(1, IMAGES + 1)]


@pytest.fixture
def gray_png(photos: list[Path], tmp_path: Path) -> Path:
    """A grayscale PNG named .jpg (the drawn test photos have grayscale JPEGs only)."""
    path = tmp_path / "gray" / f"{IMAGES + 1}.jpg"
    path.parent.mkdir()
    with Image.open(photos[0]) as image:
        image.convert("L").save(path, format="PNG")
    return path


def make_project(root: Path, model_file: Path, photos: list[Path], ids: list[str] | None = None,
                 corrupt: dict[str, bytes] | None = None, **params: Any) -> Path:
    """A project folder for submit: test.zip holds `photos` (as test/N.jpg, in reverse
    order), the sample lists `ids` (default: the photos' ids, shuffled)."""
    write_params(root, **{**SMALL, **params})
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    with zipfile.ZipFile(raw / "test.zip", "w") as archive:
        for photo in reversed(photos):
            data = (corrupt or {}).get(photo.stem, photo.read_bytes())
            archive.writestr(f"test/{photo.name}", data)
    if ids is None:
        ids = [photo.stem for photo in photos]
        random.Random(0).shuffle(ids)
    with (raw / "sample_submission.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["id", "label"])
        writer.writerows([image_id, 0.5] for image_id in ids)
    (root / "models").mkdir()
    shutil.copy(model_file, root / "models" / "model.keras")
    return root


def read_submission(project: Path) -> list[tuple[str, float]]:
    """The submission's rows, checked against the sample: header, ids, order, count."""
    with (project / "data" / "raw" / "sample_submission.csv").open(newline="") as stream:
        sample_ids = [row[0] for row in list(csv.reader(stream))[1:]]
    with (project / "data" / "submission.csv").open(newline="") as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == ["id", "label"]
    assert [row[0] for row in rows[1:]] == sample_ids  # every id once, in the sample's order
    assert all(len(row) == 2 for row in rows[1:])
    return [(image_id, float(label)) for image_id, label in rows[1:]]


def test_submission_follows_sample_and_clips(tmp_path, model_file, photos):
    project = make_project(tmp_path, model_file, photos, clip=0.4)
    result = run_stage("submit", project)
    assert result.returncode == 0, result.stderr
    rows = read_submission(project)
    assert len(rows) == IMAGES
    labels = [label for _, label in rows]
    assert all(0.4 <= label <= 0.6 for label in labels)
    # The model's spread-out outputs hit both bounds: clipping happened.
    assert 0.4 in labels and 0.6 in labels, labels
    assert "Traceback" not in result.stderr
    progress = [line for line in result.stderr.splitlines() if "/20 images" in line]
    assert 1 <= len(progress) <= 11 and "20/20 images (100%" in progress[-1]


def assert_predictions_match(predicted: dict[str, float], photos: list[Path],
                             model_file: Path) -> None:
    """`predicted` (by id) is the model's P(dog) on Pillow's pixels of each photo."""
    import numpy as np

    from stages.network import load_model

    # Every kind of image a decoding bug could hide in: colour and grayscale, lossy
    # and lossless (where the comparison is exact).
    assert kinds(photos) >= {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L")}
    model = load_model(model_file)
    expected = model.predict(np.stack([photo_pixels(photo, SIZE) for photo in photos]),
                             verbose=0).ravel()
    for photo, probability in zip(photos, expected, strict=True):
        assert predicted[photo.stem] == pytest.approx(probability, abs=tolerance(photo)), (
            f"{photo.name}: {kinds([photo])}")


def test_submission_unclipped_matches_model(tmp_path, model_file, photos, gray_png):
    """With clip 0, the rows are the model's own predictions for each id's image."""
    photos = [*photos, gray_png]
    project = make_project(tmp_path, model_file, photos, clip=0.0)
    result = run_stage("submit", project)
    assert result.returncode == 0, result.stderr
    assert_predictions_match(dict(read_submission(project)), photos, model_file)


def test_sample_id_without_image_fails(tmp_path, model_file, photos):
    ids = [photo.stem for photo in photos] + ["999999"]
    project = make_project(tmp_path, model_file, photos, ids=ids)
    assert_stage_error(run_stage("submit", project), "999999")
    assert not (project / "data" / "submission.csv").exists()


def test_image_without_sample_id_fails(tmp_path, model_file, photos):
    ids = [photo.stem for photo in photos[1:]]
    project = make_project(tmp_path, model_file, photos, ids=ids)
    assert_stage_error(run_stage("submit", project), f"test/{photos[0].name}")
    assert not (project / "data" / "submission.csv").exists()


def test_corrupt_test_image_gets_half(tmp_path, model_file, photos):
    bad = photos[3].stem
    corrupt = {bad: photos[3].read_bytes()[:500]}  # a truncated JPEG
    project = make_project(tmp_path, model_file, photos, corrupt=corrupt, clip=0.005)
    result = run_stage("submit", project)
    assert result.returncode == 0, result.stderr
    rows = dict(read_submission(project))
    assert len(rows) == IMAGES
    assert rows[bad] == 0.5
    assert sum(label == 0.5 for label in rows.values()) == 1
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"test/{bad}.jpg" in warnings[0], result.stderr
    assert "1 unreadable" in result.stderr


# --- predict ----------------------------------------------------------------

def parse_predictions(stdout: str) -> dict[str, tuple[str, str]]:
    lines = [line.split("\t") for line in stdout.splitlines()]
    assert all(len(fields) == 3 for fields in lines), stdout
    return {path: (label, value) for path, label, value in lines}


def test_predict_mixed_files(tmp_path, model_file, photos):
    folder = tmp_path / "folder"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(photos[0], folder / "b.jpg")
    shutil.copy(photos[1], folder / "nested" / "a.JPG")  # extension of any case
    (folder / "notes.txt").write_text("not an image, not walked")
    (folder / "truncated.jpg").write_bytes(photos[2].read_bytes()[:500])
    text = tmp_path / "x.jpg"
    text.write_text("just text")
    empty = tmp_path / "empty.png"
    empty.touch()
    good = tmp_path / "good.jpg"
    shutil.copy(photos[3], good)
    result = run_stage("predict", tmp_path, "--model", str(model_file),
                        "--batch-size", "2", "good.jpg", "x.jpg", "folder", "empty.png")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    printed = parse_predictions(result.stdout)
    # Arguments in order, folders walked sorted; the bad files each on their own line.
    assert list(printed) == ["good.jpg", "x.jpg", "folder/b.jpg", "folder/nested/a.JPG",
                             "folder/truncated.jpg", "empty.png"]
    for path in ("good.jpg", "folder/b.jpg", "folder/nested/a.JPG"):
        label, value = printed[path]
        assert 0 <= float(value) <= 1
        assert label == ("dog" if float(value) > 0.5 else "cat")
    for path in ("x.jpg", "folder/truncated.jpg", "empty.png"):
        assert printed[path][0] == "error" and printed[path][1]
    assert printed["empty.png"][1] == "empty file"
    assert "3 of 6" in result.stderr


def test_predict_matches_model_and_exits_zero(tmp_path, model_file, photos, gray_png):
    chosen = [*photos[:7], gray_png]
    result = run_stage("predict", ROOT, "--model", str(model_file),
                        *(str(photo) for photo in chosen))
    assert result.returncode == 0, result.stderr
    printed = parse_predictions(result.stdout)
    assert list(printed) == [str(photo) for photo in chosen]
    predicted = {Path(path).stem: float(value) for path, (_, value) in printed.items()}
    assert_predictions_match(predicted, chosen, model_file)


def test_predict_usage_errors(tmp_path):
    no_args = run_stage("predict", tmp_path)
    assert no_args.returncode == 2 and "Traceback" not in no_args.stderr
    missing = run_stage("predict", tmp_path, "nowhere.jpg")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: nowhere.jpg: no such file or folder"
    (tmp_path / "empty").mkdir()
    assert run_stage("predict", tmp_path, "empty").returncode == 2
    (tmp_path / "a.jpg").touch()
    no_model = run_stage("predict", tmp_path, "a.jpg")
    assert no_model.returncode == 2
    assert no_model.stderr.strip().splitlines() == [
        "error: models/model.keras not found: run `dvc repro train`, or pass --model"]
