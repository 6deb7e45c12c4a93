"""The features stage (stages/features.py), and the rows it writes (their file format:
tests/unit/features/test_store.py).

The stage runs on conftest's `extracted_features` project (MobileNet alpha 0.25 at
96 px with `mobilenet_random_weights`, split at conv_pw_3_relu: 24 x 24 x 32
activations an image), shared with tests/stages/test_submit_predict.py. The expected rows
come from `finetune.model.assembly.build_feature_extractor` applied to pixels decoded with
Pillow (tests.support.photos.photo_pixels), not with the stage's own decoder.

How close a row must be: float16 keeps an 11-bit significand, so the cached value is
within 2^-11 of the float32 one, relatively; the check allows 2^-10 (and 1e-6
absolute, for float32 arithmetic done in another order near zero). That holds only
where both sides decode the same pixels: PNG. For a JPEG, TensorFlow (libjpeg's fast
integer IDCT) and Pillow (its accurate one) differ by up to 4 levels on a pixel,
which this random backbone amplifies to 0.09-0.2 of a row's norm (measured), while
two different photos' rows are 0.9 or more apart: a JPEG's row must be within
JPEG_DISTANCE of its own photo's and nearer to it than to any other's.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from finetune.core.errors import StageError
from finetune.features.store import FEATURE_PARAMS, FeatureFile, read_index
from tests.support.commands import assert_stage_error, call_stage, stage_env
from tests.support.photos import CLASSES, photo_pixels
from tests.support.projects import (
    EXTRACTED_PER_CLASS,
    SMALL_NETWORK,
    Extracted,
    lay_out_project,
    train_images,
    write_params,
    write_train_images,
    write_zip,
)
from tests.support.shared import ROOT

FLOAT16_RTOL = 2.0 ** -10
FLOAT32_ATOL = 1e-6
JPEG_DISTANCE = 0.35  # relative L2 distance to the row of Pillow's pixels (measured <= 0.2)


def features_dir(project: Path) -> Path:
    return project / "data" / "features"


def read_json_index(project: Path) -> dict:
    return json.loads((features_dir(project) / "index.json").read_text())


# --- FeatureWriter / FeatureFile --------------------------------------------


# --- the stage ----------------------------------------------------------------

@pytest.fixture(scope="module")
def extractor(extracted_features: Extracted):
    """The frozen part as the stage builds it, from the project's weights file."""
    from finetune.core.params import load_params
    from finetune.model.assembly import build_feature_extractor

    project = extracted_features.project
    params = load_params(project / "params.yaml")
    return build_feature_extractor(params, project / "models" / "backbone_notop.h5")


def is_png(photo: bytes) -> bool:
    with Image.open(io.BytesIO(photo)) as image:
        return image.format == "PNG"


def pixels_of(photo: bytes) -> np.ndarray:
    """Pillow's pixels of `photo` at SMALL_NETWORK's size (tests.support.photos)."""
    return photo_pixels(io.BytesIO(photo), SMALL_NETWORK["image_size"])


def assert_rows_of(rows: np.ndarray, photos: dict[str, bytes], extractor) -> None:
    """Row i is the frozen part's output for the i-th of `photos` (name -> bytes; see the
    module docstring)."""
    expected = np.asarray(extractor.predict_on_batch(
        np.stack([pixels_of(photo) for photo in photos.values()])))
    assert rows.shape == expected.shape
    pngs = 0
    for i, (name, photo) in enumerate(photos.items()):
        if is_png(photo):
            pngs += 1
            np.testing.assert_allclose(rows[i], expected[i], rtol=FLOAT16_RTOL,
                                       atol=FLOAT32_ATOL, err_msg=name)
        distances = [np.linalg.norm(rows[i] - other) / np.linalg.norm(other)
                     for other in expected]
        assert distances[i] < JPEG_DISTANCE and int(np.argmin(distances)) == i, (
            name, distances)
    assert pngs >= 2  # the tight check ran


def test_training_rows_follow_the_index(extracted_features, extractor):
    project = extracted_features.project
    index = read_json_index(project)
    # Every image of train.zip once (its entries are named <class>/<file>, as images
    # are), class by class, sorted.
    with zipfile.ZipFile(project / "data" / "raw" / "train.zip") as archive:
        entries = archive.namelist()
    listed = [[entry, label] for label, name in enumerate(CLASSES)
              for entry in sorted(e for e in entries if e.startswith(f"{name}/"))]
    assert len(listed) == 2 * EXTRACTED_PER_CLASS
    assert index["train"] == listed
    # SMALL_NETWORK's values, and params.yaml's for the keys it leaves alone (precision)
    written = {**yaml.safe_load((ROOT / "params.yaml").read_text()), **SMALL_NETWORK}
    assert index["params"] == {key: written[key] for key in FEATURE_PARAMS}
    assert index["dtype"] == "float16" and index["shape"] == [24, 24, 32]
    features = FeatureFile(features_dir(project) / "train.npy")
    assert len(features) == len(listed) and features.shape == (24, 24, 32)
    photos = train_images(project)
    assert_rows_of(features[np.arange(len(features))],
                   {name: photos[name] for name, _ in listed}, extractor)


