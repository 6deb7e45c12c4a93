"""Any labelled image set: a folder with one sub-folder per class (three classes of drawn
photos) through the whole DAG with real DVC in a temporary git repo, offline.

It checks the plumbing of N classes: `dvc repro`, `dvc exp run -S lr=...`, `dvc metrics
diff`, `dvc plots show`, the class names travelling from the folders into the model and
out of `predict`, and a data set with no test set running `submit` without a Kaggle
file. (That transfer learning works on a real data set of five classes is
tests/slow/test_transfer.py's claim.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune.dataset.manifest import read_manifest
from scripts.demo import SUMMARY
from tests.support.commands import charts, dvc, ran_stages
from tests.support.photos import DRAWN_CLASSES, DRAWN_PER_CLASS
from tests.support.projects import train_images
from tests.support.scores import assert_evaluation_is_sound
from tests.support.shared import ROOT

# With `make test`'s two processes, in the one that makes the shared class-folder run.
pytestmark = pytest.mark.xdist_group("class_folder_run")

CLASSES = list(DRAWN_CLASSES)  # sorted: label i is CLASSES[i]
PER_CLASS = DRAWN_PER_CLASS


@pytest.fixture
def pipeline(class_folder_run):
    """The session's class-folder run (tests/e2e/conftest.py): project, environment, and
    the first `dvc repro`'s output."""
    return class_folder_run.project, class_folder_run.env, class_folder_run


def data_source(project: Path) -> Path:
    """The folder of class folders `project` fetched its data from (data_source)."""
    return Path(yaml.safe_load((project / "params.yaml").read_text())["data_source"])


def test_repro_runs_every_stage_on_the_class_folders(pipeline):
    project, _, first = pipeline
    assert ran_stages(first.stdout) == [
        "fetch_data", "split_classes", "fetch_weights", "features", "mirrored_features", "train",
        "evaluate", "submit", "export"]
    # No test set: train.zip alone, no test features, and an empty submission folder.
    assert sorted(path.name for path in (project / "data/raw").iterdir()) == ["train.zip"]
    assert sorted(path.name for path in (project / "data/features").iterdir()) == [
        "index.json", "train.npy"]
    # tta: none: mirrored_features wrote its index alone, saying so.
    assert sorted(path.name for path in (project / "data/mirrored_features").iterdir()) == [
        "index.json"]
    assert list((project / "data/submission").iterdir()) == []
    assert "nothing to submit" in first.stdout + first.stderr
    report = json.loads((project / "metrics/data.json").read_text())
    assert report["classes"] == CLASSES
    assert report["images"] == dict.fromkeys(CLASSES, PER_CLASS)
    # Every image of the class folders listed by its path there (sub-folders kept, the
    # files that are not images left out), and read back from train.zip as it was.
    source = data_source(project)
    expected = sorted(f"{label}/{'2019/' if n % 4 == 0 else ''}{label}-{n}.jpg"
                      for label in CLASSES for n in range(PER_CLASS))
    listed = read_manifest(project / "data/train.json")
    assert sorted(name for name, _ in listed.samples) == expected
    assert train_images(project) == {name: (source / name).read_bytes() for name in expected}
    assert not (project / "data/train").exists()  # nothing extracted


def test_the_model_is_a_softmax_over_the_classes_and_names_them(pipeline):
    project, _, _ = pipeline
    from finetune.model.saved import load_model, model_class_names

    model = load_model(project / "models/model.keras")
    assert model_class_names(model) == CLASSES
    assert model.output_shape == (None, len(CLASSES))
    assert model.get_layer("head").layers[-1].get_config()["activation"] == "softmax"


def test_evaluate_scores_the_held_out_images_with_every_score_its_definition(pipeline):
    project, _, _ = pipeline
    assert_evaluation_is_sound(project)


def test_evaluation_scores_every_class(pipeline):
    project, _, _ = pipeline
    scores = json.loads((project / "metrics/evaluate/metrics.json").read_text())
    assert scores["images"] == len(CLASSES) * PER_CLASS // 5
    for key in ("accuracy", "log_loss", "roc_auc"):
        assert key in scores, key
    for name in [*CLASSES, "macro"]:
        assert set(scores[name]) == {"precision", "recall", "f1"}, name
    # Learned something (chance is 1/3): the background colour alone tells them apart.
    assert scores["accuracy"] > 0.6, scores
    matrix = json.loads(
        (project / "metrics/evaluate/plots/sklearn/confusion_matrix.json").read_text())
    rows = matrix  # a row per validation image: {"actual": ..., "predicted": ...}
    assert {row["actual"] for row in rows} == set(CLASSES)
    assert len(rows) == len(CLASSES) * PER_CLASS // 5  # a row per validation image


