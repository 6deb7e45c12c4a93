"""Where the stages read and write: the one place in the code that names a path.

dvc.yaml declares the same paths as deps and outs; `tests/test_dvc_yaml.py` ties
each constant here to dvc.yaml, so the two cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")

# fetch_data
RAW_DIR = Path("data/raw")
TRAIN_ZIP = RAW_DIR / "train.zip"
TEST_ZIP = RAW_DIR / "test.zip"
SAMPLE_SUBMISSION = RAW_DIR / "sample_submission.csv"
DOWNLOAD_DIR = Path("data/.kaggle-download")  # scratch: the kaggle client resumes from it

# split_classes
TRAIN_DIR = Path("data/train")
DATA_REPORT = Path("metrics/data.json")

# fetch_weights
WEIGHTS_FILE = Path("models/backbone_notop.h5")

# features
FEATURES_DIR = Path("data/features")
TRAIN_FEATURES = FEATURES_DIR / "train.npy"  # one row per image of TRAIN_DIR
TEST_FEATURES = FEATURES_DIR / "test.npy"  # one row per id of SAMPLE_SUBMISSION
FEATURES_INDEX = FEATURES_DIR / "index.json"

# train
MODEL_FILE = Path("models/model.keras")
TRAIN_LIVE_DIR = Path("metrics/train")  # dvclive's folder: metrics.json and plots/
BACKUP_DIR = Path("models/.train-backup")  # scratch: resumes a killed training

# evaluate
EVALUATE_LIVE_DIR = Path("metrics/evaluate")

# submit
SUBMISSION_FILE = Path("data/submission.csv")
