"""The train stage on a small run: determinism, resuming, best-epoch selection, early failures.

MobileNet (alpha 0.25) with random weights whose BatchNormalization is calibrated on
the drawn photos (conftest's `mobilenet_random_weights`), cut at `conv_pw_3_relu`,
where such features still tell the drawn classes apart: the model learns, so its
metrics move from epoch to epoch and equal metrics mean something.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.support.commands import (
    assert_stage_error,
    call_stage,
    stage_command,
    stage_env,
)
from tests.support.projects import (
    extract_features,
    lay_out_project,
    train_images,
    write_train_images,
)
from tests.support.scores import assert_evaluation_is_sound, flatten
from tests.support.shared import ROOT

PER_CLASS = 30  # 24 training and 6 validation photos per class
SMALL = {
    "backbone": "MobileNet", "alpha": 0.25, "image_size": 96, "batch_size": 16,
    "cut_layer": "conv_pw_3_relu", "unfreeze_after": "conv_pw_2_relu", "head": "gap",
    "dense_units": 16, "epochs": 2, "lr": 1e-2, "head_epochs": 1, "head_lr": 1e-2,
    "augment_flip": True, "augment_rotation": 0.05,
}
VAL_LOSS_LOG = "metrics/train/plots/metrics/eval/loss.tsv"
VAL_ACCURACY_LOG = "metrics/train/plots/metrics/eval/accuracy.tsv"


@pytest.fixture(scope="module")
def weights_file(mobilenet_random_weights) -> Path:
    return mobilenet_random_weights


def logged(project: Path, log: str) -> list[float]:
    """One value per epoch, as dvclive logged it."""
    return [float(row.split("\t")[-1]) for row in (project / log).read_text().splitlines()[1:]]


# Without augmentation train reads the features stage's cached activations; with it,
# it decodes the photos and trains on pixels. Claims about training hold for both.
INPUTS = {"pixels": {}, "features": {"augment_flip": False, "augment_rotation": 0.0}}


def make_project(root: Path, sample_dir: Path, weights_file: Path, **overrides) -> Path:
    """A project dir as the stages before train leave it: PER_CLASS photos per class,
    and data/features (extracted with these params)."""
    lay_out_project(root, sample_dir, weights_file, PER_CLASS, **{**SMALL, **overrides})
    extract_features(root)
    return root


def train(project: Path) -> subprocess.CompletedProcess:
    return call_stage("train", project)


@pytest.mark.parametrize("inputs", list(INPUTS))
def test_same_params_give_the_same_metrics(tmp_path, sample_dir, weights_file, inputs):
    runs = []
    for name in ("first", "second"):
        project = make_project(tmp_path / name, sample_dir, weights_file, **INPUTS[inputs])
        result = train(project)
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("training on pixels" in result.stderr) == (inputs == "pixels")
        runs.append(json.loads((project / "metrics/train/metrics.json").read_text()))
        assert (project / "models/model.keras").is_file()
        assert not (project / "models/.train-backup").exists()
    assert runs[0] == runs[1]
    # Head epoch + 2 fine-tuning epochs, one continuous step count in dvclive.
    losses = logged(tmp_path / "first", VAL_LOSS_LOG)
    assert len(losses) == 3
    # Not equal by being constant: the model learned (validation loss moved every
    # epoch, and the last epoch classifies most validation photos right).
    assert len(set(losses)) == 3, losses
    assert logged(tmp_path / "first", VAL_ACCURACY_LOG)[-1] >= 0.75


@pytest.mark.parametrize("inputs", list(INPUTS))
def test_training_killed_mid_way_resumes_and_ends_as_an_uninterrupted_run(
        tmp_path, sample_dir, weights_file, inputs):
    overrides = {"epochs": 4, **INPUTS[inputs]}
    reference = make_project(tmp_path / "uninterrupted", sample_dir, weights_file, **overrides)
    assert train(reference).returncode == 0
    expected_losses = logged(reference, VAL_LOSS_LOG)
    assert len(set(expected_losses)) == 5, expected_losses  # epochs differ: a real check

    project = make_project(tmp_path / "killed", sample_dir, weights_file, **overrides)
    log = project / VAL_LOSS_LOG
    process = subprocess.Popen(stage_command("train"), cwd=project,
                               env=stage_env(PYTHONPATH=str(ROOT)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # Kill (SIGKILL: no clean-up) once two of the five epochs are logged: mid fine-tuning.
    while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (project / "models/model.keras").exists()

    resumed = train(project)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the interrupted run" in resumed.stderr
    expected = json.loads((reference / "metrics/train/metrics.json").read_text())
    got = json.loads((project / "metrics/train/metrics.json").read_text())
    assert flatten(got) == pytest.approx(flatten(expected), rel=1e-5, abs=1e-6)
    assert logged(project, VAL_LOSS_LOG) == pytest.approx(expected_losses, rel=1e-5, abs=1e-6)
    steps = [row.split("\t")[0] for row in log.read_text().splitlines()[1:]]
    assert steps == ["0", "1", "2", "3", "4"]  # each epoch once, redone ones too


def test_a_backup_from_other_params_is_not_resumed(tmp_path, sample_dir, weights_file):
    project = make_project(tmp_path, sample_dir, weights_file)
    stale = project / "models/.train-backup"
    stale.mkdir()
    (stale / "run-id").write_text("a run with other params")
    result = train(project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" not in result.stderr
    assert not stale.exists()


class Interrupted(Exception):
    """Ends a run after an epoch's checkpoint, as a kill would: the backup stays."""