def test_test_rows_follow_the_sample(extracted_features, extractor):
    """One row per id of sample_submission.csv, in its order (shuffled: neither sorted
    nor the archive's); the corrupt image's row is zeros, and the index says why."""
    extracted = extracted_features
    ids, bad = extracted.ids, extracted.corrupt
    assert ids != sorted(ids, key=int) and ids != sorted(ids, key=int, reverse=True)
    index = read_json_index(extracted.project)
    assert index["test_ids"] == ids
    assert list(index["test_unreadable"]) == [bad]
    failure = index["test_unreadable"][bad]
    assert set(failure) == {"file", "reason"} and failure["file"] == f"test/{bad}.jpg"
    assert failure["reason"].strip() and "\n" not in failure["reason"], failure

    features = FeatureFile(features_dir(extracted.project) / "test.npy")
    rows = features[np.arange(len(features))]
    assert len(rows) == len(ids)
    assert not rows[ids.index(bad)].any()
    readable = [i for i, image_id in enumerate(ids) if image_id != bad]
    assert all(rows[i].any() for i in readable)
    assert_rows_of(rows[readable], {ids[i]: extracted.photos[ids[i]].read_bytes()
                                    for i in readable}, extractor)
    # The stage succeeded, and says so with the count of unreadable images.
    last = extracted.result.stderr.strip().splitlines()[-1]
    assert last == (f"features: wrote data/features: {2 * EXTRACTED_PER_CLASS} training "
                    f"images of 2 classes, {len(ids)} test images, 1 unreadable")


def test_the_extraction_batch_does_not_change_the_rows(tmp_path, extracted_features, extractor,
                                                      monkeypatch):
    # EXTRACT_BATCH is fixed, not `batch_size`, because the batch a forward pass runs in
    # does not change an image's activations (BatchNormalization is in inference mode).
    from finetune.features import extract as extraction

    read = list(train_images(extracted_features.project).values())
    written = {}
    for batch in (extraction.EXTRACT_BATCH, 3):
        monkeypatch.setattr(extraction, "EXTRACT_BATCH", batch)
        path = tmp_path / f"batch{batch}.npy"
        assert extraction.extract(extractor, read.__getitem__, len(read), path,
                                  "features: test") == {}
        written[batch] = FeatureFile(path)[np.arange(len(read))]
    first, second = written.values()
    np.testing.assert_allclose(first, second, rtol=FLOAT16_RTOL, atol=FLOAT32_ATOL)


def test_progress_lines(extracted_features):
    lines = extracted_features.result.stderr.splitlines()
    for what, count in [("training images", 2 * EXTRACTED_PER_CLASS),
                        ("test images", len(extracted_features.ids))]:
        progress = [line for line in lines if line.startswith(f"features: {what}: ")]
        assert 1 <= len(progress) <= 5, lines
        assert re.fullmatch(rf"features: {what}: {count}/{count} images "
                            r"\(100%, [\d,]+ images/s\)", progress[-1]), progress
    assert "Traceback" not in extracted_features.result.stderr


def test_params_it_does_not_read_leave_its_output_unchanged(tmp_path, extracted_features):
    """Params of train, evaluate and submit (batch_size included: the stage's batch is
    fixed) do not change a byte of the features, so `dvc exp run -S` on them reuses it."""
    project = tmp_path / "project"
    shutil.copytree(extracted_features.project, project,
                    ignore=shutil.ignore_patterns("features"))
    assert not features_dir(project).exists()
    write_params(project, **{**SMALL_NETWORK, "lr": 0.5, "batch_size": 3,
                             "cut_layer": "conv_pw_5_relu", "dense_units": 7, "head": "flatten",
                             "dropout": 0.5, "seed": 7, "val_split": 0.3, "epochs": 9,
                             "clip": 0.1})
    result = call_stage("features", project)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("train.npy", "test.npy", "index.json"):
        assert (features_dir(project) / name).read_bytes() == (
            features_dir(extracted_features.project) / name).read_bytes(), name
    assert sorted(path.name for path in features_dir(project).iterdir()) == [
        "index.json", "test.npy", "train.npy"]


