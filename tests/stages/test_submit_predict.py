"""stages/submit.py and the predict command (finetune/predict.py) on a small model.

One MobileNet (alpha 0.25, 96 px) with random weights whose BatchNormalization is
calibrated on the drawn photos (conftest's `mobilenet_random_weights`), cut at
`conv_pw_3_relu`, is built and saved once per module. submit reads the features
stage's output: conftest's `extracted_features` runs that stage once (same weights
file, same params) on a test.zip of the 20 drawn test photos, a grayscale PNG and a
corrupt JPEG, listed shuffled in sample_submission.csv; each submit test runs in a
copy of that project with models/model.keras added. The id/image mismatches are
found by the features stage (finetune/dataset/competition.py), so those tests run it.

The expected predictions come from the whole saved model applied to pixels decoded
with Pillow (tests.support.photos.photo_pixels), not from the project's own decoder
(`finetune.dataset.decode.decode_image`) nor from the cached features, so that neither a
decoding bug nor a features/model mismatch can hide by being on both sides of the
comparison.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.support.commands import assert_stage_error, call_stage, run_stage
from tests.support.photos import cut_off_jpegs, gray_png, photo_pixels
from tests.support.projects import (
    SMALL_NETWORK,
    Extracted,
    train_images,
    write_params,
    write_train_images,
)
from tests.support.shared import ROOT

CLASSES = ["cat", "dog"]  # the model's classes, as split_classes names them

SIZE = SMALL_NETWORK["image_size"]
IMAGES = 20
SMALL = SMALL_NETWORK
# How far a JPEG's prediction may be from the one on Pillow's pixels. JPEG decoders
# may differ: TensorFlow uses libjpeg's fast integer IDCT, Pillow its accurate one, up
# to 4 levels on a pixel (0.5 to 1 on average on these photos), which moves this
# model's P(dog) by up to 0.04 (measured). A PNG is lossless: every correct decoder
# gives the same pixels, and its prediction must match to float precision, which
# catches what the JPEG tolerance could hide (channels swapped, grayscale expanded
# wrongly, resized values truncated instead of rounded).
JPEG_TOLERANCE = 0.1
PNG_TOLERANCE = 1e-5  # float32 arithmetic, in another order


def is_png(photo: Path) -> bool:
    with Image.open(photo) as image:
        return image.format == "PNG"


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
    import keras
    import numpy as np

    from finetune.core.params import load_params
    from finetune.model.assembly import build_model

    params = {**load_params(ROOT / "params.yaml"), **SMALL}
    # The head's initial weights, seeded: the model must not depend on which tests ran
    # before in this process (with `make test`'s two workers, that varies).
    keras.utils.set_random_seed(0)
    model = build_model(params, mobilenet_random_weights, fine_tune=True, classes=CLASSES)
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


@pytest.fixture(scope="module")
def photos(sample_dir: Path) -> list[Path]:
    """The drawn test photos: colour and grayscale JPEGs, and PNGs named .jpg."""
    return [sample_dir / "test" / f"{n}.jpg" for n in range(1, IMAGES + 1)]


@pytest.fixture(scope="module", name="gray_png")
def gray_png_file(photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A grayscale PNG named .jpg (the drawn test photos have grayscale JPEGs only)."""
    return gray_png(photos[0], tmp_path_factory.mktemp("gray") / f"{IMAGES + 1}.jpg")


# --- submit -----------------------------------------------------------------

def submit_project(root: Path, extracted: Extracted, model_file: Path, **params: object) -> Path:
    """A copy of the extracted project (test.zip, sample, data/features) with the
    model in models/model.keras and params.yaml's SMALL plus `params`."""
    shutil.copytree(extracted.project, root)
    shutil.copy(model_file, root / "models" / "model.keras")
    write_params(root, **{**SMALL, **params})
    return root