def test_second_repro_runs_nothing(pipeline):
    project, env, _ = pipeline
    assert ran_stages(dvc(project, env, "repro").stdout) == []


def test_predict_names_the_classes(pipeline):
    # `predict`, the command `pip install -e .` installs (as `make setup` does).
    project, env, _ = pipeline
    command = shutil.which("predict", path=str(Path(sys.executable).parent))
    assert command, "no `predict` command beside this Python: run `make setup`"
    # The data set's own folder: the training images as files, some nested, some not images.
    result = subprocess.run([command, "--all", str(data_source(project))], cwd=project,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(lines) == len(CLASSES) * PER_CLASS
    said = set()
    for path, label, value, *every in lines:
        assert [field.partition("=")[0] for field in every] == CLASSES, path
        probabilities = [float(field.partition("=")[2]) for field in every]
        assert label == CLASSES[probabilities.index(max(probabilities))]
        assert float(value) == max(probabilities)
        said.add(label)
    assert said == set(CLASSES)


def test_exp_run_lr_metrics_diff_and_plots(pipeline):
    project, env, _ = pipeline
    subprocess.run(["git", "add", "-A"], cwd=project, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=project, env=env, check=True)
    result = dvc(project, env, "exp", "run", "-S", "lr=1e-3")
    assert ran_stages(result.stdout) == ["train", "evaluate", "submit", "export"]
    diff = dvc(project, env, "metrics", "diff", "--all").stdout
    for metric in ("accuracy", "log_loss", "roc_auc", "macro.f1", "bird.recall"):
        assert re.search(rf"metrics/evaluate/metrics\.json\s+{re.escape(metric)}\s", diff), diff
    # The experiments table of the docs: changed params and headline metrics, 120 columns.
    table = subprocess.run(["make", "-s", "exps", f"DIR={project}"], cwd=ROOT, env=env,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert table and max(len(line) for line in table) <= 120, table
    header = table[1].split()
    assert header == ["Experiment", "accuracy", "log_loss", "roc_auc", "lr"], header
    assert sum("[" in line for line in table) == 1  # the experiment's row, named
    # The table `make demo` ends with: headline metrics and what ran, 120 columns too.
    summary = subprocess.run(SUMMARY, cwd=project, env=env, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert summary and max(len(line) for line in summary) <= 120, summary
    assert summary[1].split() == ["Experiment", "accuracy", "log_loss", "roc_auc", "backbone",
                                  "image_size", "epochs", "lr"], summary
    drawn = charts(project, env)
    assert drawn["Loss per epoch"][1] == {"train/loss.tsv", "eval/loss.tsv"}, drawn
    assert drawn["Accuracy per epoch"][1] == {"train/accuracy.tsv", "eval/accuracy.tsv"}, drawn
    assert {"Confusion matrix (validation)", "ROC curve (validation)",
            "Precision-recall curve (validation)"} <= {title for title, _ in drawn.values()}
    assert "metrics/evaluate/plots/images/mistakes.png" in drawn, drawn


@pytest.mark.slow  # two `dvc exp run`s on a copy: the mirror images' features, a training
def test_exp_run_tta_flip_reruns_only_the_stages_that_read_it(class_folder_run, tmp_path):
    """`-S tta=flip` computes the mirror images' features and scores with them, reusing the
    features and the model; then `-S lr=` retrains and rescores, reusing both features."""
    project, env = class_folder_run.copy_of(tmp_path / "project"), class_folder_run.env
    subprocess.run(["git", "add", "-A"], cwd=project, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=project, env=env, check=True)
    flipped = dvc(project, env, "exp", "run", "-S", "tta=flip")
    assert ran_stages(flipped.stdout) == ["mirrored_features", "evaluate", "submit"]
    assert sorted(path.name for path in (project / "data/mirrored_features").iterdir()) == [
        "index.json", "train.npy"]
    assert "tta: flip (each image averaged with its mirror image)" in flipped.stderr + (
        flipped.stdout)
    assert_evaluation_is_sound(project)  # each prediction the mean of photo and mirror
    retrained = dvc(project, env, "exp", "run", "-S", "lr=1e-3")
    assert ran_stages(retrained.stdout) == ["train", "evaluate", "submit", "export"]
    assert_evaluation_is_sound(project)
