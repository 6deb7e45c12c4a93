"""Where the stages read and write: the one place in the code that names a path.

dvc.yaml declares the same paths as deps and outs; `tests/unit/test_dvc_yaml.py` ties
each constant here to dvc.yaml, so the two cannot drift apart.
"""

from __future__ import annotations

import os
from pathlib import Path

PARAMS_FILE = Path("params.yaml")

# fetch_data: RAW_DIR holds TRAIN_ZIP, and TEST_ZIP and SAMPLE_SUBMISSION where the data
# set has a test set (the competition's does)
RAW_DIR = Path("data/raw")
TRAIN_ZIP = RAW_DIR / "train.zip"
TEST_ZIP = RAW_DIR / "test.zip"
SAMPLE_SUBMISSION = RAW_DIR / "sample_submission.csv"
DOWNLOAD_DIR = Path("data/.kaggle-download")  # scratch: the kaggle client resumes from it
# scratch: a `data_source` URL's zip while it downloads, so that a killed run resumes it.
# Not in RAW_DIR, which DVC deletes before the stage runs (and the stage empties itself);
# not a DVC output, and git-ignored.
URL_DOWNLOAD_DIR = Path("data/.url-download")

# split_classes: TRAIN_ZIP's readable labelled images (classes; each image's name, size,
# CRC-32 and entry). The stages read the images from the archive through it: no folder of
# tens of thousands of files for DVC to hash, check out, push and pull on every command.
TRAIN_MANIFEST = Path("data/train.json")
DATA_REPORT = Path("metrics/data.json")

# fetch_weights
WEIGHTS_FILE = Path("models/backbone_notop.h5")

# features
FEATURES_DIR = Path("data/features")
TRAIN_FEATURES = FEATURES_DIR / "train.npy"  # one row per image of TRAIN_MANIFEST
TEST_FEATURES = FEATURES_DIR / "test.npy"  # one row per id of SAMPLE_SUBMISSION, if any
FEATURES_INDEX = FEATURES_DIR / "index.json"

# mirrored_features: FEATURES_DIR's files of each image mirrored left-right (tta: flip),
# rows in the same order; with tta: none, only the index (saying so)
MIRRORED_FEATURES_DIR = Path("data/mirrored_features")
MIRRORED_TRAIN_FEATURES = MIRRORED_FEATURES_DIR / "train.npy"
MIRRORED_TEST_FEATURES = MIRRORED_FEATURES_DIR / "test.npy"
MIRRORED_FEATURES_INDEX = MIRRORED_FEATURES_DIR / "index.json"

# train
MODEL_FILE = Path("models/model.keras")
TRAIN_LIVE_DIR = Path("metrics/train")  # dvclive's folder: metrics.json and plots/
BACKUP_DIR = Path("models/.train-backup")  # scratch: resumes a killed training

# export: the trained model in the formats people deploy, with its classes beside them
EXPORT_DIR = Path("models/export")
EXPORT_SAVED_MODEL = EXPORT_DIR / "saved_model"  # TensorFlow SavedModel (TF Serving)
EXPORT_TFLITE = EXPORT_DIR / "model.tflite"  # LiteRT (TensorFlow Lite)
EXPORT_ONNX = EXPORT_DIR / "model.onnx"
EXPORT_CLASSES = EXPORT_DIR / "classes.json"
EXPORT_LIST = EXPORT_DIR / "formats.json"  # the formats written (none by default)

# evaluate
EVALUATE_LIVE_DIR = Path("metrics/evaluate")
PREDICTIONS_FILE = EVALUATE_LIVE_DIR / "predictions.csv"  # each validation image's scores
# the reliability diagram's points: dvclive's log_plot writes plots/custom/<name>.json
RELIABILITY_PLOT = EVALUATE_LIVE_DIR / "plots" / "custom" / "reliability.json"
# the grid of the most confident mistakes: dvclive's log_image writes plots/images/<name>
MISTAKES_GRID = EVALUATE_LIVE_DIR / "plots" / "images" / "mistakes.png"

# submit: SUBMISSION_DIR holds SUBMISSION_FILE where the data set has a test set
SUBMISSION_DIR = Path("data/submission")
SUBMISSION_FILE = SUBMISSION_DIR / "submission.csv"


# Where `dvc exp run --queue` (and --temp) runs a copy of the project: <project>/EXPS_DIR/...
EXPS_DIR = Path(".dvc/tmp/exps")

# The offline demo's own project (scripts/demo.py, `make demo`): a copy of this one, run.
DEMO_DIR = Path("build/demo")


def project_path(value: str) -> Path:
    """A path from params.yaml (`data_source`, a local `weights_urls` entry) as its writer
    meant it: a relative one against the project, not against the copy a queued experiment
    runs in. The project is DVC_ROOT, which DVC sets for every stage (for a queued run, to
    the project the copy came from), else the working folder; a folder inside
    <project>/.dvc/tmp/exps/ (the copy itself: a stage run by hand there) means <project>.
    The value's text stays what DVC tracks; only where it is read changes. A relative
    one comes back resolved: `..` taken as the file system takes it, and the messages that
    name it show the file, not ".../build/demo/../../shared/..."."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    start = Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if folder.parts[-len(EXPS_DIR.parts):] == EXPS_DIR.parts:
            return (folder.parents[len(EXPS_DIR.parts) - 1] / path).resolve()
    return (start / path).resolve()
