"""What a newcomer sees: a failing stage prints its one `error:` line and nothing else
(no TensorFlow start-up log). That long steps report progress in whole lines is checked in
tests/unit/core/test_progress.py and tests/unit/dataset/test_decode.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.commands import run_stage, stage_env
from tests.support.projects import write_params
from tests.support.shared import ROOT


def quiet_env(**extra: str) -> dict[str, str]:
    """A newcomer's environment: no Kaggle credentials, TensorFlow's log level unset."""
    env = {**stage_env(), **extra}
    if "TF_CPP_MIN_LOG_LEVEL" not in extra:
        env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def test_missing_kaggle_credentials_fail_in_one_line_without_tensorflow(tmp_path):
    write_params(tmp_path)
    env = quiet_env(HOME=str(tmp_path))  # no ~/.kaggle/kaggle.json either
    result = run_stage("fetch_data", tmp_path, env=env)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: no Kaggle credentials")
    # Imports logged by -X importtime: TensorFlow is not among them on this path.
    traced = subprocess.run([sys.executable, "-X", "importtime", "-m", "stages.fetch_data"],
                            cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120)
    assert traced.returncode == 1
    imported = {row.rsplit("|", 1)[-1].strip() for row in traced.stderr.splitlines()
                if row.startswith("import time:")}
    assert "finetune.core.params" in imported  # the trace works
    assert "tensorflow" not in imported and "keras" not in imported


@pytest.mark.parametrize("stage", ["fetch_data", "fetch_weights"])
def test_a_stage_that_imports_tensorflow_prints_only_its_error(tmp_path, stage):
    # Credentials are set, so fetch_data gets as far as checking the layer names, which
    # loads TensorFlow; its start-up log must not come before the error.
    write_params(tmp_path, cut_layer="mixed77")
    env = quiet_env(KAGGLE_USERNAME="tester", KAGGLE_KEY="not-used")
    result = run_stage(stage, tmp_path, env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: cut_layer: InceptionV3 has no layer 'mixed77' ('last' names its output); "
        "closest: mixed7, mixed9, mixed8, mixed6, mixed5"]  # the backbone as params.yaml says


def test_tensorflow_log_shows_when_asked_for(tmp_path):
    write_params(tmp_path, cut_layer="mixed77")
    result = run_stage("fetch_weights", tmp_path, env=quiet_env(TF_CPP_MIN_LOG_LEVEL="0"))
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) > 1  # TensorFlow's own lines, then the error
    assert result.stderr.splitlines()[-1].startswith("error: cut_layer")
