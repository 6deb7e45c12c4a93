"""`dvc repro` killed mid-training (SIGKILL to DVC and the stage) resumes on the next
`dvc repro` and ends with the metrics of an uninterrupted run.

On a copy of the session's class-folder run (tests/e2e/conftest.py: MobileNet alpha 0.25
with random weights calibrated on the drawn photos, cut at `conv_pw_3_relu`, where its
features still tell the drawn classes apart), with augmentation on (so train decodes the
photos and trains on pixels) and six epochs: the model learns, so equal metrics mean
something.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from tests.support.commands import dvc, ran_stages

# `make test-slow` (a minute of the default suite's seven: tests/stages/test_train.py
# checks the stage's own exact resume there); with two processes, it would run in the
# one that makes the shared class-folder run.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("class_folder_run")]

CHANGES = {"epochs": 6, "augment_flip": True}
CLASSES = 3


def test_killed_repro_resumes_training_with_the_same_result(tmp_path, class_folder_run):
    project = class_folder_run.copy_of(tmp_path / "project")
    env = class_folder_run.env
    params_file = project / "params.yaml"
    params_file.write_text(yaml.safe_dump({**yaml.safe_load(params_file.read_text()),
                                           **CHANGES}, sort_keys=False))
    first = dvc(project, env, "repro")
    # Augmentation is not a param of the features: they are reused.
    assert ran_stages(first.stdout) == ["train", "evaluate", "submit", "export"]
    uninterrupted = json.loads((project / "metrics/evaluate/metrics.json").read_text())
    # The model learned (chance is 1/3): equal metrics below are not those of a constant
    # prediction.
    assert uninterrupted["accuracy"] >= 2 / CLASSES, uninterrupted

    # Again, killed (DVC and the stage, SIGKILL) once three epochs are backed up.
    process = subprocess.Popen(["dvc", "repro", "--force", "train"], cwd=project, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    backup = project / "models/.train-backup/epoch-0003.weights.h5"
    deadline = time.monotonic() + 300
    while not backup.exists():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    resumed = dvc(project, env, "repro")
    assert ran_stages(resumed.stdout) == ["train", "evaluate", "submit", "export"]
    assert "train: resuming the interrupted run after epoch" in resumed.stdout + resumed.stderr
    assert json.loads((project / "metrics/evaluate/metrics.json").read_text()) == uninterrupted
    log = (project / "metrics/train/plots/metrics/eval/loss.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in log[1:]] == [str(step) for step in range(6)]