def interrupt_after(epochs: int, monkeypatch) -> None:
    """Make the next in-process training stop once `epochs` epochs are checkpointed."""
    from finetune.training.checkpoints import Checkpoints

    checkpoint = Checkpoints.on_epoch_end

    def then_stop(self, epoch: int, logs: dict | None = None) -> None:
        checkpoint(self, epoch, logs)
        if epoch + 1 == epochs:
            raise Interrupted

    monkeypatch.setattr(Checkpoints, "on_epoch_end", then_stop)


def test_a_killed_run_resumes_under_other_execution_params(tmp_path, sample_dir, weights_file,
                                                           monkeypatch):
    """threads, cluster and strategy cannot change the weights (EXECUTION_PARAMS): a run
    killed under some values of them resumes under others instead of starting from scratch.
    (In this process: `threads` would need a process of its own, since TensorFlow fixes
    its thread pools at the first op; the record's unit tests cover each key.)"""
    project = make_project(tmp_path, sample_dir, weights_file, **INPUTS["features"])
    with monkeypatch.context() as patch:
        interrupt_after(2, patch)
        with pytest.raises(Interrupted):
            train(project)
    assert (project / "models/.train-backup/epoch-0002.weights.h5").is_file()
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["cluster"] != "local"
    params.update(cluster="local", cluster_workers=params["cluster_workers"] + 1)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    resumed = train(project)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the interrupted run after epoch 2" in resumed.stderr
    assert "discarding" not in resumed.stderr


def validation_loss(project: Path) -> float:
    """The saved model's loss on the validation split, computed here from the model file."""
    import keras
    import numpy as np
    import yaml

    from finetune.dataset.decode import load_images
    from finetune.dataset.manifest import open_train_images, read_manifest
    from finetune.dataset.split import labels_of, paths_of, split_samples
    from finetune.model.saved import load_model

    params = yaml.safe_load((project / "params.yaml").read_text())
    listed = read_manifest(project / "data/train.json")
    _, validation = split_samples(listed.samples, listed.classes, params["val_split"],
                                  params["seed"])
    with open_train_images(listed, project / "data/raw/train.zip") as read:
        images = load_images(read, paths_of(validation), params["image_size"], "validation")
    model = load_model(project / "models/model.keras")
    predictions = model.predict(images.astype(np.float32), verbose=0)
    return float(np.mean(keras.losses.binary_crossentropy(labels_of(validation), predictions)))


def test_kept_epoch_is_the_best_by_validation_loss(tmp_path, sample_dir, weights_file):
    # Two head epochs that learn, then one fine-tuning epoch at a learning rate that
    # wrecks the model: the best epoch (2) is not the last (3), by far.
    project = make_project(tmp_path, sample_dir, weights_file, head_epochs=2, head_lr=1e-2,
                           epochs=1, lr=0.3)
    result = train(project)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((project / "metrics/train/metrics.json").read_text())
    losses = logged(project, VAL_LOSS_LOG)
    assert len(losses) == 3
    best = 1 + losses.index(min(losses))
    assert best != len(losses) and losses[-1] > 2 * losses[best - 1], losses  # precondition
    assert metrics["best_epoch"] == best
    assert metrics["kept_epoch"] == best
    # The model file holds the kept epoch's weights, not the last epoch's.
    saved = validation_loss(project)
    assert saved == pytest.approx(losses[best - 1], abs=1e-4), losses
    assert saved != pytest.approx(losses[-1], abs=1e-2)