def write_sample(project: Path, ids: list[str]) -> None:
    with (project / "data" / "raw" / "sample_submission.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["id", "label"])
        writer.writerows([image_id, 0.5] for image_id in ids)


def read_submission(project: Path) -> list[tuple[str, float]]:
    """The submission's rows, checked against the sample: header, ids, order, count."""
    with (project / "data" / "raw" / "sample_submission.csv").open(newline="") as stream:
        sample_ids = [row[0] for row in list(csv.reader(stream))[1:]]
    with (project / "data" / "submission" / "submission.csv").open(newline="") as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == ["id", "label"]
    assert [row[0] for row in rows[1:]] == sample_ids  # every id once, in the sample's order
    assert all(len(row) == 2 for row in rows[1:])
    return [(image_id, float(label)) for image_id, label in rows[1:]]


@pytest.fixture(scope="module")
def unclipped(tmp_path_factory: pytest.TempPathFactory, extracted_features: Extracted,
              model_file: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """submit with clip 0, run once for the tests that read its rows and its warnings."""
    project = submit_project(tmp_path_factory.mktemp("unclipped") / "project",
                             extracted_features, model_file, clip=0.0)
    result = call_stage("submit", project)
    assert result.returncode == 0, result.stderr
    return project, result


def test_submission_follows_sample_and_clips(tmp_path, extracted_features, model_file):
    project = submit_project(tmp_path / "project", extracted_features, model_file, clip=0.4)
    # The sample's order is neither the archive's nor sorted: read_submission's check bites.
    ids = extracted_features.ids
    assert ids != sorted(ids, key=int) and ids != sorted(ids, key=int, reverse=True)
    result = call_stage("submit", project)
    assert result.returncode == 0, result.stderr
    rows = read_submission(project)
    assert len(rows) == len(ids)
    labels = [label for _, label in rows]
    assert all(0.4 <= label <= 0.6 for label in labels)
    # The model's spread-out outputs hit both bounds: clipping happened.
    assert 0.4 in labels and 0.6 in labels, labels
    assert "Traceback" not in result.stderr
    count = len(ids)
    progress = [line for line in result.stderr.splitlines() if f"/{count} images" in line]
    assert 1 <= len(progress) <= 11 and f"{count}/{count} images (100%" in progress[-1]


def float16_bound(model, pixels):
    """How far each image's P(dog) may move when frozen_base's activations are cached
    as float16 (round to nearest, 11-bit significand: each activation moves by at most
    2^-11 of itself). This model's head is a Dense layer on their spatial mean, so its
    logit moves by at most 2^-11 * |kernel| . mean(|activations|), and the sigmoid,
    whose slope is at most 1/4, by a quarter of that: 2e-3 to 3.5e-3 on these photos
    (the PNGs' measured differences are below 1.5e-4: the roundings mostly cancel)."""
    import numpy as np

    activations = model.get_layer("frozen_base")(model.get_layer("preprocessing")(pixels))
    means = np.abs(np.asarray(activations)).mean(axis=(1, 2))
    kernel, _ = model.get_layer("head").layers[-1].get_weights()
    assert [type(layer).__name__ for layer in model.get_layer("head").layers] == [
        "GlobalAveragePooling2D", "Dropout", "Dense"]  # what the bound assumes
    return 0.25 * 2.0 ** -11 * (means @ np.abs(kernel)).ravel()


def assert_predictions_match(predicted: dict[str, float], photos: list[Path],
                             model_file: Path, features: bool = False) -> None:
    """`predicted` (by id) is the model's P(dog) on Pillow's pixels of each photo; with
    `features`, from activations cached as float16, which PNG's tolerance allows for."""
    import numpy as np

    from finetune.model.saved import load_model

    # Every kind of image a decoding bug could hide in: colour and grayscale, lossy
    # and lossless (where the comparison is tight).
    assert kinds(photos) >= {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L")}
    model = load_model(model_file)
    pixels = np.stack([photo_pixels(photo, SIZE) for photo in photos])
    expected = model.predict(pixels, verbose=0).ravel()
    rounding = float16_bound(model, pixels) if features else np.zeros(len(photos))
    for photo, probability, bound in zip(photos, expected, rounding, strict=True):
        allowed = PNG_TOLERANCE + float(bound) if is_png(photo) else JPEG_TOLERANCE
        assert predicted[photo.stem] == pytest.approx(probability, abs=allowed), (
            f"{photo.name}: {kinds([photo])}")


def test_submission_unclipped_matches_model(unclipped, extracted_features, model_file):
    """With clip 0, each readable id's row is the model's own prediction for its image:
    the features stage's cached activations plus the model's layers above them give
    what the whole model gives on the photo's pixels."""
    project, _ = unclipped
    readable = [photo for image_id, photo in extracted_features.photos.items()
                if image_id != extracted_features.corrupt]
    assert_predictions_match(dict(read_submission(project)), readable, model_file,
                             features=True)


def test_corrupt_test_image_gets_half(unclipped, extracted_features):
    project, result = unclipped
    bad = extracted_features.corrupt
    rows = dict(read_submission(project))
    assert len(rows) == len(extracted_features.ids)
    assert rows[bad] == 0.5
    assert sum(label == 0.5 for label in rows.values()) == 1
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"test/{bad}.jpg" in warnings[0], result.stderr
    assert "1 unreadable" in result.stderr


def assert_features_refused(project: Path, *hints: str) -> None:
    """The features stage fails with one line holding `hints` and leaves nothing of
    data/features (the copy's stale one included), so submit refuses to run."""
    assert (project / "data" / "features" / "index.json").is_file()  # stale, from the copy
    assert_stage_error(call_stage("features", project), *hints)
    assert sorted(path.name for path in (project / "data").iterdir()) == ["raw", "train.json"]
    assert_stage_error(call_stage("submit", project), "data/features/index.json not found")
    assert not (project / "data" / "submission" / "submission.csv").exists()


def test_sample_id_without_image_fails(tmp_path, extracted_features, model_file):
    project = submit_project(tmp_path / "project", extracted_features, model_file)
    write_sample(project, [*extracted_features.ids, "999999"])
    assert_features_refused(project, "999999", "sample_submission.csv")


def test_image_without_sample_id_fails(tmp_path, extracted_features, model_file):
    project = submit_project(tmp_path / "project", extracted_features, model_file)
    left_out, *ids = extracted_features.ids
    write_sample(project, ids)
    assert_features_refused(project, f"test/{left_out}.jpg", "test.zip")


# --- a stage run by hand on inputs that do not go together ---------------------
# `dvc repro` reruns what a change touches; `python -m stages.NAME` after an edit does
# not, so the stages compare what they read themselves.

def rename_class(project: Path, old: str, new: str) -> None:
    """train.zip, data/train.json and the features' index with class folder `old` named
    `new`, as split_classes and features rerun by hand leave them (the model not
    retrained)."""
    images = train_images(project)
    write_train_images(project, {f"{new}/{name.partition('/')[2]}"
                                 if name.startswith(f"{old}/") else name: data
                                 for name, data in images.items()})
    index_file = project / "data" / "features" / "index.json"
    index = json.loads(index_file.read_text())
    index["classes"] = sorted(new if name == old else name for name in index["classes"])
    index["train"] = [[path.replace(f"{old}/", f"{new}/", 1), label]
                      for path, label in index["train"]]
    index_file.write_text(json.dumps(index))


@pytest.mark.parametrize("stage", ["evaluate", "submit"])
def test_a_model_of_other_classes_than_the_features_is_refused(tmp_path, extracted_features,
                                                              model_file, stage):
    project = submit_project(tmp_path / "project", extracted_features, model_file)
    rename_class(project, "dog", "fox")
    assert_stage_error(call_stage(stage, project),
                       "models/model.keras was trained on the classes ['cat', 'dog'], "
                       "the features are of ['cat', 'fox']: run `dvc repro`")


def test_evaluate_refuses_features_of_other_images_than_data_train_json(
        tmp_path, extracted_features, model_file):
    project = submit_project(tmp_path / "project", extracted_features, model_file)
    images = train_images(project)
    del images["cat/cat.1.jpg"]
    write_train_images(project, images)  # train.zip fetched again, split_classes rerun by hand
    assert_stage_error(call_stage("evaluate", project),
                       "the features are of other images than data/train.json lists (first "
                       "difference: cat/cat.1.jpg): run `dvc repro features`")


def test_train_refuses_features_of_another_weights_file(tmp_path, extracted_features):
    project = shutil.copytree(extracted_features.project, tmp_path / "project")
    write_params(project, **SMALL, head_epochs=0, epochs=1)
    weights = project / "models" / "backbone_notop.h5"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, another file
    weights.write_bytes(bytes(data))
    assert_stage_error(call_stage("train", project), "the features were made with another "
                       "models/backbone_notop.h5", "run `dvc repro features`")
    assert not (project / "models" / "model.keras").exists()


# --- predict ----------------------------------------------------------------

def parse_predictions(stdout: str) -> dict[str, tuple[str, str]]:
    lines = [line.split("\t") for line in stdout.splitlines()]
    assert all(len(fields) == 3 for fields in lines), stdout
    return {path: (label, value) for path, label, value in lines}


def parse_all_probabilities(stdout: str) -> dict[str, dict[str, float]]:
    """`--all` lines: PATH, class, its probability, then NAME=P for every class; checked
    for consistency (the named class is the most probable; its P is repeated)."""
    parsed = {}
    for line in stdout.splitlines():
        path, label, value, *fields = line.split("\t")
        every = {name: float(p) for name, _, p in (field.partition("=") for field in fields)}
        assert list(every) == CLASSES, line
        assert label == max(every, key=every.__getitem__) and every[label] == float(value), line
        assert sum(every.values()) == pytest.approx(1, abs=2e-6), line
        parsed[path] = every
    return parsed


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
    result = call_stage("predict", tmp_path, "--model", str(model_file),
                        "--batch-size", "2", "good.jpg", "x.jpg", "folder", "empty.png")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    printed = parse_predictions(result.stdout)
    # Arguments in order, folders walked sorted; the bad files each on their own line.
    assert list(printed) == ["good.jpg", "x.jpg", "folder/b.jpg", "folder/nested/a.JPG",
                             "folder/truncated.jpg", "empty.png"]
    for path in ("good.jpg", "folder/b.jpg", "folder/nested/a.JPG"):
        label, value = printed[path]  # the more probable class, and its probability
        assert label in CLASSES and 0.5 <= float(value) <= 1
    for path in ("x.jpg", "folder/truncated.jpg", "empty.png"):
        assert printed[path][0] == "error" and printed[path][1]
    assert printed["empty.png"][1] == "empty file"
    assert "3 of 6" in result.stderr


def test_predict_says_why_a_cut_off_jpeg_fails_and_nothing_more(tmp_path, model_file, photos):
    """TensorFlow's decoder writes to fd 2 about a cut-off JPEG ("E0000 ... jpeg_mem.cc:331]
    Premature end of JPEG data", "Improper call to JPEG library in state 201"), past
    Python: a real process shows what reaches the terminal (call_stage captures only
    sys.stderr)."""
    for name, data in cut_off_jpegs().items():
        (tmp_path / name).write_bytes(data)
    shutil.copy(photos[0], tmp_path / "good.jpg")
    result = run_stage("predict", tmp_path, "--model", str(model_file),
                       "half.jpg", "good.jpg", "headers.jpg")
    assert result.returncode == 1, result.stderr
    printed = parse_predictions(result.stdout)
    assert list(printed) == ["half.jpg", "good.jpg", "headers.jpg"]
    for name in cut_off_jpegs():
        assert printed[name][0] == "error" and "JPEG" in printed[name][1], printed[name]
    assert printed["good.jpg"][0] in CLASSES
    # Only our lines: the progress and the count of failures.
    assert [line.partition(": ")[0] for line in result.stderr.splitlines()] == [
        "predict", "predict"], result.stderr
    assert result.stderr.splitlines()[-1] == "predict: 2 of 3 file(s) could not be read as images"


def test_predict_matches_model_and_exits_zero(tmp_path, model_file, photos, gray_png):
    chosen = [*photos[:7], gray_png]
    result = call_stage("predict", ROOT, "--model", str(model_file), "--all",
                        *(str(photo) for photo in chosen))
    assert result.returncode == 0, result.stderr
    printed = parse_all_probabilities(result.stdout)
    assert list(printed) == [str(photo) for photo in chosen]
    predicted = {Path(path).stem: every["dog"] for path, every in printed.items()}
    assert_predictions_match(predicted, chosen, model_file)
    # Both classes are said: the photos are not all given one.
    assert {max(every, key=every.__getitem__) for every in printed.values()} == set(CLASSES)


def test_predict_usage_errors(tmp_path):
    no_args = call_stage("predict", tmp_path)
    assert no_args.returncode == 2 and "Traceback" not in no_args.stderr
    missing = call_stage("predict", tmp_path, "nowhere.jpg")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: nowhere.jpg: no such file or folder"
    (tmp_path / "empty").mkdir()
    assert call_stage("predict", tmp_path, "empty").returncode == 2
    (tmp_path / "a.jpg").touch()
    no_model = call_stage("predict", tmp_path, "a.jpg")
    assert no_model.returncode == 2
    assert no_model.stderr.strip().splitlines() == [
        "error: models/model.keras not found: run `dvc repro train`, or pass --model"]
    not_there = call_stage("predict", tmp_path, "--model", "other.keras", "a.jpg")
    assert not_there.returncode == 2
    assert not_there.stderr.strip().splitlines() == ["error: other.keras not found"]


def test_predict_without_a_model_offers_the_demos(tmp_path):
    # After `make demo`, the project has no model of its own (`dvc repro train` needs
    # Kaggle), but build/demo has one: said as a path to type from here.
    (tmp_path / "a.jpg").touch()
    demo_model = tmp_path / "build" / "demo" / "models" / "model.keras"
    demo_model.parent.mkdir(parents=True)
    demo_model.touch()
    result = call_stage("predict", tmp_path, "a.jpg")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: models/model.keras not found: pass --model build/demo/models/model.keras "
        "(the model `make demo` trained), or run `dvc repro train`"]


# --- predict --explain --------------------------------------------------------

def test_predict_explain_writes_a_heat_map_png_per_image(tmp_path, model_file, photos, gray_png):
    from finetune.evaluation.heat_maps import png_size

    chosen = [str(photos[0]), str(photos[1]), str(gray_png)]
    (tmp_path / "broken.jpg").write_bytes(photos[2].read_bytes()[:500])
    plain = call_stage("predict", tmp_path, "--model", str(model_file), *chosen, "broken.jpg")
    explained = call_stage("predict", tmp_path, "--model", str(model_file),
                           "--explain", "maps/new", *chosen, "broken.jpg")
    assert explained.returncode == plain.returncode == 1, explained.stderr
    assert explained.stdout == plain.stdout  # the lines are predict's own, unchanged
    written = sorted(path.name for path in (tmp_path / "maps" / "new").iterdir())
    # One per image predicted, named by its stem; none for the one that failed.
    assert written == sorted(f"{Path(path).stem}.png" for path in chosen)
    for path in chosen:
        with Image.open(path) as photo, \
                Image.open(tmp_path / "maps" / "new" / f"{Path(path).stem}.png") as image:
            image.load()
            assert image.format == "PNG"
            assert image.size == png_size(*photo.size)  # the photo's aspect, and a title


def test_predict_explain_is_refused_where_it_cannot_write_one_png_per_image(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for name in ("a/1.jpg", "b/1.jpg", "2.jpg", "model.onnx", "model.keras", "taken"):
        (tmp_path / name).touch()
    for args, error in [
            (["--model", "model.onnx", "2.jpg"], "error: --explain needs the Keras model "
             "(its gradients), not model.onnx: pass --model models/model.keras"),
            (["--model", "model.keras", "a", "b"], "error: --explain: a/1.jpg and b/1.jpg "
             "would both write maps/1.png: explain them in separate runs")]:
        result = call_stage("predict", tmp_path, "--explain", "maps", *args)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [error]
    into_a_file = call_stage("predict", tmp_path, "--explain", "taken", "--model",
                             "model.keras", "2.jpg", "2.jpg")  # the same file twice: fine
    assert into_a_file.stderr.strip().splitlines() == [
        "error: --explain taken: is a file, not a folder"]
    assert not (tmp_path / "maps").exists()


# --- test-time augmentation (tta: flip) ----------------------------------------------

def lopsided_pair(photo: Path, folder: Path) -> tuple[Path, Path]:
    """`photo` with its left quarter painted black, and that image mirrored left-right:
    two PNGs (lossless: each decodes to the other's pixels mirrored) that a model tells
    apart."""
    from PIL import ImageDraw

    with Image.open(photo) as opened:
        image = opened.convert("RGB")
    ImageDraw.Draw(image).rectangle((0, 0, image.width // 4, image.height), fill=(0, 0, 0))
    image.save(folder / "image.png")
    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "mirror.png")
    return folder / "image.png", folder / "mirror.png"


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory: pytest.TempPathFactory, extracted_features: Extracted,
             model_file: Path) -> Path:
    """The extracted project with tta: flip and the model, after mirrored_features."""
    project = submit_project(tmp_path_factory.mktemp("tta") / "project", extracted_features,
                             model_file, tta="flip")
    result = call_stage("mirrored_features", project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"mirrored_features: wrote data/mirrored_features: 16 training images of 2 classes, "
        f"{len(extracted_features.ids)} test images, 1 unreadable")
    return project


def test_mirrored_features_follow_the_features_row_for_row(mirrored):
    from finetune.features.store import FeatureFile

    plain = json.loads((mirrored / "data/features/index.json").read_text())
    index = json.loads((mirrored / "data/mirrored_features/index.json").read_text())
    assert index["tta"] == "flip"
    assert {key: index[key] for key in plain} == plain  # the same images, ids, params, weights
    for name in ("train.npy", "test.npy"):
        rows = FeatureFile(mirrored / "data/mirrored_features" / name)
        assert len(rows) == len(FeatureFile(mirrored / "data/features" / name))


def mirror_expected(model_file: Path, photos: list[Path]) -> tuple:
    """The model's P(dog) on Pillow's pixels of each photo, and the mean of that and its
    P(dog) on the same pixels mirrored; and how far cached float16 features may move it."""
    import numpy as np

    from finetune.model.saved import load_model

    model = load_model(model_file)
    pixels = np.stack([photo_pixels(photo, SIZE) for photo in photos])
    plain = model.predict(pixels, verbose=0).ravel()
    flipped = model.predict(np.ascontiguousarray(pixels[:, :, ::-1]), verbose=0).ravel()
    rounding = np.maximum(float16_bound(model, pixels), float16_bound(model, pixels[:, :, ::-1]))
    return plain, (plain + flipped) / 2, rounding


def test_submission_with_tta_flip_is_the_clipped_mean_of_image_and_mirror(
        tmp_path, mirrored, extracted_features, model_file):
    import numpy as np

    project = shutil.copytree(mirrored, tmp_path / "project")
    clip = 0.2
    write_params(project, **{**SMALL, "tta": "flip", "clip": clip})
    result = call_stage("submit", project)
    assert result.returncode == 0, result.stderr
    assert "averaged with its mirror image (tta: flip)" in result.stderr
    rows = dict(read_submission(project))
    assert rows[extracted_features.corrupt] == 0.5  # the prior, as without tta
    readable = [photo for image_id, photo in extracted_features.photos.items()
                if image_id != extracted_features.corrupt]
    plain, mean, rounding = mirror_expected(model_file, readable)
    for photo, expected, bound in zip(readable, np.clip(mean, clip, 1 - clip), rounding,
                                      strict=True):
        allowed = PNG_TOLERANCE + float(bound) if is_png(photo) else JPEG_TOLERANCE
        assert rows[photo.stem] == pytest.approx(expected, abs=allowed), photo.name
    # Not the plain predictions: the mirror images changed them (PNGs: a tight check).
    pngs = [i for i, photo in enumerate(readable) if is_png(photo)]
    assert pngs and np.abs(mean - plain)[pngs].max() > 10 * PNG_TOLERANCE + rounding.max()


@pytest.mark.slow  # evaluate twice: 7 s
def test_evaluate_with_tta_flip_scores_the_mean_of_image_and_mirror(tmp_path, mirrored,
                                                                    model_file):
    """Uncalibrated and calibrated (scored cross-fitted: the temperature chosen on the
    other folds' plain logits applied to the image's and its mirror's): every prediction
    and score by its definition (tests.support.scores), from the photos' pixels."""
    import keras

    from finetune.model.assembly import with_temperature
    from finetune.model.saved import load_model
    from tests.support.scores import assert_evaluation_is_sound

    project = shutil.copytree(mirrored, tmp_path / "project")
    write_params(project, **{**SMALL, "tta": "flip", "val_split": 0.5})
    for calibrated in (False, True):
        if calibrated:
            with_temperature(load_model(model_file), 2.5).save(project / "models/model.keras")
        result = call_stage("evaluate", project)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "tta: flip (each image averaged with its mirror image)" in result.stderr
        assert ("calibrated (temperature 2.5)" in result.stderr) == calibrated
        assert_evaluation_is_sound(project)
    keras.backend.clear_session()


def test_predict_tta_flip_averages_an_image_with_its_mirror(tmp_path, model_file, photos):
    """--tta flip: an image and its mirror image get the same probabilities (each is the
    other's mirror), the mean of the model's two plain predictions."""
    import numpy as np

    from finetune.dataset.decode import decode_pixels
    from finetune.model.saved import load_model, predict_probabilities

    image, mirror = lopsided_pair(photos[0], tmp_path)
    result = call_stage("predict", tmp_path, "--model", str(model_file), "--all",
                        "--tta", "flip", image.name, mirror.name)
    assert result.returncode == 0, result.stderr
    printed = parse_all_probabilities(result.stdout)
    alone = predict_probabilities(load_model(model_file), np.stack(
        [decode_pixels(path.read_bytes(), SIZE) for path in (image, mirror)]))
    assert abs(alone[0, 1] - alone[1, 1]) > 1e-2  # a model that tells them apart
    for number, name in enumerate(CLASSES):
        assert printed[image.name][name] == pytest.approx(printed[mirror.name][name], abs=2e-6)
        assert printed[image.name][name] == pytest.approx(alone[:, number].mean(), abs=2e-6)
