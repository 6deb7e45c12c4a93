"""stages/submit.py and stages/predict.py run as commands on a small real model.

One MobileNet (alpha 0.25, 96 px, random weights) is built and saved once per
module; each test runs the scripts in a fresh project folder holding params.yaml,
data/raw/test.zip, data/raw/sample_submission.csv and models/model.keras.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, write_legacy_weights

SIZE = 96
IMAGES = 20
SMALL = {
    "backbone": "MobileNet", "alpha": 0.25, "image_size": SIZE,
    "cut_layer": "conv_pw_13_relu", "unfreeze_after": "conv_pw_13_relu",
    "head": "gap", "dense_units": 0, "batch_size": 8,
}


def pixels(photo: Path):
    import numpy as np

    from stages.model import decode_image

    return np.asarray(decode_image(photo.read_bytes(), SIZE), dtype=np.float32)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    """The small model, saved. Its weights are random, but calibrated on the photos: with
    BatchNormalization's initial statistics the features vanish (~1e-16) within 13
    blocks and every prediction is 0.5, which would hide mix-ups and clipping."""
    import keras
    import numpy as np

    from stages.common import load_params
    from stages.model import build_model

    params = {**load_params(ROOT / "params.yaml"), **SMALL}
    folder = tmp_path_factory.mktemp("model")
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNet(alpha=0.25, include_top=False,
                                            input_shape=(SIZE, SIZE, 3), weights=None)
    x = np.stack([pixels(sample_dir / "test" / f"{n}.jpg") for n in range(1, IMAGES + 1)])
    x = x / 127.5 - 1  # MobileNet's preprocess_input
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            inputs = np.asarray(keras.Model(backbone.input, layer.input)(x))
            gamma, beta, _, _ = layer.get_weights()
            layer.set_weights([gamma, beta, inputs.mean(axis=(0, 1, 2)),
                               inputs.var(axis=(0, 1, 2))])
    weights = folder / "mobilenet_notop.h5"
    write_legacy_weights(backbone, weights)
    model = build_model(params, weights, fine_tune=True)
    # Centre and spread the head's logits (mean 0, sd 2 over the photos), so that
    # predictions fall on both sides of 0.5 and some beyond 0.4 and 0.6.
    features = np.asarray(backbone(x)).mean(axis=(1, 2))
    output = model.get_layer("head").layers[-1]
    kernel, _ = output.get_weights()
    logits = features @ kernel
    scale = 2 / logits.std()
    output.set_weights([kernel * scale, -logits.mean(axis=0) * scale])
    path = folder / "model.keras"
    model.save(path)
    return path


@pytest.fixture
def photos(sample_dir: Path) -> list[Path]:
    return [sample_dir / "test" / f"{n}.jpg" for n in range(1, IMAGES + 1)]


def make_project(root: Path, model_file: Path, photos: list[Path], ids: list[str] | None = None,
                 corrupt: dict[str, bytes] | None = None, **params: Any) -> Path:
    """A project folder for submit: test.zip holds `photos` (as test/N.jpg, in reverse
    order), the sample lists `ids` (default: the photos' ids, shuffled)."""
    settings = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings.update(SMALL, **params)
    (root / "params.yaml").write_text(yaml.safe_dump(settings))
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


def run_module(module: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


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
    result = run_module("stages.submit", project)
    assert result.returncode == 0, result.stderr
    rows = read_submission(project)
    assert len(rows) == IMAGES
    labels = [label for _, label in rows]
    assert all(0.4 <= label <= 0.6 for label in labels)
    # The model's spread-out outputs hit both bounds: clipping happened.
    assert 0.4 in labels and 0.6 in labels, labels
    assert "Traceback" not in result.stderr
    progress = [line for line in result.stderr.splitlines() if "/20 images" in line]
    assert 1 <= len(progress) <= 11 and "20/20 images (100%)" in progress[-1]


def test_submission_unclipped_matches_model(tmp_path, model_file, photos):
    """With clip 0, the rows are the model's own predictions for each id's image."""
    import numpy as np

    from stages.model import load_model

    project = make_project(tmp_path, model_file, photos, clip=0.0)
    result = run_module("stages.submit", project)
    assert result.returncode == 0, result.stderr
    rows = dict(read_submission(project))
    model = load_model(model_file)
    expected = model.predict(np.stack([pixels(photo) for photo in photos]), verbose=0).ravel()
    for photo, probability in zip(photos, expected, strict=True):
        assert rows[photo.stem] == pytest.approx(probability, abs=1e-5)


def test_sample_id_without_image_fails(tmp_path, model_file, photos):
    ids = [photo.stem for photo in photos] + ["999999"]
    project = make_project(tmp_path, model_file, photos, ids=ids)
    result = run_module("stages.submit", project)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "999999" in result.stderr and result.stderr.startswith("error: ")
    assert not (project / "data" / "submission.csv").exists()


def test_image_without_sample_id_fails(tmp_path, model_file, photos):
    ids = [photo.stem for photo in photos[1:]]
    project = make_project(tmp_path, model_file, photos, ids=ids)
    result = run_module("stages.submit", project)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"test/{photos[0].name}" in result.stderr
    assert not (project / "data" / "submission.csv").exists()


def test_corrupt_test_image_gets_half(tmp_path, model_file, photos):
    bad = photos[3].stem
    corrupt = {bad: photos[3].read_bytes()[:500]}  # a truncated JPEG
    project = make_project(tmp_path, model_file, photos, corrupt=corrupt, clip=0.005)
    result = run_module("stages.submit", project)
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
    result = run_module("stages.predict", tmp_path, "--model", str(model_file),
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


def test_predict_matches_model_and_exits_zero(tmp_path, model_file, photos):
    from stages.model import load_model

    chosen = photos[:3]
    result = run_module("stages.predict", ROOT, "--model", str(model_file),
                        *(str(photo) for photo in chosen))
    assert result.returncode == 0, result.stderr
    printed = parse_predictions(result.stdout)
    model = load_model(model_file)
    for photo in chosen:
        expected = float(model.predict(pixels(photo)[None], verbose=0)[0, 0])
        assert float(printed[str(photo)][1]) == pytest.approx(expected, abs=1e-5)


def test_predict_usage_errors(tmp_path):
    no_args = run_module("stages.predict", tmp_path)
    assert no_args.returncode == 2 and "Traceback" not in no_args.stderr
    missing = run_module("stages.predict", tmp_path, "nowhere.jpg")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: nowhere.jpg: no such file or folder"
    (tmp_path / "empty").mkdir()
    assert run_module("stages.predict", tmp_path, "empty").returncode == 2
    (tmp_path / "a.jpg").touch()
    no_model = run_module("stages.predict", tmp_path, "a.jpg")
    assert no_model.returncode == 2
    assert no_model.stderr.strip().splitlines() == [
        "error: models/model.keras not found: run `dvc repro train`, or pass --model"]