@pytest.mark.parametrize("keep", ["best", "last"])
def test_a_diverged_training_fails_in_one_line_and_so_does_the_next_run(
        tmp_path, sample_dir, weights_file, keep):
    """At lr 1e30 every epoch's validation loss is NaN: no epoch may be kept as the best
    (nor, with keep: last, the last), nothing is saved, and the backup goes, so the next
    run does not resume into a crash either: it fails the same way."""
    project = make_project(tmp_path, sample_dir, weights_file, head_epochs=0, epochs=2,
                           lr=1e30, keep=keep, **INPUTS["features"])
    for _ in range(2):
        result = train(project)
        assert_stage_error(result, "training diverged: the validation loss is not finite "
                                   "in all 2 epochs (last: nan); nothing saved. Lower `lr` "
                                   "(1e+30) and run again")
        assert not (project / "models/model.keras").exists()
        assert not (project / "models/.train-backup").exists()
    assert [math.isnan(loss) for loss in logged(project, VAL_LOSS_LOG)] == [True, True]


def test_evaluate_refuses_a_model_that_predicts_nan(tmp_path, sample_dir, weights_file):
    """A NaN model (one saved before diverged training was refused) is one line at
    evaluate, as at submit, not NaN metrics or a scikit-learn traceback."""
    import keras
    import numpy as np

    project = make_project(tmp_path, sample_dir, weights_file, head_epochs=0, epochs=1,
                           **INPUTS["features"])
    assert train(project).returncode == 0
    model_file = project / "models/model.keras"
    model = keras.saving.load_model(model_file)
    head = model.get_layer("head")
    head.set_weights([np.full_like(weights, np.nan) for weights in head.get_weights()])
    model.save(model_file)
    result = call_stage("evaluate", project)
    assert_stage_error(result, "models/model.keras predicts NaN for 12 of 12 validation "
                               "images (did training diverge?)")
    assert not (project / "metrics/evaluate/metrics.json").exists()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"backbone": "ResNet5O"}, "backbone: unknown keras.applications model 'ResNet5O'"),
    ({"cut_layer": "conv_pw_14_relu"}, "cut_layer: "),
    ({"lr": 0}, "'lr' must be > 0"),
])
def test_bad_params_fail_before_reading_images(tmp_path, sample_dir, weights_file, overrides,
                                               message):
    project = lay_out_project(tmp_path, sample_dir, weights_file, PER_CLASS,
                              **{**SMALL, **overrides})
    shutil.rmtree(project / "data")  # would fail differently if the images were read first
    assert_stage_error(train(project), message)
    assert not (project / "models/model.keras").exists()


@pytest.mark.parametrize("inputs", list(INPUTS))
def test_a_class_too_small_to_hold_one_out_trains_and_is_listed_unscored(
        tmp_path, sample_dir, weights_file, inputs):
    """A long-tail class of two photos (round(2 * 0.2) == 0 held out) does not block the
    data set: train learns it, evaluate scores the others and lists it under train_only."""
    project = lay_out_project(tmp_path, sample_dir, weights_file, PER_CLASS,
                              **{**SMALL, **INPUTS[inputs], "epochs": 1, "head_epochs": 0})
    write_train_images(project, train_images(project) | {
        f"rare/rare.{number}.jpg": (sample_dir / "train" / f"dog.{number}.jpg").read_bytes()
        for number in (50, 51)})  # photos the other classes do not hold
    extract_features(project)
    trained = train(project)
    assert trained.returncode == 0, trained.stderr[-3000:]
    note = ("too few images to hold one out at val_split 0.2, so trained on and not scored: "
            "rare (2 images)")
    assert f"train: {note}" in trained.stderr
    evaluated = call_stage("evaluate", project)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"evaluate: {note}" in evaluated.stderr
    metrics = json.loads((project / "metrics/evaluate/metrics.json").read_text())
    assert metrics["train_only"] == {"rare": 2}
    assert metrics["images"] == 2 * round(PER_CLASS * 0.2)
    assert "rare" not in metrics
    assert_evaluation_is_sound(project)


