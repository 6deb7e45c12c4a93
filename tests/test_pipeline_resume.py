"""`dvc repro` killed mid-training (SIGKILL to DVC and the stage) resumes on the next
`dvc repro` and ends with the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from scripts.demo import MOBILENET_PARAMS, copy_project
from tests.conftest import stage_env
from tests.test_pipeline_e2e import dvc, ran_stages

SMALL = {**MOBILENET_PARAMS, "image_size": 96, "epochs": 6, "augment_flip": True}


def test_killed_repro_resumes_training_with_the_same_result(tmp_path, sample_dir,
                                                            mobilenet_weights):
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project, {**SMALL, "data_source": str(sample_dir),
                           "weights_urls": [str(mobilenet_weights)]})
    env = stage_env()
    dvc(project, env, "repro")
    uninterrupted = json.loads((project / "metrics/evaluate/metrics.json").read_text())

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
    assert ran_stages(resumed.stdout) == ["train", "evaluate", "submit"]
    assert "train: resuming the interrupted run after epoch" in resumed.stdout + resumed.stderr
    assert json.loads((project / "metrics/evaluate/metrics.json").read_text()) == uninterrupted
    log = (project / "metrics/train/plots/metrics/eval/loss.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in log[1:]] == [str(step) for step in range(6)]
