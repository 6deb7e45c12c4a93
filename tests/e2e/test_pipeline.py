"""The whole DAG with real DVC in a temporary git repo, offline.

Kaggle is a loopback server that the real kaggle client talks to, serving a bundle
of drawn photos (conftest's `sample_dir`); the weights come from a loopback HTTP
server serving an InceptionV3 notop file with random weights in the real file's
legacy HDF5 layout. Small images, few photos and one epoch keep it to a few minutes;
it checks the plumbing, not the accuracy.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid

import pytest
import yaml

from finetune.dataset.manifest import read_manifest
from scripts.demo import copy_project
from tests.support.commands import charts, dvc, ran_stages, stage_env
from tests.support.kaggle_server import KaggleServer, build_competition_bundle
from tests.support.scores import assert_evaluation_is_sound
from tests.support.servers import serving
from tests.support.weights import md5

# Made at run time, so no file of the project holds it unless the pipeline wrote it there.
PLANTED_KEY = f"planted-{uuid.uuid4().hex}"
OUTS = [
    "data/raw/train.zip", "data/raw/test.zip", "data/raw/sample_submission.csv",
    "data/train.json", "metrics/data.json",
    "data/features/train.npy", "data/features/test.npy", "data/features/index.json",
    "data/mirrored_features/index.json",  # tta: none by default: the index alone
    "models/backbone_notop.h5", "models/model.keras",
    "metrics/train/metrics.json", "metrics/evaluate/metrics.json",
    "metrics/evaluate/predictions.csv", "data/submission/submission.csv",
    "models/export/formats.json",  # export_formats: [] by default (exports: tests/slow)
]


@pytest.fixture(scope="module")
def pipeline(sample_dir, inception_weights, tmp_path_factory):
    """A project copy that has run `dvc repro` once, with its servers still up."""
    root = tmp_path_factory.mktemp("e2e")
    bundle = build_competition_bundle(sample_dir, root / "bundle", per_class=60, test_images=10)
    served = root / "served"
    served.mkdir()
    shutil.copy(inception_weights, served / inception_weights.name)
    project = root / "project"
    project.mkdir()
    kaggle_config = root / "kaggle-config"
    kaggle_config.mkdir()
    with serving(served) as weights_base, KaggleServer(bundle, key=PLANTED_KEY) as kaggle:
        copy_project(project, {
            # A dead mirror first: fetch_weights must fall back to the next one.
            "weights_urls": ["http://127.0.0.1:9/unreachable.h5",
                             f"{weights_base}/{inception_weights.name}"],
            "weights_hash": f"md5:{md5(inception_weights)}",
            "image_size": 75,  # InceptionV3's minimum
            "batch_size": 16,
            "epochs": 1,
        })
        env = stage_env(**kaggle.env(), KAGGLE_CONFIG_DIR=str(kaggle_config))
        first = dvc(project, env, "repro")
        yield project, env, kaggle, first


def test_repro_builds_every_declared_output(pipeline):
    project, _, _, first = pipeline
    assert ran_stages(first.stdout) == [
        "fetch_data", "split_classes", "fetch_weights", "features", "mirrored_features", "train",
        "evaluate", "submit", "export"]
    for out in OUTS:
        assert (project / out).exists(), f"{out} missing after dvc repro"
    # Every training photo listed, by class; none extracted (the stages read train.zip).
    listed = read_manifest(project / "data/train.json")
    assert listed.classes == ["cat", "dog"]
    assert sorted(listed.samples) == sorted((f"{label}/{label}.{n}.jpg", number)
                                            for number, label in enumerate(["cat", "dog"])
                                            for n in range(60))
    assert json.loads((project / "metrics/data.json").read_text())["images"] == {
        "cat": 60, "dog": 60}
    assert not (project / "data/train").exists()
    evaluation = json.loads((project / "metrics/evaluate/metrics.json").read_text())
    assert evaluation["images"] == 24  # 20% of 60 per class
    assert 0 <= evaluation["accuracy"] <= 1 and evaluation["log_loss"] > 0


def test_evaluate_scores_the_held_out_images_with_every_score_its_definition(pipeline):
    assert_evaluation_is_sound(pipeline[0])


def test_second_repro_runs_nothing(pipeline):
    project, env, _, _ = pipeline
    result = dvc(project, env, "repro")
    assert ran_stages(result.stdout) == []
    assert "up to date" in result.stdout


def test_exp_run_lr_reruns_only_train_and_evaluate_and_metrics_diff(pipeline):
    project, env, _, _ = pipeline
    subprocess.run(["git", "add", "-A"], cwd=project, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=project, env=env, check=True)

    result = dvc(project, env, "exp", "run", "-S", "lr=1e-4")
    # Nothing upstream of train reruns: no download, no extraction. submit predicts
    # with the new model, so it reruns with evaluate.
    assert ran_stages(result.stdout) == ["train", "evaluate", "submit", "export"]
    assert yaml.safe_load((project / "params.yaml").read_text())["lr"] in (1e-4, "1e-4")

    # --all: with random backbone weights the accuracy can stay at exactly 0.5, and
    # plain `metrics diff` hides unchanged values.
    diff = dvc(project, env, "metrics", "diff", "--all").stdout
    for metric in ("accuracy", "log_loss", "roc_auc"):
        assert re.search(rf"metrics/evaluate/metrics\.json\s+{metric}\s", diff), diff
    shown = dvc(project, env, "exp", "show", "--csv").stdout.splitlines()[0]
    assert "lr" in shown.split(",") and "accuracy" in shown.split(","), shown


def test_experiments_on_training_knobs_reuse_the_features(pipeline):
    # DVC itself says which stages a change of params.yaml makes stale.
    project, env, _, _ = pipeline
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    try:
        params_file.write_text(yaml.safe_dump({
            **params, "lr": 0.5, "epochs": 3, "dropout": 0.5, "dense_units": 8,
            "val_split": 0.3, "seed": 7, "batch_size": 8, "cut_layer": "mixed4",
            "head": "gap", "keep": "last", "head_epochs": 1}))
        status = dvc(project, env, "status", "features").stdout
        assert "up to date" in status, status
        assert "train:" in dvc(project, env, "status", "train").stdout
        params_file.write_text(yaml.safe_dump({**params, "image_size": 80}))
        assert "features:" in dvc(project, env, "status", "features").stdout
    finally:
        params_file.write_text(original)


def stale_stages(project, env) -> set[str]:
    """The stages `dvc status` finds changed (each a "NAME:" line at the left margin)."""
    return set(re.findall(r"^(\w+):$", dvc(project, env, "status").stdout, flags=re.M))


def test_tta_changes_only_the_mirrored_features_and_the_stages_that_read_them(pipeline):
    # `-S tta=flip` reruns mirrored_features, evaluate and submit, never features, train
    # or export (DVC's own view of what is stale; `-S lr=` not rerunning mirrored_features:
    # test_exp_run_lr_reruns_only_train_and_evaluate_and_metrics_diff).
    project, env, _, _ = pipeline
    params_file = project / "params.yaml"
    original = params_file.read_text()
    try:
        params_file.write_text(yaml.safe_dump({**yaml.safe_load(original), "tta": "flip"}))
        assert stale_stages(project, env) == {"mirrored_features", "evaluate", "submit"}
    finally:
        params_file.write_text(original)


def test_plots_show_draws_the_curves_and_the_evaluation(pipeline):
    project, env, _, _ = pipeline
    drawn = charts(project, env)
    # Training and validation on one chart per quantity, titled in words (dvc.yaml's plots).
    assert drawn["Loss per epoch"] == ("Loss per epoch (training and validation)",
                                       {"train/loss.tsv", "eval/loss.tsv"}), drawn
    assert drawn["Accuracy per epoch"] == ("Accuracy per epoch (training and validation)",
                                           {"train/accuracy.tsv", "eval/accuracy.tsv"}), drawn
    titles = {title for title, _ in drawn.values()}
    assert {"Confusion matrix (validation)", "ROC curve (validation)",
            "Precision-recall curve (validation)"} <= titles, drawn
    # The reliability diagram: the fraction right per bin against the diagonal (two fields
    # of one file: DVC names the series by field, not by file).
    assert drawn["Reliability diagram (validation)"][0] == (
        "Reliability diagram (validation; confidence = the predicted class's probability)")
    # No chart of one series titled by its path (dvclive's folder declared as plots).
    assert not [plot for plot in drawn if plot.endswith(".tsv")], drawn
    dvc(project, env, "plots", "show", "-o", "plots_html")
    assert list((project / "plots_html").rglob("*mistakes.png")), "mistakes grid not rendered"


def test_submission_matches_the_sample(pipeline):
    project, _, _, _ = pipeline
    sample = (project / "data/raw/sample_submission.csv").read_text().splitlines()
    rows = (project / "data/submission/submission.csv").read_text().splitlines()
    assert rows[0] == "id,label"
    assert [row.split(",")[0] for row in rows[1:]] == [row.split(",")[0] for row in sample[1:]]
    clip = yaml.safe_load((project / "params.yaml").read_text())["clip"]
    assert all(clip <= float(row.split(",")[1]) <= 1 - clip for row in rows[1:])


def test_kaggle_key_is_never_written_anywhere(pipeline):
    # The key was in the environment of every run above: it must not reach a log, a
    # param, dvc.lock, the metrics, the DVC cache or git.
    project, _, kaggle, first = pipeline
    assert kaggle.key == PLANTED_KEY
    assert PLANTED_KEY not in first.stdout + first.stderr
    for path in project.rglob("*"):
        if path.is_file():
            assert PLANTED_KEY.encode() not in path.read_bytes(), f"Kaggle key found in {path}"


def test_wrong_credentials_fail_fetch_data_cleanly(pipeline):
    project, env, kaggle, _ = pipeline
    wrong = {**env, **kaggle.env(key="wrong-key-000")}
    result = dvc(project, wrong, "repro", "--force", "--single-item", "fetch_data", ok=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "wrong-key-000" not in output
    assert PLANTED_KEY not in output
    assert re.search(r"error: .*401", output), output
    for out in ("data/raw/train.zip", "data/raw/test.zip", "data/raw/sample_submission.csv"):
        assert not (project / out).exists(), f"{out} left behind by a failed fetch_data"
    status = dvc(project, env, "status", "fetch_data").stdout
    assert "deleted" in status  # DVC knows the outputs are gone: nothing was cached as good