def test_features_and_pixels_train_the_same_model(tmp_path, sample_dir, weights_file,
                                                  monkeypatch):
    """One configuration trained on the cached float16 activations and on decoded pixels
    (frozen part run in float32 every step) ends with the same model, up to the rounding
    of the activations: float16 keeps 11 significant bits, a relative error of at most
    2^-11 (5e-4) per activation. Through 2 epochs of training that moves predictions by
    ~1e-4 here; 1e-2 leaves room and still fails on any real difference (other batches,
    other split, other weights: those move them by 0.1 or more)."""
    import numpy as np

    import stages.train as train_stage
    from finetune.core.params import load_params
    from finetune.dataset.manifest import open_train_images, read_manifest
    from finetune.dataset.split import split_samples
    from finetune.model.saved import load_model
    from finetune.training.determinism import set_determinism
    from tests.support.photos import photo_pixels

    models = {}
    for inputs, load in (("features", train_stage.feature_data),
                         ("pixels", train_stage.pixel_data)):
        project = make_project(tmp_path / inputs, sample_dir, weights_file, **INPUTS["features"])
        monkeypatch.chdir(project)
        params = load_params()
        set_determinism(params["seed"])
        train_stage.train(params, load(params))
        models[inputs] = load_model(project / "models/model.keras")
        losses = logged(project, VAL_LOSS_LOG)
        assert len(set(losses)) == len(losses), losses  # it learned: a real comparison
    listed = read_manifest(tmp_path / "pixels/data/train.json")
    _, validation = split_samples(listed.samples, listed.classes, params["val_split"],
                                  params["seed"])
    with open_train_images(listed, tmp_path / "pixels/data/raw/train.zip") as read:
        photos = np.stack([photo_pixels(io.BytesIO(read(name)), params["image_size"])
                           for name, _ in validation])
    predictions = {inputs: model.predict(photos, verbose=0).ravel()
                   for inputs, model in models.items()}
    assert np.ptp(predictions["pixels"]) > 0.2  # predictions differ from photo to photo
    difference = np.abs(predictions["features"] - predictions["pixels"]).max()
    print(f"largest difference in P(dog), features vs pixels: {difference:.2e}")
    assert difference < 1e-2


