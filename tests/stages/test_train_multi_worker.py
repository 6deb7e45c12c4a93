"""The train stage with `strategy: multi_worker`: a bad setup (no
TF_CONFIG, a batch that does not split across the workers) fails in one line before any
training. Two workers training: tests/scale/test_multi_worker_training.py."""

from __future__ import annotations

import pytest

from tests.support.commands import assert_stage_error, call_stage
from tests.support.projects import SMALL_NETWORK, lay_out_project
from tests.support.tf_config import TWO, tf_config


@pytest.mark.parametrize(("overrides", "config", "message"), [
    ({}, None, "strategy multi_worker needs TF_CONFIG"),
    ({"batch_size": 7}, tf_config(TWO, "worker", 1),
     "batch_size: 7 does not split evenly across 2 workers; use a multiple of 2"),
])
def test_bad_multi_worker_setup_fails_in_one_line_before_training(
        tmp_path, sample_dir, mobilenet_random_weights, overrides, config, message):
    project = lay_out_project(tmp_path, sample_dir, mobilenet_random_weights, 2,
                              **{**SMALL_NETWORK, **overrides}, strategy="multi_worker")
    assert_stage_error(call_stage("train", project, TF_CONFIG=config), message)
    assert not (project / "models/model.keras").exists()