# --- mirrored_features (tta) ----------------------------------------------------

def test_the_mirrored_extractor_is_the_extractor_of_the_mirrored_images(extracted_features,
                                                                        extractor):
    """mirrored_features' extractor (tta: flip) gives, for each image, the plain
    extractor's rows of that image mirrored left-right beforehand (the same ops on the
    same pixels: equal to float32 rounding), and other rows than the image's own."""
    from finetune.core.params import load_params
    from finetune.model.assembly import build_feature_extractor

    project = extracted_features.project
    mirrored = build_feature_extractor(load_params(project / "params.yaml"),
                                       project / "models" / "backbone_notop.h5", mirror=True)
    size = SMALL_NETWORK["image_size"]
    photos = list(train_images(project).values())[:6]
    # And one image left and right of which differ for certain: dark left, bright right.
    lopsided = np.zeros((size, size, 3), dtype=np.float32)
    lopsided[:, size // 2:] = 255.0
    lopsided[size // 4:size // 2, :size // 4] = 128.0
    pixels = np.stack([*(pixels_of(photo) for photo in photos), lopsided])
    rows = np.asarray(mirrored.predict_on_batch(pixels))
    of_flipped = np.asarray(extractor.predict_on_batch(pixels[:, :, ::-1]))
    scale = np.abs(of_flipped).max()
    assert np.abs(rows - of_flipped).max() <= 1e-5 * scale
    plain = np.asarray(extractor.predict_on_batch(pixels))
    difference = np.linalg.norm(rows[-1] - plain[-1]) / np.linalg.norm(plain[-1])
    assert difference > 0.1, difference


def test_mirrored_features_with_tta_none_write_only_their_index_without_tensorflow(tmp_path):
    """tta: none (params.yaml's): data/mirrored_features holds just an index saying so,
    written at once, with no TensorFlow (or Keras) imported: experiments pay nothing."""
    write_params(tmp_path)
    probe = ("import runpy, sys; sys.argv = ['mirrored_features']; "
             "runpy.run_module('stages.mirrored_features', run_name='__main__', "
             "alter_sys=True)\n"
             "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path,
                          env=stage_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    folder = tmp_path / "data" / "mirrored_features"
    assert [path.name for path in folder.iterdir()] == ["index.json"]
    assert json.loads((folder / "index.json").read_text()) == {"tta": "none"}
    assert "mirrored_features: tta: none, nothing to compute" in done.stderr


def other_value(key: str) -> object:
    return {"backbone": "MobileNetV2", "alpha": 0.5, "image_size": 128,
            "preprocessing": "unit", "unfreeze_after": "conv_pw_2_relu",
            "precision": "mixed_bfloat16"}[key]


def test_read_index_refuses_features_of_other_params(extracted_features):
    from finetune.core.params import load_params

    project = extracted_features.project
    params = load_params(project / "params.yaml")
    path = features_dir(project) / "index.json"
    assert read_index(params, path)["test_ids"] == extracted_features.ids
    for key in FEATURE_PARAMS:
        with pytest.raises(StageError) as error:
            read_index({**params, key: other_value(key)}, path)
        message = str(error.value)
        assert "\n" not in message and f"made with {key}:" in message, message


def test_submit_refuses_features_of_another_image_size(tmp_path, extracted_features):
    project = tmp_path / "project"
    shutil.copytree(extracted_features.project, project)
    write_params(project, **{**SMALL_NETWORK, "image_size": 128})
    line = assert_stage_error(call_stage("submit", project), "image_size", "dvc repro features")
    assert "96" in line and "128" in line, line
    assert not (project / "data" / "submission" / "submission.csv").exists()


def test_unreadable_training_image_fails(tmp_path, sample_dir, mobilenet_random_weights):
    """split_classes lists only images that decode: one that does not is an error that
    names it, and nothing of data/features is left (a stale one from before included)."""
    project = lay_out_project(tmp_path / "project", sample_dir, mobilenet_random_weights, 2,
                              test_images=2, **SMALL_NETWORK)
    images = train_images(project)
    images["dog/dog.1.jpg"] = images["dog/dog.1.jpg"][:300]
    # Listed as it is now: an entry of another size or CRC than listed is refused before
    # any decoding (test_a_train_zip_unlike_its_listing_is_refused); here the decoder is
    # what finds it.
    write_train_images(project, images)
    stale = features_dir(project)
    stale.mkdir()
    (stale / "index.json").write_text("{}")
    line = assert_stage_error(call_stage("features", project), "dvc repro -f split_classes")
    assert line.startswith("error: dog/dog.1.jpg cannot be decoded ("), line
    assert sorted(path.name for path in (project / "data").iterdir()) == ["raw", "train.json"]


@pytest.mark.parametrize("change", ["removed", "edited", "same size"])
def test_a_train_zip_unlike_its_listing_is_refused(tmp_path, sample_dir,
                                                   mobilenet_random_weights, change):
    # The stages read the training images from train.zip through data/train.json: an
    # archive changed behind DVC's back (a stage run by hand after fetching again, an edit)
    # must not be read as if it were the one listed there. An image removed, or another image
    # under the same entry name (another size; the same size and another CRC), is refused
    # in one line before anything slow, naming the image and what to rerun.
    project = lay_out_project(tmp_path / "project", sample_dir, mobilenet_random_weights, 2,
                              test_images=2, **SMALL_NETWORK)
    images = train_images(project)
    listed = images["cat/cat.1.jpg"]
    if change == "removed":
        del images["cat/cat.1.jpg"]
    elif change == "edited":  # still a readable JPEG of the same name, but longer
        images["cat/cat.1.jpg"] = listed + b"edited"
    else:  # one byte of the last scan changed: the same size, another CRC-32
        edited = bytearray(listed)
        edited[-10] ^= 0x01
        images["cat/cat.1.jpg"] = bytes(edited)
    write_zip(project / "data" / "raw" / "train.zip", images)
    what = "has no entry" if change == "removed" else (
        f"has another entry ({len(images['cat/cat.1.jpg']):,} bytes, CRC "
        f"{zlib.crc32(images['cat/cat.1.jpg']):08x}; data/train.json says {len(listed):,}, "
        f"{zlib.crc32(listed):08x})")
    line = assert_stage_error(call_stage("features", project))
    assert line == (f"error: data/raw/train.zip {what} 'cat/cat.1.jpg' for cat/cat.1.jpg: "
                    "data/raw/train.zip changed since split_classes; run "
                    "`dvc repro -f split_classes`")
    assert not features_dir(project).exists()


# The features stage, stopped (and then killed) once its training rows are written, in
# the middle of writing data/features: its scratch folder is then full size.
STOPPED_FEATURES = """
import runpy, sys, time
import finetune.features.extract as extract
write = extract.extract_training_images
def write_then_wait(*args, **kwargs):
    write(*args, **kwargs)
    print("written", flush=True)
    time.sleep(600)
extract.extract_training_images = write_then_wait
runpy.run_module("stages.features", run_name="__main__")
"""


@pytest.mark.slow  # a stage process started and killed (tests/unit/core/test_atomic.py: fast)
def test_a_killed_run_leaves_nothing_behind_its_rerun(tmp_path, sample_dir,
                                                      mobilenet_random_weights):
    """A run killed mid-write (out of memory, a CI timeout) cannot remove its scratch; the
    next run does, so only the declared outputs remain."""
    project = lay_out_project(tmp_path / "project", sample_dir, mobilenet_random_weights, 2,
                              test_images=2, **SMALL_NETWORK)
    stage = subprocess.Popen([sys.executable, "-c", STOPPED_FEATURES], cwd=project,
                             env=stage_env(PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert stage.stdout.readline() == "written\n", "the stage failed before writing"
    finally:
        stage.send_signal(signal.SIGKILL)
        stage.wait()
        stage.stdout.close()
    left = sorted(path.name for path in (project / "data").iterdir())
    assert [name for name in left if name.startswith(".features.")], left  # the kill's scratch
    result = call_stage("features", project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(path.name for path in (project / "data").iterdir()) == [
        "features", "raw", "train.json"]


def test_unfreeze_after_inside_a_block_fails_before_any_extraction(tmp_path, sample_dir,
                                                                   mobilenet_random_weights):
    """A split that train cannot build (ResNet50's conv4_block1_1_relu, whose block's
    shortcut skips past it to the Add below cut_layer) is refused before the hours of
    extraction, with the nearest layers it can be."""
    project = lay_out_project(tmp_path / "project", sample_dir, mobilenet_random_weights, 2,
                              **{**SMALL_NETWORK, "backbone": "ResNet50", "alpha": 1.0,
                                 "image_size": 32, "unfreeze_after": "conv4_block1_1_relu",
                                 "cut_layer": "conv4_block2_out"})
    result = call_stage("features", project)
    assert_stage_error(result, "unfreeze_after: ResNet50's 'conv4_block1_1_relu' is inside a "
                               "block", "conv3_block4_out (before it), conv4_block1_out (after it)")
    assert "values per image" not in result.stderr  # extraction never started
    assert not features_dir(project).exists()