def test_calibration_fits_a_temperature_that_evaluate_submit_and_predict_apply(
        tmp_path, sample_dir, weights_file):
    """`calibration: temperature`: train fits the temperature on the validation split's
    logits and saves it in the model, whose probabilities are then softmax(logits / T)
    wherever it is used, with no params (predict; submit; evaluate, which scores it
    cross-fitted: tests.support.scores). Training itself is the same as with `none`, and
    `none` saves the model and writes the metrics as before: no temperature, no new key."""
    import keras
    import numpy as np

    from finetune.core.params import load_params
    from finetune.core.paths import TEST_FEATURES, TRAIN_FEATURES
    from finetune.dataset.decode import load_images
    from finetune.features.store import FeatureFile
    from finetune.model.assembly import logits_part, model_temperature, trained_part
    from finetune.model.calibration import (
        MAX_TEMPERATURE,
        MIN_TEMPERATURE,
        choose_temperature,
        scaled_probabilities,
    )
    from finetune.model.saved import load_model, predict_probabilities
    from finetune.training.inputs import feature_data
    from tests.support.projects import write_params
    from tests.support.scores import reference_scores

    # 60 validation photos: on a dozen, cross-fitting rightly finds no temperature worth
    # keeping, and train keeps 1 (tests/unit/evaluation/test_calibration.py).
    short = {**INPUTS["features"], "head_epochs": 0, "epochs": 2, "val_split": 0.5}
    project = lay_out_project(tmp_path / "project", sample_dir, weights_file, 60,
                              **{**SMALL, **short})
    extract_features(project)
    runs = {}
    for calibration in ("none", "temperature"):
        write_params(project, **{**SMALL, **short, "calibration": calibration})
        trained = train(project)
        assert trained.returncode == 0, trained.stderr[-3000:]
        evaluated = call_stage("evaluate", project)
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        runs[calibration] = {
            "stderr": trained.stderr + evaluated.stderr,
            "model": load_model(project / "models/model.keras"),
            "metrics": json.loads((project / "metrics/evaluate/metrics.json").read_text())}
    none, calibrated = runs["none"], runs["temperature"]

    # none: the model as build_model makes it, the metrics of before (no calibration/ key).
    assert model_temperature(none["model"]) is None
    assert none["model"].get_layer("head").layers[-1].get_config()["activation"] == "sigmoid"
    assert "temperature" not in none["stderr"]
    assert sorted(flatten(none["metrics"])) == sorted(
        reference_scores(np.array([0, 1]), np.eye(2), ["cat", "dog"]))

    assert_evaluation_is_sound(project)  # the calibrated run's: scored cross-fitted
    # temperature: fitted in train, stored in the model, said by both stages.
    model = calibrated["model"]
    temperature = model_temperature(model)
    assert temperature is not None and temperature != 1.0
    assert f"train: temperature {temperature:.6g} fitted on the logits of the 60 validation " \
           "images (cross-fitted log loss " in calibrated["stderr"]
    assert f"calibrated (temperature {temperature:.6g}), cross-fitted over 5 folds" in (
        calibrated["stderr"])
    assert calibrated["metrics"]["calibration"]["temperature"] == temperature
    # The temperature that fits the validation split best: its logits (from the cached
    # features, as train read them), its labels (from the photos' class folders).
    with contextlib.chdir(project):
        validation = feature_data(load_params())
    classes = ["cat", "dog"]
    labels = np.array([classes.index(Path(path).parts[0])
                       for path in validation.validation_paths])
    rows = FeatureFile(project / TRAIN_FEATURES)[validation.validation.rows]
    validation_logits = logits_part(model).predict_on_batch(rows.astype(np.float32))
    choice = choose_temperature(validation_logits, labels, 1234)
    assert temperature == pytest.approx(choice.temperature, rel=1e-6)
    assert choice.temperature == choice.fitted  # precondition: a temperature to apply
    assert MIN_TEMPERATURE < temperature < MAX_TEMPERATURE
    # The same training: the output layer's weights, now the logits', are those of `none`.
    for mine, theirs in zip(model.get_layer("head").get_layer("logits").get_weights(),
                            none["model"].get_layer("head").layers[-1].get_weights(),
                            strict=True):
        assert np.array_equal(mine, theirs)
    assert calibrated["metrics"]["accuracy"] == none["metrics"]["accuracy"]
    assert calibrated["metrics"]["calibration"]["log_loss_uncalibrated"] == pytest.approx(
        none["metrics"]["log_loss"], rel=1e-5)

    # The saved model's probabilities are softmax(logits / T), from pixels...
    # Training images as files (predict reads files): the photos train.zip's were made of.
    names = sorted(train_images(project))[::5]
    photos = [sample_dir / "train" / name.split("/")[1] for name in names]
    pixels = load_images(lambda file: Path(file).read_bytes(), [str(photo) for photo in photos],
                         SMALL["image_size"], "test")
    logits = logits_part(model, on_features=False).predict_on_batch(pixels)
    expected = scaled_probabilities(logits, temperature)
    assert np.abs(predict_probabilities(model, pixels) - expected).max() < 1e-6
    uncalibrated = predict_probabilities(none["model"], pixels)
    assert np.abs(uncalibrated - scaled_probabilities(logits, 1.0)).max() < 1e-6
    assert np.abs(uncalibrated - expected).max() > 1e-3  # the temperature changed them
    # ... and so what predict prints, given no params (run where there are none) ...
    result = call_stage("predict", tmp_path, "--model", str(project / "models/model.keras"),
                        "--all", *(str(photo) for photo in photos))
    assert result.returncode == 0, result.stderr
    printed = [float(line.split("\t")[-1].partition("=")[2]) for line in result.stdout.split("\n")
               if line]
    assert printed == pytest.approx(expected[:, 1], abs=1e-6)
    # ... and what submit writes (clipped) for the test set's cached features.
    assert call_stage("submit", project).returncode == 0
    features = FeatureFile(project / TEST_FEATURES)[np.arange(4)].astype(np.float32)
    test_logits = logits_part(model).predict_on_batch(features)
    submission = (project / "data/submission/submission.csv").read_text()
    submitted = [float(row.split(",")[1]) for row in submission.split()[1:]]
    assert submitted == pytest.approx(np.clip(scaled_probabilities(test_logits, temperature)[:, 1],
                                              0.005, 0.995), abs=1e-6)
    assert np.asarray(trained_part(model).predict_on_batch(features)).ravel() == pytest.approx(
        scaled_probabilities(test_logits, temperature)[:, 1], abs=1e-6)
    keras.backend.clear_session()
